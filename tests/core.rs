//! The pool's core behaviour, as a user sees it: apply, apply_async, map,
//! errors, lifecycle, concurrency. Every wait is bounded.

mod common;

use common::{all_gone_within, bounded, cpu_ticks};
use shmpool::{AsyncResult, Error, Pool};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, Immutable};

const LIMIT: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}

fn nap(millis: u64) {
    std::thread::sleep(Duration::from_millis(millis))
}

#[test]
fn pool_and_results_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<AsyncResult<u64>>();
}

#[test]
fn quickstart_example_prints_what_pythons_pool_example_prints() {
    let example = common::example("quickstart");
    let output = bounded(LIMIT, move || {
        let start = Instant::now();
        (
            std::process::Command::new(example).output().unwrap(),
            start.elapsed(),
        )
    });
    let (output, elapsed) = output;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 17, "{stdout}");
    assert_eq!(lines[0], "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]");
    // "print same numbers in arbitrary order"
    let mut unordered: Vec<u64> = lines[1..11].iter().map(|l| l.parse().unwrap()).collect();
    unordered.sort_unstable();
    assert_eq!(unordered, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
    let lines = &lines[10..];
    assert_eq!(lines[1], "400");
    let worker_pid: u32 = lines[2].parse().unwrap();
    assert_ne!(
        worker_pid,
        std::process::id(),
        "the example's worker is another process"
    );
    let pids: Vec<u32> = lines[3]
        .trim_matches(['[', ']'])
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 4);
    assert_eq!(lines[4], "We lacked patience and got a timeout");
    assert_eq!(
        lines[5],
        "For the moment, the pool remains available for more work"
    );
    assert_eq!(lines[6], "Now the pool is closed and no longer available");
    // Dropping the pool kills the worker sleeping for 10 s instead of waiting.
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(
        all_gone_within(&pids, Duration::from_secs(2)),
        "the example's workers outlived it"
    );
}

#[test]
fn apply_runs_in_a_worker_process() {
    let pool = Pool::new(2).unwrap();
    let pid = pool.apply(std::process::id, ()).unwrap();
    assert_ne!(pid, std::process::id());
    assert!(pool.worker_pids().contains(&pid));
    assert_eq!(pool.apply(square, (20,)).unwrap(), 400);
}

#[test]
fn apply_takes_zero_to_six_arguments_and_any_pod_result() {
    fn zero() -> u8 {
        42
    }
    fn six(a: u8, b: i16, c: u32, d: i64, e: f32, f: f64) -> f64 {
        a as f64 + b as f64 + c as f64 + d as f64 + e as f64 + f
    }
    fn unit(_: u64) {}
    fn flag(x: i32) -> bool {
        x > 0
    }
    fn pair(x: u32) -> (u32, char) {
        (x + 1, 'λ')
    }
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(zero, ()).unwrap(), 42);
    assert_eq!(pool.apply(six, (1, -2, 3, -4, 0.5, 0.25)).unwrap(), -1.25);
    pool.apply(unit, (1,)).unwrap();
    assert!(pool.apply(flag, (3,)).unwrap());
    assert!(!pool.apply(flag, (-3,)).unwrap());
    assert_eq!(pool.apply(pair, (9,)).unwrap(), (10, 'λ'));
    assert_eq!(pool.apply(|a: u64, b: u64| a * b, (6, 7)).unwrap(), 42);
}

#[test]
fn large_arguments_and_results_go_through_the_arena() {
    fn reverse(v: [u64; 512]) -> [u64; 512] {
        let mut v = v;
        v.reverse();
        v
    }
    fn total(v: [u64; 512], scale: u64) -> u64 {
        v.iter().sum::<u64>() * scale
    }
    let pool = Pool::new(2).unwrap();
    let input: [u64; 512] = std::array::from_fn(|i| i as u64);
    let out = pool.apply(reverse, (input,)).unwrap();
    assert_eq!(out[0], 511);
    assert_eq!(out[511], 0);
    let handles: Vec<_> = (0..50)
        .map(|k| pool.apply_async(total, (input, k)).unwrap())
        .collect();
    for (k, h) in handles.iter().enumerate() {
        assert_eq!(h.get(Some(LIMIT)).unwrap(), 130_816 * k as u64);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, FromBytes, Immutable)]
#[repr(C)]
struct Particle {
    position: [f32; 3],
    charge: f32,
    mass: f64,
}
shmpool::pod!(Particle);

fn particle(i: usize) -> Particle {
    let f = i as f32;
    Particle {
        position: [f, -f, f * 0.5],
        charge: if i % 2 == 0 { 1.0 } else { -1.0 },
        mass: i as f64 + 0.5,
    }
}

fn kick(p: Particle) -> Particle {
    Particle {
        position: [
            p.position[0] + p.charge,
            p.position[1] * 2.0,
            p.position[2] - 1.0,
        ],
        charge: -p.charge,
        mass: p.mass * 1.5,
    }
}

fn byte_op(x: u8) -> u8 {
    x.wrapping_mul(31).wrapping_add(7)
}
fn int_op(x: i32) -> i32 {
    x.wrapping_mul(x).wrapping_sub(7)
}
fn float_op(x: f64) -> f64 {
    (x * 0.5).sqrt() - x
}
fn widen(x: u8) -> f64 {
    f64::from(x) / 3.0
}

/// `pool.map` and `pool.map_chunked` against a sequential map, for one type.
fn check_map<F, T, U>(pool: &Pool, f: F, items: &[T])
where
    F: Fn(T) -> U + Copy + Send + Sync + 'static,
    T: shmpool::Pod,
    U: shmpool::Pod + PartialEq + std::fmt::Debug,
{
    let expected: Vec<U> = items.iter().map(|&x| f(x)).collect();
    let n = items.len();
    let mut chunksizes = vec![None, Some(3), Some(64), Some(1000), Some(n + 5)];
    if n <= 1000 {
        chunksizes.push(Some(1));
    }
    for chunksize in chunksizes {
        let got = match chunksize {
            None => pool.map(f, items).unwrap(),
            Some(c) => pool.map_chunked(f, items, c).unwrap(),
        };
        assert!(
            got == expected,
            "len {n}, chunksize {chunksize:?}: results differ"
        );
    }
}

#[test]
fn map_equals_a_sequential_map_for_every_length_type_and_chunksize() {
    bounded(Duration::from_secs(300), || {
        let pool = Pool::new(3).unwrap();
        for n in [0usize, 1, 7, 1000, 1_000_000] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            check_map(&pool, byte_op, &bytes);
            check_map(&pool, widen, &bytes);
            let ints: Vec<i32> = (0..n).map(|i| i as i32 - (n as i32 / 2)).collect();
            check_map(&pool, int_op, &ints);
            let floats: Vec<f64> = (0..n).map(|i| i as f64 * 0.25).collect();
            check_map(&pool, float_op, &floats);
            let particles: Vec<Particle> = (0..n).map(particle).collect();
            check_map(&pool, kick, &particles);
        }
    });
}

#[test]
fn map_with_chunksize_one_over_many_elements() {
    let pool = Pool::new(2).unwrap();
    let v: Vec<u64> = (0..200_000).collect();
    let out = bounded(LIMIT, move || pool.map_chunked(square, &v, 1).unwrap());
    assert!(out.iter().enumerate().all(|(i, &y)| y == (i * i) as u64));
}

fn boom(x: u32) -> u32 {
    if x == 7 {
        panic!("boom at {x}");
    }
    x
}

#[test]
fn a_panicking_task_reports_its_message_and_the_worker_goes_on() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.worker_pids()[0];
    match pool.apply(boom, (7,)) {
        Err(Error::TaskPanicked { message }) => assert_eq!(message, "boom at 7"),
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    assert_eq!(pool.apply(boom, (8,)).unwrap(), 8);
    assert_eq!(
        pool.worker_pids(),
        vec![pid],
        "the same worker survived the panic"
    );

    let handle = pool.apply_async(boom, (7,)).unwrap();
    assert!(handle.wait(Some(LIMIT)));
    assert!(!handle.successful().unwrap());
    assert!(matches!(handle.get(None), Err(Error::TaskPanicked { .. })));

    let v: Vec<u32> = (0..100).collect();
    match pool.map_chunked(boom, &v, 10) {
        Err(Error::TaskPanicked { message }) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    assert_eq!(pool.map(boom, &[1, 2, 3]).unwrap(), vec![1, 2, 3]);
}

#[test]
fn a_long_panic_message_is_truncated_not_lost() {
    fn shout(n: usize) -> u8 {
        panic!("{}", "é".repeat(n))
    }
    let pool = Pool::new(1).unwrap();
    match pool.apply(shout, (1000,)) {
        Err(Error::TaskPanicked { message }) => {
            // The message and its location share the slot's 192 bytes.
            let location = message.location().expect("the location is kept");
            assert!(location.starts_with("tests/core.rs:"), "{location}");
            let both = message.len() + location.len();
            assert!((190..=192).contains(&both), "{both}");
            assert!(message.chars().all(|c| c == 'é'));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_worker_that_aborts_fails_its_task_and_is_replaced() {
    fn abort() -> u8 {
        std::process::abort()
    }
    let pool = Pool::new(2).unwrap();
    let before = pool.worker_pids();
    match bounded(LIMIT, {
        let pool = Pool::new(1).unwrap();
        move || {
            let r = pool.apply(abort, ());
            let after = pool.apply(square, (5,));
            (r, after)
        }
    }) {
        (Err(Error::WorkerDied { pid, signal, .. }), Ok(25)) => {
            assert_eq!(signal, Some(libc::SIGABRT));
            assert!(pid > 0);
        }
        other => panic!("expected WorkerDied then a working pool, got {other:?}"),
    }
    assert_eq!(pool.worker_pids(), before, "an unrelated pool is untouched");
}

#[test]
fn get_times_out_and_the_pool_stays_usable() {
    let pool = Pool::new(2).unwrap();
    let slow = pool.apply_async(nap, (3000,)).unwrap();
    let start = Instant::now();
    assert!(matches!(
        slow.get(Some(Duration::from_millis(100))),
        Err(Error::Timeout)
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!slow.ready());
    assert!(matches!(slow.successful(), Err(Error::InvalidState(_))));
    assert_eq!(
        pool.apply(square, (3,)).unwrap(),
        9,
        "the other worker serves"
    );
}

#[test]
fn terminate_during_running_tasks_returns_promptly() {
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let sleepers: Vec<_> = (0..6)
        .map(|_| pool.apply_async(nap, (30_000,)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    pool.terminate();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "terminate took {:?}",
        start.elapsed()
    );
    for s in &sleepers {
        assert!(matches!(
            s.get(Some(Duration::from_secs(5))),
            Err(Error::Terminated)
        ));
    }
    assert!(matches!(pool.apply(square, (1,)), Err(Error::Closed)));
    assert!(pool.worker_pids().is_empty());
    assert!(
        all_gone_within(&pids, Duration::from_secs(2)),
        "workers were not reaped"
    );
    pool.join().unwrap();
}

#[test]
fn dropping_the_pool_terminates_and_reaps_the_workers() {
    let pool = Pool::new(3).unwrap();
    let pids = pool.worker_pids();
    let pending = pool.apply_async(nap, (30_000,)).unwrap();
    let start = Instant::now();
    drop(pool);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(all_gone_within(&pids, Duration::from_secs(2)));
    assert!(matches!(
        pending.get(Some(Duration::from_secs(5))),
        Err(Error::Terminated)
    ));
}

#[test]
fn close_lets_pending_work_finish_then_join_waits_for_the_workers() {
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let handles: Vec<_> = (0..20u64)
        .map(|i| pool.apply_async(square, (i,)).unwrap())
        .collect();
    let slow = pool.apply_async(nap, (200,)).unwrap();
    assert!(
        matches!(pool.join(), Err(Error::InvalidState(_))),
        "join before close"
    );
    pool.close();
    assert!(matches!(pool.apply_async(square, (1,)), Err(Error::Closed)));
    assert!(matches!(pool.map(square, &[1, 2]), Err(Error::Closed)));
    let pool = bounded(LIMIT, move || {
        pool.join().unwrap();
        pool
    });
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.get(Some(Duration::from_secs(1))).unwrap(), (i * i) as u64);
    }
    slow.get(Some(Duration::from_secs(1))).unwrap();
    assert!(pool.worker_pids().is_empty());
    assert!(all_gone_within(&pids, Duration::from_secs(2)));
    pool.join().unwrap(); // idempotent
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    assert!(matches!(Pool::new(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        Pool::builder().processes(0).build(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Pool::new(shmpool::MAX_PROCESSES + 1),
        Err(Error::InvalidArgument(_))
    ));
    let pool = Pool::new(1).unwrap();
    assert!(matches!(
        pool.map_chunked(square, &[1, 2], 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pool.map_chunked(square, &[], 0),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(pool.map(square, &[]).unwrap(), Vec::<u64>::new());
}

#[test]
fn eight_threads_submit_at_once() {
    let pool = Pool::new(2).unwrap();
    bounded(LIMIT, move || {
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let pool = &pool;
                s.spawn(move || {
                    for i in 0..300 {
                        assert_eq!(
                            pool.apply(square, (t * 1000 + i,)).unwrap(),
                            (t * 1000 + i).pow(2)
                        );
                    }
                    let v: Vec<u64> = (0..20_000).map(|i| i + t).collect();
                    let out = pool.map_chunked(square, &v, 97).unwrap();
                    assert!(out.iter().zip(&v).all(|(&y, &x)| y == x * x));
                    let hs: Vec<_> = (0..500)
                        .map(|i| pool.apply_async(square, (i + t,)).unwrap())
                        .collect();
                    for (i, h) in hs.iter().enumerate() {
                        assert_eq!(h.get(None).unwrap(), (i as u64 + t).pow(2));
                    }
                });
            }
        });
    });
}

/// Work submitted while workers are in every idle state (just finished and
/// searching, about to sleep, asleep) is always picked up: no wake-up is lost
/// between a producer that sees a searching worker and skips waking a
/// sleeper, and that worker going to sleep or taking another task.
#[test]
fn work_submitted_at_any_moment_of_a_worker_going_idle_is_run() {
    let pool = Pool::new(2).unwrap();
    bounded(LIMIT, move || {
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let pool = &pool;
                s.spawn(move || {
                    for round in 0..300u64 {
                        // 0–400 µs of quiet: workers spin ~100 µs, then sleep.
                        std::thread::sleep(Duration::from_micros((round * 37 + t * 101) % 400));
                        let hs: Vec<_> = (0..1 + round % 3)
                            .map(|i| pool.apply_async(square, (round + i,)).unwrap())
                            .collect();
                        for (i, h) in hs.iter().enumerate() {
                            let got = h.get(Some(Duration::from_secs(10)));
                            assert_eq!(got.unwrap(), (round + i as u64).pow(2), "round {round}");
                        }
                    }
                });
            }
        });
    });
}

/// Two long tasks submitted while one worker searches and the other sleeps
/// run at the same time: a producer that sees a searching worker does not
/// wake the sleeper, so the sleeper must be woken for the second task (by the
/// second push once the searcher took the first, or by the searcher itself
/// if both were pushed before it took one).
#[test]
fn two_tasks_submitted_while_one_worker_searches_and_one_sleeps_run_in_parallel() {
    let pool = Pool::new(2).unwrap();
    bounded(LIMIT, move || {
        for _ in 0..3 {
            nap(50); // both workers asleep
            pool.apply(square, (1,)).unwrap(); // one is now searching
            let start = Instant::now();
            let (a, b) = (
                pool.apply_async(nap, (500,)).unwrap(),
                pool.apply_async(nap, (500,)).unwrap(),
            );
            a.get(Some(Duration::from_secs(10))).unwrap();
            b.get(Some(Duration::from_secs(10))).unwrap();
            let took = start.elapsed();
            assert!(took < Duration::from_millis(900), "serialized: {took:?}");
        }
    });
}

/// Only one worker spins at a time; the others go to sleep at once when they
/// find the ring empty. Work that outgrows the searcher still reaches every
/// worker: long tasks submitted right after a stream of tiny ones (when the
/// workers go idle together, one searching and the rest asleep) all run at
/// the same time.
#[test]
fn long_tasks_after_a_stream_of_tiny_ones_run_on_every_worker_at_once() {
    let pool = Pool::new(3).unwrap();
    bounded(LIMIT, move || {
        for round in 0..5u64 {
            let tiny: Vec<_> = (0..2000)
                .map(|i| pool.apply_async(square, (i + round,)).unwrap())
                .collect();
            for (i, h) in tiny.iter().enumerate() {
                let got = h.get(Some(Duration::from_secs(10))).unwrap();
                assert_eq!(got, (i as u64 + round).pow(2));
            }
            if round % 2 == 1 {
                nap(1); // past the searcher's spin too: all asleep
            }
            let start = Instant::now();
            let long: Vec<_> = (0..3)
                .map(|_| pool.apply_async(nap, (400,)).unwrap())
                .collect();
            for h in &long {
                h.get(Some(Duration::from_secs(10))).unwrap();
            }
            let took = start.elapsed();
            assert!(
                took < Duration::from_millis(790),
                "round {round}: serialized: {took:?}"
            );
        }
    });
}

/// Workers 64 and up have no "searching" bit (producers always wake a
/// sleeper for them): a pool that large still runs everything.
#[test]
fn a_pool_of_seventy_processes_runs_everything() {
    let pool = Pool::new(70).unwrap();
    bounded(LIMIT, move || {
        let v: Vec<u64> = (0..10_000).collect();
        let out = pool.map_chunked(square, &v, 7).unwrap();
        assert!(out.iter().zip(&v).all(|(&y, &x)| y == x * x));
        for round in 0..20u64 {
            nap(2); // let them all go to sleep now and then
            let hs: Vec<_> = (0..100)
                .map(|i| pool.apply_async(square, (round + i,)).unwrap())
                .collect();
            for (i, h) in hs.iter().enumerate() {
                let got = h.get(Some(Duration::from_secs(10))).unwrap();
                assert_eq!(got, (round + i as u64).pow(2));
            }
        }
        let pids = pool.worker_pids();
        assert_eq!(pids.len(), 70);
        pool.close();
        pool.join().unwrap();
        assert!(all_gone_within(&pids, Duration::from_secs(5)));
    });
}

#[test]
fn dropped_handles_do_not_leak_slots_or_block_later_work() {
    let pool = Pool::new(2).unwrap();
    for round in 0..20u64 {
        let hs: Vec<_> = (0..1000)
            .map(|i| pool.apply_async(square, (i + round,)).unwrap())
            .collect();
        drop(hs); // some withdrawn, some running, some done
    }
    assert_eq!(pool.apply(square, (12,)).unwrap(), 144);
}

#[test]
fn an_idle_pool_uses_no_cpu() {
    let pool = Pool::new(2).unwrap();
    pool.map(square, &[1, 2, 3, 4]).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // past the bounded spin
    let pids = pool.worker_pids();
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    std::thread::sleep(Duration::from_millis(1000));
    let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    // 100 ticks per second per busy process: spinning would show ~200 here.
    assert!(
        after - before <= 2,
        "idle workers used {} ticks in 1 s",
        after - before
    );
    assert_eq!(
        pool.apply(square, (4,)).unwrap(),
        16,
        "and wake up when work comes"
    );
}
