//! A receiver whose peers all died gets an error, not a hang (Python's
//! `Queue.get()` waits forever). Its own test binary: "peers" are the other
//! processes of the program, and tests running beside this one would be some.

mod common;

use shmpool::{Error, Pipe, Pool, Process, Queue};
use std::time::Duration;

fn send_one_and_exit(q: Queue<u32>) {
    q.put(7).unwrap();
}
fn put_late(q: Queue<u32>) {
    std::thread::sleep(Duration::from_millis(500)); // longer than a peer check
    q.put(9).unwrap();
}
fn die() {
    std::process::abort()
}

#[test]
fn a_receiver_whose_peers_are_gone_gets_an_error() {
    common::bounded(Duration::from_secs(60), || {
        let q = Queue::<u32>::new(4).unwrap();
        let mut p = Process::new(send_one_and_exit, (q,));
        p.start().unwrap();
        assert_eq!(q.get().unwrap(), 7);
        p.join(Some(Duration::from_secs(30))).unwrap();
        // The only other process is gone: nothing can come.
        assert!(matches!(q.get(), Err(Error::PeersGone)));

        let (mine, _theirs) = Pipe::new::<u32>().unwrap();
        let mut p = Process::new(die, ());
        p.start().unwrap();
        p.join(Some(Duration::from_secs(30))).unwrap();
        assert!(matches!(mine.recv(), Err(Error::PeersGone)));

        // A pool worker is a peer too: a reader waiting for a task's put is
        // not told "gone" while the worker lives, even with no Process left.
        let pool = Pool::new(1).unwrap();
        let late = pool.apply_async(put_late, (q,)).unwrap();
        assert_eq!(q.get().unwrap(), 9);
        late.get(Some(Duration::from_secs(30))).unwrap();
        drop(pool);
        assert!(matches!(q.get(), Err(Error::PeersGone)));
    });
}
