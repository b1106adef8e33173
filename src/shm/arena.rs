//! First-fit allocation of byte ranges in the segment's payload region.
//!
//! Only the parent allocates and frees (workers receive offsets in task slots),
//! so this is a plain single-process structure behind the pool's mutex. First
//! fit from the lowest offset keeps reusing the same pages across calls, which
//! matters: touching a fresh shared page costs about a microsecond, more than
//! squaring the 512 `f64`s it holds (`docs/PERFORMANCE.md`, "Figures the design
//! relies on").

use std::collections::BTreeMap;

/// Every block starts on a cache line, so two blocks never share one.
pub(crate) const MIN_ALIGN: usize = 64;

/// A range handed out by [`Arena::alloc`]; give it back with [`Arena::free`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Block {
    /// Offset from the start of the arena region.
    pub(crate) offset: usize,
    /// Length in bytes (rounded up to [`MIN_ALIGN`]).
    pub(crate) len: usize,
}

/// Free ranges of a region of `capacity` bytes, keyed by start, coalesced.
#[derive(Debug)]
pub(crate) struct Arena {
    free: BTreeMap<usize, usize>,
    capacity: usize,
}

impl Arena {
    /// An arena managing `[0, capacity)`, all free.
    pub(crate) fn new(capacity: usize) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Arena { free, capacity }
    }

    /// The lowest free range of `len` bytes aligned to `align` (raised to
    /// [`MIN_ALIGN`]), or `None` if no free range is large enough.
    pub(crate) fn alloc(&mut self, len: usize, align: usize) -> Option<Block> {
        let align = align.max(MIN_ALIGN);
        let len = len.max(1).checked_next_multiple_of(MIN_ALIGN)?;
        let (start, free_len, at) = self.free.iter().find_map(|(&start, &free_len)| {
            let at = start.checked_next_multiple_of(align)?;
            (at.checked_add(len)? <= start + free_len).then_some((start, free_len, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        let end = at + len;
        if end < start + free_len {
            self.free.insert(end, start + free_len - end);
        }
        Some(Block { offset: at, len })
    }

    /// Returns `block` to the free ranges, merging it with its neighbours.
    pub(crate) fn free(&mut self, block: Block) {
        let (mut start, mut len) = (block.offset, block.len);
        debug_assert!(start + len <= self.capacity);
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back() {
            debug_assert!(prev + prev_len <= start, "double free");
            if prev + prev_len == start {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
    }

    /// Bytes free in total.
    #[cfg(test)]
    pub(crate) fn free_bytes(&self) -> usize {
        self.free.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_low_offsets_and_coalesces() {
        let mut arena = Arena::new(1 << 20);
        let a = arena.alloc(100, 8).unwrap();
        let b = arena.alloc(4096, 4096).unwrap();
        let c = arena.alloc(1, 1).unwrap();
        assert_eq!(
            a,
            Block {
                offset: 0,
                len: 128
            }
        );
        assert_eq!(b.offset % 4096, 0);
        assert!(
            c.offset >= 128 && c.offset < b.offset,
            "fills the alignment gap"
        );
        arena.free(a);
        assert_eq!(arena.alloc(64, 1).unwrap().offset, 0, "lowest first");
        arena.free(Block { offset: 0, len: 64 });
        arena.free(b);
        arena.free(c);
        assert_eq!(arena.free_bytes(), 1 << 20);
        assert_eq!(arena.free.len(), 1, "fully coalesced");
    }

    #[test]
    fn exhaustion_is_none_not_a_panic() {
        let mut arena = Arena::new(4096);
        let all = arena.alloc(4096, 64).unwrap();
        assert_eq!(arena.alloc(1, 1), None);
        assert_eq!(arena.alloc(usize::MAX, 1), None);
        arena.free(all);
        assert!(arena.alloc(4096, 64).is_some());
    }

    #[test]
    fn random_alloc_free_never_overlaps() {
        let mut arena = Arena::new(1 << 16);
        let mut live: Vec<Block> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..if cfg!(miri) { 200 } else { 5000 } {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed % 3 == 0 && !live.is_empty() {
                arena.free(live.swap_remove(seed as usize % live.len()));
            } else if let Some(b) = arena.alloc((seed % 3000) as usize, 1 << (seed % 8)) {
                assert!(live
                    .iter()
                    .all(|o| b.offset + b.len <= o.offset || o.offset + o.len <= b.offset));
                live.push(b);
            }
        }
        let used: usize = live.iter().map(|b| b.len).sum();
        assert_eq!(arena.free_bytes() + used, 1 << 16);
    }
}
