//! `Pool`'s API against Python's, test by test. Each test is named after the
//! CPython behaviour it mirrors and quotes the sentence of Python's reference
//! for it (https://docs.python.org/3/library/multiprocessing.html#module-multiprocessing.pool). Every wait is bounded.

mod common;

use common::{all_gone_within, bounded};
use shmpool::{current_process, Error, Event, Pool, StartMethod};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn f(x: u64) -> u64 {
    x * x
}
fn add(a: i64, b: i64) -> i64 {
    a + b
}
static OFFSET: AtomicU64 = AtomicU64::new(0);
fn set_offset(k: u64) {
    OFFSET.store(k, Ordering::Relaxed)
}
fn shifted(x: u64) -> u64 {
    x + OFFSET.load(Ordering::Relaxed)
}
fn pid() -> u32 {
    std::process::id()
}
fn sleepy(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}
fn fails_on_3(x: u64) -> u64 {
    assert!(x != 3, "three");
    x
}

/// A typical first program, line by line, as its comments say.
#[test]
fn a_first_program_compiles_and_behaves_as_commented() {
    bounded(LIMIT, || -> Result<(), Error> {
        let pool = Pool::builder()
            .processes(2)
            .initializer(set_offset, (1000,))
            .maxtasksperchild(50)
            .start_method(StartMethod::Fork)
            .build()?;
        assert_eq!(pool.map(shifted, &[1, 2])?, vec![1001, 1002]);

        let mut seen: Vec<u64> = pool
            .imap_unordered(f, 0..10u64)?
            .collect::<Result<_, _>>()?;
        seen.sort();
        assert_eq!(seen, (0..10).map(f).collect::<Vec<_>>());
        let ordered: Vec<u64> = pool.imap(f, 0..10u64)?.collect::<Result<_, _>>()?;
        assert_eq!(ordered, (0..10).map(f).collect::<Vec<_>>());
        let mut it = pool.imap_chunked(f, 0..u64::MAX, 64)?;
        let first = it.next_timeout(Duration::from_secs(1));
        assert_eq!(first.unwrap()?, 0);
        drop(it);
        let sums = pool.starmap(add, &[(1, 2), (3, 4)])?;
        assert_eq!(sums, vec![3, 7]);
        let r = pool.map_async(f, &[1, 2, 3])?;
        let s = pool.starmap_async(add, &[(5, 5)])?;
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let cb = pool.apply_async_with(
            f,
            (7,),
            move |v: u64| tx.send(format!("got {v}")).unwrap(),
            move |e: Error| tx2.send(e.to_string()).unwrap(),
        )?;
        assert_eq!(r.get(WAIT)?, vec![1, 4, 9]);
        assert_eq!(s.get(WAIT)?, vec![10]);
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "got 49");
        assert_eq!(cb.get(WAIT)?, 49);
        pool.close();
        pool.join()?;
        Ok(())
    })
    .unwrap();
}

// "If initializer is not None then each worker process will call
// initializer(*initargs) when it starts."
#[test]
fn initializer_runs_in_every_worker_including_replacements() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .initializer(set_offset, (7,))
            .build()
            .unwrap();
        assert_eq!(OFFSET.load(Ordering::Relaxed), 0, "not in the parent");
        let out = pool.map_chunked(shifted, &[0u64; 64], 1).unwrap();
        assert!(out.iter().all(|&x| x == 7));
        // Kill a worker: its replacement must run the initializer too.
        let victim = pool.worker_pids()[0];
        // SAFETY: signalling our own worker.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        assert!(all_gone_within(&[victim], Duration::from_secs(10)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.worker_pids().len() < 2 || pool.worker_pids().contains(&victim) {
            assert!(Instant::now() < deadline, "no replacement");
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = pool.map_chunked(shifted, &[0u64; 64], 1).unwrap();
        assert!(out.iter().all(|&x| x == 7), "{out:?}");
    });
}

/// Writes this worker's pid to `fd` (a pipe the test reads), then refuses.
fn bad_init(fd: i32, k: u64) {
    let pid = std::process::id().to_le_bytes();
    // SAFETY: writes 4 bytes from a live array to an inherited pipe.
    unsafe { libc::write(fd, pid.as_ptr().cast(), 4) };
    assert!(k == 0, "initializer refuses {k}");
}

#[test]
fn a_panicking_initializer_fails_build_and_leaves_no_worker() {
    bounded(LIMIT, || {
        let shm_before = common::shm_entries();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let err = Pool::builder()
            .processes(2)
            .initializer(bad_init, (fds[1], 5))
            .build()
            .unwrap_err();
        match err {
            Error::InitializerFailed { message } => {
                assert!(message.contains("initializer refuses 5"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // SAFETY: closing our write end; the read end must not wait for other
        // tests' workers, which inherit the write end too.
        unsafe {
            libc::close(fds[1]);
            libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK);
        }
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live buffer.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 64) };
        // SAFETY: our read end.
        unsafe { libc::close(fds[0]) };
        assert!(n >= 4, "no initializer ran");
        let pids: Vec<u32> = buf[..n as usize]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // Killed and reaped by build() before it returned: not even zombies.
        assert!(
            pids.iter().all(|&p| common::is_gone(p)),
            "left behind: {pids:?}"
        );
        assert_eq!(
            common::shm_entries(),
            shm_before,
            "no segment left in /dev/shm"
        );
    });
}

// "maxtasksperchild is the number of tasks a worker process can complete
// before it will exit and be replaced with a fresh worker process"
#[test]
fn maxtasksperchild_replaces_workers_without_losing_or_repeating_work() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .maxtasksperchild(3)
            .build()
            .unwrap();
        let pids: Vec<u32> = (0..30).map(|_| pool.apply(pid, ()).unwrap()).collect();
        let mut distinct = pids.clone();
        distinct.sort();
        distinct.dedup();
        // 30 tasks, at most 3 per worker: at least 10 different processes.
        assert!(distinct.len() >= 10, "{} workers: {pids:?}", distinct.len());
        for p in &distinct {
            let n = pids.iter().filter(|q| *q == p).count();
            assert!(n <= 3, "worker {p} ran {n} tasks");
        }
        // A map over many chunks is complete and exact.
        let v: Vec<u64> = (0..10_000).collect();
        let out = pool.map_chunked(f, &v, 7).unwrap();
        assert_eq!(out, v.iter().map(|&x| f(x)).collect::<Vec<_>>());
        assert!(matches!(
            Pool::builder().maxtasksperchild(0).build(),
            Err(Error::InvalidArgument(_))
        ));
    });
}

/// Writes one byte to `fd` (a pipe the test reads) per task run.
fn count_run(fd: i32) {
    // SAFETY: writes one byte from a live array to an inherited pipe.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

#[test]
fn maxtasksperchild_runs_every_task_exactly_once() {
    bounded(LIMIT, || {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pool = Pool::builder()
            .processes(2)
            .maxtasksperchild(3)
            .build()
            .unwrap();
        let handles: Vec<_> = (0..300)
            .map(|_| pool.apply_async(count_run, (fds[1],)).unwrap())
            .collect();
        for h in &handles {
            h.get(WAIT).unwrap();
        }
        pool.close();
        pool.join().unwrap();
        // Workers of concurrent tests inherit the write end too, so read what
        // is there without waiting for end-of-file. Every task has run (joined).
        // SAFETY: our descriptors.
        unsafe {
            libc::close(fds[1]);
            libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK);
        }
        let mut total = 0;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a live buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            total += n;
        }
        // SAFETY: our read end.
        unsafe { libc::close(fds[0]) };
        assert_eq!(total, 300, "each task runs once, none lost, none repeated");
    });
}

// "map_async: A variant of the map() method which returns a result object."
#[test]
fn map_async_and_starmap_async_return_result_objects() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let v: Vec<u64> = (0..100_000).collect();
        let r = pool.map_async(f, &v).unwrap();
        let r2 = pool.map_async_chunked(f, &v[..10], 3).unwrap();
        let pairs: Vec<(i64, i64)> = (0..1000).map(|i| (i, 2 * i)).collect();
        let s = pool.starmap_async(add, &pairs).unwrap();
        assert_eq!(
            r.get(WAIT).unwrap(),
            v.iter().map(|&x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(
            r2.get(WAIT).unwrap(),
            v[..10].iter().map(|&x| x * x).collect::<Vec<_>>()
        );
        assert!(r.ready() && r.successful().unwrap());
        assert_eq!(
            s.get(WAIT).unwrap(),
            (0..1000).map(|i| 3 * i).collect::<Vec<i64>>()
        );
        // "If the remote call raised an exception then that exception will be
        // reraised by get()."
        let bad = pool
            .map_async_chunked(fails_on_3, &[1, 2, 3, 4], 1)
            .unwrap();
        assert!(
            matches!(bad.get(WAIT), Err(Error::TaskPanicked { message }) if message == "three")
        );
        assert!(!bad.successful().unwrap());
        let empty = pool.map_async(f, &[]).unwrap();
        assert_eq!(empty.get(WAIT).unwrap(), Vec::<u64>::new());
        assert!(matches!(
            pool.map_async_chunked(f, &[1], 0),
            Err(Error::InvalidArgument(_))
        ));
    });
}

// "starmap: Hence an iterable of [(1,2), (3, 4)] results in [func(1,2), func(3,4)]."
#[test]
fn starmap_unpacks_tuples_of_every_arity() {
    fn three(a: u8, b: u16, c: u32) -> u64 {
        a as u64 + b as u64 + c as u64
    }
    fn six(a: u8, b: u8, c: u8, d: u8, e: u8, g: u8) -> u8 {
        a + b + c + d + e + g
    }
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.starmap(add, &[(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
        assert_eq!(
            pool.starmap(three, &[(1, 2, 3), (4, 5, 6)]).unwrap(),
            vec![6, 15]
        );
        assert_eq!(pool.starmap(six, &[(1, 1, 1, 1, 1, 1)]).unwrap(), vec![6]);
        let many: Vec<(i64, i64)> = (0..5000).map(|i| (i, -i)).collect();
        assert!(pool
            .starmap_chunked(add, &many, 17)
            .unwrap()
            .iter()
            .all(|&s| s == 0));
    });
}

// "imap: A lazier version of map()." and "if chunksize is 1 then the next()
// method ... has an optional timeout parameter"
#[test]
fn imap_is_lazy_ordered_and_has_next_timeout() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        // Lazy: an endless input, and we only pull what we consume.
        let pulled = std::sync::Arc::new(AtomicU64::new(0));
        let counter = std::sync::Arc::clone(&pulled);
        let input = (0..u64::MAX).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = pool.imap_chunked(f, input, 64).unwrap();
        for i in 0..1000u64 {
            assert_eq!(
                it.next_timeout(Duration::from_secs(30)).unwrap().unwrap(),
                i * i
            );
        }
        drop(it);
        let n = pulled.load(Ordering::Relaxed);
        assert!(n < 1_000_000, "pulled {n} items for 1000 results");
        // Ordered for every chunk size.
        for chunksize in [1, 3, 100] {
            let got: Vec<u64> = pool
                .imap_chunked(f, 0..1000u64, chunksize)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, (0..1000).map(f).collect::<Vec<_>>());
        }
        // "next(timeout) will raise multiprocessing.TimeoutError if the result
        // cannot be returned within timeout seconds."
        let mut slow = pool.imap(sleepy, [2000u64]).unwrap();
        assert!(matches!(
            slow.next_timeout(Duration::from_millis(50)),
            Some(Err(Error::Timeout))
        ));
        assert_eq!(
            slow.next_timeout(Duration::from_secs(30)).unwrap().unwrap(),
            2000
        );
        assert!(slow.next_timeout(Duration::from_secs(1)).is_none());
        assert!(matches!(
            pool.imap_chunked(f, 0..1u64, 0),
            Err(Error::InvalidArgument(_))
        ));
    });
}

// "The same as imap() except that the ordering of the results from the
// returned iterator should be considered arbitrary."
#[test]
fn imap_unordered_yields_in_completion_order() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        // A slow first item must not hold back the fast ones behind it.
        let got: Vec<u64> = pool
            .imap_unordered(sleepy, [1500u64, 1, 2, 3])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.last(), Some(&1500), "{got:?}");
        let mut all: Vec<u64> = pool
            .imap_unordered_chunked(f, 0..10_000u64, 7)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        all.sort();
        assert_eq!(all, (0..10_000).map(f).collect::<Vec<_>>());
    });
}

#[test]
fn a_failed_imap_chunk_yields_one_error_and_iteration_goes_on() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let got: Vec<Result<u64, Error>> = pool.imap(fails_on_3, 1..6u64).unwrap().collect();
        assert_eq!(got.len(), 5);
        assert!(matches!(&got[2], Err(Error::TaskPanicked { message }) if message == "three"));
        let ok: Vec<u64> = got.into_iter().filter_map(Result::ok).collect();
        assert_eq!(ok, vec![1, 2, 4, 5]);
    });
}

#[test]
fn dropping_an_imap_discards_outstanding_work() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let mut it = pool.imap(sleepy, [300u64; 100]).unwrap();
        let _ = it.next_timeout(Duration::from_millis(10));
        let start = Instant::now();
        drop(it);
        // The queued tasks were withdrawn: the pool is free again quickly
        // (at most the one running 300 ms task remains), not after 30 s.
        assert_eq!(pool.apply(f, (3,)).unwrap(), 9);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    });
}

// "If callback is specified then it should be a callable which accepts a
// single argument. When the result becomes ready callback is applied to it,
// that is unless the call failed, in which case the error_callback is applied
// instead."
#[test]
fn callbacks_run_once_in_the_parent_in_completion_order() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let (tx, rx) = mpsc::channel::<(String, u32, String)>();
        let me = std::process::id();
        let mut handles = Vec::new();
        for (i, millis) in [(0u64, 600u64), (1, 10)] {
            let tx = tx.clone();
            let etx = tx.clone();
            handles.push(
                pool.apply_async_with(
                    sleepy,
                    (millis,),
                    move |v| {
                        let thread = std::thread::current().name().unwrap_or("").to_owned();
                        tx.send((format!("ok {i} {v}"), std::process::id(), thread))
                            .unwrap()
                    },
                    move |e| etx.send((format!("err {e}"), 0, String::new())).unwrap(),
                )
                .unwrap(),
            );
        }
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(first.0, "ok 1 10", "the fast task completes first");
        assert_eq!(second.0, "ok 0 600");
        assert_eq!((first.1, second.1), (me, me), "callbacks run in the parent");
        assert_eq!(first.2, "shmpool-callbacks");
        // error_callback gets the task's error.
        let (etx, erx) = mpsc::channel();
        let r = pool
            .map_async_with(
                fails_on_3,
                &[1, 2, 3],
                |_| panic!("not this one"),
                move |e| etx.send(e.to_string()).unwrap(),
            )
            .unwrap();
        assert!(erx
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .contains("three"));
        assert!(matches!(r.get(WAIT), Err(Error::TaskPanicked { .. })));
        // starmap_async_with delivers the vector.
        let (stx, srx) = mpsc::channel();
        pool.starmap_async_with(
            add,
            &[(1, 1), (2, 2)],
            move |v| stx.send(v).unwrap(),
            |_| {},
        )
        .unwrap();
        assert_eq!(
            srx.recv_timeout(Duration::from_secs(30)).unwrap(),
            vec![2, 4]
        );
        assert!(rx.try_recv().is_err(), "each callback runs once");
    });
}

// CPython's result handler dies if a callback raises, and the pool hangs
// (gh-83371). Here the panic is caught, reported, and the pool goes on.
#[test]
fn a_panicking_callback_is_reported_and_does_not_wedge_the_pool() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let bad = pool
            .apply_async_with(f, (2,), |_| panic!("callback exploded"), |_| {})
            .unwrap();
        match bad.get(WAIT) {
            Err(Error::CallbackPanicked { message }) => assert_eq!(message, "callback exploded"),
            other => panic!("{other:?}"),
        }
        assert!(bad.successful().unwrap(), "the task itself succeeded");
        let (tx, rx) = mpsc::channel();
        let good = pool
            .apply_async_with(f, (3,), move |v| tx.send(v).unwrap(), |_| {})
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 9);
        assert_eq!(good.get(WAIT).unwrap(), 9);
    });
}

/// Per-item callback counters: each callback adds 1 for a value, 1000 for
/// an error, so a count says how many times which callback ran.
fn counters(n: u64) -> std::sync::Arc<Vec<AtomicU64>> {
    std::sync::Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
}

fn counting_callbacks(
    seen: &std::sync::Arc<Vec<AtomicU64>>,
    i: u64,
) -> (
    impl FnOnce(u64) + Send + 'static,
    impl FnOnce(Error) + Send + 'static,
) {
    let (ok, err) = (std::sync::Arc::clone(seen), std::sync::Arc::clone(seen));
    (
        move |v| {
            assert_eq!(v, 2 * i);
            ok[i as usize].fetch_add(1, Ordering::SeqCst);
        },
        move |e| {
            assert!(matches!(e, Error::WorkerDied { .. }), "{e}");
            err[i as usize].fetch_add(1000, Ordering::SeqCst);
        },
    )
}

fn double_after(go: Event, i: u64) -> u64 {
    assert!(go.wait(Some(Duration::from_secs(20))).unwrap());
    2 * i
}

// "it should return immediately since otherwise the thread which handles the
// results will get blocked": here a slow callback only delays the others,
// though thousands of results finish while it runs (more than the workers'
// finish logs hold).
#[test]
fn every_callback_runs_once_when_results_finish_during_a_slow_callback() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let go = Event::new().unwrap();
        let n = 5000u64;
        let seen = counters(n);
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (ok, err) = counting_callbacks(&seen, i);
                pool.apply_async_with(double_after, (go, i), ok, err)
                    .unwrap()
            })
            .collect();
        // An already finished result (an empty map) wakes the callback thread:
        // it takes in the results above, still running, then runs this slow
        // callback, during which they all finish.
        let (started_tx, started_rx) = mpsc::channel();
        let slow = pool
            .map_async_with(
                f,
                &[],
                move |_| {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                },
                |_| {},
            )
            .unwrap();
        started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        go.set().unwrap();
        assert!(slow.wait(WAIT));
        for (i, h) in handles.iter().enumerate() {
            assert!(h.wait(WAIT), "callback {i} never ran");
        }
        for (i, count) in seen.iter().enumerate() {
            assert_eq!(count.load(Ordering::SeqCst), 1, "item {i}");
        }
    });
}

/// `2 * i`, but aborts the worker for every 1000th item.
fn doubled_unless_999(i: u64) -> u64 {
    if i % 1000 == 999 {
        std::process::abort();
    }
    2 * i
}

// Workers that die (abort) or retire (maxtasksperchild) while results with
// callbacks stream in: each callback still runs exactly once.
#[test]
fn every_callback_runs_once_through_crashes_and_replacements() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .maxtasksperchild(700)
            .build()
            .unwrap();
        for n in [5000u64, 20_000] {
            let seen = counters(n);
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (ok, err) = counting_callbacks(&seen, i);
                    pool.apply_async_with(doubled_unless_999, (i,), ok, err)
                        .unwrap()
                })
                .collect();
            for (i, h) in handles.iter().enumerate() {
                assert!(h.wait(WAIT), "callback {i} never ran");
            }
            for (i, count) in seen.iter().enumerate() {
                let want = if i % 1000 == 999 { 1000 } else { 1 };
                assert_eq!(count.load(Ordering::SeqCst), want, "item {i}");
            }
        }
    });
}

/// Context switches so far of this process's thread `tid`.
fn context_switches_of(tid: i64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

// With no result waiting for callbacks, the callback thread sleeps until one
// is handed over: tasks without callbacks do not wake it (each would cost a
// wake-up syscall in the worker and a context switch here).
#[test]
fn an_idle_callback_thread_is_not_woken_by_other_tasks() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let (tx, rx) = mpsc::channel();
        // SAFETY: gettid takes no arguments and touches no memory.
        let report_tid = move |_| tx.send(unsafe { libc::syscall(libc::SYS_gettid) }).unwrap();
        pool.apply_async_with(f, (3,), report_tid, |_| {}).unwrap();
        let callback_thread = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        std::thread::sleep(Duration::from_millis(100)); // it goes back to sleep
        let before = context_switches_of(callback_thread);
        for i in 0..2000 {
            assert_eq!(pool.apply(f, (i,)).unwrap(), i * i);
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // workers sleep too
            }
        }
        let switches = context_switches_of(callback_thread) - before;
        assert!(switches < 50, "woken {switches} times by 2000 tasks");
    });
}

#[test]
fn callbacks_still_run_when_the_handle_is_dropped_and_on_terminate() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        drop(
            pool.apply_async_with(f, (4,), move |v| tx.send(Ok(v)).unwrap(), |_| {})
                .unwrap(),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), Ok(16));
        // A task cut short by terminate gets its error_callback.
        let _busy = pool.apply_async(sleepy, (5000,)).unwrap();
        let cut = pool
            .apply_async_with(
                sleepy,
                (5000,),
                |_| {},
                move |e| tx2.send(Err(e.to_string())).unwrap(),
            )
            .unwrap();
        pool.terminate();
        assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap().is_err());
        assert!(matches!(cut.get(WAIT), Err(Error::Terminated)));
    });
}

// "One must call close() or terminate() before using join()."
// "close(): Prevents any more tasks from being submitted to the pool."
#[test]
fn lifecycle_matches_cpython_for_every_method() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        assert!(matches!(pool.join(), Err(Error::InvalidState(_))));
        let pending = pool.map_async(f, &[1, 2]).unwrap();
        pool.close();
        assert!(matches!(pool.map(f, &[1]), Err(Error::Closed)));
        assert!(matches!(pool.map_async(f, &[1]), Err(Error::Closed)));
        assert!(matches!(pool.starmap(add, &[(1, 1)]), Err(Error::Closed)));
        assert!(matches!(
            pool.starmap_async(add, &[(1, 1)]),
            Err(Error::Closed)
        ));
        assert!(matches!(pool.imap(f, 0..1u64), Err(Error::Closed)));
        assert!(matches!(
            pool.imap_unordered(f, 0..1u64),
            Err(Error::Closed)
        ));
        assert!(matches!(
            pool.apply_async_with(f, (1,), |_| {}, |_| {}),
            Err(Error::Closed)
        ));
        pool.join().unwrap();
        // "Once all the tasks have been completed the worker processes will exit."
        assert_eq!(pending.get(WAIT).unwrap(), vec![1, 4]);
        assert!(pool.worker_pids().is_empty());
    });
}

fn who() -> (u64, u32) {
    let me = current_process();
    assert_eq!(me.name, format!("ForkPoolWorker-{}", me.index.unwrap() + 1));
    (me.index.unwrap() as u64, me.pid)
}

#[test]
fn current_process_names_the_worker_inside_a_task_and_the_parent_outside() {
    bounded(LIMIT, || {
        let parent = current_process();
        assert_eq!(parent.name, "MainProcess");
        assert_eq!(parent.index, None);
        assert_eq!(parent.pid, std::process::id());
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        for (index, pid) in pool.map_chunked(|_: u8| who(), &[0u8; 20], 1).unwrap() {
            assert!(index < 2);
            assert_eq!(pids[index as usize], pid);
        }
    });
}
