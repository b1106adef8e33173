//! # shmpool
//!
//! What Python's `multiprocessing.Pool` gives Python programs, for Rust: run a
//! plain function over plain data in **separate worker processes**, so that a
//! crash, a leak, an `abort()` in C code or global state in one task cannot take
//! the caller down, at the speed of shared memory.
//!
//! * Workers are forked once, in [`Pool::new`], and reused for every task.
//! * Parent and workers exchange fixed-layout task slots through a ring in one
//!   shared-memory segment; arguments and results are [`Pod`] and are copied as
//!   bytes, never serialized. Idle workers sleep in a futex (0% CPU).
//! * [`Pool::map`] is the hot path: a slice is cut into chunks that the workers
//!   claim from the ring; each worker reads its chunk where the caller's slice
//!   lies and writes its results straight into the returned vector, so no
//!   second copy of the data is made ([`PoolBuilder::zero_copy`]).
//! * A worker that dies never hangs the caller: its task fails with
//!   [`Error::WorkerDied`], the worker is replaced, the pool goes on.
//! * The segment is an anonymous `memfd`: it has no name, so nothing can leak
//!   in `/dev/shm`, however the program ends.
//! * The rest of `multiprocessing`'s toolbox on the same machinery:
//!   [`Process`], [`Queue`], [`Pipe`], [`Lock`], [`RLock`], [`Semaphore`],
//!   [`Event`], [`Condition`], [`Barrier`], [`Value`], [`Array`],
//!   [`SharedMemory`]; with the `serde` feature, `serial::{Queue, Pipe}` for
//!   values of any `serde` type.
//! * Async code awaits results ([`AsyncResult`] is `IntoFuture`), woken
//!   without blocking its executor and without depending on a runtime, and
//!   can stop a task with [`AsyncResult::abort`] (its worker is killed and
//!   replaced); with the `async` feature, an [`Imap`] is a
//!   `futures_core::Stream`.
//! * C and Fortran programs use the same pool through [`capi`] (`libshmpool`,
//!   `include/shmpool.h`).
//! * With the `manager` feature, `Manager` (module `manager`): a
//!   server process holding dicts, lists, queues, locks, … of any `serde`
//!   type, used through proxies from any process, locally or over TCP.
//! * With the `mpi` feature, `mpi::Pool` spreads the same calls over the
//!   ranks of an MPI job, each running its tasks in a local pool.
//! * Spawned and fork-server workers need one line at the start of `main`:
//!   [`init`].
//!
//! ```
//! use shmpool::{Error, Pool};
//! use std::time::Duration;
//!
//! fn f(x: u64) -> u64 { x * x }
//!
//! let pool = Pool::new(4)?;                     // 4 worker processes, forked once
//! let v: Vec<u64> = (0..10).collect();
//! assert_eq!(pool.map(f, &v)?, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
//!
//! let res = pool.apply_async(f, (20,))?;        // runs in one worker
//! assert_eq!(res.get(Some(Duration::from_secs(5)))?, 400);
//!
//! fn boom(_: u8) -> u8 { panic!("boom") }
//! match pool.apply(boom, (1,)) {
//!     Err(Error::TaskPanicked { message }) => assert_eq!(message, "boom"),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(pool.apply(f, (3,))?, 9);            // the worker goes on
//! # Ok::<(), Error>(())
//! ```
//!
//! Linux only (it relies on `memfd`, `futex` and `pidfd`). See
//! `docs/ARCHITECTURE.md` for the cross-process protocol.

#![warn(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "shmpool runs on Linux only: it is built on memfd_create, futex, pidfd and process_vm_readv"
);

pub mod capi;
mod context;
mod deadline;
mod error;
#[cfg(feature = "manager")]
pub mod manager;
#[cfg(feature = "mpi")]
pub mod mpi;
mod objects;
mod panic;
mod pod;
mod pool;
mod process;
mod remote;
mod shared_alloc;
mod shm;
mod start;
mod sync;
mod sys;
mod task;
mod tracker;
mod worker;

pub use context::{get_context, Context};
pub use error::DeathCause;
pub use error::Error;
pub use error::PanicMessage;
#[cfg(feature = "manager")]
pub use manager::{Manager, ManagerBuilder};
#[cfg(feature = "serde")]
pub use objects::serial;
pub use objects::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, ConditionGuard, Connection, Event,
    Lock, LockGuard, Pipe, Queue, RLock, RLockGuard, Semaphore, Value, ValueGuard,
};
pub use pod::Pod;
#[doc(hidden)]
pub use pod::{BoundValue, Message, TaskValue};
pub use pool::builder::MAX_PROCESSES;
#[cfg(feature = "async")]
pub use pool::ImapStream;
pub use pool::{
    AsyncResult, Call, Deliver, Imap, Insights, NoCallbacks, Pool, PoolBuilder, PoolStats,
    ResultFuture, SharedVec, WithCallbacks, WorkerStats,
};
#[cfg(feature = "serde")]
pub use pool::{SerdeImap, SerdePool, DEFAULT_RESULT_CAPACITY};
pub use process::{current_process, Process, ProcessInfo};
pub use shared_alloc::{HeapStats, SharedAlloc};
pub use shm::named::SharedMemory;
pub use start::{set_start_method, StartMethod};
#[cfg(feature = "serde")]
pub use task::serde::{SerdeTask, Wire};
#[doc(hidden)]
pub use task::TaskFunction;
pub use task::{partial, Partial, Task};

/// Call first thing in `main` in programs that use the `Spawn` or `ForkServer`
/// start methods (like `procspawn::init()`): in a process started as a pool
/// worker or fork server, it plays that role and never returns; elsewhere it
/// returns at once.
///
/// On Linux the same happens automatically before `main` (through the
/// executable's `.init_array`), so forgetting this line does no harm — it is
/// there to make the intent visible, and for builds that drop the hook. Tests
/// run under `cargo test` need nothing: the hook also runs before the test
/// harness. Should the hook be missing *and* the line forgotten, the child
/// still takes its role at its first call of `PoolBuilder::build` or
/// `Process::start`; if it never gets there, the parent's `build` fails with
/// [`Error::StartFailed`] (naming this function) after 30 s, never hangs.
///
/// ```no_run
/// # #[allow(clippy::needless_doctest_main)]
/// fn main() {
///     shmpool::init();
///     // ... the program, which may use shmpool::StartMethod::Spawn
/// }
/// ```
pub fn init() {
    start::bootstrap::take_role();
}

#[doc(hidden)]
pub mod __private {
    pub use crate::pod::CheckedPlainBytes;
    pub use zerocopy;
}
