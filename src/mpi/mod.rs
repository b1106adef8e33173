//! One pool over the ranks of an MPI job (feature `mpi`): rank 0 hands out
//! tasks, and every rank, rank 0 included, runs them in a local
//! [`crate::Pool`] of worker processes.
//!
//! The shape is mpi4py's `MPICommExecutor`
//! (<https://mpi4py.readthedocs.io/en/stable/mpi4py.futures.html>): every
//! rank runs the same program and calls [`Pool::world`]; rank 0 gets the pool,
//! the others serve until it is dropped.
//!
//! ```no_run
//! fn sq(x: f64) -> f64 { x * x }
//! fn f(x: u64) -> u64 { x + 1 }
//!
//! fn main() -> Result<(), shmpool::Error> {
//!     if let Some(pool) = shmpool::mpi::Pool::world()? {
//!         let v: Vec<f64> = (0..1000).map(f64::from).collect();
//!         let squares: Vec<f64> = pool.map(sq, &v)?;
//!         let r = pool.apply_async(f, (20,))?;
//!         assert_eq!(r.get(None)?, 21);
//!         println!("{} ranks, {} processes", pool.ranks(), pool.processes());
//!         # let _ = squares;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Run it with `mpirun -n 3 ./program` (or `srun -n 3 ./program`).
//!
//! * **Hierarchical.** A worker rank runs each task it is given in its local
//!   pool ([`PoolBuilder::processes_per_rank`] processes), straight from the
//!   pool's shared memory: MPI receives the input there and sends the output
//!   from there.
//! * **Every rank computes.** Rank 0 runs tasks in its own local pool
//!   ([`PoolBuilder::processes_on_rank_0`]) between handing them out, on the
//!   caller's memory where its local workers can reach it; with one rank per
//!   node, no node is idle.
//! * **Dynamic, with work in flight.** Each rank has up to two tasks: it
//!   receives the next and sends back the last while its local workers
//!   compute one. A rank gets another task when it returns one, so a fast
//!   rank takes more.
//! * **Crashes stay local.** A task that segfaults, aborts or panics takes
//!   down only a local worker process of its rank; the call fails with
//!   [`Error::WorkerDied`] or [`Error::TaskPanicked`] (or is retried, see
//!   [`PoolBuilder::retries`]) and the pool goes on. A whole rank dying is
//!   MPI's business: mpirun (or srun) ends the job.
//! * **Same binary.** Functions travel as code offsets, arguments and results
//!   as [`Pod`] bytes; every rank must run the same executable (checked when
//!   the pool starts).
//!
//! Calls from several threads of rank 0 take turns: a `map` holds the pool
//! until it returns.
//!
//! The protocol is described in `docs/ARCHITECTURE.md`, "MPI".
//!
//! * `protocol`: tags, headers, the length checks
//! * `comm`: the MPI calls on raw bytes, and waiting without spinning
//! * `dispatch`: rank 0's scheduler
//! * `rank`: a worker rank's loop
//! * `local`: a task in a rank's local pool, polled without waiting
//! * `builder`, `result`, `imap`: the public types

// Unsafe code: maps over raw buffers; `Pod` values from received bytes.
#![allow(unsafe_code)]

mod builder;
mod call;
mod comm;
mod dispatch;
mod imap;
mod local;
mod protocol;
mod rank;
mod result;

pub use builder::PoolBuilder;
pub use imap::Imap;
pub use result::AsyncResult;

use crate::error::Error;
use crate::pool::schedule::{default_chunksize, Elem};
use crate::pool::shorthands;
use crate::task::{Entry, EntryPoint, Task};
use crate::{Call, NoCallbacks, Pod, StartMethod};
use comm::Backoff;
use dispatch::{Dispatcher, Pending};
use protocol::{TaskHeader, MAX_MESSAGE};
use std::collections::HashSet;
use std::mem::{size_of, MaybeUninit};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A pool whose tasks run on the ranks of an MPI job; exists on rank 0 only
/// (see the [module docs](self)).
///
/// Dropping it waits for the tasks the ranks are running (at most two per
/// rank), drops the queued ones (their handles return
/// [`Error::Terminated`]), stops every worker rank, and finalizes MPI if
/// the pool initialized it ([`PoolBuilder::build`]).
pub struct Pool {
    shared: Arc<Shared>,
    ranks: usize,
    processes: usize,
    universe: Option<mpi::environment::Universe>,
}

/// What the pool and its result handles share.
pub(crate) struct Shared {
    state: Mutex<Dispatcher>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Dispatcher> {
        crate::sync::lock(&self.state)
    }

    /// Drives the dispatcher until `f` finds what it waits for, or until
    /// `deadline` (then `Ok(None)`). Fails with [`Error::Terminated`] if the
    /// pool stopped without it.
    fn wait<T>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&mut Dispatcher) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let mut backoff = Backoff::new();
        loop {
            {
                let mut d = self.lock();
                if let Some(found) = f(&mut d) {
                    return Ok(Some(found));
                }
                if d.stopped() {
                    return Err(Error::Terminated);
                }
                d.assign();
                if d.receive().is_some() {
                    backoff = Backoff::new();
                    continue;
                }
            }
            if deadline.is_some_and(|t| Instant::now() >= t) {
                return Ok(None);
            }
            backoff.snooze();
        }
    }
}

impl Pool {
    /// Starts the pool with the defaults ([`PoolBuilder`]): `Some(pool)` on
    /// rank 0; on the other ranks, serves tasks until rank 0's pool is
    /// dropped, then returns `None`. Every rank of the job must call it.
    ///
    /// ```no_run
    /// fn cube(x: i64) -> i64 { x * x * x }
    ///
    /// let Some(pool) = shmpool::mpi::Pool::world()? else {
    ///     return Ok(()); // a worker rank, done serving
    /// };
    /// assert_eq!(pool.map(cube, &[1, 2, 3])?, [1, 8, 27]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn world() -> Result<Option<Pool>, Error> {
        Pool::builder().build()
    }

    /// A [`PoolBuilder`] with the defaults.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of ranks that run tasks: the job's ranks (rank 0 among
    /// them unless [`PoolBuilder::processes_on_rank_0`] was 0).
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The number of local worker processes, over all ranks.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// A call with per-call options, the same surface as the local pool's
    /// [`Pool::call`](crate::Pool::call): `pool.call().chunksize(64).map(f,
    /// &v)`. Callbacks are not available over MPI.
    ///
    /// ```no_run
    /// fn f(x: u64) -> u64 { x * x }
    /// if let Some(pool) = shmpool::mpi::Pool::world()? {
    ///     assert_eq!(pool.call().chunksize(2).map(f, &[1, 2, 3])?, [1, 4, 9]);
    /// }
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn call(&self) -> Call<'_, NoCallbacks, Pool> {
        Call::new(self)
    }

    shorthands! {
        /// Calls `f(args...)` on a rank and waits for the result
        /// ([`crate::Pool::apply`]).
        pub fn apply<F, Args>(&self, f: F, args: Args) -> Result<F::Output, Error>
        where [F: Task<Args>, Args: Pod];

        /// Submits `f(args...)` and returns at once with a handle to the result
        /// ([`crate::Pool::apply_async`]). The task goes to the rank with the
        /// fewest tasks (a worker rank before rank 0 on a tie).
        ///
        /// ```no_run
        /// use std::time::Duration;
        /// fn add(a: u64, b: u64) -> u64 { a + b }
        ///
        /// if let Some(pool) = shmpool::mpi::Pool::world()? {
        ///     let handles: Vec<_> = (0..10).map(|i| pool.apply_async(add, (i, i))).collect::<Result<_, _>>()?;
        ///     for (i, h) in (0..10).zip(&handles) {
        ///         assert_eq!(h.get(Some(Duration::from_secs(60)))?, 2 * i);
        ///     }
        /// }
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn apply_async<F, Args>(&self, f: F, args: Args)
            -> Result<AsyncResult<F::Output>, Error>
        where [F: Task<Args>, Args: Pod];

        /// Applies `f` to every element of `items` on the ranks; results in
        /// order ([`crate::Pool::map`]). The slice is cut into chunks of
        /// `ceil(len / (4 * processes))` elements (CPython's default, over the
        /// processes of all ranks).
        ///
        /// Chunks are sent from `items` and their results received straight into
        /// the returned vector. If a chunk fails, the map returns that error once
        /// the chunks already running have come back.
        pub fn map<F, T, U>(&self, f: F, items: &[T]) -> Result<Vec<U>, Error>
        where [F: Task<(T,), Output = U>, T: Pod, U: Pod];
        /// [`map`](Pool::map) with chunks of `chunksize` elements (zero is
        /// [`Error::InvalidArgument`]). A chunk is one MPI message each way, run
        /// on one rank by its local pool.
        chunked map_chunked;

        /// `output[i] = f(input[i])`, received straight into `output`
        /// ([`crate::Pool::map_into`]): for a buffer used again and again, which
        /// saves the page faults of a fresh vector. The lengths must match
        /// ([`Error::InvalidArgument`] otherwise).
        pub fn map_into<F, T, U>(&self, f: F, input: &[T], output: &mut [U]) -> Result<(), Error>
        where [F: Task<(T,), Output = U>, T: Pod, U: Pod];
        /// [`map_into`](Pool::map_into) with chunks of `chunksize` elements.
        chunked map_into_chunked;

        /// Like [`map`](Pool::map) for functions of several arguments
        /// ([`crate::Pool::starmap`]).
        ///
        /// ```no_run
        /// fn add(a: i64, b: i64) -> i64 { a + b }
        /// if let Some(pool) = shmpool::mpi::Pool::world()? {
        ///     assert_eq!(pool.starmap(add, &[(1, 2), (3, 4)])?, [3, 7]);
        /// }
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn starmap<F, Args>(&self, f: F, items: &[Args]) -> Result<Vec<F::Output>, Error>
        where [F: Task<Args>, Args: Pod];
        /// [`starmap`](Pool::starmap) with chunks of `chunksize` items.
        chunked starmap_chunked;

        /// Like [`map`](Pool::map), but lazy: yields the results in order as they
        /// come ([`crate::Pool::imap`]); one item per task.
        pub fn imap<F, I, U>(&self, f: F, items: I) -> Result<Imap<I::IntoIter, U>, Error>
        where [F: Task<(I::Item,), Output = U>, I: IntoIterator, I::Item: Pod, U: Pod];
        /// [`imap`](Pool::imap) with `chunksize` items per task.
        chunked imap_chunked;

        /// Like [`imap`](Pool::imap), but yields results as they complete, in any
        /// order ([`crate::Pool::imap_unordered`]).
        ///
        /// ```no_run
        /// fn steps(mut n: u64) -> u32 {
        ///     let mut s = 0;
        ///     while n > 1 { n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 }; s += 1 }
        ///     s
        /// }
        /// if let Some(pool) = shmpool::mpi::Pool::world()? {
        ///     let longest = pool
        ///         .imap_unordered_chunked(steps, 1..1_000_000u64, 10_000)?
        ///         .try_fold(0, |m, s| s.map(|s| m.max(s)))?;
        ///     assert_eq!(longest, 524);
        /// }
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn imap_unordered<F, I, U>(&self, f: F, items: I) -> Result<Imap<I::IntoIter, U>, Error>
        where [F: Task<(I::Item,), Output = U>, I: IntoIterator, I::Item: Pod, U: Pod];
        /// [`imap_unordered`](Pool::imap_unordered) with `chunksize` items per
        /// task; the items of one chunk stay together, in order.
        chunked imap_unordered_chunked;
    }

    fn default_chunksize(&self, len: usize) -> usize {
        default_chunksize(len, self.processes)
    }

    fn map_typed<T: Pod, U: Pod>(
        &self,
        entry: EntryPoint,
        items: &[T],
        chunksize: usize,
    ) -> Result<Vec<U>, Error> {
        let len = items.len();
        let mut out: Vec<U> = Vec::with_capacity(len);
        let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        // One bulk fault of a large fresh output (huge pages where allowed)
        // instead of one per 4 KiB page inside MPI's copies.
        crate::pool::schedule::prefault(dst, len * size_of::<U>());
        // SAFETY: `items` holds `len` T's, borrowed for the call; `dst` has
        // room for `len` U's, apart from `items`, written only by this call.
        unsafe {
            self.map_raw(
                entry,
                items.as_ptr().cast(),
                Elem::of::<T>(),
                dst,
                Elem::of::<U>(),
                len,
                chunksize,
            )
        }?;
        // SAFETY: map_raw returned Ok: every chunk's output was received.
        unsafe { out.set_len(len) };
        Ok(out)
    }

    /// `dst[i] = f(src[i])` over the ranks, chunk by chunk, each chunk sent
    /// from `src` and received into `dst` where they lie (or, on rank 0, run
    /// there).
    ///
    /// # Safety
    /// `src` holds `len` input elements and `dst` has room for `len` output
    /// elements (as `input` and `output` describe them), valid and apart until
    /// this returns; `entry` maps such elements.
    #[allow(clippy::too_many_arguments)]
    unsafe fn map_raw(
        &self,
        entry: EntryPoint,
        src: *const u8,
        input: Elem,
        dst: *mut u8,
        output: Elem,
        len: usize,
        chunksize: usize,
    ) -> Result<(), Error> {
        if chunksize == 0 {
            return Err(Error::invalid("chunksize must be at least 1"));
        }
        // One chunk is one message each way.
        let chunksize = chunksize.min(MAX_MESSAGE / input.size.max(output.size).max(1));
        let chunks = len.div_ceil(chunksize);
        TaskHeader::new(0, entry.0, chunksize, input, output)
            .check()
            .map_err(Error::invalid)?;
        let mut d = self.shared.lock();
        if d.stopped() {
            return Err(Error::Closed);
        }
        let mut next = 0;
        let mut mine: HashSet<u64> = HashSet::new();
        let mut error: Option<Error> = None;
        let mut backoff = Backoff::new();
        loop {
            d.assign();
            while error.is_none() && next < chunks {
                let Some(rank) = d.free_rank() else { break };
                let start = next * chunksize;
                let n = chunksize.min(len - start);
                let id = d.next_id();
                // This call keeps the mutex, so it receives the chunk, and
                // waits for the sends of its data, before it returns.
                // SAFETY: elements [start, start + n) of `src` and `dst`
                // (contract), valid until then.
                let task = unsafe {
                    Pending::borrowed(
                        TaskHeader::new(id, entry.0, n, input, output),
                        n * input.size,
                        n * output.size,
                        src.wrapping_add(start * input.size),
                        dst.wrapping_add(start * output.size),
                    )
                };
                d.send(rank, task);
                mine.insert(id);
                next += 1;
            }
            if mine.is_empty() && (next == chunks || error.is_some()) && !d.sending() {
                break;
            }
            match d.receive() {
                Some(id) if mine.remove(&id) => {
                    backoff = Backoff::new();
                    if let Some(Err(e)) = d.take(id) {
                        error.get_or_insert(e.into());
                    }
                }
                Some(_) => backoff = Backoff::new(),
                None => backoff.snooze(),
            }
        }
        error.map_or(Ok(()), Err)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().stop();
        drop(self.universe.take()); // MPI_Finalize, if the pool initialized MPI
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("ranks", &self.ranks)
            .field("processes", &self.processes)
            .finish()
    }
}

/// Encodes `entry` for the other ranks: it must be code of the executable
/// (they run their own copy of it, maybe at another address).
fn entry_point(entry: Entry) -> Result<EntryPoint, Error> {
    crate::start::check_entry(StartMethod::Spawn, entry)
}

/// An owned task for `header`, with `input` as its bytes.
fn pending(header: TaskHeader, input: Vec<MaybeUninit<u8>>) -> Result<Pending, Error> {
    let task = header.check().map_err(Error::invalid)?;
    debug_assert_eq!(task.in_bytes, input.len());
    Ok(Pending::owned(header, task.in_bytes, task.out_bytes, input))
}

/// The bytes of `items` (padding included, as it is), to send.
fn to_bytes<T: Pod>(items: &[T]) -> Vec<MaybeUninit<u8>> {
    crate::pod::bytes_of(items).to_vec()
}

/// The `n` values of `T` in `bytes` (`n * size_of::<T>()` of them, checked by
/// the protocol against what was asked).
fn from_bytes<T: Pod>(bytes: &[u8], n: usize) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    debug_assert_eq!(bytes.len(), n * size);
    (0..n)
        // SAFETY: `size` bytes that a rank of the same binary wrote from a
        // `T` (none for a zero-sized T): a valid `T` here too (Pod's
        // contract).
        .map(|i| unsafe { bytes.as_ptr().add(i * size).cast::<T>().read_unaligned() })
        .collect()
}

/// Maps over MPI run function items only: their chunks carry no bound
/// values across the ranks yet.
const fn assert_function_item<F>() {
    assert!(
        std::mem::size_of::<F>() == 0,
        "shmpool::mpi: maps run function items and non-capturing closures; \
         `partial` and `fn` pointers are supported by `apply` and by the local `shmpool::Pool`"
    );
}
