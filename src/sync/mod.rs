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
