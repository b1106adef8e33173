//! Chunked `map`: how a slice becomes tasks and the results come back in order.
//!
//! The input and output of the whole map get one arena block. The parent copies
//! chunk after chunk into it and publishes each at once (workers start on chunk
//! 0 while the parent copies chunk 1); it keeps at most [`WINDOW`] chunks in
//! flight, and collects them in input order, copying each chunk's output into
//! the result vector as soon as it is done, so copy-in, compute and copy-out
//! overlap. Results land in place: chunk i's output is written by exactly one
//! worker into its own range of the block.

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::job::{Chunk, Job};
use crate::pool::slot::{Outcome, TaskDesc, IN_PLACE};
use crate::shm::arena::Block;
use crate::task::EntryPoint;
use crate::Pod;
use std::collections::VecDeque;
use std::mem::{align_of, size_of, MaybeUninit};

/// At most this many chunks of one map are in flight (bounds slot usage when
/// chunks are tiny; with the default chunk size a map has far fewer).
pub(crate) const WINDOW: usize = 1024;

/// CPython's default: `ceil(len / (4 * processes))`, at least 1.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}

/// The byte layout of one map's block: inputs first, outputs after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapLayout {
    pub(crate) output_start: usize,
    pub(crate) total: usize,
    pub(crate) align: usize,
}

impl MapLayout {
    pub(crate) fn new<T, U>(len: usize) -> Option<MapLayout> {
        let input_bytes = len.checked_mul(size_of::<T>())?;
        let align = align_of::<T>().max(align_of::<U>()).max(64);
        let output_start = input_bytes.checked_next_multiple_of(align)?;
        let total = output_start.checked_add(len.checked_mul(size_of::<U>())?)?;
        // Large blocks start on a page: fewer pages touched, cleaner for THP.
        let align = if total >= 1 << 20 {
            align.max(4096)
        } else {
            align
        };
        Some(MapLayout {
            output_start,
            total,
            align,
        })
    }
}

/// Runs the chunk entry point `entry` (which maps `T`s to `U`s) over `items`
/// in chunks of `chunksize`; results in input order.
pub(crate) fn map_slice<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
) -> Result<Vec<U>, Error> {
    core.ensure_running()?;
    if chunksize == 0 {
        return Err(Error::invalid("chunksize must be at least 1"));
    }
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let len = items.len();
    let mut out: Vec<U> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let bytes = len * (size_of::<T>() + size_of::<U>());
    // Where to cut for two parent threads: on a chunk boundary, so the tasks
    // are the same as without the cut.
    let cut = (len / 2).next_multiple_of(chunksize);
    if bytes >= PARALLEL_BYTES && cut < len {
        // The parent's copies (in, out, and faulting the fresh output) are
        // the bottleneck of a large map: two threads share them.
        let (items_a, items_b) = items.split_at(cut);
        let (out_a, out_b) = spare.split_at_mut(cut);
        let (a, b) = std::thread::scope(|scope| {
            let other = scope.spawn(|| map_part(core, items_b, chunksize, entry, out_b));
            let mine = map_part(core, items_a, chunksize, entry, out_a);
            (
                mine,
                other
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        a.and(b)?;
    } else {
        map_part(core, items, chunksize, entry, spare)?;
    }
    // SAFETY: every chunk returned, so all `len` elements were written.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// A map at least this large (input + output bytes) uses two parent threads.
const PARALLEL_BYTES: usize = 8 << 20;

/// Maps `items` into `out` (same length) through one arena block.
fn map_part<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
    out: &mut [MaybeUninit<U>],
) -> Result<(), Error> {
    let shape =
        MapLayout::new::<T, U>(items.len()).ok_or_else(|| Error::invalid("map input too large"))?;
    let block = core.alloc_block(shape.total, shape.align)?;
    prefault(out.as_mut_ptr().cast(), std::mem::size_of_val(out));
    let result = run_chunks::<T, U>(core, items, chunksize, entry, block, shape, out);
    core.free_block(block);
    result
}

/// Submits every chunk of `items` at once and returns the job without waiting
/// (`map_async`). The input is copied into the pool's arena first, so the
/// caller's slice is free when this returns. `flags` go into every chunk's
/// description (`slot::WATCHED`).
pub(crate) fn submit_slice<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
    flags: u32,
) -> Result<Job, Error> {
    core.ensure_running()?;
    if chunksize == 0 {
        return Err(Error::invalid("chunksize must be at least 1"));
    }
    if items.is_empty() {
        return Ok(Job::new(None));
    }
    let len = items.len();
    let shape = MapLayout::new::<T, U>(len).ok_or_else(|| Error::invalid("map input too large"))?;
    let block = core.alloc_block(shape.total, shape.align)?;
    let base = Core::block_offset(block);
    // SAFETY: the fresh block holds `len` T's from its start; no worker sees it
    // before the chunks are published.
    unsafe {
        std::ptr::copy_nonoverlapping(items.as_ptr(), core.layout().at(base).cast::<T>(), len)
    };
    let mut job = Job::new(Some(block));
    for start in (0..len).step_by(chunksize) {
        let n = chunksize.min(len - start);
        let submitted = core.alloc_slot().and_then(|slot| {
            let output = base + (shape.output_start + start * size_of::<U>()) as u64;
            core.describe(
                slot,
                TaskDesc {
                    entry: entry.0,
                    input: base + (start * size_of::<T>()) as u64,
                    output,
                    len: n as u64,
                    flags,
                    ..TaskDesc::default()
                },
            );
            match core.submit(slot) {
                Ok(()) => Ok(Chunk {
                    slot,
                    output,
                    len: n,
                }),
                Err(e) => {
                    core.release_slot(slot);
                    Err(e)
                }
            }
        });
        match submitted {
            Ok(chunk) => job.push(chunk),
            Err(e) => {
                core.dispose(job);
                return Err(e);
            }
        }
    }
    Ok(job)
}

/// Where a map over data already in the segment reads and writes: element
/// `i` is read at `input + i * in_size` and written at `output + i * out_size`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InSegment {
    pub(crate) input: u64,
    pub(crate) in_size: usize,
    pub(crate) output: u64,
    pub(crate) out_size: usize,
}

/// Runs `entry` over `len` elements that already live in the segment (a
/// `SharedVec`): only task descriptions travel, no element is copied. At most
/// [`WINDOW`] chunks are in flight; on the first failure the rest are
/// withdrawn and the running ones awaited (they write into the caller's
/// vector, which must not be touched before they finish).
pub(crate) fn run_in_segment(
    core: &Core,
    len: usize,
    chunksize: usize,
    entry: EntryPoint,
    at: InSegment,
) -> Result<(), Error> {
    core.ensure_running()?;
    if chunksize == 0 {
        return Err(Error::invalid("chunksize must be at least 1"));
    }
    let layout = core.layout();
    let chunks = len.div_ceil(chunksize);
    let mut in_flight: VecDeque<u32> = VecDeque::new();
    let mut next_chunk = 0;
    let mut error: Option<Error> = None;
    loop {
        while error.is_none() && next_chunk < chunks && in_flight.len() < WINDOW {
            let start = next_chunk * chunksize;
            let n = chunksize.min(len - start);
            let submitted = core.alloc_slot().and_then(|slot| {
                core.describe(
                    slot,
                    TaskDesc {
                        entry: entry.0,
                        input: at.input + (start * at.in_size) as u64,
                        output: at.output + (start * at.out_size) as u64,
                        len: n as u64,
                        flags: if at.input == at.output { IN_PLACE } else { 0 },
                        ..TaskDesc::default()
                    },
                );
                core.submit(slot)
                    .map(|()| slot)
                    .inspect_err(|_| core.release_slot(slot))
            });
            match submitted {
                Ok(slot) => in_flight.push_back(slot),
                Err(e) => error = Some(e),
            }
            next_chunk += 1;
        }
        // Once everything is submitted the parent has nothing to do but wait:
        // it sleeps on the newest chunk without spinning (on 2 CPUs a spinning
        // parent takes time from the workers), and usually finds the older
        // chunks done when it wakes: one wake-up per map instead of one per
        // chunk.
        let all_submitted = error.is_some() || next_chunk == chunks;
        let popped = if all_submitted {
            in_flight.pop_back()
        } else {
            in_flight.pop_front()
        };
        let Some(slot) = popped else {
            break;
        };
        if error.is_some() && layout.slot(slot).cancel() {
            core.release_slot(slot);
            continue;
        }
        layout.slot(slot).wait_done_with(!all_submitted, None);
        if let Err(failure) = core.read_outcome::<()>(slot, 0) {
            error.get_or_insert(failure.into());
        }
        core.release_slot(slot);
    }
    error.map_or(Ok(()), Err)
}

fn run_chunks<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
    block: Block,
    shape: MapLayout,
    out: &mut [MaybeUninit<U>],
) -> Result<(), Error> {
    let layout = core.layout();
    let len = items.len();
    let chunks = len.div_ceil(chunksize);
    let base = Core::block_offset(block);
    let input_at = |i: usize| base + (i * size_of::<T>()) as u64;
    let output_at = |i: usize| base + (shape.output_start + i * size_of::<U>()) as u64;
    let entry = entry.0;

    debug_assert_eq!(out.len(), len);
    let mut in_flight: VecDeque<(u32, usize, usize)> = VecDeque::new();
    let mut next_chunk = 0;
    let mut error: Option<Error> = None;
    loop {
        while error.is_none() && next_chunk < chunks && in_flight.len() < WINDOW {
            let start = next_chunk * chunksize;
            let n = chunksize.min(len - start);
            let slot = match core.alloc_slot() {
                Ok(slot) => slot,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            // SAFETY: the block holds `len` T's from `input_at(0)`; this chunk's
            // range is not yet published, so no worker reads it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    items.as_ptr().add(start),
                    layout.at(input_at(start)).cast::<T>(),
                    n,
                );
            }
            core.describe(
                slot,
                TaskDesc {
                    entry,
                    input: input_at(start),
                    output: output_at(start),
                    len: n as u64,
                    ..TaskDesc::default()
                },
            );
            if let Err(e) = core.submit(slot) {
                core.release_slot(slot);
                error = Some(e);
                break;
            }
            in_flight.push_back((slot, start, n));
            next_chunk += 1;
        }
        let Some((slot, start, n)) = in_flight.pop_front() else {
            break;
        };
        if error.is_some() && core.layout().slot(slot).cancel() {
            core.release_slot(slot);
            continue;
        }
        // Cannot hang on a dead worker: the supervisor finishes its slot.
        layout.slot(slot).wait_done(None);
        match layout.slot(slot).outcome().0 {
            Outcome::Returned if error.is_none() => {
                // SAFETY: the worker wrote `n` U's at output_at(start) before DONE
                // (observed with Acquire); `out` holds `len` ≥ start + n elements.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        layout.at(output_at(start)).cast::<U>(),
                        out.as_mut_ptr().add(start).cast::<U>(),
                        n,
                    );
                }
            }
            Outcome::Returned => {}
            _ => {
                let failure = core
                    .read_outcome::<()>(slot, 0)
                    .expect_err("a failed outcome");
                error.get_or_insert(failure.into());
            }
        }
        core.release_slot(slot);
    }
    error.map_or(Ok(()), Err)
}

/// Below this, a fresh output buffer is left to fault page by page.
const PREFAULT_BYTES: usize = 4 << 20;

/// Faults in a large, fresh output buffer in one call instead of one page
/// fault per 4 KiB as the results are copied in (~1.1 µs each here, more than
/// the copy itself), and asks for huge pages where the kernel allows them.
/// Only advice: if the kernel refuses, the copy faults pages as usual.
fn prefault(ptr: *mut u8, bytes: usize) {
    if bytes < PREFAULT_BYTES {
        return;
    }
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + bytes) / PAGE * PAGE;
    for advice in [libc::MADV_HUGEPAGE, libc::MADV_POPULATE_WRITE] {
        // SAFETY: [start, end) lies inside the caller's allocation; neither advice
        // changes the contents of memory (the buffer is uninitialized anyway).
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunksize_matches_cpython() {
        // CPython: chunksize, extra = divmod(len, 4 * processes); if extra: chunksize += 1
        assert_eq!(default_chunksize(10, 4), 1);
        assert_eq!(default_chunksize(100, 2), 13);
        assert_eq!(default_chunksize(10_000_000, 2), 1_250_000);
        assert_eq!(default_chunksize(0, 2), 1);
        assert_eq!(default_chunksize(1, 8), 1);
    }

    #[test]
    fn map_layout_aligns_outputs_and_rejects_overflow() {
        let m = MapLayout::new::<u8, f64>(3).unwrap();
        assert_eq!(m.output_start, 64);
        assert_eq!(m.total, 64 + 24);
        let big = MapLayout::new::<f64, f64>(1 << 20).unwrap();
        assert_eq!(big.align, 4096);
        assert_eq!(MapLayout::new::<u64, u64>(usize::MAX / 4), None);
    }
}
