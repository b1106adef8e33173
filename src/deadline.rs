//! Timeouts turned into deadlines, the one place every API that takes a
//! timeout goes through.

use std::time::{Duration, Instant};

/// The instant `timeout` from now, or `None` (no deadline) when that instant
/// is past what `Instant` can hold: a timeout of centuries never expires
/// in practice, and `Instant + Duration::MAX` would panic.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// [`deadline`] of an optional timeout (`None`: no deadline).
pub(crate) fn deadline_opt(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_timeout_means_no_deadline() {
        assert_eq!(deadline(Duration::MAX), None);
        assert_eq!(deadline_opt(Some(Duration::MAX)), None);
        assert_eq!(deadline_opt(None), None);
        assert!(deadline(Duration::from_secs(1)).is_some());
    }
}
