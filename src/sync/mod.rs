//! Cross-process synchronization primitives that live in shared memory.
//!
//! Everything here works on plain `#[repr(C)]` atomics so that it can sit in a
//! `MAP_SHARED` mapping used by several processes, and so that the pure parts
//! (the ring, the task slot's state machine, the spin policy) can be tested
//! in-process and under miri. None of these types knows about pools.

pub(crate) mod finish_log;
pub(crate) mod fork_mutex;
pub(crate) mod futex;
pub(crate) mod ring;
pub(crate) mod slot;
pub(crate) mod spin;
pub(crate) mod wake;

use std::sync::{LockResult, Mutex, MutexGuard, PoisonError};

/// The guard of a std lock (or condition wait), whether or not it is
/// poisoned: every such lock in the crate leaves its data consistent at each
/// unlock, so a panic elsewhere while it was held (a user's callback, a bug
/// caught at a thread's edge) does not invalidate the data, and the pool or
/// manager must go on working.
pub(crate) fn unpoisoned<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(PoisonError::into_inner)
}

/// Locks `m`, ignoring poison ([`unpoisoned`]).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    unpoisoned(m.lock())
}
