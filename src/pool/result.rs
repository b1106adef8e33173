//! [`AsyncResult`]: the handle to work submitted with an `*_async` method.

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::job::{Chunk, Job};
use crate::shm::arena::Block;
use crate::sync::futex;
use crate::Pod;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
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
/// callbacks were attached: those always run).
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
}

/// State shared by a handle and, with callbacks, the callback thread.
pub(crate) struct Shared<R> {
    core: Arc<Core>,
    job: Option<Job>,
    decode: Decode<R>,
    value: OnceLock<Result<R, Failure>>,
    /// `Some` when callbacks are attached: the result is ready only once they ran.
    delivery: Option<Box<Delivery>>,
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
        AsyncResult {
            shared: Arc::new(Shared {
                core,
                job: Some(job),
                decode,
                value: OnceLock::new(),
                delivery: with_callbacks.then(Box::default),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<R>> {
        &self.shared
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
        if self.waits_for_its_own_thread() {
            return Err(Error::state(
                "get() inside a callback on a result of the same pool whose callbacks have not \
                 run yet: they run on this thread, after this callback returns",
            ));
        }
        if !self.wait(timeout) {
            return Err(Error::Timeout);
        }
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
            None => shared.value.get().is_some() || shared.is_done(),
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

impl<R> Shared<R> {
    pub(crate) fn job(&self) -> &Job {
        self.job.as_ref().expect("present until drop")
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
