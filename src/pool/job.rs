//! [`Job`]: the parent's record of one submitted piece of work — the slots of
//! its chunks and the arena block holding their payload — and how it ends.

use crate::shm::arena::Block;
use crate::shm::layout::Layout;
use std::time::Instant;

/// One submitted task: a slot and where its output lands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    pub(crate) slot: u32,
    /// Segment offset of the chunk's output elements.
    pub(crate) output: u64,
    /// Element count.
    pub(crate) len: usize,
}

/// The chunks of one `apply_async` (one chunk) or `map_async` (many), and the
/// arena block they share, freed once every chunk is finished.
#[derive(Debug, Default)]
pub(crate) struct Job {
    // `first` + `rest` so that a single-chunk job allocates nothing.
    first: Option<Chunk>,
    rest: Vec<Chunk>,
    pub(crate) block: Option<Block>,
}

impl Job {
    pub(crate) fn new(block: Option<Block>) -> Job {
        Job {
            first: None,
            rest: Vec::new(),
            block,
        }
    }

    pub(crate) fn single(chunk: Chunk, block: Option<Block>) -> Job {
        Job {
            first: Some(chunk),
            rest: Vec::new(),
            block,
        }
    }

    pub(crate) fn push(&mut self, chunk: Chunk) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            self.rest.push(chunk);
        }
    }

    /// The chunks in input order.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.first.iter().chain(&self.rest)
    }

    /// Whether every chunk has finished.
    pub(crate) fn is_done(&self, layout: &Layout) -> bool {
        self.chunks().all(|c| layout.slot(c.slot).is_done())
    }

    /// Waits until every chunk has finished or `deadline` passes.
    pub(crate) fn wait(&self, layout: &Layout, deadline: Option<Instant>) -> bool {
        self.chunks()
            .all(|c| layout.slot(c.slot).wait_done(deadline))
    }
}
