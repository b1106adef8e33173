//! CPython's `Condition` and `Queue` tests (`Lib/test/_test_multiprocessing.py`:
//! `_TestCondition` and `_TestQueue.test_get`/`test_timeout`), ported with
//! processes and threads as there, plus what makes `notify(1)` wake exactly
//! one waiter: no spurious return from `wait`. Every wait is bounded.
//!
//! CPython's timings: `DELTA` = `TIMEOUT1` = 0.1 s. Where CPython checks that
//! nothing more happened after a notify, this waits `DELTA` and checks again.

mod common;

use common::bounded;
use shmpool::{Condition, Error, Event, Process, Queue, Semaphore, Value};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);
const DELTA: Duration = Duration::from_millis(100);
const TIMEOUT1: Duration = Duration::from_millis(100);
/// CPython's `support.SHORT_TIMEOUT`.
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);

/// CPython's `f`: lock, say "sleeping", wait (`timeout_ms` 0: no timeout),
/// say "woken", unlock.
fn f(cond: Condition, sleeping: Semaphore, woken: Semaphore, timeout_ms: u64) {
    let mut guard = cond.lock().unwrap();
    sleeping.release().unwrap();
    let timeout = (timeout_ms != 0).then(|| Duration::from_millis(timeout_ms));
    guard.wait(timeout).unwrap();
    woken.release().unwrap();
    drop(guard);
}

/// Starts `f` in a new process and in a new thread.
fn start_both(
    cond: Condition,
    sleeping: Semaphore,
    woken: Semaphore,
    timeout_ms: u64,
) -> (Process, std::thread::JoinHandle<()>) {
    let mut p = Process::new(f, (cond, sleeping, woken, timeout_ms));
    p.start().unwrap();
    let t = std::thread::spawn(move || f(cond, sleeping, woken, timeout_ms));
    (p, t)
}

/// CPython's `assertReachesEventually`, then: still `value` after `DELTA`.
fn reaches_and_stays(woken: Semaphore, value: u32) {
    let deadline = Instant::now() + SHORT_TIMEOUT;
    while woken.value().unwrap() != value && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(woken.value().unwrap(), value);
    std::thread::sleep(DELTA);
    assert_eq!(woken.value().unwrap(), value, "{value} woken, then more");
}

fn join_all(processes: Vec<Process>, threads: Vec<std::thread::JoinHandle<()>>) {
    for t in threads {
        t.join().unwrap();
    }
    for mut p in processes {
        assert_eq!(p.join(Some(SHORT_TIMEOUT)).unwrap(), Some(0));
    }
}

#[test]
fn condition_notify_wakes_one_waiter_at_a_time() {
    bounded(LIMIT, || {
        let cond = Condition::new().unwrap();
        let sleeping = Semaphore::new(0).unwrap();
        let woken = Semaphore::new(0).unwrap();
        let (p, t) = start_both(cond, sleeping, woken, 0);
        sleeping.acquire().unwrap();
        sleeping.acquire().unwrap();
        reaches_and_stays(woken, 0);
        cond.lock().unwrap().notify(1);
        reaches_and_stays(woken, 1);
        cond.lock().unwrap().notify(1);
        reaches_and_stays(woken, 2);
        join_all(vec![p], vec![t]);
    });
}

#[test]
fn condition_notify_all_wakes_every_waiter_and_timed_out_ones_stay_out() {
    bounded(LIMIT, || {
        let cond = Condition::new().unwrap();
        let sleeping = Semaphore::new(0).unwrap();
        let woken = Semaphore::new(0).unwrap();
        let (mut processes, mut threads) = (Vec::new(), Vec::new());
        // Some that time out.
        for _ in 0..3 {
            let (p, t) = start_both(cond, sleeping, woken, TIMEOUT1.as_millis() as u64);
            processes.push(p);
            threads.push(t);
        }
        for _ in 0..6 {
            sleeping.acquire().unwrap();
        }
        for _ in 0..6 {
            woken.acquire_timeout(SHORT_TIMEOUT).unwrap();
        }
        assert_eq!(woken.value().unwrap(), 0);
        // Some that wait for the notify.
        for _ in 0..3 {
            let (p, t) = start_both(cond, sleeping, woken, 0);
            processes.push(p);
            threads.push(t);
        }
        for _ in 0..6 {
            sleeping.acquire().unwrap();
        }
        std::thread::sleep(DELTA);
        assert_eq!(woken.value().unwrap(), 0);
        cond.lock().unwrap().notify_all();
        for _ in 0..6 {
            woken.acquire_timeout(SHORT_TIMEOUT).unwrap();
        }
        assert_eq!(woken.value().unwrap(), 0);
        join_all(processes, threads);
    });
}

#[test]
fn condition_notify_n_wakes_n_waiters() {
    bounded(LIMIT, || {
        let cond = Condition::new().unwrap();
        let sleeping = Semaphore::new(0).unwrap();
        let woken = Semaphore::new(0).unwrap();
        let (mut processes, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (p, t) = start_both(cond, sleeping, woken, 0);
            processes.push(p);
            threads.push(t);
        }
        for _ in 0..6 {
            sleeping.acquire().unwrap();
        }
        std::thread::sleep(DELTA);
        assert_eq!(woken.value().unwrap(), 0);
        cond.lock().unwrap().notify(2);
        reaches_and_stays(woken, 2);
        cond.lock().unwrap().notify(4);
        reaches_and_stays(woken, 6);
        // Nobody waits: does nothing more.
        cond.lock().unwrap().notify(3);
        assert_eq!(woken.value().unwrap(), 6);
        join_all(processes, threads);
    });
}

#[test]
fn condition_wait_times_out_after_its_timeout() {
    bounded(LIMIT, || {
        let cond = Condition::new().unwrap();
        let mut guard = cond.lock().unwrap();
        let start = Instant::now();
        assert!(!guard.wait(Some(TIMEOUT1)).unwrap());
        assert!(start.elapsed() >= TIMEOUT1);
        assert!(!guard.wait(Some(Duration::ZERO)).unwrap());
    });
}

fn waitfor_f(cond: Condition, state: Value<i32>) {
    let mut guard = cond.lock().unwrap();
    state.set(0).unwrap();
    guard.notify(1);
    let done = guard
        .wait_while(|| state.get().unwrap() != 4, None)
        .unwrap();
    if !done || state.get().unwrap() != 4 {
        std::process::exit(1);
    }
}

#[test]
fn condition_wait_while_sees_every_notified_change() {
    bounded(LIMIT, || {
        let cond = Condition::new().unwrap();
        let state = Value::new(-1i32).unwrap();
        let mut p = Process::new(waitfor_f, (cond, state));
        p.start().unwrap();
        {
            let mut guard = cond.lock().unwrap();
            let ok = guard.wait_while(|| state.get().unwrap() != 0, Some(SHORT_TIMEOUT));
            assert!(ok.unwrap());
            assert_eq!(state.get().unwrap(), 0);
        }
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(10));
            let mut guard = cond.lock().unwrap();
            state.set(state.get().unwrap() + 1).unwrap();
            guard.notify(1);
        }
        assert_eq!(p.join(Some(SHORT_TIMEOUT)).unwrap(), Some(0));
    });
}

fn waitfor_timeout_f(cond: Condition, state: Value<i32>, success: Value<i32>, sem: Semaphore) {
    sem.release().unwrap();
    let mut guard = cond.lock().unwrap();
    let expected = Duration::from_millis(100);
    let start = Instant::now();
    let done = guard
        .wait_while(|| state.get().unwrap() != 4, Some(expected))
        .unwrap();
    if !done && start.elapsed() >= expected {
        success.set(1).unwrap();
    }
}

#[test]
fn condition_wait_while_times_out_when_the_state_is_never_reached() {
    bounded(LIMIT, || {
        let cond = Condition::new().unwrap();
        let state = Value::new(0i32).unwrap();
        let success = Value::new(0i32).unwrap();
        let sem = Semaphore::new(0).unwrap();
        let mut p = Process::new(waitfor_timeout_f, (cond, state, success, sem));
        p.start().unwrap();
        sem.acquire_timeout(SHORT_TIMEOUT).unwrap();
        // Only 3 increments: 4 is never reached.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(10));
            let mut guard = cond.lock().unwrap();
            state.set(state.get().unwrap() + 1).unwrap();
            guard.notify(1);
        }
        assert_eq!(p.join(Some(SHORT_TIMEOUT)).unwrap(), Some(0));
        assert_eq!(success.get().unwrap(), 1);
    });
}

extern "C" fn interrupt(_: libc::c_int) {}

/// Installs a SIGUSR1 handler without `SA_RESTART`, so that a sleeping
/// `futex` returns `EINTR` when the signal comes (the kernel's spurious
/// return that a waiter must not take for a notify).
fn install_interrupting_handler() {
    // SAFETY: a zeroed sigaction with a handler that does nothing (which is
    // async-signal-safe) and no flags.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = interrupt as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
}

#[test]
fn notify_one_wakes_exactly_one_waiter_even_when_the_sleepers_are_interrupted() {
    bounded(LIMIT, || {
        install_interrupting_handler();
        for round in 0..20 {
            let cond = Condition::new().unwrap();
            let sleeping = Semaphore::new(0).unwrap();
            let woken = Semaphore::new(0).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        // SAFETY: plain call.
                        tx.send(unsafe { libc::pthread_self() }).unwrap();
                        f(cond, sleeping, woken, 0);
                    })
                })
                .collect();
            let ids: Vec<libc::pthread_t> = (0..2).map(|_| rx.recv().unwrap()).collect();
            sleeping.acquire().unwrap();
            sleeping.acquire().unwrap();
            // Taking the lock: both have released it inside `wait`.
            let mut guard = cond.lock().unwrap();
            if round % 2 == 0 {
                guard.notify(1);
            }
            drop(guard);
            for _ in 0..5 {
                for &id in &ids {
                    // SAFETY: both threads run until they are notified below.
                    unsafe { libc::pthread_kill(id, libc::SIGUSR1) };
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let expect = if round % 2 == 0 { 1 } else { 0 };
            if expect == 1 {
                reaches_and_stays(woken, 1);
            } else {
                std::thread::sleep(DELTA);
                assert_eq!(
                    woken.value().unwrap(),
                    0,
                    "round {round}: woken with no notify"
                );
            }
            cond.lock().unwrap().notify_all();
            for w in waiters {
                w.join().unwrap();
            }
            assert_eq!(woken.value().unwrap(), 2, "round {round}");
        }
    });
}

fn put_2_to_5_then_set(q: Queue<u32>, child_can_start: Event, parent_can_continue: Event) {
    child_can_start.wait(Some(SHORT_TIMEOUT)).unwrap();
    for v in 2..=5 {
        q.put(v).unwrap();
    }
    parent_can_continue.set().unwrap();
}

/// `wait` fails with `Timeout` (Python's `queue.Empty`), after at least
/// `at_least`.
fn empty_after(at_least: Duration, wait: impl FnOnce() -> Result<u32, Error>) {
    let start = Instant::now();
    let got = wait();
    assert!(matches!(got, Err(Error::Timeout)), "{got:?}");
    assert!(start.elapsed() >= at_least, "{:?}", start.elapsed());
}

#[test]
fn queue_get_in_every_form_and_empty_after_its_timeout() {
    bounded(LIMIT, || {
        let q = Queue::<u32>::new(16).unwrap();
        let child_can_start = Event::new().unwrap();
        let parent_can_continue = Event::new().unwrap();
        let mut p = Process::new(
            put_2_to_5_then_set,
            (q, child_can_start, parent_can_continue),
        );
        p.start().unwrap();
        assert!(q.is_empty().unwrap());
        child_can_start.set().unwrap();
        assert!(parent_can_continue.wait(Some(SHORT_TIMEOUT)).unwrap());
        std::thread::sleep(DELTA);
        assert!(!q.is_empty().unwrap());
        assert_eq!(q.get().unwrap(), 2);
        assert_eq!(q.get().unwrap(), 3);
        assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), 4);
        assert_eq!(q.try_get().unwrap(), Some(5));
        assert!(q.is_empty().unwrap());
        // The child may have exited: a bounded get still waits out its time.
        assert_eq!(p.join(Some(SHORT_TIMEOUT)).unwrap(), Some(0));
        assert_eq!(q.try_get().unwrap(), None);
        empty_after(Duration::ZERO, || q.get_timeout(Duration::ZERO));
        empty_after(TIMEOUT1, || q.get_timeout(TIMEOUT1));
    });
}

#[test]
fn queue_get_timeout_waits_its_whole_timeout() {
    bounded(LIMIT, || {
        let q = Queue::<u32>::new(4).unwrap();
        // CPython tolerates 100 ms of clock resolution; this clock has none.
        empty_after(Duration::from_millis(200), || {
            q.get_timeout(Duration::from_millis(200))
        });
    });
}
