//! Nothing leaks: after pools are created, used, terminated and dropped, this
//! process has no child (not even a zombie), no extra file descriptor, and
//! `/dev/shm` holds nothing new. (Its own test binary: it counts processes and
//! descriptors of the whole process.)

mod common;

use shmpool::{Error, Pool};
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}
fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}
fn crash() -> u8 {
    std::process::abort()
}

#[test]
fn pools_leave_no_process_descriptor_or_shared_memory_behind() {
    common::bounded(Duration::from_secs(120), || {
        let shm_before = common::shm_entries();
        // The first pool creates the program's object heap (one descriptor,
        // kept for the program's life): count descriptors after it.
        drop(Pool::new(1).unwrap());
        let fds_before = common::open_fds();
        assert!(common::children().is_empty());
        for round in 0..30u64 {
            let pool = Pool::new(1 + (round % 3) as usize).unwrap();
            let v: Vec<u64> = (0..10_000).collect();
            assert_eq!(pool.map(square, &v).unwrap()[9_999], 9_999 * 9_999);
            match round % 4 {
                0 => {
                    let _running = pool.apply_async(nap, (10_000,)).unwrap();
                    drop(pool);
                }
                1 => {
                    pool.close();
                    pool.join().unwrap();
                }
                2 => {
                    assert!(matches!(
                        pool.apply(crash, ()),
                        Err(Error::WorkerDied { .. })
                    ));
                    pool.terminate();
                }
                _ => drop(pool),
            }
            assert!(
                common::children().is_empty(),
                "round {round}: children left: {:?}",
                common::children()
            );
        }
        assert_eq!(common::open_fds(), fds_before, "file descriptors leaked");
        assert_eq!(common::shm_entries(), shm_before, "/dev/shm changed");
    });
}
