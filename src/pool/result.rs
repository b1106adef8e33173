//! [`AsyncResult`]: the handle to a task submitted with `apply_async`.

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::shm::arena::Block;
use crate::Pod;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a submitted task's result will be: its slot, the segment offset of its
/// output, and the arena block holding its payload if it did not fit inline.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) slot: u32,
    pub(crate) output: u64,
    pub(crate) block: Option<Block>,
}

impl Ticket {
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

/// The result of a task submitted with [`Pool::apply_async`](crate::Pool::apply_async),
/// like Python's `multiprocessing.pool.AsyncResult`.
///
/// The handle is independent of the pool's lifetime: if the pool is terminated
/// or dropped first, [`get`](AsyncResult::get) returns [`Error::Terminated`].
/// Dropping a handle whose task has not started withdraws the task.
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
pub struct AsyncResult<R: Pod> {
    core: Arc<Core>,
    ticket: Ticket,
    collected: OnceLock<Result<R, Failure>>,
}

impl<R: Pod> AsyncResult<R> {
    pub(crate) fn new(core: Arc<Core>, ticket: Ticket) -> Self {
        AsyncResult {
            core,
            ticket,
            collected: OnceLock::new(),
        }
    }

    /// Returns the result when it arrives; with `Some(timeout)`, returns
    /// [`Error::Timeout`] if it has not arrived by then (the task keeps running).
    /// A task that panicked gives [`Error::TaskPanicked`]; one whose worker died,
    /// [`Error::WorkerDied`].
    pub fn get(&self, timeout: Option<Duration>) -> Result<R, Error> {
        if !self.wait(timeout) {
            return Err(Error::Timeout);
        }
        self.collect().clone().map_err(Error::from)
    }

    /// Waits until the result is available or `timeout` passes; returns whether
    /// it is available.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        if self.collected.get().is_some() {
            return true;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        self.core
            .layout()
            .slot(self.ticket.slot)
            .wait_done(deadline)
    }

    /// Whether the task has finished (successfully or not).
    pub fn ready(&self) -> bool {
        self.collected.get().is_some() || self.core.layout().slot(self.ticket.slot).is_done()
    }

    /// Whether the task finished without panicking and without losing its worker.
    /// [`Error::InvalidArgument`] if it has not finished (Python raises
    /// `ValueError` there).
    pub fn successful(&self) -> Result<bool, Error> {
        if !self.ready() {
            return Err(Error::invalid(
                "successful() called before the result is ready",
            ));
        }
        Ok(self.collect().is_ok())
    }

    /// Reads the outcome once (the slot is DONE).
    fn collect(&self) -> &Result<R, Failure> {
        self.collected.get_or_init(|| {
            self.core
                .read_outcome::<R>(self.ticket.slot, self.ticket.output)
        })
    }
}

impl<R: Pod> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        self.core
            .abandon_slot(self.ticket.slot, self.ticket.block.take());
    }
}

impl<R: Pod + fmt::Debug> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .field("result", &self.collected.get())
            .finish()
    }
}
