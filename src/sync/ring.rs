//! A bounded queue of `u32` slot indices in shared memory, safe against consumers
//! that die at any instruction.
//!
//! The shape follows Dmitry Vyukov's bounded MPMC queue as crossbeam-channel's
//! `flavors/array.rs` implements it (a position counter, entries tagged with the
//! position they were written for), changed in one respect: a consumer reads the
//! entry *before* it claims the position with a CAS on `head`, and never writes
//! the entry afterwards. In Vyukov's queue a consumer that dies between claiming a
//! position and releasing its stamp wedges the queue for every producer one lap
//! later; here a consumer that dies at any point leaves the queue consistent (at
//! worst an index it popped is never run, which the pool's supervisor repairs by
//! re-pushing that slot if it is still `QUEUED` — the consumer noted the index
//! before taking it, see [`Ring::try_pop_noting`]; duplicates are harmless
//! because a worker claims a slot by CAS on the slot's own state).
//!
//! There is one producer at a time (the parent process, under its own lock; see
//! [`Producer`]) and any number of consumers in any processes.
//!
//! Entry encoding: `(tag << 32) | index`, where `tag = (position + 1) as u32`, so
//! that all-zero memory is an empty queue. A consumer at position `h` accepts an
//! entry only if its tag is `(h + 1) as u32`; the producer writes position `t`
//! only once `head > t - capacity`, so an accepted entry is always the one written
//! for position `h` (see the proof sketch in `docs/ARCHITECTURE.md`, "The ring").

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

/// The positions of a ring: `head` (next to pop) and `tail` (next to push).
/// `#[repr(C)]`, all-zero is empty.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RingHeader {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
}

/// A view of a ring: its header and its entries (a power-of-two count).
#[derive(Clone, Copy)]
pub(crate) struct Ring<'a> {
    header: &'a RingHeader,
    entries: &'a [AtomicU64],
    mask: u64,
}

/// The push side: `&mut` access is the proof that there is one producer at a time.
#[derive(Debug, Default)]
pub(crate) struct Producer {
    /// The next position to write: the producer's own count, of which the
    /// shared `tail` is a copy for consumers. A consumer that writes over the
    /// shared words cannot make the producer write elsewhere.
    tail: u64,
    /// A `head` seen earlier. `head` only grows, so this underestimates the
    /// free room: the producer reads the real `head` (a line every consumer
    /// writes) only when the ring looks full by it.
    head_seen: u64,
}

/// Returned by [`Ring::try_push`] when every entry is still unconsumed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

fn tag(position: u64) -> u64 {
    u64::from((position as u32).wrapping_add(1)) << 32
}

impl<'a> Ring<'a> {
    /// Views `entries` (length a power of two, at most 2^31) as a ring with `header`.
    pub(crate) fn new(header: &'a RingHeader, entries: &'a [AtomicU64]) -> Self {
        assert!(entries.len().is_power_of_two() && entries.len() <= 1 << 31);
        Ring {
            header,
            entries,
            mask: entries.len() as u64 - 1,
        }
    }

    /// Appends `index`, or returns [`Full`] if `capacity` entries are unconsumed.
    ///
    /// A `head` that cannot be (ahead of the tail, or more than a ring behind
    /// it: a consumer wrote over it) does not make the ring look full for
    /// ever: the entry is written at the producer's own position regardless.
    /// Consumers then find no entry tagged for their position, so tasks stop
    /// being handed out, but no process reads or writes outside the ring.
    pub(crate) fn try_push(&self, producer: &mut Producer, index: u32) -> Result<(), Full> {
        let tail = producer.tail;
        if tail.wrapping_sub(producer.head_seen) > self.mask {
            producer.head_seen = self.header.head.load(Ordering::Acquire);
            let used = tail.wrapping_sub(producer.head_seen);
            if used > self.mask && used <= self.mask + 1 {
                return Err(Full);
            }
        }
        // Release: whoever reads this entry also sees the slot the parent wrote
        // before pushing its index.
        self.entries[(tail & self.mask) as usize]
            .store(tag(tail) | u64::from(index), Ordering::Release);
        producer.tail = tail.wrapping_add(1);
        self.header.tail.store(producer.tail, Ordering::Release);
        Ok(())
    }

    /// Removes and returns the oldest index, or `None` if the ring is empty.
    #[cfg(test)]
    pub(crate) fn try_pop(&self) -> Option<u32> {
        self.try_pop_noting(|_| {})
    }

    /// [`try_pop`](Self::try_pop) that calls `note(index)` with each index it
    /// is about to take, before the CAS that takes it: a consumer that dies
    /// right after the CAS has then recorded what it took (the pool's worker
    /// records it for the supervisor). `note` may be called for indices the
    /// consumer then loses to another one.
    pub(crate) fn try_pop_noting(&self, mut note: impl FnMut(u32)) -> Option<u32> {
        let mut head = self.header.head.load(Ordering::Acquire);
        loop {
            let entry = self.entries[(head & self.mask) as usize].load(Ordering::Acquire);
            if entry & !0xFFFF_FFFF != tag(head) {
                // Not yet written for this position: empty, unless `head` moved.
                let now = self.header.head.load(Ordering::Acquire);
                if now == head {
                    return None;
                }
                head = now;
                continue;
            }
            // Before the CAS (whose release half orders this store first).
            note(entry as u32);
            match self.header.head.compare_exchange_weak(
                head,
                head.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(entry as u32),
                Err(now) => head = now,
            }
        }
    }

    /// Whether an entry is written for the position at `head` (a snapshot):
    /// as `!is_empty()` for a caller that just popped, but it reads the entry
    /// line it popped from, usually still in its cache, rather than `tail`,
    /// the line the producer writes on every push.
    pub(crate) fn next_is_ready(&self) -> bool {
        let head = self.header.head.load(Ordering::SeqCst);
        let entry = self.entries[(head & self.mask) as usize].load(Ordering::SeqCst);
        entry & !0xFFFF_FFFF == tag(head)
    }

    /// Whether no entry is waiting (a snapshot).
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries are waiting (a snapshot).
    pub(crate) fn len(&self) -> u64 {
        let head = self.header.head.load(Ordering::SeqCst);
        let tail = self.header.tail.load(Ordering::SeqCst);
        tail.saturating_sub(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    fn entries(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn fifo_and_full() {
        let header = RingHeader::default();
        let entries = entries(4);
        let ring = Ring::new(&header, &entries);
        let mut producer = Producer::default();
        assert_eq!(ring.try_pop(), None);
        for lap in 0..5u32 {
            for i in 0..4 {
                ring.try_push(&mut producer, lap * 10 + i).unwrap();
            }
            assert_eq!(ring.try_push(&mut producer, 99), Err(Full));
            assert_eq!(ring.len(), 4);
            for i in 0..4 {
                assert_eq!(ring.try_pop(), Some(lap * 10 + i));
            }
            assert_eq!(ring.try_pop(), None);
            assert!(ring.is_empty());
        }
    }

    #[test]
    fn next_is_ready_says_whether_a_pop_would_find_an_entry() {
        let header = RingHeader::default();
        let entries = entries(4);
        let ring = Ring::new(&header, &entries);
        let mut producer = Producer::default();
        assert!(!ring.next_is_ready());
        for lap in 0..3u32 {
            for i in 0..4 {
                ring.try_push(&mut producer, lap * 10 + i).unwrap();
            }
            for i in 0..4 {
                assert!(ring.next_is_ready(), "lap {lap}, entry {i}");
                assert_eq!(ring.try_pop(), Some(lap * 10 + i));
            }
            // The entry at `head` now is last lap's, tagged for another position.
            assert!(!ring.next_is_ready(), "lap {lap}: empty");
        }
    }

    #[test]
    fn a_consumer_that_reads_and_vanishes_does_not_wedge_the_ring() {
        // A consumer that read an entry but died before its CAS changed nothing;
        // one that died after the CAS only lost its own index.
        let header = RingHeader::default();
        let entries = entries(2);
        let ring = Ring::new(&header, &entries);
        let mut producer = Producer::default();
        for round in 0..10 {
            ring.try_push(&mut producer, round).unwrap();
            let _read_then_died =
                entries[(header.head.load(Ordering::Relaxed) & 1) as usize].load(Ordering::Acquire);
            header.head.fetch_add(1, Ordering::AcqRel); // died right after the CAS
            ring.try_push(&mut producer, round + 100).unwrap();
            assert_eq!(ring.try_pop(), Some(round + 100));
        }
    }

    #[test]
    fn positions_written_over_never_wedge_or_misdirect_the_producer() {
        let header = RingHeader::default();
        let entries = entries(4);
        let ring = Ring::new(&header, &entries);
        let mut producer = Producer::default();
        ring.try_push(&mut producer, 1).unwrap();
        // A consumer scribbles over both positions.
        header.tail.store(u64::MAX, Ordering::Relaxed);
        header.head.store(1 << 40, Ordering::Relaxed);
        for i in 0..10 {
            assert_eq!(
                ring.try_push(&mut producer, i),
                Ok(()),
                "never full for ever"
            );
        }
        assert_eq!(
            header.tail.load(Ordering::Relaxed),
            11,
            "the producer's own count"
        );
        // Put right, the ring works again from the producer's position.
        header.head.store(11, Ordering::Relaxed);
        ring.try_push(&mut producer, 42).unwrap();
        assert_eq!(ring.try_pop(), Some(42));
    }

    #[test]
    fn concurrent_consumers_get_every_index_exactly_once() {
        let total: u32 = if cfg!(miri) { 200 } else { 200_000 };
        let header = RingHeader::default();
        let entries = entries(64);
        let ring = Ring::new(&header, &entries);
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        match ring.try_pop() {
                            Some(u32::MAX) => break,
                            Some(i) => mine.push(i),
                            None => std::thread::yield_now(),
                        }
                    }
                    seen.lock().unwrap().extend(mine);
                });
            }
            let mut producer = Producer::default();
            for i in (0..total).chain([u32::MAX; 3]) {
                while ring.try_push(&mut producer, i).is_err() {
                    std::thread::yield_now();
                }
            }
        });
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), total as usize);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), total as usize);
    }
}
