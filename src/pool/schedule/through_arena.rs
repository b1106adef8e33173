//! Maps through the arena: the parent copies each chunk's input into an arena
//! block and its output out, overlapping both with the workers.

// Unsafe code: copies a map's raw buffers through the arena.
#![allow(unsafe_code)]

use super::layout::{too_large, MapLayout};
use super::map::MapCall;
use super::memory::prefault;
use super::window::{Collect, Collected, Window};
use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::progress::Progress;
use crate::shm::arena::Block;
use crate::sync::slot::TaskDesc;
use std::ops::Range;

/// The caller's buffers of (part of) a map: `len` inputs at `src`, room for
/// `len` outputs at `dst`, under [`map_raw`](super::map_raw)'s contract.
#[derive(Debug, Clone, Copy)]
pub(super) struct Buffers {
    pub(super) src: *const u8,
    pub(super) dst: *mut u8,
    pub(super) len: usize,
}

// SAFETY: the buffers are handed to another thread only by `through_arena`,
// which gives the two threads disjoint parts and joins the second before the
// caller's borrow ends.
unsafe impl Send for Buffers {}

impl Buffers {
    /// Input elements `range` (inside `0..len`, starting on a chunk
    /// boundary) and their outputs.
    pub(super) fn part(self, range: Range<usize>, call: &MapCall<'_>) -> Buffers {
        debug_assert!(range.start <= range.end && range.end <= self.len);
        Buffers {
            src: self.src.wrapping_add(range.start * call.input.size),
            dst: self
                .dst
                .wrapping_add(call.outputs(range.start) * call.output.size),
            len: range.len(),
        }
    }
}

/// The arena path of [`map_raw`](super::map_raw) (same contract for
/// `buffers`): a large map uses two parent threads, since the parent's copies
/// are then the bottleneck.
pub(super) unsafe fn through_arena(
    core: &Core,
    buffers: Buffers,
    call: MapCall<'_>,
    progress: &Progress,
) -> Result<(), Error> {
    let len = buffers.len;
    // map_raw checked both sizes: this does not overflow.
    let bytes = len * call.input.size + call.outputs(len) * call.output.size;
    // Where to cut for two parent threads: on a chunk boundary, so the tasks
    // are the same as without the cut.
    let cut = (len / 2).next_multiple_of(call.chunksize);
    if bytes < PARALLEL_BYTES || cut >= len {
        // SAFETY: forwarded contract.
        return unsafe { map_part(core, buffers, call, progress) };
    }
    let (first, second) = (buffers.part(0..cut, &call), buffers.part(cut..len, &call));
    let (a, b) = std::thread::scope(|scope| {
        let other = scope.spawn(move || {
            let second = second;
            // SAFETY: the second part of both buffers, disjoint from the first.
            unsafe { map_part(core, second, call, progress) }
        });
        // SAFETY: the first part.
        let mine = unsafe { map_part(core, first, call, progress) };
        (
            mine,
            other
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    a.and(b)
}

/// A map at least this large (input + output bytes) uses two parent threads.
const PARALLEL_BYTES: usize = 8 << 20;

/// Maps `buffers` through one arena block ([`map_raw`](super::map_raw)'s
/// contract).
unsafe fn map_part(
    core: &Core,
    buffers: Buffers,
    call: MapCall<'_>,
    progress: &Progress,
) -> Result<(), Error> {
    let len = buffers.len;
    let shape = if call.in_place {
        MapLayout::in_place(len, call.input)
    } else {
        MapLayout::with_outputs(len, call.outputs(len), call.input, call.output)
    }
    .ok_or_else(too_large)?;
    let block = core.alloc_block(shape.total, shape.align)?;
    prefault(buffers.dst, call.outputs(len) * call.output.size);
    // SAFETY: forwarded contract.
    let result = unsafe { run_chunks(core, buffers, call, (block, shape), progress) };
    core.free_block(block);
    result
}

/// Runs the chunks of an arena map ([`map_raw`](super::map_raw)'s contract
/// for `buffers`): copy in, publish, collect in order, copy out.
unsafe fn run_chunks(
    core: &Core,
    Buffers { src, dst, len }: Buffers,
    call: MapCall<'_>,
    (block, shape): (Block, MapLayout),
    progress: &Progress,
) -> Result<(), Error> {
    let layout = core.layout();
    let chunksize = call.chunksize;
    let (in_size, out_size) = (call.input.size, call.output.size);
    let base = Core::block_offset(block);
    let input_at = |i: usize| base + (i * in_size) as u64;
    let output_at = |i: usize| base + (shape.output_start + call.outputs(i) * out_size) as u64;
    let mut window = Window::new(core, Collect::InOrder);
    // The first element not yet submitted: chunks start at multiples of
    // `chunksize`, counted by addition so nothing is multiplied.
    let mut next_start = 0;
    let desc = |start: usize, n: usize, retries_used: u32| TaskDesc {
        entry: call.entry.0,
        input: input_at(start),
        output: output_at(start),
        len: n as u64,
        flags: call.flags() | call.split_flag(),
        retries_used,
        ..TaskDesc::default()
    };
    loop {
        while window.accepts() && next_start < len {
            let start = next_start;
            let n = chunksize.min(len - start);
            // SAFETY: the block holds `len` inputs from `input_at(0)`; this
            // chunk's range is not yet published, so no worker reads it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.add(start * in_size),
                    layout.at(input_at(start)),
                    n * in_size, // at most len * in_size, which map_raw checked
                );
            }
            window.submit(desc(start, n, 0), call.context, (start, n, 0));
            next_start += chunksize.min(len - start);
        }
        match window.next(next_start == len) {
            None => break,
            Some(Collected::Withdrawn(_)) => {}
            Some(Collected::Done(slot, (start, n, used))) => {
                match core.read_outcome::<()>(slot, 0) {
                    Ok(()) if !window.is_halted() => {
                        progress.advance(n);
                        // SAFETY: the worker wrote `n` outputs at output_at(start)
                        // before DONE (observed with Acquire); `dst` has room for
                        // `len` ≥ start + n.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                layout.at(output_at(start)),
                                dst.add(call.outputs(start) * out_size),
                                call.outputs(n) * out_size,
                            );
                        }
                    }
                    Ok(()) => {}
                    // The inputs are still in the block: a worker only reads them.
                    Err(failure) => {
                        let range = start..start + n;
                        match call.halves(core, &failure, &range, used) {
                            Some([a, b]) if !window.is_halted() => {
                                let tag_a = (a.start, a.len(), used + 1);
                                let tag_b = (b.start, b.len(), used + 1);
                                window.submit(
                                    desc(a.start, a.len(), used + 1),
                                    call.context,
                                    tag_a,
                                );
                                window.submit(
                                    desc(b.start, b.len(), used + 1),
                                    call.context,
                                    tag_b,
                                );
                            }
                            _ => window.fail(Error::from(failure).covering(range)),
                        }
                    }
                }
                core.release_slot(slot);
            }
        }
    }
    window.finish()
}
