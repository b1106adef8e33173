//! Lazy `imap` / `imap_unordered`: the input is an iterator, pulled only as fast
//! as results are consumed.
//!
//! At most a window of chunks is in flight (bounded in count and in bytes,
//! `schedule::imap_window`), so `0..u64::MAX` works and memory stays flat.
//! Each chunk is one slot with an area of its own (`MapLayout::task`, as for
//! `apply`); a chunk small enough (its task's bound bytes + input + output ≤
//! 192 bytes, e.g. chunk size 1 of a `u64`) lives in the slot's inline area
//! and takes no arena allocation.

// Unsafe code: reads a finished chunk's results in the segment.
#![allow(unsafe_code)]

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::job::{Chunk, Job};
use crate::pool::lazy::{Chunks, Input, Lazy, Ready};
use crate::pool::schedule::{check_chunksize, check_context, imap_window, Elem, MapLayout};
use crate::sync::slot::TaskDesc;
use crate::Pod;
use std::mem::MaybeUninit;
#[cfg(feature = "async")]
use std::pin::Pin;
use std::sync::Arc;
#[cfg(feature = "async")]
use std::task::{Context, Poll};
use std::time::Duration;

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
/// `into_stream` gives a stream that is only a stream.
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
    lazy: Lazy<I, U>,
    chunks: PodChunks,
    /// The callback thread's entry while this is polled as a stream.
    #[cfg(feature = "async")]
    polled: Option<Arc<crate::pool::callbacks::Polled>>,
}

/// How a [`Pod`] map's chunk is laid out: the task's bound bytes, then the
/// inputs, then room for the outputs, in the slot's inline area or a block.
struct PodChunks {
    entry: u64,
    chunksize: usize,
    /// The area of every chunk but a short last one.
    area: MapLayout,
    /// The task's bound bytes, carried by every chunk (`MapCall::context`).
    context: Vec<MaybeUninit<u8>>,
}

impl<I, U> Imap<I, U>
where
    I: Iterator<Item: Pod>,
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
        let progress = crate::pool::progress::Progress::start_lazy(&core, &input);
        Ok(Imap {
            lazy: Lazy::new(core, input, ordered, window, progress),
            chunks: PodChunks {
                entry,
                chunksize,
                area,
                context,
            },
            #[cfg(feature = "async")]
            polled: None,
        })
    }

    /// Like [`next`](Iterator::next), but gives up after `timeout`:
    /// `Some(Err(Error::Timeout))` if no result arrived by then (the work goes
    /// on; call again to keep waiting). `None` once every result was yielded.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<U, Error>> {
        let deadline = crate::deadline::deadline(timeout);
        self.lazy.next_until(&mut self.chunks, deadline)
    }
}

impl<I: Iterator<Item: Pod>, U: Pod> Chunks<I, U> for PodChunks {
    fn submit(&mut self, core: &Core, input: &mut Input<I>) -> Result<Option<Job>, Error> {
        let mut slot = core.alloc_slot()?;
        if !self.context.is_empty() {
            slot.write_inline(&self.context);
        }
        // The chunk's data follows the context in the inline area, if both fit.
        let base = slot.attach_area(&self.area, self.context.len())?;
        // The area holds `chunksize` inputs from `base`, unpublished: this
        // thread's alone.
        // Written through a raw pointer: a checked typed view here made a
        // chunk-1 `imap_unordered` 7-10 % slower (`examples/small_tasks`, A/B).
        let at = core.layout().at(base).cast::<I::Item>();
        let n = input.pull(self.chunksize, |i, item| {
            // SAFETY: the area holds `chunksize` inputs from `base` (aligned
            // for the item type) and is unpublished: this thread owns it.
            unsafe { at.add(i).write(item) }
        });
        if n == 0 {
            return Ok(None); // the token gives the slot and block back
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
        Ok(Some(Job::single(chunk, published.block)))
    }

    fn collect(&self, core: &Core, job: &Job, ready: &mut Ready<U>) -> Result<(), Failure> {
        let chunk = job.chunks().next().expect("one chunk");
        core.read_outcome::<()>(chunk.slot, 0)?;
        let out = core.layout().at(chunk.output).cast::<U>();
        // SAFETY: the chunk returned: its worker wrote `len` U's at
        // `output` (aligned for U) before DONE, observed with Acquire.
        let results = unsafe { std::slice::from_raw_parts(out, chunk.len) };
        ready.extend(results.iter().map(|&u| Ok(u)));
        Ok(())
    }
}

impl<I: Iterator<Item: Pod>, U: Pod> Iterator for Imap<I, U> {
    type Item = Result<U, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.lazy.next_until(&mut self.chunks, None)
    }
}

#[cfg(feature = "async")]
impl<I: Iterator<Item: Pod>, U: Pod> Imap<I, U> {
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
impl<I: Iterator<Item: Pod>, U: Pod> futures_core::Stream for ImapStream<I, U> {
    type Item = Result<U, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().0).poll_next(cx)
    }
}

// Nothing in an `Imap` is ever pinned in place (no projection).
#[cfg(feature = "async")]
impl<I: Iterator, U> Unpin for Imap<I, U> {}

#[cfg(feature = "async")]
impl<I: Iterator<Item: Pod>, U: Pod> futures_core::Stream for Imap<I, U> {
    type Item = Result<U, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Imap {
            lazy,
            chunks,
            polled,
        } = self.get_mut();
        loop {
            if let Some(end) = lazy.ready_or_end(chunks) {
                return Poll::Ready(end);
            }
            if let Some(i) = lazy.done_now() {
                lazy.collect(chunks, i);
                continue;
            }
            if crate::pool::callbacks::on_callback_thread_of(&lazy.core) {
                // Polled inside a callback: the thread that would wake this
                // stream is the one polling it, so wait as `next` does.
                return Poll::Ready(lazy.next_until(chunks, None));
            }
            // Nothing finished: tell the callback thread which chunks to
            // watch and whom to wake, then look once more (a chunk finishing
            // before the thread watched is seen here).
            let polled = polled.get_or_insert_with(Default::default);
            {
                let mut slots = crate::sync::lock(&polled.slots);
                slots.clear();
                slots.extend(lazy.awaited_slots());
            }
            let mut waker = crate::sync::lock(&polled.waker);
            match &*waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
            drop(waker);
            if let Err(e) = crate::pool::callbacks::Callbacks::watch_polled(&lazy.core, polled) {
                return Poll::Ready(Some(Err(e)));
            }
            match lazy.done_now() {
                Some(i) => lazy.collect(chunks, i),
                None => return Poll::Pending,
            }
        }
    }
}

#[cfg(feature = "async")]
impl<I: Iterator, U> Drop for Imap<I, U> {
    fn drop(&mut self) {
        if let Some(polled) = &self.polled {
            // No slots: the callback thread drops the entry. (The chunks in
            // flight are disposed of by `Lazy`'s drop, after this.)
            crate::sync::lock(&polled.slots).clear();
        }
    }
}

impl<I: Iterator, U> std::fmt::Debug for Imap<I, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lazy.debug(f, "Imap", self.chunks.chunksize)
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
