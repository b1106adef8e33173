//! Python's toolbox beyond the pool: Process, Queue, Pipe, locks, Value and
//! Array, across real processes. Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{
    current_process, get_context, Array, Barrier, BoundedSemaphore, Condition, Connection, Error,
    Event, Lock, Pipe, Pool, Process, Queue, RLock, Semaphore, StartMethod, Value,
};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

/// Runs an example binary (built by `cargo test` next to the test binaries).
fn run_example(name: &str) -> String {
    let path = common::example(name);
    let out = bounded(LIMIT, move || {
        std::process::Command::new(path).output().unwrap()
    });
    assert!(out.status.success(), "{name}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

// What the examples of Python's docs print (https://docs.python.org/3/library/multiprocessing.html), example by example.
#[test]
fn ported_examples_print_what_pythons_examples_print() {
    assert_eq!(run_example("process"), "hello bob\n");
    assert_eq!(run_example("start_method"), "hello\n");
    assert_eq!(run_example("queue"), "[42, None, 'hello']\n");
    assert_eq!(run_example("pipe"), "[42, None, 'hello']\n");
    assert_eq!(
        run_example("value_array"),
        "3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]\n"
    );
    // Ten whole lines, in any order.
    let out = run_example("lock");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("hello world {i}")).collect();
    want.sort();
    assert_eq!(lines, want);
}

fn exit_with(code: i32) {
    std::process::exit(code)
}
fn boom() {
    panic!("boom in a child")
}
fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}
fn report_name(q: Queue<[u8; 32]>) {
    let name = current_process().name;
    let mut buf = [0u8; 32];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    q.put(buf).unwrap();
}

#[test]
fn process_exit_codes_follow_python() {
    bounded(LIMIT, || {
        let mut ok = Process::new(sleep_ms, (1,));
        assert!(
            matches!(ok.join(None), Err(Error::InvalidState(_))),
            "join before start"
        );
        assert_eq!(ok.exitcode(), None);
        ok.start().unwrap();
        assert!(
            matches!(ok.start(), Err(Error::InvalidState(_))),
            "start twice"
        );
        assert_eq!(ok.join(Some(WAIT)).unwrap(), Some(0));
        assert!(!ok.is_alive());

        let mut panics = Process::new(boom, ());
        panics.start().unwrap();
        assert_eq!(panics.join(Some(WAIT)).unwrap(), Some(1));

        let mut exits = Process::new(exit_with, (3,));
        exits.start().unwrap();
        assert_eq!(exits.join(Some(WAIT)).unwrap(), Some(3));

        let mut slow = Process::new(sleep_ms, (60_000,));
        slow.start().unwrap();
        assert!(slow.is_alive());
        assert!(slow.pid().is_some_and(|p| p != std::process::id()));
        assert_eq!(
            slow.join(Some(Duration::from_millis(50))).unwrap(),
            None,
            "timed out"
        );
        slow.terminate();
        assert_eq!(slow.join(Some(WAIT)).unwrap(), Some(-libc::SIGTERM));

        let mut killed = Process::new(sleep_ms, (60_000,));
        killed.start().unwrap();
        killed.kill();
        assert_eq!(killed.join(Some(WAIT)).unwrap(), Some(-libc::SIGKILL));
    });
}

#[test]
fn processes_run_with_every_start_method_and_know_their_name() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            let q = Queue::<[u8; 32]>::new(4).unwrap();
            let mut p = get_context(method).process(report_name, (q,));
            p.set_name(format!("child-{method}"));
            assert_eq!(p.start_method(), method);
            p.start().unwrap();
            let name = q.get_timeout(WAIT).unwrap();
            let name = String::from_utf8_lossy(&name)
                .trim_end_matches('\0')
                .to_owned();
            assert_eq!(name, format!("child-{method}"));
            assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0), "{method}");
        }
        assert!(Process::new(sleep_ms, (0,)).name().starts_with("Process-"));
    });
}

fn produce(q: Queue<u64>, base: u64) {
    for i in 0..1000 {
        q.put(base + i).unwrap();
    }
}
fn consume(q: Queue<u64>, out: Queue<u64>, n: u64) {
    let mut sum = 0;
    for _ in 0..n {
        sum += q.get_timeout(WAIT).unwrap();
    }
    out.put(sum).unwrap();
}

#[test]
fn a_queue_carries_every_item_exactly_once_between_many_processes() {
    bounded(LIMIT, || {
        let q = Queue::<u64>::new(64).unwrap(); // small: producers must wait
        let sums = Queue::<u64>::new(4).unwrap();
        let mut procs: Vec<Process> = (0..4u64)
            .map(|k| Process::new(produce, (q, k * 1_000_000)))
            .chain((0..2).map(|_| Process::new(consume, (q, sums, 2000))))
            .collect();
        procs.iter_mut().for_each(|p| p.start().unwrap());
        let total = sums.get_timeout(WAIT).unwrap() + sums.get_timeout(WAIT).unwrap();
        let want: u64 = (0..4u64)
            .map(|k| (0..1000).map(|i| k * 1_000_000 + i).sum::<u64>())
            .sum();
        assert_eq!(total, want);
        for p in &mut procs {
            assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0));
        }
        assert!(q.is_empty().unwrap());
    });
}

#[test]
fn queue_timeouts_capacity_and_close() {
    let q = Queue::<u32>::new(2).unwrap();
    assert_eq!(q.try_get().unwrap(), None);
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert_eq!(q.len().unwrap(), 2);
    assert!(matches!(
        q.put_timeout(3, Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    assert_eq!(q.get().unwrap(), 1);
    q.close().unwrap();
    assert!(matches!(q.put(4), Err(Error::Closed)));
    assert_eq!(q.get().unwrap(), 2, "what was queued is still delivered");
    assert!(matches!(q.get(), Err(Error::Closed)));
    assert!(matches!(
        Queue::<u8>::new(0),
        Err(Error::InvalidArgument(_))
    ));
}

fn echo(conn: Connection<u64>) {
    while let Ok(v) = conn.recv_timeout(WAIT) {
        if v == 0 {
            break;
        }
        conn.send(v * 2).unwrap();
    }
}

#[test]
fn a_duplex_pipe_talks_both_ways_and_a_one_way_pipe_refuses_the_wrong_direction() {
    bounded(LIMIT, || {
        let (mine, theirs) = Pipe::new::<u64>().unwrap();
        let mut p = Process::new(echo, (theirs,));
        p.start().unwrap();
        for v in 1..=100 {
            mine.send(v).unwrap();
            assert!(mine.poll(Some(WAIT)).unwrap());
            assert_eq!(mine.recv_timeout(WAIT).unwrap(), v * 2);
        }
        // The child is alive (waiting for us): nothing to read yet is a timeout.
        assert!(!mine.poll(None).unwrap());
        assert!(matches!(
            mine.recv_timeout(Duration::from_millis(10)),
            Err(Error::Timeout)
        ));
        mine.send(0).unwrap();
        assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0));

        let (rx, tx) = Pipe::one_way::<u8>().unwrap();
        tx.send(5).unwrap();
        assert_eq!(rx.recv().unwrap(), 5);
        assert!(matches!(rx.send(1), Err(Error::InvalidArgument(_))));
        assert!(matches!(tx.recv(), Err(Error::InvalidArgument(_))));
    });
}

fn die_holding(l: Lock) {
    let _held = l.lock().unwrap();
    std::process::abort();
}

// "a lock whose holder died is reported, never a deadlock"
#[test]
fn a_lock_whose_holder_died_is_reported_and_usable_again() {
    bounded(LIMIT, || {
        let l = Lock::new().unwrap();
        let mut p = Process::new(die_holding, (l,));
        p.start().unwrap();
        assert_eq!(p.join(Some(WAIT)).unwrap(), Some(-libc::SIGABRT));
        assert!(matches!(l.lock_timeout(WAIT), Err(Error::OwnerDied)));
        let held = l.lock_timeout(WAIT).unwrap();
        assert!(l.try_lock().unwrap().is_none());
        drop(held);
        let _g = l.lock().unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            l.lock_timeout(Duration::from_millis(50)),
            Err(Error::Timeout)
        ));
        // The deadline is read on the right clock: neither in the past nor far off.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    });
}

fn add_slowly(l: Lock, v: Value<u64>, times: u32) {
    for _ in 0..times {
        let _held = l.lock().unwrap();
        let x = v.get().unwrap();
        std::thread::yield_now(); // invite a lost update, if the lock failed
        v.set(x + 1).unwrap();
    }
}
fn add_under_value_lock(v: Value<u64>, times: u32) {
    for _ in 0..times {
        *v.lock().unwrap() += 1;
    }
}

#[test]
fn locks_and_values_exclude_other_processes() {
    bounded(LIMIT, || {
        let l = Lock::new().unwrap();
        let exact = Value::new(0u64).unwrap();
        let mut ps: Vec<Process> = (0..4)
            .map(|_| Process::new(add_slowly, (l, exact, 500)))
            .collect();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        ps.iter_mut()
            .for_each(|p| assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0)));
        assert_eq!(exact.get().unwrap(), 2000, "no update lost under the lock");
        let counter = Value::new(0u64).unwrap();
        let mut ps: Vec<Process> = (0..4)
            .map(|_| Process::new(add_under_value_lock, (counter, 500)))
            .collect();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        ps.iter_mut()
            .for_each(|p| assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0)));
        assert_eq!(
            counter.get().unwrap(),
            2000,
            "no update lost under the value's lock"
        );
    });
}

#[test]
fn rlock_reenters_and_semaphores_count() {
    let r = RLock::new().unwrap();
    let a = r.lock().unwrap();
    let b = r.lock().unwrap();
    drop((a, b));
    let s = Semaphore::new(2).unwrap();
    s.acquire().unwrap();
    s.acquire_timeout(WAIT).unwrap();
    assert!(!s.try_acquire().unwrap());
    assert!(matches!(
        s.acquire_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
    s.release().unwrap();
    s.release().unwrap();
    s.release().unwrap(); // an unbounded semaphore may grow
    assert_eq!(s.value().unwrap(), 3);
    let b = BoundedSemaphore::new(2).unwrap();
    b.acquire().unwrap();
    b.release().unwrap();
    assert!(
        matches!(b.release(), Err(Error::InvalidArgument(_))),
        "past its bound"
    );
    assert!(matches!(
        BoundedSemaphore::new(0),
        Err(Error::InvalidArgument(_))
    ));
}

fn wait_then_set(go: Event, done: Event) {
    assert!(go.wait(Some(WAIT)).unwrap());
    done.set().unwrap();
}
fn wait_for_flag(c: Condition, flag: Value<u32>, out: Queue<u32>) {
    let mut g = c.lock().unwrap();
    let ok = g
        .wait_while(|| flag.get().unwrap() == 0, Some(WAIT))
        .unwrap();
    drop(g);
    out.put(u32::from(ok) * flag.get().unwrap()).unwrap();
}
fn meet(b: Barrier, out: Queue<u32>) {
    out.put(b.wait(Some(WAIT)).unwrap()).unwrap();
}

#[test]
fn events_conditions_and_barriers_coordinate_processes() {
    bounded(LIMIT, || {
        let (go, done) = (Event::new().unwrap(), Event::new().unwrap());
        let mut p = Process::new(wait_then_set, (go, done));
        p.start().unwrap();
        assert!(!done.wait(Some(Duration::from_millis(20))).unwrap());
        go.set().unwrap();
        assert!(done.wait(Some(WAIT)).unwrap());
        assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0));

        let c = Condition::new().unwrap();
        let flag = Value::new(0u32).unwrap();
        let out = Queue::<u32>::new(8).unwrap();
        let mut waiters: Vec<Process> = (0..2)
            .map(|_| Process::new(wait_for_flag, (c, flag, out)))
            .collect();
        waiters.iter_mut().for_each(|p| p.start().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        {
            let mut g = c.lock().unwrap();
            flag.set(7).unwrap();
            g.notify_all();
        }
        assert_eq!(
            out.get_timeout(WAIT).unwrap() + out.get_timeout(WAIT).unwrap(),
            14
        );
        waiters
            .iter_mut()
            .for_each(|p| assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0)));

        let b = Barrier::new(4).unwrap();
        let mut ps: Vec<Process> = (0..3).map(|_| Process::new(meet, (b, out))).collect();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        let mine = b.wait(Some(WAIT)).unwrap();
        let mut indices: Vec<u32> = (0..3).map(|_| out.get_timeout(WAIT).unwrap()).collect();
        indices.push(mine);
        indices.sort();
        assert_eq!(indices, [0, 1, 2, 3]);
        ps.iter_mut()
            .for_each(|p| assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0)));

        // A waiter that times out breaks the barrier for everyone.
        let lonely = Barrier::new(2).unwrap();
        assert!(matches!(
            lonely.wait(Some(Duration::from_millis(20))),
            Err(Error::Timeout)
        ));
        assert!(lonely.broken().unwrap());
        assert!(matches!(lonely.wait(Some(WAIT)), Err(Error::BrokenBarrier)));
    });
}

fn negate(a: Array<i32>) {
    a.lock().unwrap().iter_mut().for_each(|x| *x = -*x);
}
fn via_pool(q: Queue<u64>, x: u64) -> u64 {
    q.put(x).unwrap();
    x
}

#[test]
fn values_and_arrays_are_shared_and_checked_and_objects_work_in_pool_tasks() {
    bounded(LIMIT, || {
        let a = Array::new(&[1, 2, 3]).unwrap();
        let mut p = Process::new(negate, (a,));
        p.start().unwrap();
        p.join(Some(WAIT)).unwrap();
        assert_eq!(a.to_vec().unwrap(), vec![-1, -2, -3]);
        assert_eq!(a.get(1).unwrap(), -2);
        assert!(matches!(a.get(3), Err(Error::InvalidArgument(_))));
        assert!(matches!(a.set(9, 0), Err(Error::InvalidArgument(_))));
        let raw = Value::unlocked(2.5f64).unwrap();
        raw.set(-1.0).unwrap();
        assert_eq!(raw.get().unwrap(), -1.0);
        *raw.lock().unwrap() *= 2.0;
        assert_eq!(raw.get().unwrap(), -2.0);
        // A zeroed handle names no object: an error, not a wild access.
        // SAFETY: Lock is Pod, and all-zero bytes are a valid Pod value.
        let forged: Lock = unsafe { std::mem::zeroed() };
        assert!(matches!(forged.lock(), Err(Error::InvalidArgument(_))));

        for method in StartMethod::ALL {
            let q = Queue::<u64>::new(16).unwrap();
            let pool = get_context(method).pool(2).unwrap();
            // A closure capturing `q` cannot travel; it is an argument instead.
            let sums = pool.starmap(via_pool, &[(q, 5), (q, 6)]).unwrap();
            assert_eq!(sums, vec![5, 6]);
            let mut seen = vec![q.get_timeout(WAIT).unwrap(), q.get_timeout(WAIT).unwrap()];
            seen.sort();
            assert_eq!(seen, vec![5, 6], "{method}");
        }
    });
}

#[test]
fn nothing_is_left_in_dev_shm() {
    let before = common::shm_entries();
    let _objects = (
        Lock::new(),
        Queue::<u8>::new(4),
        Value::new(1u8),
        Event::new(),
    );
    let mut p = Process::new(sleep_ms, (1,));
    p.start().unwrap();
    p.join(Some(WAIT)).unwrap();
    assert_eq!(
        common::shm_entries(),
        before,
        "objects live in an anonymous memfd"
    );
    drop(Pool::new(1).unwrap());
    assert_eq!(common::shm_entries(), before);
}
