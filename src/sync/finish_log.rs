//! `FinishLog`: one worker's record of the slots it finished, read by the
//! parent's callback thread, so that thread learns *which* tasks finished
//! without scanning every pending one.
//!
//! A single-producer single-consumer ring of slot indices in shared memory:
//!
//! * the **producer** is worker k (a replacement at index k takes over only
//!   after the previous one was reaped, so there is never more than one). It
//!   writes the entry, then publishes it with a `Release` store of `tail`. If
//!   the log is full, it drops the entry and sets `overflowed` instead: the
//!   reader then rescans everything it waits for.
//! * the **consumer** is the parent's callback thread. It reads entries up to
//!   an `Acquire` load of `tail`, then frees them with a `Release` store of
//!   `head`.
//!
//! A producer killed at any instruction leaves at most one unpublished entry
//! (its slot is `DONE` but unlogged); the supervisor asks the reader for a
//! rescan after every death, which covers it. Entries are hints: the reader
//! checks the slot's state, so a stale entry (a slot since reused) is harmless.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Entries per log (a power of two).
pub(crate) const FINISH_LOG_CAPACITY: usize = 1024;

/// A worker's finish log, `#[repr(C)]` for shared memory. All-zero bytes are
/// a valid empty log.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct FinishLog {
    /// Entries ever written (producer's line).
    tail: AtomicU64,
    /// Non-zero if the producer dropped an entry because the log was full.
    overflowed: AtomicU32,
    _producer_line: [u8; 52],
    /// Entries ever read (consumer's line).
    head: AtomicU64,
    _consumer_line: [u8; 56],
    entries: [AtomicU32; FINISH_LOG_CAPACITY],
}

const _: () = assert!(FINISH_LOG_CAPACITY.is_power_of_two());
const _: () = assert!(std::mem::size_of::<FinishLog>() == 128 + 4 * FINISH_LOG_CAPACITY);

impl Default for FinishLog {
    fn default() -> Self {
        FinishLog {
            tail: AtomicU64::new(0),
            overflowed: AtomicU32::new(0),
            _producer_line: [0; 52],
            head: AtomicU64::new(0),
            _consumer_line: [0; 56],
            entries: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl FinishLog {
    /// Producer: records that `slot` finished (or, if full, that the reader
    /// must rescan). The caller then notifies the reader's wake word, whose
    /// fence publishes this to a parked reader.
    pub(crate) fn push(&self, slot: u32) {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail.wrapping_sub(self.head.load(Ordering::Acquire)) >= FINISH_LOG_CAPACITY as u64 {
            self.overflowed.store(1, Ordering::Release);
            return;
        }
        self.entries[tail as usize % FINISH_LOG_CAPACITY].store(slot, Ordering::Relaxed);
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
    }

    /// Consumer: hands every published entry to `each`, oldest first, and
    /// frees them. Returns whether entries were dropped since the last drain
    /// (the caller must then rescan).
    ///
    /// The positions live where the worker can write anything: a `tail`
    /// more than a log's worth ahead of `head` (or behind it) cannot be, so
    /// the log was written over. Then no entry is believed, the caller is
    /// told to rescan, and `head` is set to `tail`, which makes the log
    /// consistent again for the producer.
    pub(crate) fn drain(&self, mut each: impl FnMut(u32)) -> bool {
        // Clear the flag first: an entry dropped after this point sets it again
        // and is seen by the next drain.
        let overflowed = self.overflowed.swap(0, Ordering::AcqRel) != 0;
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let published = tail.wrapping_sub(head);
        if published > FINISH_LOG_CAPACITY as u64 {
            self.head.store(tail, Ordering::Release);
            return true;
        }
        for i in 0..published {
            let at = head.wrapping_add(i) as usize % FINISH_LOG_CAPACITY;
            each(self.entries[at].load(Ordering::Relaxed));
        }
        self.head.store(tail, Ordering::Release);
        overflowed
    }

    /// For the tests: writes `head` and `tail` as a task scribbling over the
    /// log could.
    #[cfg(test)]
    pub(crate) fn write_positions(&self, head: u64, tail: u64) {
        self.head.store(head, Ordering::Relaxed);
        self.tail.store(tail, Ordering::Relaxed);
    }

    /// Consumer: whether a drain would find something.
    pub(crate) fn has_news(&self) -> bool {
        self.tail.load(Ordering::Acquire) != self.head.load(Ordering::Relaxed)
            || self.overflowed.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(log: &FinishLog) -> (Vec<u32>, bool) {
        let mut got = Vec::new();
        let overflowed = log.drain(|s| got.push(s));
        (got, overflowed)
    }

    #[test]
    fn entries_come_out_in_order_and_once() {
        let log = FinishLog::default();
        assert!(!log.has_news());
        for s in [7, 3, 9] {
            log.push(s);
        }
        assert!(log.has_news());
        assert_eq!(drained(&log), (vec![7, 3, 9], false));
        assert!(!log.has_news());
        assert_eq!(drained(&log), (vec![], false));
    }

    #[test]
    fn a_full_log_drops_entries_and_says_so_once() {
        let log = FinishLog::default();
        let n = FINISH_LOG_CAPACITY as u32;
        for s in 0..n + 5 {
            log.push(s);
        }
        let (got, overflowed) = drained(&log);
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert!(overflowed);
        log.push(1);
        assert_eq!(drained(&log), (vec![1], false), "room again, flag cleared");
    }

    #[test]
    fn positions_written_over_mean_a_rescan_not_a_walk_through_them() {
        let log = FinishLog::default();
        log.push(3);
        for (head, tail) in [(0, u64::MAX), (5, 1 << 40), (1 << 40, 5)] {
            log.write_positions(head, tail);
            assert_eq!(drained(&log), (vec![], true), "{head}..{tail}");
            assert!(!log.has_news(), "consistent again");
            log.push(7);
            assert_eq!(drained(&log), (vec![7], false));
        }
    }

    #[test]
    fn a_concurrent_reader_sees_every_entry_or_an_overflow() {
        // The producer pushes 0..n; the reader must see each value at most
        // once, in order, and if any is missing it must have seen `overflowed`.
        let n: u32 = if cfg!(miri) { 3000 } else { 200_000 };
        let log = FinishLog::default();
        let finished = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                (0..n).for_each(|i| log.push(i));
                finished.store(true, Ordering::Release);
            });
            let mut seen = Vec::new();
            let mut overflowed = false;
            loop {
                let last_round = finished.load(Ordering::Acquire);
                overflowed |= log.drain(|v| seen.push(v));
                if last_round {
                    break;
                }
                std::hint::spin_loop();
            }
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, once each");
            assert!(
                overflowed || seen.len() as u32 == n,
                "a gap is always reported"
            );
        });
    }
}
