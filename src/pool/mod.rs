//! The process pool: [`Pool`], its [`PoolBuilder`] and [`AsyncResult`].
//!
//! * `core`: state shared by the handle, results and the supervisor
//! * `slot`: the task slot and its state machine (the cross-process protocol)
//! * `worker`: the loop every worker process runs
//! * `supervisor`: starts, watches, settles and replaces workers
//! * `schedule`: chunked `map`
//! * `result`, `builder`: the public handle types

pub(crate) mod builder;
pub(crate) mod core;
pub(crate) mod result;
pub(crate) mod schedule;
pub(crate) mod slot;
pub(crate) mod supervisor;
pub(crate) mod worker;

use self::core::{Core, CLOSED, RUNNING, TERMINATED};
use self::result::Ticket;
use self::slot::{TaskDesc, INLINE_CAPACITY};
use crate::error::Error;
use crate::task::{apply_entry, assert_stateless, EntryPoint, Task};
use crate::Pod;
pub use builder::PoolBuilder;
pub use result::AsyncResult;
use std::mem::{align_of, size_of};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A pool of worker processes, started once and reused for every task.
///
/// Tasks are function items or non-capturing closures over [`Pod`] arguments
/// and results; they run in separate processes, so a crash, an `abort()` or
/// global state in a task cannot affect the caller. All methods take `&self`:
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
        self.core
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .copied()
            .collect()
    }

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
    where
        F: Task<Args>,
        Args: Pod,
    {
        self.submit_apply(f, args)?.finish(&self.core)
    }

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
    pub fn apply_async<F, Args>(&self, f: F, args: Args) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        let ticket = self.submit_apply(f, args)?;
        Ok(AsyncResult::new(Arc::clone(&self.core), ticket))
    }

    /// Applies `f` to every element of `items` in the workers and returns the
    /// results in order, like Python's `pool.map`. The slice is cut into chunks
    /// of `ceil(len / (4 * processes))` elements (CPython's default); see
    /// [`map_chunked`](Pool::map_chunked) to choose.
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
    pub fn map<F, T, U>(&self, f: F, items: &[T]) -> Result<Vec<U>, Error>
    where
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
        T: Pod,
        U: Pod,
    {
        let chunksize = schedule::default_chunksize(items.len(), self.core.processes);
        self.map_chunked(f, items, chunksize)
    }

    /// [`map`](Pool::map) with chunks of `chunksize` elements (at least 1;
    /// zero is [`Error::InvalidArgument`]).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// assert_eq!(pool.map_chunked(|x: u8| x / 2, &[2, 4, 6], 1)?, vec![1, 2, 3]);
    /// assert!(matches!(pool.map_chunked(|x: u8| x, &[1], 0), Err(shmpool::Error::InvalidArgument(_))));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_chunked<F, T, U>(
        &self,
        _f: F,
        items: &[T],
        chunksize: usize,
    ) -> Result<Vec<U>, Error>
    where
        F: Fn(T) -> U + Copy + Send + Sync + 'static,
        T: Pod,
        U: Pod,
    {
        schedule::map_slice::<F, T, U>(&self.core, items, chunksize)
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
        if self.core.advance_lifecycle(CLOSED) == RUNNING {
            self.signal_workers_to_stop();
        }
    }

    /// Kills the workers at once, without finishing outstanding work: their
    /// results fail with [`Error::Terminated`]. Returns once every worker is
    /// reaped. Dropping the pool does the same.
    pub fn terminate(&self) {
        if self.core.advance_lifecycle(TERMINATED) != TERMINATED {
            self.signal_workers_to_stop();
        }
        self.core.supervisor.join();
    }

    /// Waits for the workers to exit; [`close`](Pool::close) or
    /// [`terminate`](Pool::terminate) must come first, else
    /// [`Error::InvalidArgument`] (Python raises `ValueError`).
    pub fn join(&self) -> Result<(), Error> {
        if self.core.lifecycle() == RUNNING {
            return Err(Error::invalid(
                "join() called before close() or terminate()",
            ));
        }
        self.core.supervisor.join();
        Ok(())
    }

    fn signal_workers_to_stop(&self) {
        let header = self.core.layout().header();
        header.closing.store(1, Ordering::SeqCst);
        header.work.notify_all();
        self.core.supervisor.poke();
    }

    fn submit_apply<F, Args>(&self, _f: F, args: Args) -> Result<Ticket, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        const { assert_stateless::<F>() };
        self.core.ensure_running()?;
        let core = &*self.core;
        let slot = core.alloc_slot()?;
        // Arguments and result share one place: the entry reads all arguments
        // before it writes the result.
        let size = size_of::<Args>().max(size_of::<F::Output>());
        let align = align_of::<Args>().max(align_of::<F::Output>());
        let (at, block) = if size <= INLINE_CAPACITY && align <= 64 {
            (core.layout().inline_offset(slot), None)
        } else {
            match core.alloc_block(size, align) {
                Ok(block) => (Core::block_offset(block), Some(block)),
                Err(e) => {
                    core.release_slot(slot);
                    return Err(e);
                }
            }
        };
        // SAFETY: `at` is the slot's inline area or our fresh block, both aligned
        // for Args and unpublished, so this thread has them to itself.
        unsafe { core.layout().at(at).cast::<Args>().write(args) };
        let entry = EntryPoint::new(apply_entry::<F, Args>).0;
        core.describe(
            slot,
            TaskDesc {
                entry,
                input: at,
                output: at,
                len: 1,
                ..TaskDesc::default()
            },
        );
        if let Err(e) = core.submit(slot) {
            core.release_slot(slot);
            if let Some(b) = block {
                core.free_block(b);
            }
            return Err(e);
        }
        Ok(Ticket {
            slot,
            output: at,
            block,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.core.lifecycle() {
            RUNNING => "running",
            CLOSED => "closed",
            _ => "terminated",
        };
        f.debug_struct("Pool")
            .field("processes", &self.core.processes)
            .field("state", &state)
            .finish()
    }
}
