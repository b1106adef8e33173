//! 100,000 results in flight at once, with a constant number of file
//! descriptors: a pool that opens a channel per task dies here with EMFILE.
//! (Its own test binary, so other tests' pools do not move the fd count.)

mod common;

use shmpool::Pool;
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_hundred_thousand_apply_async_handles_in_flight_with_constant_fds() {
    common::bounded(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let fds_before = common::open_fds();
        let handles: Vec<_> = (0..100_000u64)
            .map(|i| pool.apply_async(square, (i,)).unwrap())
            .collect();
        let fds_in_flight = common::open_fds();
        for (i, h) in handles.iter().enumerate() {
            assert_eq!(
                h.get(Some(Duration::from_secs(30))).unwrap(),
                (i as u64).pow(2)
            );
        }
        assert_eq!(
            fds_in_flight, fds_before,
            "file descriptors grew with tasks in flight"
        );
        drop(handles);
        assert_eq!(common::open_fds(), fds_before);
    });
}
