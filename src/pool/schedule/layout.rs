//! How a call is cut into chunks and laid out in memory: the chunk size, the
//! window of chunks in flight, the elements and the byte layout of a block.

use crate::error::Error;
use crate::pool::core::Core;
use std::mem::{align_of, size_of};

/// At most this many chunks of one map are in flight (bounds slot usage when
/// chunks are tiny; with the default chunk size a map has far fewer).
pub(crate) const WINDOW: usize = 1024;

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

/// The byte layout of one map's block: inputs first, outputs after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapLayout {
    pub(crate) output_start: usize,
    pub(crate) total: usize,
    pub(crate) align: usize,
}

impl MapLayout {
    pub(crate) fn new(len: usize, input: Elem, output: Elem) -> Option<MapLayout> {
        let input_bytes = len.checked_mul(input.size)?;
        let align = input.align.max(output.align).max(64);
        let output_start = input_bytes.checked_next_multiple_of(align)?;
        let total = output_start.checked_add(len.checked_mul(output.size)?)?;
        Some(MapLayout {
            output_start,
            total,
            align: Self::block_align(total, align),
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

    /// Large blocks start on a page: fewer pages touched, cleaner for THP.
    fn block_align(total: usize, align: usize) -> usize {
        if total >= 1 << 20 {
            align.max(4096)
        } else {
            align
        }
    }
}

pub(super) fn check_chunksize(core: &Core, chunksize: usize) -> Result<(), Error> {
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
}
