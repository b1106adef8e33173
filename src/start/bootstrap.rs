//! The hook that turns a re-executed copy of this program into a pool worker
//! or a fork server, before `main` runs.
//!
//! A function in the executable's `.init_array` runs before `main` in every
//! process of this program (the C runtime calls it). It does nothing unless the
//! environment names a role (`spawn::ENV` or `forkserver::ENV`); then it plays
//! that role and leaves with `_exit`, so the program's `main` — or the test
//! harness, inside `cargo test` — never runs in a worker. Programs therefore
//! need no line of their own; [`crate::init`] exists for the rare build that
//! drops the hook, and to make the intent visible in `main`.
//!
//! The role variable is removed first, so processes a task starts do not
//! inherit it; and every inherited descriptor is made close-on-exec again,
//! so a program a task runs gets none of the pool's memory or eventfds (a
//! shell that truncated the segment's memfd would kill the parent with
//! SIGBUS).

// Unsafe code: the start-up hook (`.init_array`); inherited descriptors.
#![allow(unsafe_code)]

use super::fork;
use super::spawn::{self, Spec};
use super::{forkserver, BAD_SEGMENT_EXIT, BINARY_MISMATCH_EXIT};
use crate::shm::layout::{self, Layout};
use crate::shm::segment::Segment;
use crate::worker::{self, WorkerStart};
use crate::StartMethod;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

#[used]
#[link_section = ".init_array"]
static BOOTSTRAP: extern "C" fn() = bootstrap;

/// Makes sure the linker keeps [`BOOTSTRAP`]: an archive member nothing
/// refers to would be left out of the executable.
pub(crate) fn ensure_linked() {
    // An opaque use: the compiler must assume the static is read.
    std::hint::black_box(&BOOTSTRAP);
}

extern "C" fn bootstrap() {
    // Unwinding out of an `extern "C"` function aborts; keep panics inside.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(take_role));
}

/// Plays the role the environment names, if any, and exits: a spawned
/// worker or the fork server. (A spawned `Process` and the tracker take their
/// roles in hooks of their own, in `process::spawned` and `tracker`: the start
/// machinery knows nothing of them.)
pub(crate) fn take_role() {
    if let Some(claimed) = claim_role_fds::<3>(spawn::ENV) {
        let code = match (Spec::decode(&claimed.value), claimed.fds) {
            (Some(spec), Some(fds)) => run_spawned(spec, fds),
            _ => BAD_SEGMENT_EXIT,
        };
        exit(code);
    }
    if let Some(claimed) = claim_role_fds::<1>(forkserver::ENV) {
        exit(
            claimed
                .fds
                .map_or(BAD_SEGMENT_EXIT, |[socket]| forkserver::serve(socket)),
        );
    }
}

/// If the environment names role `env` (every role variable starts with
/// [`ROLE_PREFIX`](super::ROLE_PREFIX)), takes it: removes the variable, so
/// that processes this one starts do not inherit it, makes every inherited
/// descriptor close-on-exec again, and returns the variable's value.
pub(crate) fn claim_role(env: &str) -> Option<std::ffi::OsString> {
    debug_assert!(env.starts_with(super::ROLE_PREFIX));
    let value = std::env::var_os(env)?;
    std::env::remove_var(env);
    close_on_exec_inherited();
    Some(value)
}

/// A role's value, with the descriptors its first `K` fields name.
pub(crate) struct Claimed<const K: usize> {
    pub(crate) value: std::ffi::OsString,
    /// `None` if the first `K` fields are not `K` distinct descriptor numbers.
    pub(crate) fds: Option<[OwnedFd; K]>,
}

/// [`claim_role`] for a role whose value starts with `K` numbers of
/// descriptors the parent passed to this process (`<fd>,…,<fd>,<rest>`):
/// takes them over with the variable, as `OwnedFd`s. The one place an
/// inherited number becomes an owned descriptor, once: the variable is gone
/// after this.
pub(crate) fn claim_role_fds<const K: usize>(env: &str) -> Option<Claimed<K>> {
    let value = claim_role(env)?;
    let numbers = (|| {
        let mut fields = value.to_str()?.split(',');
        let mut numbers: [RawFd; K] = [0; K];
        for n in &mut numbers {
            *n = fields.next()?.parse().ok().filter(|&fd: &RawFd| fd >= 0)?;
        }
        let distinct = (1..K).all(|i| !numbers[..i].contains(&numbers[i]));
        distinct.then_some(numbers)
    })();
    // SAFETY: the parent passed these descriptors to this process and named
    // them in the role variable, just taken (removed): nothing else in the
    // process owns them. Distinct, and not -1 (checked).
    let fds = numbers.map(|numbers| numbers.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
    Some(Claimed { value, fds })
}

/// Sets close-on-exec on every descriptor from 3 up. `exec_self` cleared it
/// on the ones this process needs, for its own `exec` only; the descriptors
/// stay open here, numbered as in the role variable.
fn close_on_exec_inherited() {
    crate::sys::process::close_on_exec_from(3);
}

/// Ends a process that played a role, flushing what it printed.
pub(crate) fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Without running the program's own code.
    crate::sys::process::exit_now(code)
}

/// A spawned worker: `spec`, and the descriptors it names (segment, ready,
/// heap).
fn run_spawned(spec: Spec, [segment_fd, ready_fd, heap_fd]: [OwnedFd; 3]) -> i32 {
    if spec.probe != super::probe_offset() {
        return BINARY_MISMATCH_EXIT;
    }
    if !crate::objects::Heap::adopt(heap_fd) {
        return BAD_SEGMENT_EXIT;
    }
    become_worker(
        segment_fd.as_fd(),
        ready_fd.as_fd(),
        spec.index,
        StartMethod::Spawn,
    )
}

/// A spawned `Process`: `<heap fd>,<spec offset>,<probe>`.
/// Maps the pool's segment from `segment_fd` and serves as worker `index`.
pub(crate) fn become_worker(
    segment_fd: BorrowedFd<'_>,
    ready_fd: BorrowedFd<'_>,
    index: u32,
    method: StartMethod,
) -> i32 {
    let region = Segment::map(segment_fd, layout::SEGMENT_BYTES);
    let Some(layout) = region.ok().and_then(Layout::of) else {
        return BAD_SEGMENT_EXIT;
    };
    if layout.header().magic.load(Ordering::Acquire) != layout::MAGIC {
        return BAD_SEGMENT_EXIT;
    }
    // Workers of spawn and forkserver die with their parent too.
    let parent = rustix::process::Pid::as_raw(rustix::process::getppid()) as u32;
    fork::die_with_parent(parent);
    let start = WorkerStart {
        index,
        ready_fd,
        method,
    };
    let stack = layout.header().settings.stack_size.load(Ordering::Relaxed);
    if stack == 0 {
        return worker::serve(layout, start);
    }
    // `PoolBuilder::stack_size`: this main thread's stack was sized by
    // RLIMIT_STACK at exec, so tasks run on a thread with the stack asked
    // for, as fork workers run on a copy of the supervisor thread's. The
    // name goes on the main thread first: `/proc/<pid>/comm` shows its.
    crate::process::enter_worker(index as usize, method);
    let Ok(stack) = usize::try_from(stack) else {
        return super::STACK_FAILED_EXIT;
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("shmpool-worker".into())
            .stack_size(stack)
            .spawn_scoped(scope, move || worker::serve(layout, start))
            .map_or(super::STACK_FAILED_EXIT, |serving| {
                serving.join().unwrap_or(super::STACK_FAILED_EXIT)
            })
    })
}
