//! How a call is cut into chunks and laid out in memory, for `apply`, `map`
//! and `imap` alike: the chunk size, the window of chunks in flight, the
//! elements and the byte layout of a task's area or a map's block.

use crate::error::Error;
use crate::pool::core::Core;
use crate::shm::layout::PAGE;
use crate::sync::slot::INLINE_CAPACITY;
use std::mem::{align_of, size_of, MaybeUninit};

/// At most this many chunks of one map or imap are in flight (bounds slot
/// usage when chunks are tiny; with the default chunk size a map has far
/// fewer).
pub(crate) const WINDOW: usize = 1024;

/// At most this many payload bytes of one imap are in flight.
const WINDOW_BYTES: usize = 64 << 20;

/// How many chunks of an imap, each `chunk_bytes` (input + output) large, may
/// be in flight in a pool of `processes` workers: enough to keep every worker
/// busy twice over, but at most [`WINDOW`] chunks (which wins in a pool of
/// more than `WINDOW / 2` workers) and, beyond those two per worker, at most
/// [`WINDOW_BYTES`].
pub(crate) fn imap_window(chunk_bytes: usize, processes: usize) -> usize {
    (WINDOW_BYTES / chunk_bytes.max(1))
        .max(processes.saturating_mul(2))
        .min(WINDOW)
}

/// CPython's default: `ceil(len / (4 * processes))`, at least 1.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}

/// The size and alignment of one input or output element: a Rust type's, or
/// what a C caller gives at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elem {
    pub(crate) size: usize,
    pub(crate) align: usize,
}

impl Elem {
    pub(crate) const fn of<T>() -> Elem {
        Elem {
            size: size_of::<T>(),
            align: align_of::<T>(),
        }
    }

    /// An element of `size` bytes whose type is unknown: aligned as far as an
    /// array of them can be (the largest power of two dividing `size`, at
    /// most 64).
    pub(crate) fn of_size(size: usize) -> Elem {
        let align = if size == 0 {
            1
        } else {
            1 << size.trailing_zeros().min(6)
        };
        Elem { size, align }
    }
}

/// The byte sizes of one map's input and output, checked once before any
/// path runs: each product `count × size` without overflow, each at most
/// `isize::MAX` (no allocation is larger, so a larger "array" is a caller's
/// mistake, not memory to write), their sum without overflow, and neither
/// range wrapping around the address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapBytes {
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// `input + output`.
    pub(crate) total: usize,
}

impl MapBytes {
    /// `len` inputs at `src` and `len` outputs at `dst`.
    pub(crate) fn check(
        len: usize,
        input: Elem,
        output: Elem,
        src: *const u8,
        dst: *const u8,
    ) -> Result<MapBytes, Error> {
        Self::check_counts(len, len, input, output, src, dst)
    }

    /// `inputs` inputs at `src` and `outputs` outputs at `dst`.
    pub(crate) fn check_counts(
        inputs: usize,
        outputs: usize,
        input: Elem,
        output: Elem,
        src: *const u8,
        dst: *const u8,
    ) -> Result<MapBytes, Error> {
        let bytes = |n: usize, elem: Elem, at: *const u8| {
            n.checked_mul(elem.size)
                .filter(|&b| isize::try_from(b).is_ok())
                .filter(|&b| (at as usize).checked_add(b).is_some())
        };
        match (bytes(inputs, input, src), bytes(outputs, output, dst)) {
            (Some(input), Some(output)) => Ok(MapBytes {
                input,
                output,
                // Both at most isize::MAX: the sum fits.
                total: input + output,
            }),
            _ => Err(too_large()),
        }
    }
}

/// The byte layout of one area of tasks: inputs first, outputs after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapLayout {
    pub(crate) output_start: usize,
    pub(crate) total: usize,
    pub(crate) align: usize,
}

impl MapLayout {
    /// One block for all the chunks of a map: the outputs start on a cache
    /// line of their own, apart from the inputs the parent may still be
    /// copying in while workers write outputs.
    pub(crate) fn new(len: usize, input: Elem, output: Elem) -> Option<MapLayout> {
        Self::with_outputs(len, len, input, output)
    }

    /// [`new`](Self::new) for `inputs` input elements, then `outputs` output
    /// elements (a fold's one per chunk).
    pub(crate) fn with_outputs(
        inputs: usize,
        outputs: usize,
        input: Elem,
        output: Elem,
    ) -> Option<MapLayout> {
        let align = input.align.max(output.align).max(64);
        let block = Self::inputs_then_outputs(inputs, outputs, input, output, align)?;
        Some(MapLayout {
            align: Self::block_align(block.total, align),
            ..block
        })
    }

    /// One region for an in-place map: the outputs overwrite the inputs.
    pub(crate) fn in_place(len: usize, elem: Elem) -> Option<MapLayout> {
        let total = len.checked_mul(elem.size)?;
        Some(MapLayout {
            output_start: 0,
            total,
            align: Self::block_align(total, elem.align.max(64)),
        })
    }

    /// The area of one task, `len` inputs then `len` outputs, packed: an
    /// `apply`, or one chunk of an `imap`. The parent writes the inputs before
    /// the task is published and the worker the outputs after, never both at
    /// once, so nothing is gained by a gap between them.
    pub(crate) fn task(len: usize, input: Elem, output: Elem) -> Option<MapLayout> {
        Self::inputs_then_outputs(len, len, input, output, input.align.max(output.align))
    }

    /// `inputs` inputs, then `outputs` outputs from the next multiple of
    /// `align`.
    fn inputs_then_outputs(
        inputs: usize,
        outputs: usize,
        input: Elem,
        output: Elem,
        align: usize,
    ) -> Option<MapLayout> {
        let output_start = inputs
            .checked_mul(input.size)?
            .checked_next_multiple_of(align)?;
        let total = output_start.checked_add(outputs.checked_mul(output.size)?)?;
        Some(MapLayout {
            output_start,
            total,
            align,
        })
    }

    /// Whether the area fits in a slot's inline area (which is aligned to 64)
    /// from byte `start` on, and so needs no arena block.
    pub(crate) fn fits_inline(&self, start: usize) -> bool {
        start.saturating_add(self.total) <= INLINE_CAPACITY && self.align <= 64
    }

    /// Large blocks start on a page: fewer pages touched, cleaner for THP.
    fn block_align(total: usize, align: usize) -> usize {
        if total >= 1 << 20 {
            align.max(PAGE)
        } else {
            align
        }
    }
}

/// The error of a call whose area would not fit in the address space.
pub(super) fn too_large() -> Error {
    Error::invalid("map input too large")
}

/// A chunk's context must fit its slot's inline area.
pub(crate) fn check_context(context: &[MaybeUninit<u8>]) -> Result<(), Error> {
    if context.len() > INLINE_CAPACITY {
        return Err(Error::invalid(format!(
            "a map's bound values take {} bytes, and its chunks carry at most \
             {INLINE_CAPACITY} (less 8 for each `fn` pointer given as a function): put a large \
             value in an `shmpool::Array` and bind its handle, or use `apply` (no limit) or \
             `pool.serde()`",
            context.len()
        )));
    }
    Ok(())
}

/// `Err` unless the pool accepts work and `chunksize` is at least 1.
pub(crate) fn check_chunksize(core: &Core, chunksize: usize) -> Result<(), Error> {
    core.ensure_running()?;
    if chunksize == 0 {
        return Err(Error::invalid("chunksize must be at least 1"));
    }
    Ok(())
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
        let m = MapLayout::new(3, Elem::of::<u8>(), Elem::of::<f64>()).unwrap();
        assert_eq!(m.output_start, 64);
        assert_eq!(m.total, 64 + 24);
        let f64s = Elem::of::<f64>();
        let big = MapLayout::new(1 << 20, f64s, f64s).unwrap();
        assert_eq!(big.align, 4096);
        let u64s = Elem::of::<u64>();
        assert_eq!(MapLayout::new(usize::MAX / 4, u64s, u64s), None);
    }

    #[test]
    fn a_task_area_is_packed_and_inline_up_to_the_slots_capacity() {
        let (u8s, u64s) = (Elem::of::<u8>(), Elem::of::<u64>());
        let one = MapLayout::task(3, u8s, u64s).unwrap();
        assert_eq!((one.output_start, one.total, one.align), (8, 32, 8));
        assert!(one.fits_inline(0));
        // 12 + 12 u64s fill the 192 inline bytes exactly; one more does not
        // fit, nor do they after a context.
        let twelve = MapLayout::task(12, u64s, u64s).unwrap();
        assert!(twelve.fits_inline(0) && !twelve.fits_inline(8));
        assert!(!MapLayout::task(13, u64s, u64s).unwrap().fits_inline(0));
        let over_aligned = Elem {
            size: 128,
            align: 128,
        };
        assert!(!MapLayout::task(1, over_aligned, u8s)
            .unwrap()
            .fits_inline(0));
        assert_eq!(MapLayout::task(usize::MAX / 4, u64s, u64s), None);
    }

    #[test]
    fn the_imap_window_is_bounded_in_chunks_and_in_bytes() {
        assert_eq!(imap_window(16, 2), WINDOW);
        assert_eq!(imap_window(1 << 20, 2), 64);
        assert_eq!(imap_window(1 << 30, 2), 4);
        assert_eq!(imap_window(0, 2), WINDOW);
    }

    #[test]
    fn the_imap_window_of_a_pool_of_more_than_512_processes_is_capped_not_a_panic() {
        assert_eq!(imap_window(16, 600), WINDOW);
        assert_eq!(imap_window(1 << 30, 600), WINDOW);
    }

    #[test]
    fn map_bytes_refuse_wrapping_products_and_ranges() {
        let (b, at) = (Elem::of_size(1), std::ptr::null::<u8>());
        let ok = MapBytes::check(10, b, Elem::of_size(8), at, at).unwrap();
        assert_eq!((ok.input, ok.output, ok.total), (10, 80, 90));
        assert!(MapBytes::check(usize::MAX, b, b, at, at).is_err());
        // n * 2 wraps to 2.
        assert!(MapBytes::check(usize::MAX / 2 + 2, Elem::of_size(2), b, at, at).is_err());
        assert!(MapBytes::check(isize::MAX as usize + 1, b, b, at, at).is_err());
        // A range that would run past the end of the address space.
        let high = (usize::MAX - 4) as *const u8;
        assert!(MapBytes::check(8, b, b, at, high).is_err());
    }
}
