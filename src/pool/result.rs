//! [`AsyncResult`]: the handle to work submitted with an `*_async` method.

// Unsafe code: copies finished chunks' results out of the segment.
#![allow(unsafe_code)]

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::job::{Chunk, Job};
use crate::pool::waker::WakerCell;
use crate::shm::arena::Block;
use crate::sync::futex;
use crate::Pod;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a synchronous `apply`'s result will be: its slot, the segment offset
/// of its output, and the arena block holding its payload if it did not fit
/// inline.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) slot: u32,
    pub(crate) output: u64,
    pub(crate) block: Option<Block>,
}

impl Ticket {
    /// The ticket as a one-chunk job (for a result handle).
    pub(crate) fn into_job(self) -> Job {
        let chunk = Chunk {
            slot: self.slot,
            output: self.output,
            len: 1,
        };
        Job::single(chunk, self.block)
    }

    /// Waits for the task, reads its outcome, and gives the slot back.
    pub(crate) fn finish<R: Pod>(self, core: &Core) -> Result<R, Error> {
        core.layout().slot(self.slot).wait_done(None);
        let outcome = core.read_outcome::<R>(self.slot, self.output);
        core.release_slot(self.slot);
        if let Some(block) = self.block {
            core.free_block(block);
        }
        outcome.map_err(Error::from)
    }
}

/// Reads a finished job's value (its chunks are all done).
pub(crate) type Decode<R> = fn(&Core, &Job) -> Result<R, Failure>;

/// The result of work submitted with [`Pool::apply_async`](crate::Pool::apply_async),
/// [`Pool::map_async`](crate::Pool::map_async) and friends, like Python's
/// `multiprocessing.pool.AsyncResult`.
///
/// The handle is independent of the pool's lifetime: if the pool is terminated
/// or dropped first, [`get`](AsyncResult::get) returns [`Error::Terminated`].
/// Dropping a handle withdraws the tasks that have not started (unless
/// callbacks were attached: those always run); with
/// [`abort_on_drop`](AsyncResult::abort_on_drop) it also stops running ones.
///
/// In async code, `.await` the handle (it implements
/// [`IntoFuture`](std::future::IntoFuture), see [`ResultFuture`](crate::ResultFuture)):
/// the executor thread is never blocked.
///
/// ```
/// use std::time::Duration;
/// fn f(x: u64) -> u64 { x * x }
/// let pool = shmpool::Pool::new(2)?;
/// let res = pool.apply_async(f, (10,))?;
/// assert!(res.wait(Some(Duration::from_secs(10))));
/// assert!(res.ready());
/// assert_eq!(res.successful()?, true);
/// assert_eq!(res.get(None)?, 100);
/// assert_eq!(res.get(None)?, 100); // as often as you like
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct AsyncResult<R> {
    shared: Arc<Shared<R>>,
    /// Whether dropping the handle (or its future) aborts unfinished work.
    abort_on_drop: bool,
}

/// State shared by a handle and, with callbacks, the callback thread.
pub(crate) struct Shared<R> {
    core: Arc<Core>,
    job: Option<Job>,
    decode: Decode<R>,
    value: OnceLock<Result<R, Failure>>,
    /// `Some` when callbacks are attached: the result is ready only once they ran.
    delivery: Option<Box<Delivery>>,
    /// The task awaiting this result, woken by the callback thread.
    pub(crate) waker: WakerCell,
    /// Set when an awaiting future was dropped before it resolved: the
    /// callback thread then drops its entry without waking anyone.
    pub(crate) abandoned: AtomicBool,
}

/// Completion of a result's callbacks: a one-shot flag that a waiting thread
/// sleeps on. The callback thread sets it once per result, so setting it must
/// cost no syscall when nobody waits (a `Condvar` would make one every time).
#[derive(Default)]
pub(crate) struct Delivery {
    /// [`DELIVERED`] once the callbacks ran, plus [`DELIVERY_WAITER`] while a
    /// thread sleeps (or is about to) on this word.
    state: AtomicU32,
    callback_panic: OnceLock<String>,
}

const DELIVERED: u32 = 1;
const DELIVERY_WAITER: u32 = 2;

impl<R: Clone + Send + Sync + 'static> AsyncResult<R> {
    pub(crate) fn new(core: Arc<Core>, job: Job, decode: Decode<R>, with_callbacks: bool) -> Self {
        let abort_on_drop = core.config.abort_on_drop;
        AsyncResult {
            shared: Arc::new(Shared {
                core,
                job: Some(job),
                decode,
                value: OnceLock::new(),
                delivery: with_callbacks.then(Box::default),
                waker: WakerCell::default(),
                abandoned: AtomicBool::new(false),
            }),
            abort_on_drop,
        }
    }

    pub(crate) fn set_abort_on_drop(&mut self, yes: bool) {
        self.abort_on_drop = yes;
    }

    /// Returns the result when it arrives; with `Some(timeout)`, returns
    /// [`Error::Timeout`] if it has not arrived by then (the work keeps
    /// running). A task that panicked gives [`Error::TaskPanicked`]; one whose
    /// worker died, [`Error::WorkerDied`]; for a map, the first failing chunk's
    /// error. If a callback was attached and panicked,
    /// [`Error::CallbackPanicked`].
    ///
    /// Called from a callback of the same pool on a result whose own
    /// callbacks have not run yet, it returns [`Error::InvalidState`] at
    /// once, whatever the timeout: those callbacks run on the very thread
    /// that is waiting, one at a time, so the wait could never end (in
    /// Python it hangs the pool). A result without callbacks, or one already
    /// delivered, can be waited for from a callback as from anywhere.
    pub fn get(&self, timeout: Option<Duration>) -> Result<R, Error> {
        if let Some(e) = self.refuse_own_thread() {
            return Err(e);
        }
        if !self.wait(timeout) {
            return Err(Error::Timeout);
        }
        self.read()
    }

    /// The error for a wait that would wait for the calling thread itself.
    pub(crate) fn refuse_own_thread(&self) -> Option<Error> {
        self.waits_for_its_own_thread().then(|| {
            Error::state(
                "get() inside a callback (or an .await there) on a result of the same pool \
                 whose callbacks have not run yet: they run on this thread, after this \
                 callback returns",
            )
        })
    }

    /// The outcome of a ready result.
    pub(crate) fn read(&self) -> Result<R, Error> {
        if let Some(message) = self
            .shared
            .delivery
            .as_ref()
            .and_then(|d| d.callback_panic.get())
        {
            return Err(Error::CallbackPanicked {
                message: message.clone(),
            });
        }
        self.shared.collect().clone().map_err(Error::from)
    }

    /// Waits until the result is available or `timeout` passes; returns whether
    /// it is available.
    ///
    /// From a callback of the same pool, on a result whose own callbacks have
    /// not run yet, returns `false` at once (see [`get`](Self::get)).
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        if self.waits_for_its_own_thread() {
            return false;
        }
        let deadline = crate::deadline::deadline_opt(timeout);
        let shared = &*self.shared;
        match &shared.delivery {
            Some(d) => d.wait(deadline),
            None => {
                shared.value.get().is_some() || shared.job().wait(shared.core.layout(), deadline)
            }
        }
    }

    /// Stops the work if it has not finished, like Python's
    /// `concurrent.futures.Future.cancel` but also for running work: a task
    /// not yet started is withdrawn, and a running one is stopped by killing
    /// its worker (with `SIGKILL`), which the pool replaces as after a
    /// crash; for a map, every chunk. The result then reads
    /// [`Error::Aborted`] (at once: [`get`](Self::get) and `.await` do not
    /// wait for the worker to die). Tasks of other results are not affected,
    /// except one that a killed worker took up in the instant before the
    /// kill: it runs again on another worker (without using up a retry).
    ///
    /// Returns whether anything was stopped: `false` if every task had
    /// already finished (the result keeps its value) or it was aborted
    /// before. With callbacks, `error_callback` gets [`Error::Aborted`] once
    /// the killed workers are reaped.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn spin() { loop { std::hint::spin_loop() } }
    /// let pool = shmpool::Pool::new(1)?;
    /// let stuck = pool.apply_async(spin, ())?;
    /// std::thread::sleep(Duration::from_millis(50)); // let it start
    /// assert!(stuck.abort());
    /// assert!(matches!(stuck.get(None), Err(shmpool::Error::Aborted)));
    /// assert_eq!(pool.apply(|x: u8| x + 1, (1,))?, 2); // on a new worker
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn abort(&self) -> bool {
        crate::pool::abort::abort(&self.shared)
    }

    /// Whether dropping this handle, or the future `.await` makes of it,
    /// before the work finished [aborts](Self::abort) it (default: the
    /// pool's [`PoolBuilder::abort_on_drop`](crate::PoolBuilder::abort_on_drop),
    /// itself `false`). Without it, a drop only withdraws tasks that have not
    /// started.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// let pool = shmpool::Pool::new(1)?;
    /// let slow = pool.apply_async(nap, (60_000,))?.abort_on_drop(true);
    /// std::thread::sleep(Duration::from_millis(50));
    /// drop(slow); // kills the worker
    /// assert_eq!(pool.apply(|x: u8| x, (5,))?, 5);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn abort_on_drop(mut self, yes: bool) -> Self {
        self.abort_on_drop = yes;
        self
    }

    /// Whether waiting for this result would wait for the calling thread
    /// itself: a callback waiting for a result whose callbacks are pending.
    fn waits_for_its_own_thread(&self) -> bool {
        let shared = &*self.shared;
        shared.delivery.as_ref().is_some_and(|d| !d.is_delivered())
            && crate::pool::callbacks::on_callback_thread_of(&shared.core)
    }

    /// Whether the work has finished (successfully or not), and its callbacks
    /// have run.
    pub fn ready(&self) -> bool {
        let shared = &*self.shared;
        match &shared.delivery {
            Some(d) => d.is_delivered(),
            None => shared.is_settled(),
        }
    }

    /// Whether the work finished without a panic and without losing a worker.
    /// [`Error::InvalidState`] if it has not finished (Python raises
    /// `ValueError` there).
    pub fn successful(&self) -> Result<bool, Error> {
        if !self.ready() {
            return Err(Error::state(
                "successful() called before the result is ready",
            ));
        }
        Ok(self.shared.collect().is_ok())
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn shared(&self) -> &Arc<Shared<R>> {
        &self.shared
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        if self.abort_on_drop {
            crate::pool::abort::abort(&self.shared);
        }
    }
}

impl<R> Shared<R> {
    pub(crate) fn job(&self) -> &Job {
        self.job.as_ref().expect("present until drop")
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn has_callbacks(&self) -> bool {
        self.delivery.is_some()
    }

    /// Whether the outcome is known: every chunk done, or aborted.
    pub(crate) fn is_settled(&self) -> bool {
        self.value.get().is_some() || self.is_done()
    }

    /// Sets the outcome to `Aborted` unless it is known already; returns
    /// whether it did.
    pub(crate) fn settle_aborted(&self) -> bool {
        self.value.get().is_none()
            && !self.is_done()
            && self.value.set(Err(Failure::Aborted)).is_ok()
    }

    /// Whether every chunk has finished.
    pub(crate) fn is_done(&self) -> bool {
        self.job().is_done(self.core.layout())
    }

    /// Reads the outcome once (every chunk is done).
    pub(crate) fn collect(&self) -> &Result<R, Failure> {
        self.value
            .get_or_init(|| (self.decode)(&self.core, self.job()))
    }

    /// Records that the callbacks ran (`panic`: the message if one panicked)
    /// and wakes waiters.
    pub(crate) fn delivered(&self, panic: Option<String>) {
        let d = self.delivery.as_ref().expect("a result with callbacks");
        if let Some(message) = panic {
            let _ = d.callback_panic.set(message);
        }
        if d.state.swap(DELIVERED, Ordering::AcqRel) & DELIVERY_WAITER != 0 {
            futex::wake(&d.state, i32::MAX);
        }
        self.waker.wake();
    }
}

impl Delivery {
    fn is_delivered(&self) -> bool {
        self.state.load(Ordering::Acquire) & DELIVERED != 0
    }

    fn wait(&self, deadline: Option<Instant>) -> bool {
        futex::wait_until(
            &self.state,
            DELIVERY_WAITER,
            true,
            deadline,
            |s| s & DELIVERED != 0,
            |_| false,
        )
    }
}

impl<R> Drop for Shared<R> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.core.dispose(job);
        }
    }
}

impl<R: fmt::Debug + Clone + Send + Sync + 'static> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .field("result", &self.shared.value.get())
            .finish()
    }
}

/// Decodes a one-chunk job whose output is one `R`.
pub(crate) fn decode_one<R: Pod>(core: &Core, job: &Job) -> Result<R, Failure> {
    let chunk = job.chunks().next().expect("one chunk");
    core.read_outcome::<R>(chunk.slot, chunk.output)
}

/// Decodes a map job: every chunk's `U`s in order, or the first failure.
pub(crate) fn decode_vec<U: Pod>(core: &Core, job: &Job) -> Result<Vec<U>, Failure> {
    let len = job.chunks().map(|c| c.len).sum();
    let mut out: Vec<U> = Vec::with_capacity(len);
    for chunk in job.chunks() {
        let first = out.len();
        core.read_outcome::<()>(chunk.slot, 0)
            .map_err(|f| f.covering(first..first + chunk.len))?;
        // SAFETY: the chunk returned, so its worker wrote `len` U's at `output`
        // (aligned for U) before DONE; `out` has room for all chunks.
        unsafe {
            std::ptr::copy_nonoverlapping(
                core.layout().at(chunk.output).cast::<U>(),
                out.as_mut_ptr().add(out.len()),
                chunk.len,
            );
            out.set_len(out.len() + chunk.len);
        }
    }
    Ok(out)
}
