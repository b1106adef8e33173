//! The process pool: [`Pool`], its [`PoolBuilder`] and [`AsyncResult`].
//!
//! * `core`: state shared by the handle, results and the supervisor
//! * `unpublished`: the token for a slot being prepared (the task slot and
//!   its state machine live in `sync::slot`)
//! * `supervisor`: starts, watches, settles and replaces workers
//! * `schedule`: how work becomes tasks: `apply`'s one task, chunked `map`
//!   and `map_async`, where the data lies or
//!   through the arena
//! * `zero_copy`: the parent's side of workers reaching the caller's memory
//! * `imap`: lazy `imap` / `imap_unordered`
//! * `lazy`: what every lazy map shares (the window, the input, waiting)
//! * `job`: the parent's record of submitted work
//! * `callbacks`: the thread that runs `*_with` callbacks
//! * `result`, `builder`: the public handle types
//! * `waker`: awaiting a result (`IntoFuture`), woken by the callback thread
//! * `abort`: stopping a result's work, and every worker at once

mod abort;
pub(crate) mod builder;
mod call;
mod callbacks;
pub(crate) mod core;
pub(crate) mod harness;
mod imap;
mod job;
mod lazy;
mod progress;
mod result;
pub(crate) mod schedule;
#[cfg(feature = "serde")]
mod serde;
mod shared_vec;
pub(crate) mod stats;
mod supervisor;
mod unpublished;
mod waker;
mod zero_copy;

use self::callbacks::{Callbacks, Watched};
use self::core::{Core, Lifecycle};
use self::job::Job;
use self::result::{Decode, Ticket};
#[cfg(feature = "serde")]
pub use self::serde::{SerdeImap, SerdePool, DEFAULT_RESULT_CAPACITY};
use crate::error::Error;
use crate::task::{apply_entry, ApplyInput, Entry, EntryPoint, Task};
use crate::{Pod, StartMethod};
pub use builder::PoolBuilder;
#[cfg(any(feature = "serde", feature = "mpi"))]
pub(crate) use call::lazy_maps;
pub(crate) use call::shorthands;
pub use call::{Call, Deliver, NoCallbacks, WithCallbacks};
pub use imap::Imap;
#[cfg(feature = "async")]
pub use imap::ImapStream;
pub use result::AsyncResult;
pub use shared_vec::SharedVec;
pub use stats::{Insights, PoolStats, WorkerStats};
pub use waker::ResultFuture;

use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A pool of worker processes, started once and reused for every task.
///
/// Tasks ([`Task`]) are function items, `fn` pointers and non-capturing
/// closures over [`Pod`] arguments and results, or any of these with bound
/// values ([`partial`](crate::partial)); they run in separate processes, so a
/// crash, an `abort()` or global state in a task cannot affect the caller.
/// Per-call options (chunk size, callbacks) go through [`Pool::call`]. All methods take `&self`:
/// a `Pool` is `Send + Sync`, and several threads may submit at once.
///
/// Dropping the pool terminates it, like leaving Python's `with Pool() as p:`
/// block: workers are killed at once, unfinished tasks fail with
/// [`Error::Terminated`]. Call [`close`](Pool::close) and [`join`](Pool::join)
/// first to let them finish.
///
/// ```
/// use shmpool::Pool;
/// fn f(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(f, &[1, 2, 3])?, vec![1, 4, 9]);
/// assert_eq!(pool.apply(f, (20,))?, 400);
/// assert_ne!(pool.apply(std::process::id, ())?, std::process::id());
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Pool {
    core: Arc<Core>,
}

impl Pool {
    /// Starts a pool of `processes` worker processes (forked now, once).
    /// Zero is [`Error::InvalidArgument`].
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A [`PoolBuilder`] with the defaults (one process per CPU).
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    ///
    /// ```
    /// assert_eq!(shmpool::Pool::new(3)?.processes(), 3);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.core.processes
    }

    /// The process ids of the live workers, in worker-index order. Replaced
    /// workers show their new pid; after `terminate`, or after `join` following
    /// `close`, the list is empty.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let pids = pool.worker_pids();
    /// assert_eq!(pids.len(), 2);
    /// assert!(pids.contains(&pool.apply(std::process::id, ())?));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        crate::sync::lock(&self.core.pids)
            .iter()
            .flatten()
            .copied()
            .collect()
    }

    /// The pids of the workers that are stopped now (`SIGSTOP`, `SIGTSTP`,
    /// a debugger). A stopped worker runs nothing: a task it holds, and a
    /// `map` or `get` waiting for that task, waits until the worker is
    /// continued (`SIGCONT`), or until the pool's
    /// [`task_timeout`](crate::PoolBuilder::task_timeout) kills it. The pool's
    /// supervisor also says so on stderr, once per stop, within a second.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// assert!(pool.stopped_workers().is_empty());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn stopped_workers(&self) -> Vec<u32> {
        self.worker_pids()
            .into_iter()
            .filter(|&pid| supervisor::is_stopped(pid as libc::pid_t))
            .collect()
    }

    /// A call with per-call options (chunk size, callbacks), like the keyword
    /// arguments of Python's `Pool` methods; see [`Call`].
    ///
    /// ```
    /// fn f(x: u64) -> u64 { x * x }
    /// let pool = shmpool::Pool::new(2)?;
    /// assert_eq!(pool.call().chunksize(2).map(f, &[1, 2, 3])?, vec![1, 4, 9]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn call(&self) -> Call<'_> {
        Call::new(self)
    }

    shorthands! {
        /// Calls `f(args...)` in a worker and waits for the result.
        ///
        /// `args` is a tuple: `()`, `(a,)`, `(a, b)`, … up to six [`Pod`] values.
        ///
        /// ```
        /// fn add(a: i64, b: i64) -> i64 { a + b }
        /// let pool = shmpool::Pool::new(1)?;
        /// assert_eq!(pool.apply(add, (2, 3))?, 5);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn apply<F, Args>(&self, f: F, args: Args) -> Result<F::Output, Error>
        where [F: Task<Args>, Args: Pod];

        /// Submits `f(args...)` to a worker and returns at once with a handle to
        /// the result. The number of tasks in flight is limited only by memory (a
        /// few million); no file descriptor or thread is used per task.
        ///
        /// ```
        /// use std::time::Duration;
        /// let pool = shmpool::Pool::new(2)?;
        /// let pid = pool.apply_async(std::process::id, ())?;
        /// assert_ne!(pid.get(Some(Duration::from_secs(10)))?, std::process::id());
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn apply_async<F, Args>(&self, f: F, args: Args)
            -> Result<AsyncResult<F::Output>, Error>
        where [F: Task<Args>, Args: Pod];
        /// [`apply_async`](Pool::apply_async) with callbacks, like Python's
        /// `apply_async(f, args, callback=..., error_callback=...)`: when the task
        /// finishes, `callback(result)` or `error_callback(error)` runs in this
        /// process, on the pool's callback thread (one thread, so callbacks never
        /// run concurrently; they run in the order tasks complete). Callbacks
        /// should return quickly. A panicking callback is caught: the handle's
        /// `get` then returns [`Error::CallbackPanicked`] and the pool goes on.
        /// Dropping the handle does not cancel the task: its callback still runs.
        /// Inside a callback, waiting for another result of this pool whose
        /// callbacks have not run fails at once (see [`AsyncResult::get`]).
        ///
        /// ```
        /// use std::sync::mpsc;
        /// use std::time::Duration;
        /// fn f(x: u64) -> u64 { x * x }
        /// let pool = shmpool::Pool::new(2)?;
        /// let (tx, rx) = mpsc::channel();
        /// let tx2 = tx.clone();
        /// pool.apply_async_with(f, (7,), move |v| tx.send(Ok(v)).unwrap(), move |e| tx2.send(Err(e)).unwrap())?;
        /// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap()?, 49);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        with apply_async_with -> F::Output;

        /// Applies `f` to every element of `items` in the workers and returns the
        /// results in order, like Python's `pool.map`. The slice is cut into chunks
        /// of `ceil(len / (4 * processes))` elements (CPython's default); see
        /// [`map_chunked`](Pool::map_chunked) to choose.
        ///
        /// Nothing is copied through the parent: workers read their chunks where
        /// `items` lies and write the results straight into the returned vector
        /// (see [`PoolBuilder::zero_copy`] for how, and for the fallback).
        ///
        /// If a task panics or its worker dies, the map returns that error (never a
        /// vector with holes); the other chunks in flight are withdrawn or awaited.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let v: Vec<f64> = (0..1000).map(f64::from).collect();
        /// let squares = pool.map(|x: f64| x * x, &v)?;
        /// assert_eq!(squares[999], 998_001.0);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn map<F, T>(&self, f: F, items: &[T]) -> Result<Vec<F::Output>, Error>
        where [F: Task<(T,)>, T: Pod];
        /// [`map`](Pool::map) with chunks of `chunksize` elements (at least 1;
        /// zero is [`Error::InvalidArgument`]).
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// assert_eq!(pool.map_chunked(|x: u8| x / 2, &[2, 4, 6], 1)?, vec![1, 2, 3]);
        /// assert!(matches!(pool.map_chunked(|x: u8| x, &[1], 0), Err(shmpool::Error::InvalidArgument(_))));
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked map_chunked;

        /// Like [`map`](Pool::map), but returns at once with a handle to the
        /// vector of results (Python's `map_async`). Unlike [`map`](Pool::map),
        /// this copies: the input is copied into the pool's shared memory before
        /// this returns (so `items` is free at once, and the handle borrows
        /// nothing), and the results are copied out of it by `get`. Every chunk is
        /// queued at once.
        ///
        /// ```
        /// fn f(x: u64) -> u64 { x * x }
        /// let pool = shmpool::Pool::new(2)?;
        /// let r = pool.map_async(f, &[1, 2, 3])?;
        /// assert_eq!(r.get(None)?, vec![1, 4, 9]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn map_async<F, T>(&self, f: F, items: &[T])
            -> Result<AsyncResult<Vec<F::Output>>, Error>
        where [F: Task<(T,)>, T: Pod];
        /// [`map_async`](Pool::map_async) with chunks of `chunksize` elements.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let r = pool.map_async_chunked(|x: u32| x + 1, &[1, 2, 3, 4], 2)?;
        /// assert_eq!(r.get(None)?, vec![2, 3, 4, 5]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked map_async_chunked;
        /// [`map_async`](Pool::map_async) with callbacks (see
        /// [`apply_async_with`](Pool::apply_async_with)): `callback` gets the whole
        /// vector; `error_callback` the first failing chunk's error.
        ///
        /// ```
        /// use std::sync::mpsc;
        /// use std::time::Duration;
        /// let pool = shmpool::Pool::new(2)?;
        /// let (tx, rx) = mpsc::channel();
        /// pool.map_async_with(|x: u8| x * 2, &[1, 2], move |v| tx.send(v).unwrap(), |e| eprintln!("{e}"))?;
        /// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), vec![2, 4]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        with map_async_with -> Vec<F::Output>;

        /// Maps `f` over `items` and folds the results with `op`, without
        /// building the vector of results: each worker folds its chunk and sends
        /// back one value; this process combines the chunks' values in index
        /// order. `None` for an empty input. `f` and `op` are tasks: function
        /// items, `fn` pointers, or [`partial`](crate::partial)s.
        ///
        /// Within a chunk the fold runs left to right, `op(op(f(x0), f(x1)),
        /// f(x2))…`, and the chunks' values are combined in order, so an
        /// associative `op` (a sum, a max) gives the same answer for any chunk
        /// size; floating-point sums round differently with different chunks,
        /// as with rayon's `reduce`.
        ///
        /// ```
        /// use shmpool::{partial, Pool};
        /// fn scaled_sin(k: f64, x: f64) -> f64 { (x * k).sin() }
        /// fn add(a: f64, b: f64) -> f64 { a + b }
        /// fn max(a: u64, b: u64) -> u64 { a.max(b) }
        ///
        /// let pool = Pool::new(2)?;
        /// let v: Vec<f64> = (0..100_000).map(f64::from).collect();
        /// let total = pool.map_reduce(partial(scaled_sin, 0.5), add, &v)?.unwrap();
        /// let serial: f64 = v.iter().map(|&x| scaled_sin(0.5, x)).sum();
        /// assert!((total - serial).abs() < 1e-6);
        ///
        /// assert_eq!(pool.map_reduce(|x: u64| x % 1000, max, &[5, 1999, 7])?, Some(999));
        /// assert_eq!(pool.map_reduce(|x: u64| x, max, &[])?, None);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn map_reduce<F, O, T>(&self, f: F, op: O, items: &[T])
            -> Result<Option<F::Output>, Error>
        where [F: Task<(T,)>, O: Task<(F::Output, F::Output), Output = F::Output>, T: Pod];

        /// Like [`map`](Pool::map) for functions of several arguments: each item
        /// is a tuple of arguments, unpacked for the call (Python's `starmap`).
        ///
        /// ```
        /// fn add(a: i64, b: i64) -> i64 { a + b }
        /// let pool = shmpool::Pool::new(2)?;
        /// assert_eq!(pool.starmap(add, &[(1, 2), (3, 4)])?, vec![3, 7]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn starmap<F, Args>(&self, f: F, items: &[Args]) -> Result<Vec<F::Output>, Error>
        where [F: Task<Args>, Args: Pod];
        /// [`starmap`](Pool::starmap) with chunks of `chunksize` items.
        ///
        /// ```
        /// fn mul(a: f64, b: f64) -> f64 { a * b }
        /// let pool = shmpool::Pool::new(2)?;
        /// assert_eq!(pool.starmap_chunked(mul, &[(1.5, 2.0), (3.0, 3.0)], 1)?, vec![3.0, 9.0]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked starmap_chunked;

        /// [`starmap`](Pool::starmap) returning at once with a handle (Python's
        /// `starmap_async`).
        ///
        /// ```
        /// fn add(a: i64, b: i64) -> i64 { a + b }
        /// let pool = shmpool::Pool::new(2)?;
        /// assert_eq!(pool.starmap_async(add, &[(5, 5)])?.get(None)?, vec![10]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn starmap_async<F, Args>(&self, f: F, items: &[Args])
            -> Result<AsyncResult<Vec<F::Output>>, Error>
        where [F: Task<Args>, Args: Pod];
        /// [`starmap_async`](Pool::starmap_async) with callbacks (see
        /// [`apply_async_with`](Pool::apply_async_with)).
        ///
        /// ```
        /// use std::sync::mpsc;
        /// use std::time::Duration;
        /// fn add(a: i64, b: i64) -> i64 { a + b }
        /// let pool = shmpool::Pool::new(2)?;
        /// let (tx, rx) = mpsc::channel();
        /// pool.starmap_async_with(add, &[(1, 2)], move |v| tx.send(v).unwrap(), |_| {})?;
        /// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), vec![3]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        with starmap_async_with -> Vec<F::Output>;

        /// A lazy [`map`](Pool::map) over any iterator, yielding results in input
        /// order (Python's `imap`, chunk size 1). The input is pulled only as
        /// results are consumed, with a bounded number of chunks in flight, so an
        /// endless input is fine.
        ///
        /// ```
        /// fn f(x: u64) -> u64 { x * x }
        /// let pool = shmpool::Pool::new(2)?;
        /// let ordered: Vec<u64> = pool.imap(f, 0..10u64)?.collect::<Result<_, _>>()?;
        /// assert_eq!(ordered, (0..10).map(f).collect::<Vec<_>>());
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn imap<F, I>(&self, f: F, items: I) -> Result<Imap<I::IntoIter, F::Output>, Error>
        where [F: Task<(I::Item,)>, I: IntoIterator, I::Item: Pod];
        /// [`imap`](Pool::imap) sending `chunksize` items per task (at least 1):
        /// larger chunks cost less per item, smaller ones yield sooner.
        ///
        /// ```
        /// use std::time::Duration;
        /// fn f(x: u64) -> u64 { x * x }
        /// let pool = shmpool::Pool::new(2)?;
        /// let mut it = pool.imap_chunked(f, 0..u64::MAX, 64)?; // never materialized
        /// assert_eq!(it.next_timeout(Duration::from_secs(10)).unwrap()?, 0);
        /// drop(it); // stops feeding; outstanding work is discarded
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked imap_chunked;

        /// Like [`imap`](Pool::imap), but yields results as they complete, in any
        /// order (Python's `imap_unordered`).
        ///
        /// ```
        /// fn f(x: u64) -> u64 { x * x }
        /// let pool = shmpool::Pool::new(2)?;
        /// let mut seen: Vec<u64> = pool.imap_unordered(f, 0..10u64)?.collect::<Result<_, _>>()?;
        /// seen.sort();
        /// assert_eq!(seen, (0..10).map(f).collect::<Vec<_>>());
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn imap_unordered<F, I>(&self, f: F, items: I)
            -> Result<Imap<I::IntoIter, F::Output>, Error>
        where [F: Task<(I::Item,)>, I: IntoIterator, I::Item: Pod];
        /// [`imap_unordered`](Pool::imap_unordered) sending `chunksize` items per
        /// task; the items of one chunk stay together, in order.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let mut v: Vec<u64> = pool
        ///     .imap_unordered_chunked(|x: u64| x + 1, 0..100u64, 10)?
        ///     .collect::<Result<_, _>>()?;
        /// v.sort();
        /// assert_eq!(v, (1..=100).collect::<Vec<u64>>());
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked imap_unordered_chunked;

        /// Applies `f` to every element of `data` where it lies:
        /// `data[i] = f(data[i])`. Chunks as [`map`](Pool::map).
        ///
        /// `data` is any mutable slice: a `Vec`'s, or a [`SharedVec`]'s. Workers
        /// read and write it in place, in the caller's memory (see
        /// [`zero_copy`](crate::PoolBuilder::zero_copy)) or in the pool's shared
        /// memory; without zero-copy, a plain slice is copied through the pool's
        /// shared memory chunk by chunk.
        ///
        /// On an error (a panic, a dead worker), chunks that ran have been written
        /// and the others not: the slice is then partly mapped. A chunk whose
        /// worker dies is never run again, even with
        /// [`retries`](crate::PoolBuilder::retries): it may have overwritten part
        /// of its input already, so a second run would map those elements twice.
        ///
        /// ```
        /// use shmpool::{Pool, SharedVec};
        /// let pool = Pool::new(2)?;
        /// let mut v = vec![1u32, 2, 3];
        /// pool.map_inplace(|x: u32| x * 10, &mut v)?;
        /// assert_eq!(v, [10, 20, 30]);
        /// let mut shared = SharedVec::from_slice(&pool, &v)?;
        /// pool.map_inplace(|x: u32| x + 1, &mut shared)?;
        /// assert_eq!(&shared[..], &[11, 21, 31]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn map_inplace<F, T>(&self, f: F, data: &mut [T]) -> Result<(), Error>
        where [F: Task<(T,), Output = T>, T: Pod];
        /// [`map_inplace`](Pool::map_inplace) with chunks of `chunksize` elements.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let mut v: Vec<i64> = (0..10).collect();
        /// pool.map_inplace_chunked(|x: i64| -x, &mut v[2..5], 2)?;
        /// assert_eq!(&v[..6], &[0, 1, -2, -3, -4, 5]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked map_inplace_chunked;

        /// `output[i] = f(input[i])`, written straight into `output`: workers read
        /// `input` and write `output` where they lie (plain slices or
        /// [`SharedVec`]s, as for [`map_inplace`](Pool::map_inplace)). The
        /// lengths must match ([`Error::InvalidArgument`] otherwise).
        ///
        /// ```
        /// use shmpool::{Pool, SharedVec};
        /// let pool = Pool::new(2)?;
        /// let input = vec![1.0f64, 2.0];
        /// let mut out = vec![0.0f32; 2];
        /// pool.map_into(|x: f64| (x / 2.0) as f32, &input, &mut out)?;
        /// assert_eq!(out, [0.5, 1.0]);
        /// let shared = SharedVec::from_slice(&pool, &input)?;
        /// let mut shared_out = SharedVec::<f64>::zeroed(&pool, 2)?;
        /// pool.map_into(|x: f64| x * 3.0, &shared, &mut shared_out)?;
        /// assert_eq!(&shared_out[..], &[3.0, 6.0]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn map_into<F, T>(&self, f: F, input: &[T], output: &mut [F::Output])
            -> Result<(), Error>
        where [F: Task<(T,)>, T: Pod];
        /// [`map_into`](Pool::map_into) with chunks of `chunksize` elements.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let mut out = [0u16; 3];
        /// pool.map_into_chunked(|x: u8| u16::from(x) * 100, &[1, 2, 3], &mut out, 1)?;
        /// assert_eq!(out, [100, 200, 300]);
        /// assert!(pool.map_into_chunked(|x: u8| x, &[1], &mut [0u8; 2], 1).is_err());
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked map_into_chunked;
    }

    /// Whether maps over plain slices let the workers work on the caller's
    /// memory (`true`), or copy through the pool's shared memory (`false`):
    /// zero-copy was not asked for ([`PoolBuilder::zero_copy`]), or the kernel
    /// refused a worker access to this process's memory. A pool whose workers
    /// have not all started yet may still find out that it is refused.
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(1).zero_copy(false).build()?;
    /// assert!(!pool.zero_copy());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn zero_copy(&self) -> bool {
        self.core.zero_copy()
    }

    /// How this pool's workers were started.
    ///
    /// ```
    /// use shmpool::{get_context, StartMethod};
    /// let pool = get_context(StartMethod::ForkServer).pool(1)?;
    /// assert_eq!(pool.start_method(), StartMethod::ForkServer);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn start_method(&self) -> StartMethod {
        self.core.config.start_method
    }

    /// Stops accepting work. Tasks already submitted still run; the workers exit
    /// once they are done. Call [`join`](Pool::join) to wait for that.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let pending = pool.apply_async(|| 7u8, ())?;
    /// pool.close();
    /// assert!(matches!(pool.apply(|| 1u8, ()), Err(shmpool::Error::Closed)));
    /// pool.join()?;
    /// assert_eq!(pending.get(None)?, 7);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn close(&self) {
        if self.core.advance_lifecycle(Lifecycle::Closed) == Lifecycle::Running {
            self.signal_workers_to_stop();
        }
    }

    /// Kills the workers at once, without finishing outstanding work: their
    /// results fail with [`Error::Terminated`]. Returns once every worker is
    /// reaped and the callbacks of `*_with` results have run (with
    /// `Terminated` for unfinished ones). Dropping the pool does the same.
    ///
    /// A callback that is still running 5 seconds after the workers are gone
    /// (blocked on something that never comes) is not waited for: `terminate`
    /// prints one line on stderr and returns, and the callback thread ends
    /// on its own if the callback ever returns. [`join`](Pool::join) waits
    /// for every callback without a limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// let pool = shmpool::Pool::new(1)?;
    /// let long = pool.apply_async(nap, (60_000,))?;
    /// pool.terminate();                               // returns at once
    /// assert!(matches!(long.get(None), Err(shmpool::Error::Terminated)));
    /// assert!(pool.worker_pids().is_empty());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn terminate(&self) {
        if self.core.advance_lifecycle(Lifecycle::Terminated) != Lifecycle::Terminated {
            self.signal_workers_to_stop();
        }
        self.core.supervisor.join();
        self.core
            .callbacks
            .stop_and_join(self.core.layout(), Some(callbacks::STOP_GRACE));
    }

    /// Waits for the workers to exit; [`close`](Pool::close) or
    /// [`terminate`](Pool::terminate) must come first, else
    /// [`Error::InvalidState`] (Python raises `ValueError`).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// assert!(pool.join().is_err());                  // not closed yet
    /// let r = pool.map_async(|x: u8| x, &[1, 2])?;
    /// pool.close();
    /// pool.join()?;                                   // pending work finished first
    /// assert_eq!(r.get(None)?, vec![1, 2]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn join(&self) -> Result<(), Error> {
        if self.core.lifecycle() == Lifecycle::Running {
            return Err(Error::state("join() called before close() or terminate()"));
        }
        self.core.supervisor.join();
        self.core.callbacks.stop_and_join(self.core.layout(), None);
        match self.core.broken() {
            Some(why) => Err(Error::PoolBroken(why.to_owned())),
            None => Ok(()),
        }
    }

    fn signal_workers_to_stop(&self) {
        let header = self.core.layout().header();
        header.closing.store(1, Ordering::SeqCst);
        header.work.notify_all();
        self.core.supervisor.poke();
    }

    /// The shared state, for the C API.
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// Encodes `entry` for the workers, checking that they can resolve it.
    fn entry_point(&self, entry: Entry) -> Result<EntryPoint, Error> {
        self.core.ensure_running()?;
        crate::start::check_entry(self.core.config.start_method, entry)
    }

    fn result<R: Clone + Send + Sync + 'static>(
        &self,
        job: Job,
        decode: Decode<R>,
        with_callbacks: bool,
    ) -> AsyncResult<R> {
        AsyncResult::new(Arc::clone(&self.core), job, decode, with_callbacks)
    }

    /// A result whose callbacks the callback thread runs.
    fn watched<R, C, E>(
        &self,
        job: Job,
        decode: Decode<R>,
        callback: C,
        error_callback: E,
    ) -> Result<AsyncResult<R>, Error>
    where
        R: Clone + Send + Sync + 'static,
        C: FnOnce(R) + Send + 'static,
        E: FnOnce(Error) + Send + 'static,
    {
        let result = self.result(job, decode, true);
        let watched = Watched {
            shared: Arc::clone(result.shared()),
            on_ok: Box::new(callback),
            on_err: Box::new(error_callback),
        };
        Callbacks::watch(&self.core, Box::new(watched))?;
        Ok(result)
    }

    /// Submits one task; `flags` go into its description (`slot::WATCHED`).
    fn submit_apply<F, Args>(&self, f: F, args: Args, flags: u32) -> Result<Ticket, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        let input: ApplyInput<F, Args> = (f.bind()?, args);
        let entry = self.entry_point(apply_entry::<F, Args>)?;
        schedule::submit_apply::<ApplyInput<F, Args>, F::Output>(&self.core, entry, input, flags)
    }

    /// Sends `SIGTERM` to every worker now, like Python 3.14's
    /// `ProcessPoolExecutor.terminate_workers()`, and ends the pool as
    /// [`terminate`](Pool::terminate) does: unfinished tasks fail with
    /// [`Error::Terminated`], and no more work is accepted. A worker still
    /// alive 2 seconds later (one that handles or ignores `SIGTERM`) gets
    /// `SIGKILL`, so this always returns. Returns once every worker is reaped.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// let pool = shmpool::Pool::new(2)?;
    /// let long = pool.apply_async(nap, (60_000,))?;
    /// pool.terminate_workers();
    /// assert!(matches!(long.get(None), Err(shmpool::Error::Terminated)));
    /// assert!(pool.worker_pids().is_empty());
    /// assert!(matches!(pool.apply(|| 1u8, ()), Err(shmpool::Error::Closed)));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn terminate_workers(&self) {
        self.core.supervisor.set_stop_signal(libc::SIGTERM);
        self.terminate();
    }

    /// Sends `SIGKILL` to every worker now, like Python 3.14's
    /// `ProcessPoolExecutor.kill_workers()`: the same as
    /// [`terminate`](Pool::terminate), under Python's name. Unfinished tasks
    /// fail with [`Error::Terminated`].
    ///
    /// ```
    /// fn spin() { loop { std::hint::spin_loop() } }
    /// let pool = shmpool::Pool::new(1)?;
    /// let pending = pool.apply_async(spin, ())?;
    /// pool.kill_workers();
    /// assert!(matches!(pending.get(None), Err(shmpool::Error::Terminated)));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn kill_workers(&self) {
        self.terminate();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.core.lifecycle().name();
        f.debug_struct("Pool")
            .field("processes", &self.core.processes)
            .field("state", &state)
            .finish()
    }
}
