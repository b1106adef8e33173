//! Crash safety: a killed worker never hangs the caller, a retried
//! task gives the exact result, a runaway task is stopped. Every wait is
//! bounded; every test here was run 20 times in a row before it was trusted.

mod common;

use common::{all_gone_within, bounded};
use shmpool::{Error, Pool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn sq(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// A small xorshift generator: random enough for kill timings, no dependency.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let t = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
        Rng(t | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn kill(pid: u32) {
    // SAFETY: signalling a worker of our own pool.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Runs `maps` maps of `sq` over 10M elements while a thread kills a random
/// worker at a random moment of each; returns how many returned `WorkerDied`.
fn maps_under_fire(pool: &Pool, maps: usize) -> usize {
    let input: Vec<u64> = (0..10_000_000).collect();
    let expected: Vec<u64> = input.iter().map(|&x| sq(x)).collect();
    let mut rng = Rng::new();
    let mut died = 0;
    for round in 0..maps {
        let pids = pool.worker_pids();
        let victim = pids[rng.below(pids.len() as u64) as usize];
        let delay = Duration::from_micros(rng.below(40_000));
        let done = Arc::new(AtomicBool::new(false));
        let killer = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let fire = !done.load(Ordering::SeqCst);
                if fire {
                    kill(victim);
                }
                fire
            })
        };
        let result = pool.map(sq, &input);
        done.store(true, Ordering::SeqCst);
        let killed = killer.join().unwrap();
        match result {
            Ok(out) => assert!(
                out == expected,
                "round {round}: a wrong value in the result"
            ),
            Err(Error::WorkerDied { signal, .. }) => {
                assert_eq!(signal, Some(libc::SIGKILL), "round {round}");
                died += 1;
            }
            Err(other) => panic!("round {round}: {other:?}"),
        }
        // Wait for the replacement so the next round has a live victim.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.worker_pids().len() < pool.processes()
            || (killed && pool.worker_pids().contains(&victim))
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: worker not replaced"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    died
}

// Both paths: workers writing into the caller's vector (zero-copy), and
// chunks copied through the pool's shared memory.
#[test]
fn killing_workers_during_maps_gives_the_exact_result_or_worker_died() {
    bounded(LIMIT, || {
        for zero_copy in [true, false] {
            let pool = Pool::builder()
                .processes(2)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            let died = maps_under_fire(&pool, 10);
            eprintln!("zero_copy {zero_copy}: {died} of 10 maps lost a worker mid-chunk");
            let v: Vec<u64> = (0..1000).collect();
            assert_eq!(
                pool.map(sq, &v).unwrap(),
                v.iter().map(|&x| sq(x)).collect::<Vec<_>>()
            );
        }
    });
}

#[test]
fn with_retries_every_map_under_fire_is_exact() {
    bounded(LIMIT, || {
        for zero_copy in [true, false] {
            let pool = Pool::builder()
                .processes(2)
                .retries(3)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            // Each map loses at most one worker, so 3 retries always suffice.
            assert_eq!(maps_under_fire(&pool, 10), 0, "zero_copy {zero_copy}");
            assert_eq!(pool.apply(sq, (12,)).unwrap(), 144);
        }
    });
}

fn slow_sq(x: u64) -> u64 {
    // ~2 µs: 50,000 of these keep both workers busy for ~50 ms.
    let mut h = x;
    for _ in 0..2_000 {
        h = std::hint::black_box(h.wrapping_mul(3).wrapping_add(1));
    }
    std::hint::black_box(h);
    sq(x)
}

// Deaths while 50,000 tasks wait in the ring: the supervisor settles each from
// the dead worker's record (the one slot it noted), so every task still runs
// and gives its exact result, with no task lost between pop and claim. A task
// killed after writing its result but before finishing is run again: it must
// read its own arguments then, not the result written over them (a bug this
// test found once: `sq(sq(x))`).
#[test]
fn killing_workers_with_many_tasks_queued_loses_no_task() {
    bounded(LIMIT, || {
        let pool = Pool::builder().processes(2).retries(10).build().unwrap();
        let mut rng = Rng::new();
        for round in 0..5 {
            let handles: Vec<_> = (0..50_000u64)
                .map(|i| pool.apply_async(slow_sq, (i,)).unwrap())
                .collect();
            for _ in 0..5 {
                std::thread::sleep(Duration::from_micros(rng.below(8_000)));
                let pids = pool.worker_pids();
                if let Some(&victim) = pids.get(rng.below(pids.len().max(1) as u64) as usize) {
                    kill(victim);
                }
            }
            for (i, h) in handles.iter().enumerate() {
                let got = h.get(Some(Duration::from_secs(60)));
                assert_eq!(got.unwrap(), sq(i as u64), "round {round}, task {i}");
            }
        }
    });
}

fn abort_task() -> u8 {
    std::process::abort()
}
fn segfault_task() -> u8 {
    // SAFETY: deliberately not safe: the point is to crash this worker with
    // SIGSEGV, as a buggy C library would.
    unsafe { std::ptr::write_volatile(16usize as *mut u8, 1) };
    0
}
fn exit_task() -> u8 {
    std::process::exit(3)
}
fn retried_abort(fd: i32) -> u8 {
    // Counts attempts through a pipe, then crashes every time.
    // SAFETY: writes one byte to an inherited pipe.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    std::process::abort()
}

#[test]
fn abort_segfault_and_exit_give_clear_errors_and_the_pool_goes_on() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let expect_signal = |r: Result<u8, Error>, sig: i32| match r {
            Err(Error::WorkerDied { signal, pid, .. }) => {
                assert_eq!(signal, Some(sig));
                assert!(pid > 0);
            }
            other => panic!("{other:?}"),
        };
        expect_signal(pool.apply(abort_task, ()), libc::SIGABRT);
        expect_signal(pool.apply(segfault_task, ()), libc::SIGSEGV);
        match pool.apply(exit_task, ()) {
            Err(Error::WorkerDied { signal: None, .. }) => {}
            other => panic!("{other:?}"),
        }
        let msg = Error::WorkerDied {
            pid: 1,
            signal: Some(libc::SIGSEGV),
            elements: None,
            cause: shmpool::DeathCause::Other,
        }
        .to_string();
        assert!(msg.contains("signal 11"), "{msg}");
        assert_eq!(pool.map(sq, &[1, 2, 3]).unwrap(), vec![1, 4, 9]);
    });
}

#[test]
fn a_crashing_task_is_retried_n_times_then_fails() {
    bounded(LIMIT, || {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pool = Pool::builder().processes(2).retries(2).build().unwrap();
        match pool.apply(retried_abort, (fds[1],)) {
            Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGABRT)),
            other => panic!("{other:?}"),
        }
        // SAFETY: our descriptors; the read must not wait for other writers.
        unsafe {
            libc::close(fds[1]);
            libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK);
        }
        let mut buf = [0u8; 16];
        // SAFETY: reads into a live buffer.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 16) };
        // SAFETY: our read end.
        unsafe { libc::close(fds[0]) };
        assert_eq!(n, 3, "one run plus two retries");
        assert_eq!(pool.apply(sq, (3,)).unwrap(), 9);
    });
}

#[test]
fn a_killed_idle_worker_is_replaced_and_the_pool_works() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        kill(pids[0]);
        assert!(all_gone_within(&[pids[0]], Duration::from_secs(10)));
        let v: Vec<u64> = (0..100_000).collect();
        assert_eq!(
            pool.map(sq, &v).unwrap(),
            v.iter().map(|&x| sq(x)).collect::<Vec<_>>()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.worker_pids().len() < 2 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!pool.worker_pids().contains(&pids[0]));
    });
}

fn spin_forever() -> u8 {
    loop {
        std::hint::spin_loop()
    }
}
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

// Tasks that end right at the limit: the supervisor may kill a worker in the
// instant after its task finished and the next one started. That next task
// did nothing wrong: it runs again (even with no retries) and never fails.
#[test]
fn a_task_that_starts_as_its_worker_is_killed_for_the_previous_one_is_run_again() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(20))
            .build()
            .unwrap();
        let pairs: Vec<_> = (0..80u64)
            .map(|i| {
                let edge = pool.apply_async(nap, (19 + i % 3,)).unwrap();
                let innocent = pool.apply_async(sq, (i,)).unwrap();
                (edge, innocent)
            })
            .collect();
        for (i, (edge, innocent)) in pairs.iter().enumerate() {
            match edge.get(Some(Duration::from_secs(30))) {
                Ok(ms) => assert_eq!(ms, 19 + i as u64 % 3),
                Err(Error::TaskTimedOut { elements: None }) => {}
                Err(other) => panic!("edge task {i}: {other:?}"),
            }
            let got = innocent.get(Some(Duration::from_secs(30)));
            assert_eq!(got.unwrap(), sq(i as u64), "innocent task {i}");
        }
    });
}

#[test]
fn a_task_looping_forever_is_killed_by_task_timeout() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let start = Instant::now();
        let stuck = pool.apply_async(spin_forever, ()).unwrap();
        let quick = pool.apply_async(nap, (50,)).unwrap();
        assert!(matches!(
            stuck.get(Some(Duration::from_secs(30))),
            Err(Error::TaskTimedOut { elements: None })
        ));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        assert_eq!(quick.get(Some(Duration::from_secs(30))).unwrap(), 50);
        // A map whose chunks each finish in time is unaffected.
        assert_eq!(
            pool.map_chunked(nap, &[100, 100, 100, 100], 1).unwrap(),
            vec![100; 4]
        );
        // A map with one runaway chunk fails with TaskTimedOut, not a hang,
        // and names the chunk's element.
        assert!(matches!(
            pool.map_chunked(nap, &[10, 5_000, 10], 1),
            Err(Error::TaskTimedOut { elements: Some(r) }) if r == (1..2)
        ));
        assert_eq!(pool.apply(sq, (5,)).unwrap(), 25);
        assert!(matches!(
            Pool::builder().task_timeout(Duration::ZERO).build(),
            Err(Error::InvalidArgument(_))
        ));
    });
}

/// Everything at once, with workers killed at random moments: callbacks,
/// `imap_unordered`, `map`, `apply_async`, retries, retiring workers. Every
/// call gives its exact result or `WorkerDied` (a task can be hit more often
/// than its retries), every callback runs exactly once, and the pool ends
/// cleanly.
#[test]
fn a_busy_pool_under_random_kills_keeps_every_promise() {
    use std::sync::atomic::AtomicU64;
    const ROUNDS: u64 = 100;
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(3)
            .retries(2)
            .maxtasksperchild(500)
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let pids_source = Arc::new(std::sync::Mutex::new(pool.worker_pids()));
        let killer = {
            let (stop, pids) = (Arc::clone(&stop), Arc::clone(&pids_source));
            std::thread::spawn(move || {
                let mut rng = Rng::new();
                let mut kills = 0;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
                    let pids = pids.lock().unwrap().clone();
                    if let Some(&victim) = pids.get(rng.below(pids.len().max(1) as u64) as usize) {
                        kill(victim);
                        kills += 1;
                    }
                }
                kills
            })
        };
        let called = Arc::new(AtomicU64::new(0));
        for round in 0..ROUNDS {
            *pids_source.lock().unwrap() = pool.worker_pids();
            let with_callbacks: Vec<_> = (0..300u64)
                .map(|i| {
                    let (on_ok, on_err) = (Arc::clone(&called), Arc::clone(&called));
                    pool.apply_async_with(
                        slow_sq,
                        (i,),
                        move |v| {
                            assert_eq!(v, sq(i));
                            on_ok.fetch_add(1, Ordering::SeqCst);
                        },
                        move |e| {
                            assert!(matches!(e, Error::WorkerDied { .. }), "{e}");
                            on_err.fetch_add(1, Ordering::SeqCst);
                        },
                    )
                    .unwrap()
                })
                .collect();
            let mut seen: Vec<u64> = Vec::new();
            for r in pool.imap_unordered(slow_sq, 0..500u64).unwrap() {
                match r {
                    Ok(v) => seen.push(v),
                    Err(Error::WorkerDied { .. }) => {}
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            let mut expected: Vec<u64> = (0..500u64).map(sq).collect();
            seen.sort_unstable();
            expected.retain(|v| seen.binary_search(v).is_ok());
            assert_eq!(
                seen, expected,
                "round {round}: imap gave a value twice or a wrong one"
            );
            let v: Vec<u64> = (0..20_000).collect();
            match pool.map_chunked(sq, &v, 100) {
                Ok(out) => assert!(
                    out.iter().zip(&v).all(|(&y, &x)| y == sq(x)),
                    "round {round}"
                ),
                Err(Error::WorkerDied { .. }) => {}
                Err(e) => panic!("round {round}: {e:?}"),
            }
            for h in &with_callbacks {
                assert!(
                    h.wait(Some(Duration::from_secs(30))),
                    "round {round}: a callback never ran"
                );
                match h.get(None) {
                    Ok(_) | Err(Error::WorkerDied { .. }) => {}
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        let kills = killer.join().unwrap();
        assert_eq!(
            called.load(Ordering::SeqCst),
            ROUNDS * 300,
            "each callback once"
        );
        eprintln!("{kills} workers killed");
        let pids = pool.worker_pids();
        pool.close();
        pool.join().unwrap();
        assert!(all_gone_within(&pids, Duration::from_secs(5)));
    });
}
