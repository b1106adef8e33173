//! A bounded spin before parking.
//!
//! Measured on the target machines (`docs/PERFORMANCE.md`, "Figures the design
//! relies on"): a kernel wake-up
//! costs ~20 µs, a spinning hand-off between processes ~45 ns, and spinning only
//! 0–100 times before sleeping made a chunked map 2.7× slower. So waiters spin
//! about a thousand times (with `spin_loop` hints, and a `sched_yield` now and
//! then so that a spinner never holds a CPU another thread is waiting for)
//! before they park.

/// How many times a waiter re-checks its condition before it parks.
pub(crate) const SPIN_LIMIT: u32 = 2000;

/// Every this many spins, a waiter yields its CPU instead (`sched_yield`,
/// which returns at once when nothing else wants the CPU). With as many
/// workers as CPUs plus a submitting parent thread, a spinning worker
/// otherwise holds a CPU the parent needs for a whole time slice: measured
/// over 8 alternating runs here, 100,000 tiny `apply_async` went from a
/// median of 1.9 M/s (0.8–2.7) to 2.7 M/s (2.1–3.4), with `apply` latency
/// unchanged (~0.4 µs); yielding every 8 spins made `apply` 3× slower.
const YIELD_EVERY: u32 = 64;

/// Counts spins for one wait; [`SpinWait::spin`] says when to stop and park.
#[derive(Debug, Default)]
pub(crate) struct SpinWait {
    spins: u32,
}

impl SpinWait {
    /// A fresh budget of [`SPIN_LIMIT`] spins.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Spins once and returns `true`, or returns `false` once the budget is spent
    /// (the caller should park).
    pub(crate) fn spin(&mut self) -> bool {
        if self.spins >= SPIN_LIMIT {
            return false;
        }
        self.spins += 1;
        if self.spins % YIELD_EVERY == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        true
    }
}

/// How long a thread waiting for another process or thread of its own pool
/// to start or end (a fork, a worker's exit, the supervisor's exit) yields
/// its CPU, re-checking, before it sleeps: these take ~0.1 ms in a small
/// parent, and a sleeper's wake-up costs ~20-60 µs on the target machines,
/// more while other threads spin. Bounded, because a parent with a large heap
/// forks for tens of milliseconds.
pub(crate) const HAND_OFF_YIELD: std::time::Duration = std::time::Duration::from_millis(2);

/// Yields the CPU until `done()` or until `limit` has passed; returns whether
/// `done()` held. The caller then blocks in the kernel if it did not.
pub(crate) fn yield_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let began = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if began.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_bounded() {
        let mut spin = SpinWait::new();
        let mut n = 0;
        while spin.spin() {
            n += 1;
        }
        assert_eq!(n, SPIN_LIMIT);
        assert!(!spin.spin());
    }

    #[test]
    fn yield_until_stops_at_done_or_at_the_limit() {
        let mut calls = 0;
        assert!(yield_until(std::time::Duration::from_secs(60), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let began = std::time::Instant::now();
        assert!(!yield_until(std::time::Duration::from_millis(5), || false));
        assert!(began.elapsed() >= std::time::Duration::from_millis(5));
    }
}
