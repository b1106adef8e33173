//! Awaiting results: [`AsyncResult`] as a `Future` ([`ResultFuture`]), woken
//! by the pool's callback thread.
//!
//! No thread per awaited result, and no executor thread ever blocks. A poll
//! that finds the work unfinished stores the task's `Waker` in the result
//! ([`WakerCell`]) and, the first time, hands the callback thread an
//! [`Awaited`] entry: the thread learns which slots finished from the
//! workers' finish logs (every `*_async` task carries `WATCHED`), exactly as
//! it does for `*_with` callbacks, and wakes the waker instead of running a
//! callback. A result with callbacks needs no entry: the thread wakes its
//! waker once the callbacks ran (`Shared::delivered`). See
//! `docs/ARCHITECTURE.md`, "Awaiting and aborting".
//!
//! Lost wake-ups: the poll stores the waker *before* it checks the result a
//! last time, and the thread checks that the work is done *before* it takes
//! the waker (both under the cell's lock), so either the poll sees the work
//! done or the thread sees the new waker.

use crate::error::Error;
use crate::pool::callbacks::{Callbacks, Pending, Progress};
use crate::pool::result::{AsyncResult, Shared};
use crate::sync::lock;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The waker of the task awaiting a result (or stream), if any.
#[derive(Default)]
pub(crate) struct WakerCell {
    waker: Mutex<Option<Waker>>,
}

impl WakerCell {
    /// Remembers `waker` (keeps the stored one if it wakes the same task).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = lock(&self.waker);
        match &*slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// Wakes the stored waker, if any (outside the lock).
    pub(crate) fn wake(&self) {
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Forgets the stored waker (its future is gone).
    pub(crate) fn clear(&self) {
        lock(&self.waker).take();
    }
}

/// The callback thread's entry for an awaited result without callbacks.
pub(crate) struct Awaited<R> {
    pub(crate) shared: Arc<Shared<R>>,
}

impl<R: Send + Sync + 'static> Pending for Awaited<R> {
    fn is_done(&self) -> bool {
        self.shared.is_settled()
    }

    fn progress(&self) -> Arc<dyn Progress> {
        Arc::clone(&self.shared) as Arc<dyn Progress>
    }

    fn for_each_slot(&self, each: &mut dyn FnMut(u32)) {
        self.shared.job().chunks().for_each(|c| each(c.slot));
    }

    fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::Acquire)
    }

    fn deliver(self: Box<Self>) {
        self.shared.waker.wake();
    }
}

/// The future of an awaited [`AsyncResult`] (what `.await` on it polls):
/// resolves to what [`AsyncResult::get`] returns, without blocking the
/// thread that polls it.
///
/// Polled on the pool's callback thread (a `block_on` inside a callback of
/// the same pool), it waits as [`get`](AsyncResult::get) does, since the
/// thread that would wake it is the one polling it.
///
/// Dropping it before it resolves withdraws the tasks that have not started,
/// as dropping the handle does; with
/// [`abort_on_drop`](AsyncResult::abort_on_drop) (or the pool's
/// [`PoolBuilder::abort_on_drop`](crate::PoolBuilder::abort_on_drop)), it
/// also stops running ones, like tokio's `JoinHandle::abort`.
///
/// ```
/// fn f(x: u64) -> u64 { x * x }
/// let pool = shmpool::Pool::new(2)?;
/// let v = futures_executor::block_on(async {
///     let one = pool.apply_async(f, (3,))?.await?;
///     let many = pool.map_async(f, &[1, 2, 3])?.await?;
///     Ok::<_, shmpool::Error>((one, many))
/// })?;
/// assert_eq!(v, (9, vec![1, 4, 9]));
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct ResultFuture<R> {
    result: AsyncResult<R>,
    /// Whether an [`Awaited`] entry was handed to the callback thread.
    registered: bool,
    finished: bool,
}

impl<R: Clone + Send + Sync + 'static> IntoFuture for AsyncResult<R> {
    type Output = Result<R, Error>;
    type IntoFuture = ResultFuture<R>;

    fn into_future(self) -> ResultFuture<R> {
        ResultFuture {
            result: self,
            registered: false,
            finished: false,
        }
    }
}

impl<R: Clone + Send + Sync + 'static> ResultFuture<R> {
    /// Stops the work now (see [`AsyncResult::abort`]); the future then
    /// resolves to [`Error::Aborted`] unless the work had already finished.
    /// Returns whether anything was stopped.
    pub fn abort(&self) -> bool {
        self.result.abort()
    }

    /// Whether dropping this future before it resolves aborts the work (see
    /// [`AsyncResult::abort_on_drop`]).
    pub fn abort_on_drop(mut self, yes: bool) -> Self {
        self.result.set_abort_on_drop(yes);
        self
    }

    /// The result's handle, e.g. to [`get`](AsyncResult::get) it blocking.
    pub fn handle(&self) -> &AsyncResult<R> {
        &self.result
    }
}

impl<R: Clone + Send + Sync + 'static> Future for ResultFuture<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Unpin: it holds only an `Arc` and flags.
        let this = self.get_mut();
        if this.result.ready() {
            this.finished = true;
            return Poll::Ready(this.result.read());
        }
        if let Some(e) = this.result.refuse_own_thread() {
            this.finished = true;
            return Poll::Ready(Err(e));
        }
        let shared = this.result.shared();
        if crate::pool::callbacks::on_callback_thread_of(shared.core()) {
            // Polled inside a callback (a `block_on` there): the thread that
            // would wake this future is the one polling it, so wait as `get`
            // does instead.
            this.finished = true;
            return Poll::Ready(this.result.get(None));
        }
        shared.waker.register(cx.waker());
        if !this.registered && !shared.has_callbacks() {
            this.registered = true;
            let entry = Box::new(Awaited {
                shared: Arc::clone(shared),
            });
            if let Err(e) = Callbacks::watch(shared.core(), entry) {
                this.finished = true;
                return Poll::Ready(Err(e));
            }
        }
        // After the waker is stored: a finish the thread saw before it took
        // the waker is seen here.
        if this.result.ready() {
            this.finished = true;
            shared.waker.clear();
            return Poll::Ready(this.result.read());
        }
        Poll::Pending
    }
}

impl<R> Drop for ResultFuture<R> {
    fn drop(&mut self) {
        let shared = self.result.shared();
        shared.waker.clear();
        if self.registered && !self.finished {
            // The callback thread holds the result: ask it to let go, so
            // that the handle's drop withdraws what has not started.
            shared.abandoned.store(true, Ordering::Release);
            if let Some(chunk) = shared.job().chunks().next() {
                shared
                    .core()
                    .callbacks
                    .look_at(shared.core().layout(), &[chunk.slot]);
            }
        }
    }
}

impl<R: Clone + Send + Sync + 'static + std::fmt::Debug> std::fmt::Debug for ResultFuture<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultFuture")
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}
