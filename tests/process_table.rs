//! The program's process table (who may still send to a queue) stays right
//! however many workers a program starts over its life. Its own test binary:
//! the other processes of the program are the peers it counts.

mod common;

use shmpool::{Pool, Queue};
use std::time::Duration;

fn tiny(x: u64) -> u64 {
    x + 1
}

fn put_late(q: Queue<u32>) -> u32 {
    std::thread::sleep(Duration::from_millis(500)); // longer than a peer check
    q.put(9).unwrap();
    9
}

// The table holds 4096 processes. A pool whose workers retire after every
// task starts more than that; each reaped worker leaves the table, so a
// reader waiting for a live worker's put is not told that its peers are gone.
#[test]
fn a_reader_still_sees_live_workers_after_thousands_were_replaced() {
    common::bounded(Duration::from_secs(120), || {
        let q = Queue::<u32>::new(4).unwrap();
        let pool = Pool::builder()
            .processes(2)
            .maxtasksperchild(1)
            .build()
            .unwrap();
        let inputs: Vec<u64> = (0..4200).collect();
        let out = pool.map_chunked(tiny, &inputs, 1).unwrap();
        assert_eq!(out, (1..=4200).collect::<Vec<_>>());
        let late = pool.apply_async(put_late, (q,)).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 9);
        assert_eq!(late.get(Some(Duration::from_secs(30))).unwrap(), 9);
    });
}
