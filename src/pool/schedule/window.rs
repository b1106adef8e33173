//! The window of one synchronous map's chunks in flight.

use super::layout::WINDOW;
use crate::error::Error;
use crate::pool::core::Core;
use crate::sync::slot::TaskDesc;
use std::collections::VecDeque;
use std::mem::MaybeUninit;

/// Allocates, describes and publishes one chunk; on failure the slot goes
/// back with its token.
fn submit_chunk(core: &Core, desc: TaskDesc, context: &[MaybeUninit<u8>]) -> Result<u32, Error> {
    let mut slot = core.alloc_slot()?;
    slot.describe(desc);
    if !context.is_empty() {
        slot.write_inline(context);
    }
    Ok(slot.publish()?.slot)
}

/// In which order a [`Window`] hands back finished chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collect {
    /// Oldest first, spinning briefly on each: the arena path copies each
    /// chunk's output out as soon as it is done, overlapping the workers.
    InOrder,
    /// Oldest first while chunks are still being submitted; once all are, the
    /// newest first, sleeping without a spin: the parent has nothing else to
    /// do, on 2 CPUs a spinning parent takes time from the workers, and the
    /// older chunks are usually done when it wakes (one wake-up per map
    /// instead of one per chunk).
    NewestLast,
}

/// What a [`Window`] hands back.
pub(crate) enum Collected<T> {
    /// The chunk finished (its slot is `DONE`); release the slot after reading it.
    Done(u32, T),
    /// The window was halted and the chunk withdrawn before a worker took it
    /// (its slot is released).
    Withdrawn(T),
}

/// The chunks of one synchronous map in flight: the one home of the windowed
/// submit, collect, and withdraw-on-first-failure loop. At most [`WINDOW`]
/// chunks are in flight; once halted (an error, or a refusal to redo), no
/// more are accepted, the queued ones are withdrawn and the running ones
/// awaited: they write into the caller's memory or the map's block, which must
/// not be freed or read before they finish.
pub(crate) struct Window<'a, T> {
    core: &'a Core,
    order: Collect,
    in_flight: VecDeque<(u32, T)>,
    error: Option<Error>,
    halted: bool,
}

impl<'a, T> Window<'a, T> {
    pub(crate) fn new(core: &'a Core, order: Collect) -> Self {
        Window {
            core,
            order,
            in_flight: VecDeque::new(),
            error: None,
            halted: false,
        }
    }

    /// Whether another chunk may be submitted now.
    pub(crate) fn accepts(&self) -> bool {
        !self.halted && self.in_flight.len() < WINDOW
    }

    /// Submits the chunk `desc` (with the call description `context` in its
    /// inline area), known by `tag`; a failed submission halts the window.
    pub(super) fn submit(&mut self, desc: TaskDesc, context: &[MaybeUninit<u8>], tag: T) {
        match submit_chunk(self.core, desc, context) {
            Ok(slot) => self.in_flight.push_back((slot, tag)),
            Err(e) => self.fail(e),
        }
    }

    /// Records a chunk published elsewhere (`serde()`'s chunks, which own
    /// their blocks), known by `tag`.
    #[cfg(feature = "serde")]
    pub(crate) fn push(&mut self, slot: u32, tag: T) {
        self.in_flight.push_back((slot, tag));
    }

    /// Records a chunk published elsewhere to be collected before every
    /// chunk in flight: a half of a split chunk, which an in-order map must
    /// read before the chunks after it.
    #[cfg(feature = "serde")]
    pub(crate) fn push_next(&mut self, slot: u32, tag: T) {
        debug_assert_eq!(self.order, Collect::InOrder);
        self.in_flight.push_front((slot, tag));
    }

    /// Records the map's first error and halts.
    pub(crate) fn fail(&mut self, e: Error) {
        self.error.get_or_insert(e);
        self.halted = true;
    }

    /// Stops submitting without an error.
    pub(crate) fn halt(&mut self) {
        self.halted = true;
    }

    pub(crate) fn is_halted(&self) -> bool {
        self.halted
    }

    /// The next finished or withdrawn chunk; `all_submitted`: nothing more
    /// will be pushed. `None` once nothing is in flight.
    pub(crate) fn next(&mut self, all_submitted: bool) -> Option<Collected<T>> {
        let all_submitted = all_submitted || self.halted;
        let newest = self.order == Collect::NewestLast && all_submitted;
        let (slot, tag) = if newest {
            self.in_flight.pop_back()?
        } else {
            self.in_flight.pop_front()?
        };
        let layout = self.core.layout();
        if self.halted && layout.slot(slot).cancel() {
            self.core.release_slot(slot);
            return Some(Collected::Withdrawn(tag));
        }
        // Cannot hang on a dead worker: the supervisor finishes its slot.
        let spin = self.order == Collect::InOrder || !all_submitted;
        layout.slot(slot).wait_done_with(spin, None);
        Some(Collected::Done(slot, tag))
    }

    /// The map's result, once [`next`](Self::next) has returned `None`.
    pub(crate) fn finish(self) -> Result<(), Error> {
        debug_assert!(self.in_flight.is_empty());
        self.error.map_or(Ok(()), Err)
    }
}
