//! What every lazy map of the pool shares ([`Imap`](crate::Imap) and, with
//! serde, `SerdeImap`): pulling the input a chunk at a time, a window of
//! chunks in flight, waiting in order or for any, the results buffered in
//! order, and the input's panic yielded last. How a chunk is laid out in
//! shared memory and read back is the one thing that differs: [`Chunks`].

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::job::{Chunk, Job};
use crate::pool::progress::Progress;
use crate::sync::spin::SpinWait;
use std::collections::VecDeque;
use std::iter::Fuse;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

/// Results ready to yield, in input order (for `imap`) or completion order.
pub(super) type Ready<U> = VecDeque<Result<U, Error>>;

/// How one kind of lazy map fills a chunk and reads its results back.
pub(super) trait Chunks<I: Iterator, U> {
    /// Fills a chunk from `input` and publishes it, as a job of one chunk;
    /// `Ok(None)` if the input had nothing left (nothing is then held).
    fn submit(&mut self, core: &Core, input: &mut Input<I>) -> Result<Option<Job>, Error>;

    /// Appends the results of `job`, finished, to `ready`, or fails (`ready`
    /// is then cut back to where it was: a chunk yields all or nothing).
    fn collect(&self, core: &Core, job: &Job, ready: &mut Ready<U>) -> Result<(), Failure>;
}

/// A lazy map's input: the iterator, and how it ended.
pub(super) struct Input<I: Iterator> {
    iter: Fuse<I>,
    /// Set once the input is exhausted or can no longer be fed.
    done: bool,
    /// The input's panic, yielded once everything before it was.
    panic: Option<Error>,
}

impl<I: Iterator> Input<I> {
    /// Gives up to `max` items to `put` (with their index in the chunk);
    /// how many. A panic in the input ends it, as in Python, instead of
    /// coming out of `next` and losing the chunk being filled.
    pub(super) fn pull(&mut self, max: usize, mut put: impl FnMut(usize, I::Item)) -> usize {
        let mut n = 0;
        while n < max {
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.iter.next())) {
                Ok(Some(item)) => {
                    put(n, item);
                    n += 1;
                }
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(payload) => {
                    self.done = true;
                    self.panic = Some(Error::InputPanicked {
                        message: crate::panic::panic_message(&payload),
                    });
                    break;
                }
            }
        }
        n
    }
}

/// A submitted chunk, with the input index of its first element.
struct InFlight {
    chunk: Chunk,
    job: Job,
    first: usize,
}

/// The state of one lazy map, driven by its [`Chunks`].
pub(super) struct Lazy<I: Iterator, U> {
    pub(super) core: Arc<Core>,
    input: Input<I>,
    ordered: bool,
    window: usize,
    in_flight: VecDeque<InFlight>,
    /// Input elements put into chunks so far.
    pulled: usize,
    ready: Ready<U>,
    /// The bar, if the pool draws them (`pool::progress`).
    progress: Progress,
}

impl<I: Iterator, U> Lazy<I, U> {
    pub(super) fn new(
        core: Arc<Core>,
        input: I,
        ordered: bool,
        window: usize,
        progress: Progress,
    ) -> Self {
        Lazy {
            core,
            input: Input {
                iter: input.fuse(),
                done: false,
                panic: None,
            },
            ordered,
            window,
            in_flight: VecDeque::new(),
            pulled: 0,
            ready: VecDeque::new(),
            progress,
        }
    }

    /// The next result, waiting until `deadline` (then `Err(Timeout)`; the
    /// work goes on). `None` once every result was yielded.
    pub(super) fn next_until(
        &mut self,
        chunks: &mut impl Chunks<I, U>,
        deadline: Option<Instant>,
    ) -> Option<Result<U, Error>> {
        loop {
            if let Some(end) = self.ready_or_end(chunks) {
                return end;
            }
            let found = if self.ordered {
                let slot = self.in_flight[0].chunk.slot;
                self.core
                    .layout()
                    .slot(slot)
                    .wait_done(deadline)
                    .then_some(0)
            } else {
                let layout = self.core.layout();
                first_done(&self.core, deadline, || {
                    self.in_flight
                        .iter()
                        .position(|f| layout.slot(f.chunk.slot).is_done())
                })
            };
            match found {
                Some(i) => self.collect(chunks, i),
                None => return Some(Err(Error::Timeout)),
            }
        }
    }

    /// A result ready to yield, after topping the window up: `Some(item)`,
    /// or `Some(None)` when nothing is in flight (the end); `None` while
    /// chunks are still in flight with nothing ready.
    pub(super) fn ready_or_end(
        &mut self,
        chunks: &mut impl Chunks<I, U>,
    ) -> Option<Option<Result<U, Error>>> {
        if let Some(item) = self.ready.pop_front() {
            return Some(Some(item));
        }
        self.feed(chunks);
        if !self.in_flight.is_empty() {
            return None;
        }
        if self.input.done && self.input.panic.is_none() {
            self.progress.finish();
        }
        let last = self.ready.pop_front();
        Some(last.or_else(|| self.input.panic.take().map(Err)))
    }

    /// Tops the window up from the input.
    fn feed(&mut self, chunks: &mut impl Chunks<I, U>) {
        while !self.input.done && self.in_flight.len() < self.window {
            match chunks.submit(&self.core, &mut self.input) {
                Ok(Some(job)) => {
                    let chunk = *job.chunks().next().expect("one chunk");
                    let first = self.pulled;
                    self.pulled += chunk.len;
                    self.in_flight.push_back(InFlight { chunk, job, first });
                }
                Ok(None) => {}
                Err(e) => {
                    self.input.done = true;
                    self.ready.push_back(Err(e));
                }
            }
        }
    }

    /// The slots of the chunks to wait for: the oldest if ordered, all
    /// otherwise.
    #[cfg(feature = "async")]
    pub(super) fn awaited_slots(&self) -> impl Iterator<Item = u32> + '_ {
        let watched = if self.ordered {
            1
        } else {
            self.in_flight.len()
        };
        self.in_flight.iter().take(watched).map(|f| f.chunk.slot)
    }

    /// A finished chunk to collect now: the oldest if ordered, any otherwise.
    #[cfg(feature = "async")]
    pub(super) fn done_now(&self) -> Option<usize> {
        let layout = self.core.layout();
        let done = |f: &InFlight| layout.slot(f.chunk.slot).is_done();
        if self.ordered {
            self.in_flight.front().filter(|f| done(f)).map(|_| 0)
        } else {
            self.in_flight.iter().position(done)
        }
    }

    /// Moves finished chunk `i`'s results (or its error) to `ready`.
    pub(super) fn collect(&mut self, chunks: &impl Chunks<I, U>, i: usize) {
        let InFlight { chunk, job, first } = self.in_flight.remove(i).expect("in range");
        let start = self.ready.len();
        match chunks.collect(&self.core, &job, &mut self.ready) {
            Ok(()) => self.progress.advance(chunk.len),
            Err(failure) => {
                self.ready.truncate(start);
                let range = first..first + chunk.len;
                self.ready
                    .push_back(Err(Error::from(failure).covering(range)));
            }
        }
        self.core.dispose(job);
    }

    /// `Debug` for a lazy map called `name`.
    pub(super) fn debug(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        name: &str,
        chunksize: usize,
    ) -> std::fmt::Result {
        f.debug_struct(name)
            .field("ordered", &self.ordered)
            .field("chunksize", &chunksize)
            .field("in_flight", &self.in_flight.len())
            .field("buffered", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl<I: Iterator, U> Drop for Lazy<I, U> {
    fn drop(&mut self) {
        for f in self.in_flight.drain(..) {
            self.core.dispose(f.job);
        }
    }
}

/// Waits until `find` names a finished chunk (its position), spinning
/// briefly, then parking on the header's `done` wake word, which every
/// finisher notifies; `None` once `deadline` passes with none finished.
fn first_done(
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
