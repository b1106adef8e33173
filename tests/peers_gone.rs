//! A receiver that waits without a timeout while nothing can send gets an
//! error, not a hang (Python's `Queue.get()` waits forever); one that waits
//! with a timeout waits it out, as Python's `get(timeout=…)` does.
//!
//! Its own test binary, without the test harness (`harness = false`): "nothing
//! can send" means no other process of the program and no other thread of
//! this one, and the harness's threads and the tests running beside this one
//! would be some. Every wait is bounded: the whole binary by `alarm`.

use shmpool::{Error, Pipe, Pool, Process, Queue};
use std::time::{Duration, Instant};

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

fn a_receiver_whose_peers_are_gone_gets_an_error() {
    let q = Queue::<u32>::new(4).unwrap();
    let mut p = Process::new(send_one_and_exit, (q,));
    p.start().unwrap();
    assert_eq!(q.get().unwrap(), 7);
    p.join(Some(Duration::from_secs(30))).unwrap();
    // The only other process is gone, and no other thread runs: nothing can come.
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
}

/// `wait` returns `Timeout`, and not before `timeout` has passed.
fn times_out_after(timeout: Duration, wait: impl FnOnce() -> Result<u32, Error>) {
    let start = Instant::now();
    let got = wait();
    let took = start.elapsed();
    assert!(matches!(got, Err(Error::Timeout)), "{got:?} after {took:?}");
    assert!(
        took >= timeout,
        "gave up after {took:?}, before {timeout:?}"
    );
}

fn a_bounded_wait_with_every_peer_gone_times_out_at_its_deadline() {
    let q = Queue::<u32>::new(4).unwrap();
    let (mine, _theirs) = Pipe::new::<u32>().unwrap();
    let mut p = Process::new(send_one_and_exit, (q,));
    p.start().unwrap();
    assert_eq!(q.get().unwrap(), 7);
    p.join(Some(Duration::from_secs(30))).unwrap();
    for ms in [0, 50, 200, 350] {
        let timeout = Duration::from_millis(ms);
        times_out_after(timeout, || q.get_timeout(timeout));
        times_out_after(timeout, || mine.recv_timeout(timeout));
    }
}

fn another_thread_of_this_process_is_a_sender_too() {
    let q = Queue::<u32>::new(4).unwrap();
    let (mine, theirs) = Pipe::new::<u32>().unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(350)); // several peer checks
        q.put(11).unwrap();
        std::thread::sleep(Duration::from_millis(350));
        theirs.send(12).unwrap();
    });
    assert_eq!(q.get().unwrap(), 11);
    assert_eq!(mine.recv().unwrap(), 12);
    sender.join().unwrap();
    // That thread has ended: nothing can come now.
    assert!(matches!(q.get(), Err(Error::PeersGone)));
}

fn main() {
    // SAFETY: plain syscall: SIGALRM ends this binary if any check hangs.
    unsafe { libc::alarm(120) };
    let checks: [(&str, fn()); 3] = [
        (
            "a_receiver_whose_peers_are_gone_gets_an_error",
            a_receiver_whose_peers_are_gone_gets_an_error,
        ),
        (
            "a_bounded_wait_with_every_peer_gone_times_out_at_its_deadline",
            a_bounded_wait_with_every_peer_gone_times_out_at_its_deadline,
        ),
        (
            "another_thread_of_this_process_is_a_sender_too",
            another_thread_of_this_process_is_a_sender_too,
        ),
    ];
    for (name, check) in checks {
        check();
        println!("test {name} ... ok");
    }
}
