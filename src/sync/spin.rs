//! A bounded spin before parking.
//!
//! Measured on the target machines (`../shared/NOTES.md`): a kernel wake-up
//! costs ~20 µs, a spinning hand-off between processes ~45 ns, and spinning only
//! 0–100 times before sleeping made a chunked map 2.7× slower. So waiters spin
//! about a thousand times (with `spin_loop` hints) before they park.

/// How many times a waiter re-checks its condition before it parks.
pub(crate) const SPIN_LIMIT: u32 = 2000;

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
        std::hint::spin_loop();
        true
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
}
