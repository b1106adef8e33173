//! `WakeWord`: park many sleepers on one condition without a lost wake-up.
//!
//! Protocol (a Dekker pair; see `docs/ARCHITECTURE.md`, "Parking"):
//!
//! * a **sleeper** reads `seq`, then increments `sleepers`, then (after a SeqCst
//!   fence) re-checks its condition, and only if it is still false sleeps in
//!   `futex_wait(seq, seq_read_before)`;
//! * a **notifier** makes the condition true, then (after a SeqCst fence) reads
//!   `sleepers`, and only if it is non-zero bumps `seq` and calls `futex_wake`.
//!
//! Either the notifier sees the sleeper's increment, or the sleeper's re-check
//! sees the notifier's change (the two fences order the two store→load pairs).
//! If the notifier bumps `seq` after the sleeper read it, `futex_wait` returns at
//! once. So no wake-up is lost, and a notifier with no sleeper makes no syscall.

use super::futex;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

/// A futex word plus a count of sleepers, `#[repr(C)]` for shared memory.
/// All-zero bytes are a valid initial state.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct WakeWord {
    seq: AtomicU32,
    sleepers: AtomicU32,
}

impl WakeWord {
    /// Sleeps until notified unless `ready()` holds after announcing the sleeper.
    /// May return spuriously: callers loop on their own condition.
    pub(crate) fn park_unless(&self, ready: impl Fn() -> bool, timeout: Option<Duration>) {
        let seq = self.seq.load(Ordering::Acquire);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !ready() {
            futex::wait(&self.seq, seq, timeout);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes one sleeper, if any; call after making the condition true.
    /// Issues a SeqCst fence first, whether or not anyone sleeps.
    pub(crate) fn notify_one(&self) {
        fence(Ordering::SeqCst);
        self.notify_one_fenced();
    }

    /// [`notify_one`](Self::notify_one) for a caller that has issued the
    /// SeqCst fence itself, after making the condition true.
    pub(crate) fn notify_one_fenced(&self) {
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            futex::wake(&self.seq, 1);
        }
    }

    /// Wakes every sleeper, if any; call after making the condition true. No
    /// syscall and no shared write when nobody sleeps.
    pub(crate) fn notify_sleepers(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            futex::wake(&self.seq, i32::MAX);
        }
    }

    /// Wakes every sleeper; call after making the condition true.
    pub(crate) fn notify_all(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.seq, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_notify_after_the_condition_is_never_lost() {
        // Many rounds of: a sleeper waits for `flag`, a notifier sets it. A lost
        // wake-up would leave the sleeper parked until its (long) timeout.
        let rounds = if cfg!(miri) { 20 } else { 2000 };
        for _ in 0..rounds {
            let word = Arc::new(WakeWord::default());
            let flag = Arc::new(AtomicBool::new(false));
            let sleeper = {
                let (word, flag) = (Arc::clone(&word), Arc::clone(&flag));
                std::thread::spawn(move || {
                    let start = Instant::now();
                    while !flag.load(Ordering::Acquire) {
                        word.park_unless(
                            || flag.load(Ordering::Acquire),
                            Some(Duration::from_secs(5)),
                        );
                    }
                    start.elapsed()
                })
            };
            flag.store(true, Ordering::Release);
            word.notify_one();
            assert!(sleeper.join().unwrap() < Duration::from_secs(4));
        }
    }
}
