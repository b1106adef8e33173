#!/usr/bin/env bash
# Runs the in-process parts (ring, slot state machine, arena, wake word, stage, task
# entry points, the shared heap's books) under miri. Fork, shared mmap and futex syscalls are out of
# miri's reach; those tests are `cfg(not(miri))` or not selected here.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add --toolchain nightly miri rust-src
fi
exec cargo +nightly miri test --lib -- sync:: shm::arena task:: pool::schedule worker:: remote:: pool::zero_copy panic:: shared_alloc:: "$@"
