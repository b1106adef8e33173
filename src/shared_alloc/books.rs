//! The shared heap's bookkeeping: which page ranges of the region are in use,
//! freed but still resident (warm, kept for reuse), or returned to the system
//! (cold). Plain arithmetic on offsets, in fixed arrays: it allocates nothing
//! and cannot panic, since the allocator calls it with its lock held.

/// The heap's granule: every block starts and ends on a page boundary.
pub(crate) const PAGE: usize = 4096;
/// Cold extents kept apart (sorted, coalesced); beyond this, a punched
/// range's address space is given up (its memory is returned all the same).
const COLD_CAP: usize = 512;
/// Warm blocks kept for reuse, oldest first.
pub(crate) const WARM_CAP: usize = 16;

/// Pages `[start, start + len)` of the region (offsets in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Extent {
    const EMPTY: Extent = Extent { start: 0, len: 0 };

    fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Ranges a free hands back for punching (outside the lock), then for
/// [`Books::settle_cold`].
#[derive(Debug)]
pub(crate) struct Punch {
    pub(crate) items: [Extent; WARM_CAP + 1],
    pub(crate) n: usize,
}

impl Punch {
    fn new() -> Punch {
        Punch {
            items: [Extent::EMPTY; WARM_CAP + 1],
            n: 0,
        }
    }

    fn push(&mut self, e: Extent) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = e;
            self.n += 1;
        }
    }

    pub(crate) fn extents(&self) -> &[Extent] {
        &self.items[..self.n.min(self.items.len())]
    }
}

/// The state of the region's pages. Invariants: everything at or above
/// `top` is cold; cold extents lie below `top`, sorted, apart (never
/// adjacent) and disjoint from warm ones and from blocks in use; a cold page
/// reads as zero.
#[derive(Debug)]
pub(crate) struct Books {
    /// The region's address: alignment is of addresses, not offsets.
    base: usize,
    len: usize,
    top: usize,
    cold: [Extent; COLD_CAP],
    ncold: usize,
    warm: [Extent; WARM_CAP],
    nwarm: usize,
    warm_bytes: usize,
    retain: usize,
    /// Address space given up when the cold list was full.
    pub(crate) lost: usize,
}

/// Removes entry `i` of the `*n` in use at the front of `list`, keeping
/// their order.
fn remove_at(list: &mut [Extent], n: &mut usize, i: usize) {
    list.copy_within(i + 1..*n, i);
    *n -= 1;
}

/// Takes `size` bytes (at most its length) from the front of entry `i`,
/// removing the entry when that is all of it.
fn take_front(list: &mut [Extent], n: &mut usize, i: usize, size: usize) {
    let e = list[i];
    if e.len == size {
        remove_at(list, n, i);
    } else {
        list[i] = Extent {
            start: e.start + size,
            len: e.len - size,
        };
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), if it fits.
pub(crate) fn align_up(x: usize, align: usize) -> Option<usize> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl Books {
    pub(crate) const fn new() -> Books {
        Books {
            base: 0,
            len: 0,
            top: 0,
            cold: [Extent::EMPTY; COLD_CAP],
            ncold: 0,
            warm: [Extent::EMPTY; WARM_CAP],
            nwarm: 0,
            warm_bytes: 0,
            retain: 0,
            lost: 0,
        }
    }

    /// A region of `len` bytes at `base` (page-aligned), all cold, keeping up
    /// to `retain` freed bytes warm.
    pub(crate) fn init(&mut self, base: usize, len: usize, retain: usize) {
        *self = Books::new();
        self.base = base;
        self.len = len;
        self.retain = retain;
    }

    /// Bytes freed and kept resident for reuse.
    pub(crate) fn warm_bytes(&self) -> usize {
        self.warm_bytes
    }

    /// Takes `size` bytes (a multiple of [`PAGE`]) aligned to `align` (a power
    /// of two): the offset, and whether its pages read as zero (cold).
    pub(crate) fn take(&mut self, size: usize, align: usize) -> Option<(usize, bool)> {
        if size == 0 || size % PAGE != 0 || !align.is_power_of_two() {
            return None;
        }
        if align <= PAGE {
            if let Some(start) = self.take_warm(size) {
                return Some((start, false));
            }
        }
        self.take_cold(size, align).map(|start| (start, true))
    }

    /// The smallest warm block that holds `size`, its front cut off.
    fn take_warm(&mut self, size: usize) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in 0..self.nwarm {
            let len = self.warm[i].len;
            if len >= size && best.map_or(true, |b| len < self.warm[b].len) {
                best = Some(i);
            }
        }
        let i = best?;
        let block = self.warm[i];
        take_front(&mut self.warm, &mut self.nwarm, i, size);
        self.warm_bytes -= size;
        Some(block.start)
    }

    /// First fit among the cold extents, else fresh space at `top`.
    fn take_cold(&mut self, size: usize, align: usize) -> Option<usize> {
        for i in 0..self.ncold {
            let e = self.cold[i];
            let Some(start) = self.aligned(e.start, align) else {
                continue;
            };
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end > e.end() {
                continue;
            }
            // Remove `e`, then give back what is left on either side.
            remove_at(&mut self.cold, &mut self.ncold, i);
            self.settle_cold(Extent {
                start: e.start,
                len: start - e.start,
            });
            self.settle_cold(Extent {
                start: end,
                len: e.end() - end,
            });
            return Some(start);
        }
        let start = self.aligned(self.top, align)?;
        let end = start.checked_add(size)?;
        if end > self.len {
            return None;
        }
        let pad = Extent {
            start: self.top,
            len: start - self.top,
        };
        self.top = end;
        self.settle_cold(pad);
        Some(start)
    }

    /// The first offset from `start` on whose address is aligned to `align`.
    fn aligned(&self, start: usize, align: usize) -> Option<usize> {
        let addr = self.base.checked_add(start)?;
        Some(align_up(addr, align)? - self.base)
    }

    /// Extends the block `[start, start + old)` in place to `new` bytes (both
    /// multiples of [`PAGE`], `new > old`) if cold pages follow it; the new
    /// pages read as zero.
    pub(crate) fn grow(&mut self, start: usize, old: usize, new: usize) -> bool {
        let Some(end) = start.checked_add(old) else {
            return false;
        };
        let extra = new - old;
        if end == self.top {
            return match end.checked_add(extra) {
                Some(t) if t <= self.len => {
                    self.top = t;
                    true
                }
                _ => false,
            };
        }
        for i in 0..self.ncold {
            let e = self.cold[i];
            if e.start == end && e.len >= extra {
                take_front(&mut self.cold, &mut self.ncold, i, extra);
                return true;
            }
        }
        false
    }

    /// Frees `[start, start + len)`: kept warm if it fits the retained budget
    /// (older warm blocks make room), else handed back for punching, with any
    /// warm blocks evicted for it.
    pub(crate) fn give(&mut self, start: usize, len: usize) -> Punch {
        let mut punch = Punch::new();
        let block = Extent { start, len };
        if len == 0 {
            return punch;
        }
        if len > self.retain {
            punch.push(block);
            return punch;
        }
        while self.nwarm > 0
            && (self.nwarm == WARM_CAP || self.warm_bytes.saturating_add(len) > self.retain)
        {
            let oldest = self.warm[0];
            remove_at(&mut self.warm, &mut self.nwarm, 0);
            self.warm_bytes -= oldest.len;
            punch.push(oldest);
        }
        self.warm[self.nwarm] = block;
        self.nwarm += 1;
        self.warm_bytes += len;
        punch
    }

    /// Every warm block, handed back for punching (a trim).
    pub(crate) fn give_all_warm(&mut self) -> Punch {
        let mut punch = Punch::new();
        for i in 0..self.nwarm {
            punch.push(self.warm[i]);
        }
        self.nwarm = 0;
        self.warm_bytes = 0;
        punch
    }

    /// Records `e`, whose pages now read as zero, as cold: merged with its
    /// neighbours, and into `top` if it reaches it.
    pub(crate) fn settle_cold(&mut self, e: Extent) {
        if e.len == 0 {
            return;
        }
        let mut e = e;
        // The first cold extent after `e`.
        let mut i = 0;
        while i < self.ncold && self.cold[i].start < e.start {
            i += 1;
        }
        if i > 0 && self.cold[i - 1].end() == e.start {
            e = Extent {
                start: self.cold[i - 1].start,
                len: self.cold[i - 1].len + e.len,
            };
            remove_at(&mut self.cold, &mut self.ncold, i - 1);
            i -= 1;
        }
        if i < self.ncold && self.cold[i].start == e.end() {
            e.len += self.cold[i].len;
            remove_at(&mut self.cold, &mut self.ncold, i);
        }
        if e.end() == self.top {
            self.top = e.start;
            // The extent before may now reach `top` too.
            if self.ncold > 0 && self.cold[self.ncold - 1].end() == self.top {
                self.ncold -= 1;
                self.top = self.cold[self.ncold].start;
            }
            return;
        }
        if self.ncold == COLD_CAP {
            self.lost += e.len;
            return;
        }
        self.cold.copy_within(i..self.ncold, i + 1);
        self.cold[i] = e;
        self.ncold += 1;
    }

    #[cfg(test)]
    fn top(&self) -> usize {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;
    /// A region base aligned to a page but not to 2 MiB.
    const BASE: usize = (1 << 30) + PAGE;

    fn books(retain: usize) -> Box<Books> {
        let mut b = Box::new(Books::new());
        b.init(BASE, 64 * MB, retain);
        b
    }

    fn free(b: &mut Books, start: usize, len: usize) {
        let punch = b.give(start, len);
        for e in punch.extents() {
            b.settle_cold(*e);
        }
    }

    #[test]
    fn fresh_blocks_come_from_the_top_and_read_as_zero() {
        let mut b = books(0);
        assert_eq!(b.take(MB, PAGE), Some((0, true)));
        assert_eq!(b.take(MB, PAGE), Some((MB, true)));
        assert_eq!(b.top(), 2 * MB);
    }

    #[test]
    fn a_freed_block_within_the_budget_is_reused_warm() {
        let mut b = books(4 * MB);
        let (a, _) = b.take(2 * MB, PAGE).unwrap();
        let _ = b.take(MB, PAGE).unwrap();
        assert_eq!(b.give(a, 2 * MB).n, 0, "kept warm, nothing to punch");
        assert_eq!(b.warm_bytes(), 2 * MB);
        assert_eq!(b.take(MB, PAGE), Some((a, false)));
        assert_eq!(b.take(MB, PAGE), Some((a + MB, false)));
        assert_eq!(b.warm_bytes(), 0);
    }

    #[test]
    fn a_block_over_the_budget_is_punched_and_the_top_comes_down() {
        let mut b = books(MB);
        let (a, _) = b.take(2 * MB, PAGE).unwrap();
        let punch = b.give(a, 2 * MB);
        assert_eq!(
            punch.extents(),
            &[Extent {
                start: a,
                len: 2 * MB
            }]
        );
        b.settle_cold(punch.extents()[0]);
        assert_eq!(b.top(), 0);
    }

    #[test]
    fn warm_blocks_are_evicted_oldest_first_to_stay_in_budget() {
        let mut b = books(2 * MB);
        let blocks: Vec<usize> = (0..3).map(|_| b.take(MB, PAGE).unwrap().0).collect();
        let _guard = b.take(MB, PAGE).unwrap();
        assert_eq!(b.give(blocks[0], MB).n, 0);
        assert_eq!(b.give(blocks[1], MB).n, 0);
        let punch = b.give(blocks[2], MB);
        assert_eq!(
            punch.extents(),
            &[Extent {
                start: blocks[0],
                len: MB
            }]
        );
        assert_eq!(b.warm_bytes(), 2 * MB);
    }

    #[test]
    fn cold_extents_merge_and_are_reused_first_fit() {
        let mut b = books(0);
        let blocks: Vec<usize> = (0..4).map(|_| b.take(MB, PAGE).unwrap().0).collect();
        free(&mut b, blocks[0], MB);
        free(&mut b, blocks[1], MB);
        assert_eq!(b.ncold, 1, "adjacent cold extents merge");
        assert_eq!(b.take(2 * MB, PAGE), Some((0, true)));
        free(&mut b, blocks[3], MB);
        assert_eq!(b.top(), 3 * MB, "a free at the top lowers it");
    }

    #[test]
    fn alignment_above_a_page_is_honoured() {
        let mut b = books(0);
        let _ = b.take(PAGE, PAGE).unwrap();
        let (a, _) = b.take(MB, 2 * MB).unwrap();
        assert_eq!((BASE + a) % (2 * MB), 0);
        // The padding before it is cold and reusable.
        assert_eq!(b.take(PAGE, PAGE), Some((PAGE, true)));
    }

    #[test]
    fn growing_in_place_takes_the_top_or_a_following_cold_extent() {
        let mut b = books(0);
        let (a, _) = b.take(MB, PAGE).unwrap();
        assert!(b.grow(a, MB, 3 * MB));
        let (c, _) = b.take(MB, PAGE).unwrap();
        assert!(!b.grow(a, 3 * MB, 4 * MB), "c follows a");
        free(&mut b, c, MB);
        assert!(b.grow(a, 3 * MB, 4 * MB));
    }

    #[test]
    fn requests_that_do_not_fit_are_refused() {
        let mut b = books(0);
        assert_eq!(b.take(128 * MB, PAGE), None);
        assert_eq!(b.take(usize::MAX & !(PAGE - 1), PAGE), None);
        assert_eq!(b.take(MB, 1 << 40), None);
        assert_eq!(b.take(100, PAGE), None, "not a page multiple");
        assert!(!b.grow(0, MB, 128 * MB));
    }
}
