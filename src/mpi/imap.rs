//! [`Imap`]: the lazy iterator of `imap` and `imap_unordered`.

use super::dispatch::Dispatcher;
use super::{from_bytes, pending, to_bytes, Pool, Shared};
use crate::error::Error;
use crate::pool::schedule::Elem;
use crate::task::EntryPoint;
use crate::Pod;
use std::collections::VecDeque;
use std::sync::Arc;

/// The results of [`imap`](super::Pool::imap) or
/// [`imap_unordered`](super::Pool::imap_unordered): an iterator of
/// `Result<U, Error>`.
///
/// Items are taken from the input iterator as the ranks need them: at most
/// two chunks per worker rank are submitted ahead of the results read. A
/// failed chunk yields its error once, and the iteration goes on with the
/// next chunk. Dropping the iterator stops submitting; the chunks the ranks
/// run are thrown away when they come back.
pub struct Imap<I: Iterator, U: Pod> {
    shared: Arc<Shared>,
    items: I,
    entry: EntryPoint,
    chunksize: usize,
    ordered: bool,
    window: usize,
    /// Submitted chunks, oldest first: task id and number of items.
    pending: VecDeque<(u64, usize)>,
    /// Results of a finished chunk, not yet yielded.
    ready: VecDeque<U>,
    exhausted: bool,
    /// A submission that failed, yielded next.
    failed: Option<Error>,
}

impl<I, U> Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    /// A lazy map of `entry` over `items` on `pool`'s ranks, with at most
    /// [`IN_FLIGHT`](super::protocol::IN_FLIGHT) chunks per rank submitted
    /// ahead.
    pub(super) fn new(
        pool: &Pool,
        items: I,
        entry: EntryPoint,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Self, Error> {
        if chunksize == 0 {
            return Err(Error::invalid("chunksize must be at least 1"));
        }
        if pool.shared.lock().stopped() {
            return Err(Error::Closed);
        }
        Ok(Imap {
            shared: Arc::clone(&pool.shared),
            items,
            entry,
            chunksize,
            ordered,
            window: (super::protocol::IN_FLIGHT * pool.ranks).max(1),
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            exhausted: false,
            failed: None,
        })
    }

    /// Submits chunks until `window` are pending or the items run out.
    fn top_up(&mut self) {
        while !self.exhausted && self.pending.len() < self.window {
            let chunk: Vec<I::Item> = self.items.by_ref().take(self.chunksize).collect();
            if chunk.len() < self.chunksize {
                self.exhausted = true;
            }
            if chunk.is_empty() {
                return;
            }
            let mut d = self.shared.lock();
            let id = d.next_id();
            let header = super::TaskHeader::new(
                id,
                self.entry.0,
                chunk.len(),
                Elem::of::<I::Item>(),
                Elem::of::<U>(),
            );
            match pending(header, to_bytes(&chunk)) {
                Ok(task) => {
                    d.enqueue(task);
                    d.assign();
                    self.pending.push_back((id, chunk.len()));
                }
                Err(e) => {
                    self.failed = Some(e);
                    self.exhausted = true;
                }
            }
        }
    }

    /// The position in `pending` of a finished chunk this iterator may
    /// yield now.
    fn finished(pending: &VecDeque<(u64, usize)>, ordered: bool, d: &Dispatcher) -> Option<usize> {
        if ordered {
            pending.front().filter(|(id, _)| d.is_done(*id)).map(|_| 0)
        } else {
            pending.iter().position(|(id, _)| d.is_done(*id))
        }
    }
}

impl<I, U> Iterator for Imap<I, U>
where
    I: Iterator,
    I::Item: Pod,
    U: Pod,
{
    type Item = Result<U, Error>;

    fn next(&mut self) -> Option<Result<U, Error>> {
        loop {
            if let Some(u) = self.ready.pop_front() {
                return Some(Ok(u));
            }
            self.top_up();
            if self.pending.is_empty() {
                return self.failed.take().map(Err);
            }
            let (pending, ordered) = (&self.pending, self.ordered);
            let found = self.shared.wait(None, |d| {
                let at = Self::finished(pending, ordered, d)?;
                let (id, n) = pending[at];
                Some((at, n, d.take(id).expect("finished")))
            });
            let (at, n, done) = match found {
                Ok(Some(found)) => found,
                Ok(None) => unreachable!("no deadline"),
                Err(e) => {
                    self.pending.clear();
                    self.exhausted = true;
                    return Some(Err(e));
                }
            };
            self.pending.remove(at);
            match done {
                Ok(bytes) => self.ready.extend(from_bytes::<U>(&bytes, n)),
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

impl<I: Iterator, U: Pod> Drop for Imap<I, U> {
    fn drop(&mut self) {
        let mut d = self.shared.lock();
        for (id, _) in self.pending.drain(..) {
            d.abandon(id);
        }
    }
}

impl<I: Iterator, U: Pod> std::fmt::Debug for Imap<I, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("pending", &self.pending.len())
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}
