//! Process-shared futex wait and wake on an `AtomicU32`.
//!
//! The word may live in a `MAP_SHARED` mapping, so the calls never use
//! `FUTEX_PRIVATE_FLAG` (`futex::Flags::PRIVATE`): with it, a wake-up from another process would be
//! silently lost (see `docs/ARCHITECTURE.md`, "Parking").

use super::spin::SpinWait;
#[cfg(not(miri))]
use rustix::thread::futex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Sleeps while `*word == expected`, for at most `timeout` (forever if `None`).
///
/// Returns on a wake-up, on timeout, on a signal, spuriously, or at once if the
/// word no longer holds `expected`: callers always re-check their condition.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    #[cfg(miri)]
    {
        // Miri has no shared futexes; yielding keeps the callers' loops correct.
        let _ = (word, expected, timeout);
        std::thread::yield_now();
    }
    #[cfg(not(miri))]
    {
        let ts = timeout.map(|d| futex::Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // Every outcome (woken, timed out, interrupted, value changed) means
        // "re-check", so the result carries nothing the callers need.
        let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
    }
}

/// Wakes up to `count` processes or threads sleeping in [`wait`] on `word`.
pub(crate) fn wake(word: &AtomicU32, count: i32) {
    #[cfg(miri)]
    let _ = (word, count);
    #[cfg(not(miri))]
    let _ = futex::wake(word, futex::Flags::empty(), count.max(0) as u32);
}

/// Waits until `ready(*word)`, or `deadline`, or `abandoned(*word)` (then
/// returns `false`: nothing will make it ready); returns whether it is ready.
///
/// Spins first if `spin_first` (see `sync::spin`), then sleeps on `word`
/// after setting `waiter_bit` in it by CAS. Whoever makes the word ready must
/// swap in the new value and call [`wake`] if the old one had `waiter_bit`:
/// the CAS and the swap order the two sides, so no wake-up is lost.
pub(crate) fn wait_until(
    word: &AtomicU32,
    waiter_bit: u32,
    spin_first: bool,
    deadline: Option<Instant>,
    ready: impl Fn(u32) -> bool,
    abandoned: impl Fn(u32) -> bool,
) -> bool {
    let mut spin = SpinWait::new();
    loop {
        let s = word.load(Ordering::Acquire);
        if ready(s) {
            return true;
        }
        if spin_first && spin.spin() {
            continue;
        }
        let timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return ready(word.load(Ordering::Acquire)),
            },
            None => None,
        };
        if abandoned(s) {
            return false;
        }
        if s & waiter_bit == 0
            && word
                .compare_exchange(s, s | waiter_bit, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue;
        }
        wait(word, s | waiter_bit, timeout);
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_returns_at_once_when_the_value_differs() {
        let word = AtomicU32::new(1);
        let start = Instant::now();
        wait(&word, 0, Some(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn wait_times_out() {
        let word = AtomicU32::new(0);
        let start = Instant::now();
        wait(&word, 0, Some(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(19));
    }

    #[test]
    fn wake_ends_a_wait() {
        let word = Arc::new(AtomicU32::new(0));
        let sleeper = {
            let word = Arc::clone(&word);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while word.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
                    wait(&word, 0, Some(Duration::from_secs(10)));
                }
                word.load(Ordering::Acquire)
            })
        };
        std::thread::sleep(Duration::from_millis(10));
        word.store(7, Ordering::Release);
        wake(&word, 1);
        assert_eq!(sleeper.join().unwrap(), 7);
    }
}
