//! The synchronous maps: their entry points for Rust callers, and
//! [`map_raw`], the one path of every synchronous map.

// Unsafe code: maps over raw buffers (`map_raw`).
#![allow(unsafe_code)]

use super::layout::{check_chunksize, check_context, Elem, MapBytes};
use super::memory::prefault;
use super::through_arena::{through_arena, Buffers};
use super::where_it_lies::{place_of, run_where_it_lies, Span, SMALL_MAP_BYTES};
use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::progress::Progress;
use crate::sync::slot::{IN_PLACE, SPLIT};
use crate::task::EntryPoint;
use crate::Pod;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::Ordering;

/// One synchronous map: what runs on each chunk and how elements are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapCall<'a> {
    pub(crate) entry: EntryPoint,
    pub(crate) input: Elem,
    pub(crate) output: Elem,
    pub(crate) chunksize: usize,
    /// The outputs overwrite the inputs (`map_inplace`; `entry` is an
    /// in-place entry point and the input and output pointers are equal).
    pub(crate) in_place: bool,
    /// Each chunk writes one output element, not one per input
    /// (`map_reduce`): chunk `k`'s goes to output index `k`.
    pub(crate) fold: bool,
    /// Bytes written into every chunk's inline slot area for its entry point
    /// to read: a task's bound bytes (`task::context_of`), the C API's
    /// description of the call; empty for a function item. Possibly
    /// uninitialized bytes (a bound value's padding), only ever copied.
    pub(crate) context: &'a [MaybeUninit<u8>],
}

impl<'a> MapCall<'a> {
    /// A map of `T`s to `U`s through `entry`, whose chunks carry `context`.
    fn of<T, U>(
        entry: EntryPoint,
        chunksize: usize,
        in_place: bool,
        context: &'a [MaybeUninit<u8>],
    ) -> Self {
        MapCall {
            entry,
            input: Elem::of::<T>(),
            output: Elem::of::<U>(),
            chunksize,
            in_place,
            fold: false,
            context,
        }
    }
}

impl MapCall<'_> {
    /// How many output elements `n` input elements make, from a chunk
    /// boundary on: one per chunk when folding, else one each. Also the
    /// output index of the element at `n`, a chunk boundary.
    pub(crate) fn outputs(&self, n: usize) -> usize {
        if self.fold {
            n.div_ceil(self.chunksize)
        } else {
            n
        }
    }

    pub(super) fn flags(&self) -> u32 {
        if self.in_place {
            IN_PLACE
        } else {
            0
        }
    }

    /// [`SPLIT`] unless a chunk cannot run twice (in place) or cannot be
    /// cut (a fold writes one output per chunk).
    pub(super) fn split_flag(&self) -> u32 {
        if self.in_place || self.fold {
            0
        } else {
            SPLIT
        }
    }

    /// The two halves to run again when a chunk over `range` failed with
    /// `failure` after `used` retries ([`halves`]), unless its chunks are not
    /// [`SPLIT`].
    pub(super) fn halves(
        &self,
        core: &Core,
        failure: &Failure,
        range: &Range<usize>,
        used: u32,
    ) -> Option<[Range<usize>; 2]> {
        if self.split_flag() == 0 {
            return None;
        }
        halves(core, failure, range, used)
    }
}

/// The two halves to run again when a [`SPLIT`] chunk over `range` failed
/// with `failure` after `used` retries: when its worker died, retries are
/// left, and it has more than one element. So the other elements' results
/// come back, and the one that kills its worker is cornered. Each half is
/// published with `used + 1` retries used, and [`SPLIT`] again; the
/// supervisor runs a one-element chunk again itself.
pub(crate) fn halves(
    core: &Core,
    failure: &Failure,
    range: &Range<usize>,
    used: u32,
) -> Option<[Range<usize>; 2]> {
    let died = matches!(failure, Failure::WorkerDied { .. });
    if !died || used >= core.config.retries || range.len() < 2 {
        return None;
    }
    let mid = range.start + range.len() / 2;
    core.stats.retried();
    Some([range.start..mid, mid..range.end])
}

/// Runs the chunk entry point `entry` (which maps `T`s to `U`s) over `items`
/// in chunks of `chunksize`; results in input order. With `fold` (a fold
/// entry point, `map_reduce`), one value per chunk: chunk `k`'s at index `k`.
pub(crate) fn map_slice<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
    context: &[MaybeUninit<u8>],
    fold: bool,
) -> Result<Vec<U>, Error> {
    let call = MapCall {
        fold,
        ..MapCall::of::<T, U>(entry, chunksize, false, context)
    };
    map_to_vec(core, items, call)
}

/// Runs `call` (from `T`s to `U`s, not in place) over `items` into a new
/// vector of its `call.outputs(len)` results.
fn map_to_vec<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    call: MapCall<'_>,
) -> Result<Vec<U>, Error> {
    debug_assert!(call.input == Elem::of::<T>() && call.output == Elem::of::<U>());
    check(core, &call)?; // before the output is allocated
    let outputs = call.outputs(items.len());
    let mut out: Vec<U> = Vec::with_capacity(outputs);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: `items` holds `len` T's, borrowed for the whole call; `dst` has
    // room for the call's `outputs` U's, apart from `items`, and only this
    // call writes it.
    unsafe { map_raw(core, items.as_ptr().cast(), dst, items.len(), call) }?;
    // SAFETY: map_raw returned Ok: all `outputs` results were written.
    unsafe { out.set_len(outputs) };
    Ok(out)
}

/// `data[i] = f(data[i])` through the in-place entry point `entry`.
pub(crate) fn map_inplace<T: Pod>(
    core: &Core,
    data: &mut [T],
    chunksize: usize,
    entry: EntryPoint,
    context: &[MaybeUninit<u8>],
) -> Result<(), Error> {
    let call = MapCall::of::<T, T>(entry, chunksize, true, context);
    let ptr = data.as_mut_ptr().cast::<u8>();
    // SAFETY: `data` is borrowed mutably for the whole call.
    unsafe { map_raw(core, ptr, ptr, data.len(), call) }
}

/// `output[i] = f(input[i])` through the map entry point `entry`; the
/// lengths were checked to match.
pub(crate) fn map_into<T: Pod, U: Pod>(
    core: &Core,
    input: &[T],
    output: &mut [U],
    chunksize: usize,
    entry: EntryPoint,
    context: &[MaybeUninit<u8>],
) -> Result<(), Error> {
    let call = MapCall::of::<T, U>(entry, chunksize, false, context);
    debug_assert_eq!(input.len(), output.len());
    let (src, dst) = (input.as_ptr().cast(), output.as_mut_ptr().cast());
    // SAFETY: both borrowed for the whole call; `&mut` keeps them apart.
    unsafe { map_raw(core, src, dst, input.len(), call) }
}

fn check(core: &Core, call: &MapCall<'_>) -> Result<(), Error> {
    check_chunksize(core, call.chunksize)?;
    check_context(call.context)
}

/// The one path of every synchronous map: `dst[i] = f(src[i])` for `i < len`,
/// where the data lies if the workers can reach it, else through the arena.
/// The C API calls it directly.
///
/// # Safety
/// `src` holds `len` initialized input elements and `dst` has room for `len`
/// output elements (laid out as `call` says, aligned for them), both valid
/// until this returns; nothing else writes `src` or accesses `dst`
/// meanwhile; they are the same pointer if `call.in_place`, else they do not
/// overlap. `call.entry` maps such elements.
pub(crate) unsafe fn map_raw(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
) -> Result<(), Error> {
    check(core, &call)?;
    if len == 0 {
        return Ok(());
    }
    let progress = Progress::start(core, Some(len));
    // SAFETY: forwarded contract.
    unsafe { map_raw_with(core, src, dst, len, call, &progress) }?;
    progress.finish();
    Ok(())
}

/// [`map_raw`] (same contract, checked), advancing `progress` as chunks
/// finish.
unsafe fn map_raw_with(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
    progress: &Progress,
) -> Result<(), Error> {
    let buffers = Buffers { src, dst, len };
    // The one size check, before either path (every product below is bounded
    // by these).
    let bytes = MapBytes::check_counts(
        len,
        call.outputs(len),
        call.input,
        call.output,
        src,
        dst.cast_const(),
    )?;
    let input = place_of(core, src, bytes.input, call.input.align);
    let output = place_of(core, dst.cast_const(), bytes.output, call.output.align);
    let direct = input
        .zip(output)
        .filter(|&(i, o)| !(i.in_caller() || o.in_caller()) || bytes.total >= SMALL_MAP_BYTES);
    let Some((input, output)) = direct else {
        // SAFETY: forwarded contract.
        return unsafe { through_arena(core, buffers, call, progress) };
    };
    if output.in_caller() {
        // Workers would fault the fresh output in one 4 KiB page at a time
        // inside process_vm_writev; one bulk fault (huge pages where allowed)
        // is faster. Measured in docs/PERFORMANCE.md, "Zero-copy maps".
        prefault(dst, bytes.output);
    }
    let span = Span {
        input,
        output,
        fresh_output: output.in_heap() && crate::shared_alloc::is_fresh(dst.cast_const()),
    };
    let redo = run_where_it_lies(core, len, call, span, progress)?;
    if !redo.is_empty() {
        // A worker could not reach the shared heap, or the kernel refused it
        // the caller's memory: from now on maps copy instead, and what was
        // refused is done that way now.
        if input.in_heap() || output.in_heap() {
            core.heap_refused.store(true, Ordering::Relaxed);
        }
        if input.in_caller() || output.in_caller() {
            core.disable_zero_copy();
        }
    }
    for range in redo {
        // SAFETY: a sub-range of the caller's buffers, which no worker
        // touches any more (every chunk of the first pass is finished).
        unsafe { through_arena(core, buffers.part(range, &call), call, progress) }?;
    }
    Ok(())
}
