//! Maps whose data the workers reach where it lies: in the pool's segment,
//! in the shared heap (`SharedAlloc`), or in the caller's memory. Only task
//! descriptions travel.

use super::map::MapCall;
use super::window::{Collect, Collected, Window};
use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::progress::Progress;
use crate::remote::STAGE_ALIGN;
use crate::sync::slot::{
    TaskDesc, HEAP_FRESH_OUTPUT, HEAP_INPUT, HEAP_OUTPUT, REMOTE_INPUT, REMOTE_OUTPUT,
};
use std::ops::Range;
use std::sync::atomic::Ordering;

/// Below this (input + output bytes), a map over the caller's memory copies
/// through a small arena block instead: a cached `memcpy` in the parent is
/// several times faster than `process_vm_readv`/`writev` (32 against 6.5 GB/s
/// here, `docs/PERFORMANCE.md`, "Zero-copy maps"), and the block it uses is
/// bounded by this size.
pub(crate) const SMALL_MAP_BYTES: usize = 2 << 20;

/// Where the workers find `bytes` bytes at `ptr`: in the segment, in the
/// shared heap, or in the caller's memory if they can reach it; `None`: only
/// through the arena.
pub(super) fn place_of(core: &Core, ptr: *const u8, bytes: usize, align: usize) -> Option<Side> {
    if let Some(offset) = core.layout().offset_of(ptr, bytes) {
        return Some(Side::At(Place::Segment(offset)));
    }
    if !core.heap_refused.load(Ordering::Relaxed) {
        if let Some(offset) = crate::shared_alloc::map_offset(ptr, bytes, align) {
            return Some(Side::Heap(offset));
        }
    }
    (core.zero_copy() && align <= STAGE_ALIGN).then_some(Side::At(Place::Caller(ptr as u64)))
}

/// One side of a map as the synchronous maps see it: a [`Place`], or in the
/// shared heap at this offset (`SharedAlloc`), which each worker reaches
/// through its own shared view.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    At(Place),
    Heap(u64),
}

impl Side {
    /// Whether the workers reach this side in the caller's memory.
    pub(super) fn in_caller(self) -> bool {
        matches!(self, Side::At(Place::Caller(_)))
    }

    /// Whether this side lies in the shared heap.
    pub(super) fn in_heap(self) -> bool {
        matches!(self, Side::Heap(_))
    }

    /// The side `bytes` further on, and its `flags` bit (`remote_flag` for
    /// the caller's memory, `heap_flag` for the heap).
    fn advance(self, bytes: usize, remote_flag: u32, heap_flag: u32) -> (u64, u32) {
        match self {
            Side::At(place) => place.advance(bytes, remote_flag),
            Side::Heap(offset) => (offset + bytes as u64, heap_flag),
        }
    }
}

/// Where one side of a map lies, as a worker finds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place {
    /// In the pool's segment, at this offset (a `SharedVec`).
    Segment(u64),
    /// In the caller's own memory, at this address (`pool::zero_copy`).
    Caller(u64),
}

impl Place {
    /// The place `bytes` further on, the `flags` bit that names a caller side,
    /// and the value for the task description.
    fn advance(self, bytes: usize, remote_flag: u32) -> (u64, u32) {
        match self {
            Place::Segment(offset) => (offset + bytes as u64, 0),
            Place::Caller(addr) => (addr + bytes as u64, remote_flag),
        }
    }
}

/// Where a map reads and writes: element `i` is read at `input + i *
/// input.size` and written at `output + i * output.size` (sizes from the
/// [`MapCall`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) input: Side,
    pub(crate) output: Side,
    /// The output lies in fresh pages of the heap (a new result vector):
    /// workers populate each chunk's output in one call.
    pub(crate) fresh_output: bool,
}

/// Runs `call` over `len` elements where they lie ([`Span`]): only task
/// descriptions travel, no element is copied by the parent.
///
/// Returns the element ranges a worker was refused access to the caller's
/// memory for, having written nothing that cannot be written again: the
/// caller redoes them another way. After the first refusal the remaining
/// chunks are not submitted but returned too.
pub(crate) fn run_where_it_lies(
    core: &Core,
    len: usize,
    call: MapCall<'_>,
    at: Span,
    progress: &Progress,
) -> Result<Vec<Range<usize>>, Error> {
    let chunksize = call.chunksize;
    let mut window = Window::new(core, Collect::NewestLast);
    // The first element not yet submitted: chunks start at multiples of
    // `chunksize`, counted by addition so nothing is multiplied.
    let mut next_start = 0;
    let mut redo: Vec<Range<usize>> = Vec::new();
    let desc = |range: &Range<usize>, retries_used: u32| {
        let (input, remote_in) =
            at.input
                .advance(range.start * call.input.size, REMOTE_INPUT, HEAP_INPUT);
        let (output, remote_out) = at.output.advance(
            call.outputs(range.start) * call.output.size,
            REMOTE_OUTPUT,
            HEAP_OUTPUT,
        );
        TaskDesc {
            entry: call.entry.0,
            input,
            output,
            len: range.len() as u64,
            flags: call.flags()
                | call.split_flag()
                | remote_in
                | remote_out
                | if at.fresh_output {
                    HEAP_FRESH_OUTPUT
                } else {
                    0
                },
            retries_used,
            ..TaskDesc::default()
        }
    };
    loop {
        while window.accepts() && next_start < len {
            let start = next_start;
            let range = start..start + chunksize.min(len - start);
            window.submit(desc(&range, 0), call.context, (range, 0));
            next_start += chunksize.min(len - start);
        }
        match window.next(next_start == len) {
            None => break,
            Some(Collected::Withdrawn((range, _))) => redo.push(range),
            Some(Collected::Done(slot, (range, used))) => {
                match core.read_outcome::<()>(slot, 0) {
                    Ok(()) => progress.advance(range.len()),
                    Err(Failure::AccessRefused(refused)) if !(call.in_place && refused.wrote) => {
                        redo.push(range);
                        window.halt();
                    }
                    Err(failure) => match call.halves(core, &failure, &range, used) {
                        Some([a, b]) if !window.is_halted() => {
                            window.submit(desc(&a, used + 1), call.context, (a, used + 1));
                            window.submit(desc(&b, used + 1), call.context, (b, used + 1));
                        }
                        _ => window.fail(Error::from(failure).covering(range)),
                    },
                }
                core.release_slot(slot);
            }
        }
    }
    let halted = window.is_halted();
    window.finish()?;
    if halted && next_start < len {
        redo.push(next_start..len);
    }
    Ok(redo)
}
