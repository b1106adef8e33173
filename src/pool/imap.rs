//! Lazy `imap` / `imap_unordered`: the input is an iterator, pulled only as fast
//! as results are consumed.
//!
//! At most a window of chunks is in flight (bounded in count and in bytes,
//! `schedule::imap_window`), so `0..u64::MAX` works and memory stays flat.
//! Each chunk is one slot with an area of its own (`MapLayout::task`, as for
//! `apply`); a chunk small enough (its task's bound bytes + input + output ≤
//! 192 bytes, e.g. chunk size 1 of a `u64`) lives in the slot's inline area
//! and takes no arena allocation.

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::job::{Chunk, Job};
use crate::pool::schedule::{check_chunksize, check_context, imap_window, Elem, MapLayout};
use crate::shm::arena::Block;
use crate::sync::slot::TaskDesc;
use crate::sync::spin::SpinWait;
use crate::Pod;
use std::collections::VecDeque;
use std::iter::Fuse;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The iterator returned by [`Pool::imap`](crate::Pool::imap) and its
/// variants: yields `Ok(f(item))` for every input item — in input order for
/// `imap`, in completion order for `imap_unordered` — and one `Err` per failed
/// chunk (a panic, a dead worker), after which it goes on with the next chunk.
///
/// Should the input iterator panic, as in Python the results of the items
/// before it come first (in order for `imap`), then one
/// [`Error::InputPanicked`], and the iterator ends; the input is not pulled
/// again.
///
/// Dropping it stops pulling the input; chunks not yet started are withdrawn,
/// and running ones finish unobserved.
///
/// With the feature `async`, it is also a `futures_core::Stream`, woken by
/// the pool's callback thread instead of blocking the executor, and pulling
/// the input as results are consumed, as the iterator does. Being both, its
/// `next`, `map`, … are ambiguous once `StreamExt` is imported:
/// [`into_stream`](Imap::into_stream) gives a stream that is only a stream.
///
/// ```
/// use std::time::Duration;
/// fn f(x: u64) -> u64 { x * x }
/// let pool = shmpool::Pool::new(2)?;
/// let mut it = pool.imap(f, 1..4u64)?;
/// assert_eq!(it.next_timeout(Duration::from_secs(10)).unwrap()?, 1);
/// assert_eq!(it.collect::<Result<Vec<_>, _>>()?, vec![4, 9]);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Imap<I: Iterator, U> {
    core: Arc<Core>,
    input: Fuse<I>,
    /// Set once the input is exhausted or can no longer be fed.
    input_done: bool,
    entry: u64,
    chunksize: usize,
    /// The area of every chunk but a short last one.
    area: MapLayout,
    ordered: bool,
    /// The task's bound bytes, carried by every chunk (`MapCall::context`).
    context: Vec<MaybeUninit<u8>>,
    window: usize,
    /// Chunks in flight, with the input index of each one's first element.
    in_flight: VecDeque<(Chunk, Option<Block>, usize)>,
    /// Input elements put into chunks so far.
    pulled: usize,
    /// The bar, if the pool draws them (`pool::progress`).
    progress: crate::pool::progress::Progress,
    ready: VecDeque<Result<U, Error>>,
    /// The input's panic, yielded once everything before it was.
    input_panic: Option<Error>,
    /// The callback thread's entry while this is polled as a stream.
    #[cfg(feature = "async")]
    polled: Option<Arc<crate::pool::callbacks::Polled>>,
    _out: PhantomData<fn() -> U>,
}

impl<I, U> Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    pub(crate) fn new(
        core: Arc<Core>,
        input: I,
        entry: u64,
        chunksize: usize,
        ordered: bool,
        context: Vec<MaybeUninit<u8>>,
    ) -> Result<Self, Error> {
        check_chunksize(&core, chunksize)?;
        check_context(&context)?;
        let area = MapLayout::task(chunksize, Elem::of::<I::Item>(), Elem::of::<U>())
            .ok_or_else(|| Error::invalid("chunksize too large"))?;
        let window = imap_window(area.total, core.processes);
        let exact = match input.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        let progress = crate::pool::progress::Progress::start(&core, exact);
        Ok(Imap {
            progress,
            core,
            input: input.fuse(),
            input_done: false,
            entry,
            chunksize,
            area,
            ordered,
            context,
            window,
            in_flight: VecDeque::new(),
            pulled: 0,
            ready: VecDeque::new(),
            input_panic: None,
            #[cfg(feature = "async")]
            polled: None,
            _out: PhantomData,
        })
    }

    /// Like [`next`](Iterator::next), but gives up after `timeout`:
    /// `Some(Err(Error::Timeout))` if no result arrived by then (the work goes
    /// on; call again to keep waiting). `None` once every result was yielded.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<U, Error>> {
        self.next_until(crate::deadline::deadline(timeout))
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<U, Error>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            self.feed();
            if self.in_flight.is_empty() {
                if self.input_done && self.input_panic.is_none() {
                    self.progress.finish();
                }
                return self
                    .ready
                    .pop_front()
                    .or_else(|| self.input_panic.take().map(Err));
            }
            let found = if self.ordered {
                let slot = self.in_flight[0].0.slot;
                self.core
                    .layout()
                    .slot(slot)
                    .wait_done(deadline)
                    .then_some(0)
            } else {
                self.wait_any(deadline)
            };
            match found {
                Some(i) => self.collect(i),
                None => return Some(Err(Error::Timeout)),
            }
        }
    }

    /// Tops the window up from the input.
    fn feed(&mut self) {
        while !self.input_done && self.in_flight.len() < self.window {
            if let Err(e) = self.submit_next() {
                self.input_done = true;
                self.ready.push_back(Err(e));
            }
        }
    }

    /// Submits the next chunk; sets `input_done` if the input has run out.
    fn submit_next(&mut self) -> Result<(), Error> {
        let core = &*self.core;
        let mut slot = core.alloc_slot()?;
        if !self.context.is_empty() {
            slot.write_inline(&self.context);
        }
        // The chunk's data follows the context in the inline area, if both fit.
        let base = slot.attach_area(&self.area, self.context.len())?;
        let input = core.layout().at(base).cast::<I::Item>();
        let mut n = 0;
        while n < self.chunksize {
            // A panic here would leave the slot and block allocated and lose
            // the items already in this chunk: it ends the input instead.
            let next = std::panic::catch_unwind(AssertUnwindSafe(|| self.input.next()));
            let item = match next {
                Ok(Some(item)) => item,
                Ok(None) => {
                    self.input_done = true;
                    break;
                }
                Err(payload) => {
                    self.input_done = true;
                    self.input_panic = Some(Error::InputPanicked {
                        message: crate::panic::panic_message(&payload),
                    });
                    break;
                }
            };
            // SAFETY: the area holds `chunksize` inputs from `base` (aligned for
            // the item type) and is unpublished: this thread owns it.
            unsafe { input.add(n).write(item) };
            n += 1;
        }
        if n == 0 {
            return Ok(()); // the token gives the slot and block back
        }
        let output = base + self.area.output_start as u64;
        slot.describe(TaskDesc {
            entry: self.entry,
            input: base,
            output,
            len: n as u64,
            ..TaskDesc::default()
        });
        let published = slot.publish()?;
        let chunk = Chunk {
            slot: published.slot,
            output,
            len: n,
        };
        self.in_flight
            .push_back((chunk, published.block, self.pulled));
        self.pulled += n;
        Ok(())
    }

    /// The position of a finished chunk, waiting for one until `deadline`.
    fn wait_any(&self, deadline: Option<Instant>) -> Option<usize> {
        let layout = self.core.layout();
        first_done(&self.core, deadline, || {
            self.in_flight
                .iter()
                .position(|(c, _, _)| layout.slot(c.slot).is_done())
        })
    }

    /// Moves finished chunk `i`'s results (or its error) to `ready`.
    fn collect(&mut self, i: usize) {
        let (chunk, block, first) = self.in_flight.remove(i).expect("in range");
        let core = &*self.core;
        match core.read_outcome::<()>(chunk.slot, 0) {
            Ok(()) => {
                let out = core.layout().at(chunk.output).cast::<U>();
                // SAFETY: the chunk returned: its worker wrote `len` U's at
                // `output` (aligned for U) before DONE, observed with Acquire.
                let results = unsafe { std::slice::from_raw_parts(out, chunk.len) };
                self.ready.extend(results.iter().map(|&u| Ok(u)));
                self.progress.advance(chunk.len);
            }
            Err(failure) => self
                .ready
                .push_back(Err(Error::from(failure).covering(first..first + chunk.len))),
        }
        core.dispose(Job::single(chunk, block));
    }
}

/// Waits until `find` names a finished chunk (its position), spinning
/// briefly, then parking on the header's `done` wake word, which every
/// finisher notifies; `None` once `deadline` passes with none finished. The
/// unordered wait of every lazy map (`imap_unordered`, `serde()`'s).
pub(super) fn first_done(
    core: &Core,
    deadline: Option<Instant>,
    find: impl Fn() -> Option<usize>,
) -> Option<usize> {
    let mut spin = SpinWait::new();
    loop {
        if let Some(i) = find() {
            return Some(i);
        }
        if spin.spin() {
            continue;
        }
        let timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return find(),
            },
            None => None,
        };
        core.layout()
            .header()
            .done
            .park_unless(|| find().is_some(), timeout);
    }
}

impl<I, U> Iterator for Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    type Item = Result<U, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_until(None)
    }
}

#[cfg(feature = "async")]
impl<I, U> Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    /// A finished chunk to collect now: the oldest if ordered, any otherwise.
    fn done_now(&self) -> Option<usize> {
        let layout = self.core.layout();
        let done = |c: &Chunk| layout.slot(c.slot).is_done();
        if self.ordered {
            self.in_flight
                .front()
                .filter(|(c, _, _)| done(c))
                .map(|_| 0)
        } else {
            self.in_flight.iter().position(|(c, _, _)| done(c))
        }
    }
}

#[cfg(feature = "async")]
impl<I, U> Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    /// This `Imap` as only a `futures_core::Stream` (feature `async`), so
    /// that `StreamExt`'s methods need no disambiguation.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// fn f(x: u64) -> u64 { x * x }
    /// let pool = shmpool::Pool::new(2)?;
    /// let squares = futures_executor::block_on(async {
    ///     let mut stream = pool.imap(f, 0..5u64)?.into_stream();
    ///     let mut got = Vec::new();
    ///     while let Some(r) = stream.next().await {
    ///         got.push(r?);
    ///     }
    ///     Ok::<_, shmpool::Error>(got)
    /// })?;
    /// assert_eq!(squares, [0, 1, 4, 9, 16]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn into_stream(self) -> ImapStream<I, U> {
        ImapStream(self)
    }
}

/// An [`Imap`] as only a `futures_core::Stream` (feature `async`); made by
/// [`Imap::into_stream`]. Dropping it drops the `Imap`.
#[cfg(feature = "async")]
#[derive(Debug)]
pub struct ImapStream<I: Iterator, U>(Imap<I, U>);

#[cfg(feature = "async")]
impl<I, U> futures_core::Stream for ImapStream<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    type Item = Result<U, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_next(cx)
    }
}

// Nothing in an `Imap` is ever pinned in place (no projection).
#[cfg(feature = "async")]
impl<I: Iterator, U> Unpin for Imap<I, U> {}

#[cfg(feature = "async")]
impl<I, U> futures_core::Stream for Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    type Item = Result<U, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            this.feed();
            if this.in_flight.is_empty() {
                if this.input_done && this.input_panic.is_none() {
                    this.progress.finish();
                }
                let last = this.ready.pop_front();
                return Poll::Ready(last.or_else(|| this.input_panic.take().map(Err)));
            }
            if let Some(i) = this.done_now() {
                this.collect(i);
                continue;
            }
            if crate::pool::callbacks::on_callback_thread_of(&this.core) {
                // Polled inside a callback: the thread that would wake this
                // stream is the one polling it, so wait as `next` does.
                return Poll::Ready(this.next_until(None));
            }
            // Nothing finished: tell the callback thread which chunks to
            // watch and whom to wake, then look once more (a chunk finishing
            // before the thread watched is seen here).
            let polled = this.polled.get_or_insert_with(Default::default);
            {
                let mut slots = crate::sync::lock(&polled.slots);
                slots.clear();
                let watched = if this.ordered {
                    1
                } else {
                    this.in_flight.len()
                };
                slots.extend(this.in_flight.iter().take(watched).map(|(c, _, _)| c.slot));
            }
            let mut waker = crate::sync::lock(&polled.waker);
            match &*waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
            drop(waker);
            if let Err(e) = crate::pool::callbacks::Callbacks::watch_polled(&this.core, polled) {
                return Poll::Ready(Some(Err(e)));
            }
            match this.done_now() {
                Some(i) => this.collect(i),
                None => return Poll::Pending,
            }
        }
    }
}

impl<I: Iterator, U> Drop for Imap<I, U> {
    fn drop(&mut self) {
        #[cfg(feature = "async")]
        if let Some(polled) = &self.polled {
            // No slots: the callback thread drops the entry.
            crate::sync::lock(&polled.slots).clear();
        }
        for (chunk, block, _) in self.in_flight.drain(..) {
            self.core.dispose(Job::single(chunk, block));
        }
    }
}

impl<I: Iterator, U> std::fmt::Debug for Imap<I, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("ordered", &self.ordered)
            .field("chunksize", &self.chunksize)
            .field("in_flight", &self.in_flight.len())
            .field("buffered", &self.ready.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    #[test]
    fn a_panicking_input_gives_its_half_filled_chunk_back() {
        let pool = crate::Pool::new(1).unwrap();
        let round = || {
            let input = (0..10u64).map(|x| if x == 5 { panic!("input") } else { x });
            let it = pool.imap_chunked(|x: u64| x, input, 3).unwrap();
            // Before the fix the panic came out of `next`.
            let _ = catch_unwind(AssertUnwindSafe(|| it.count()));
        };
        round();
        let used = pool.core.slots_in_use();
        for _ in 0..5 {
            round();
        }
        assert_eq!(pool.core.slots_in_use(), used, "a slot leaked per round");
    }
}
