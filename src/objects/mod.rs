//! Process-shared objects — [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`], [`Queue`],
//! [`Pipe`], [`Value`], [`Array`] — like those of Python's `multiprocessing`.
//!
//! They all live in one **object heap** per program: an anonymous `memfd`
//! segment (a `shm::segment::Segment`, like a pool's), created on first use
//! and mapped by every process of the program — inherited at `fork`, and
//! passed as a descriptor to spawned processes and pool workers. So nothing has
//! a name and nothing can leak in `/dev/shm`, however processes die.
//!
//! A handle (`Lock`, `Queue<T>`, …) is a copyable offset into the heap, so it
//! is [`Pod`](crate::Pod): it can be an argument of a [`Process`](crate::Process)
//! or of a pool task, exactly as Python passes `q` in `Process(target=f,
//! args=(q,))`. Every use checks the offset and the object's kind, so a forged
//! handle is an error, never a wild access. Objects are never freed: they live
//! until every process of the program has exited (create them once, not in a
//! hot loop).
//!
//! Waiting uses the crate's futex machinery (`sync::wake::WakeWord`); mutual
//! exclusion uses process-shared **robust** mutexes (`pthread_mutex_t` with
//! `PTHREAD_MUTEX_ROBUST`), so that a holder that dies is reported to the next
//! locker ([`Error::OwnerDied`](crate::Error::OwnerDied)) instead of
//! deadlocking it.

mod heap;
mod lock;
mod queue;
#[cfg(feature = "serde")]
pub mod serial;
mod sync;
mod value;

pub(crate) use heap::Heap;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use queue::{Connection, Pipe, Queue};
pub use sync::{Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Semaphore};
pub use value::{Array, ArrayGuard, Value, ValueGuard};
