//! Awaiting results (`AsyncResult: IntoFuture`), aborting them, and stopping
//! every worker at once (`terminate_workers`, `kill_workers`), on tokio's
//! runtimes and on minimal executors. Every wait is bounded.

mod common;

use common::{all_gone_within, bounded};
use futures_util::FutureExt;
use shmpool::{Error, Pool};
use std::future::IntoFuture;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn square(x: u64) -> u64 {
    x * x
}
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
fn spin() {
    loop {
        std::hint::spin_loop()
    }
}
fn pid() -> u32 {
    std::process::id()
}
fn ignore_sigterm_then_spin() {
    // SAFETY: plain syscall changing this worker's own signal disposition.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    spin()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Gives a worker time to take up the task just submitted.
fn let_it_start() {
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn a_hundred_concurrent_awaits_leave_a_current_thread_runtime_ticking() {
    bounded(LIMIT, || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let rt = current_thread();
        let lateness = std::sync::Arc::new(std::sync::Mutex::new((Duration::ZERO, 0u32)));
        let seen = std::sync::Arc::clone(&lateness);
        let results = rt.block_on(async move {
            let ticker = tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_millis(1));
                loop {
                    let due = interval.tick().await;
                    let late = tokio::time::Instant::now() - due;
                    let mut seen = seen.lock().unwrap();
                    seen.0 = seen.0.max(late);
                    seen.1 += 1;
                }
            });
            let tasks: Vec<_> = (0..100u64)
                .map(|i| {
                    let pool = std::sync::Arc::clone(&pool);
                    tokio::spawn(async move {
                        assert_eq!(pool.apply_async(nap, (10,))?.await?, 10);
                        pool.apply_async(square, (i,))?.await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap().unwrap());
            }
            ticker.abort();
            results
        });
        let (worst_lateness, ticks) = *lateness.lock().unwrap();
        assert_eq!(results, (0..100u64).map(square).collect::<Vec<_>>());
        // 100 naps of 10 ms on 2 workers: about 500 ms of ticking.
        assert!(ticks > 100, "the timer ticked only {ticks} times");
        assert!(
            worst_lateness < Duration::from_millis(50),
            "a tick was {worst_lateness:?} late: the runtime's thread was blocked"
        );
    });
}

#[test]
fn thousands_of_awaits_complete_on_a_multi_thread_runtime() {
    bounded(LIMIT, || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let sum: u64 = rt.block_on(async {
            let tasks: Vec<_> = (0..5_000u64)
                .map(|i| {
                    let pool = std::sync::Arc::clone(&pool);
                    tokio::spawn(async move { pool.apply_async(square, (i,)).unwrap().await })
                })
                .collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await.unwrap().unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..5_000u64).map(square).sum::<u64>());
    });
}

#[test]
fn maps_and_starmaps_are_awaited_like_applies() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let v: Vec<u64> = (0..1000).collect();
        let (mapped, starmapped) = futures_executor::block_on(async {
            let m = pool.map_async(square, &v).unwrap().await.unwrap();
            let s = pool
                .starmap_async(|a: u64, b: u64| a + b, &[(1, 2), (3, 4)])
                .unwrap()
                .await
                .unwrap();
            (m, s)
        });
        assert_eq!(mapped, v.iter().map(|&x| square(x)).collect::<Vec<_>>());
        assert_eq!(starmapped, vec![3, 7]);
    });
}

#[test]
fn minimal_executors_drive_awaits_block_on_and_pollster() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let a = futures_executor::block_on(pool.apply_async(nap, (30,)).unwrap().into_future());
        let b = pollster::block_on(pool.apply_async(nap, (30,)).unwrap().into_future());
        assert_eq!((a.unwrap(), b.unwrap()), (30, 30));
    });
}

#[test]
fn a_result_finished_before_the_first_poll_is_returned_at_once() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let r = pool.apply_async(square, (9,)).unwrap();
        assert!(r.wait(WAIT));
        // One poll with a waker that does nothing: it must be ready.
        assert_eq!(r.into_future().now_or_never().unwrap().unwrap(), 81);
        // And one not finished yet is pending, not an error.
        let slow = pool.apply_async(nap, (500,)).unwrap();
        let mut fut = slow.into_future();
        assert!((&mut fut).now_or_never().is_none());
        assert_eq!(futures_executor::block_on(fut).unwrap(), 500);
    });
}

#[test]
fn an_awaited_result_with_callbacks_resolves_after_its_callback_ran() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let r = pool
            .apply_async_with(nap, (50,), move |v| tx.send(v).unwrap(), |_| {})
            .unwrap();
        let v = futures_executor::block_on(r.into_future()).unwrap();
        assert_eq!(v, 50);
        // The callback ran before the await resolved.
        assert_eq!(rx.try_recv(), Ok(50));
    });
}

#[test]
fn a_block_on_inside_a_callback_awaits_another_result() {
    bounded(LIMIT, || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let p = std::sync::Arc::clone(&pool);
        let (tx, rx) = mpsc::channel();
        pool.apply_async_with(
            square,
            (2,),
            move |v| {
                let other = p.apply_async(nap, (50,)).unwrap();
                let got = futures_executor::block_on(other.into_future());
                tx.send((v, got.map_err(|e| e.to_string()))).unwrap();
            },
            |_| {},
        )
        .unwrap();
        let (v, got) = rx.recv_timeout(WAIT.unwrap()).unwrap();
        assert_eq!((v, got), (4, Ok(50)));
    });
}

#[test]
fn a_worker_killed_mid_await_gives_worker_died() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.worker_pids()[0];
        let rt = current_thread();
        let got = rt.block_on(async {
            let fut = pool.apply_async(nap, (60_000,)).unwrap().into_future();
            let killer = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // SAFETY: plain syscall on the pool's worker.
                unsafe { libc::kill(worker as i32, libc::SIGKILL) };
                std::future::pending::<()>().await;
            };
            tokio::time::timeout(Duration::from_secs(30), async {
                tokio::select! {
                    r = fut => r,
                    _ = killer => unreachable!(),
                }
            })
            .await
            .expect("resolved within 30 s")
        });
        assert!(
            matches!(got, Err(Error::WorkerDied { pid, signal: Some(9), .. }) if pid == worker),
            "{got:?}"
        );
        // A replacement serves the next request.
        assert_ne!(pool.apply(pid, ()).unwrap(), worker);
    });
}

#[test]
fn abort_stops_a_spinning_task_and_the_pool_serves_the_next_at_once() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.worker_pids()[0];
        let stuck = pool.apply_async(spin, ()).unwrap();
        let_it_start();
        let started = Instant::now();
        assert!(stuck.abort());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "abort took {:?}",
            started.elapsed()
        );
        assert!(matches!(stuck.get(WAIT), Err(Error::Aborted)));
        assert!(!stuck.abort(), "a second abort stops nothing");
        let asked = Instant::now();
        assert_eq!(pool.apply(nap, (1,)).unwrap(), 1);
        let served = asked.elapsed();
        assert!(
            served < Duration::from_millis(100),
            "the next task took {served:?}"
        );
        assert!(
            all_gone_within(&[worker], Duration::from_secs(10)),
            "the spinner was killed"
        );
        assert_ne!(pool.apply(pid, ()).unwrap(), worker);
    });
}

#[test]
fn an_aborted_task_is_not_retried_even_with_retries_left() {
    bounded(LIMIT, || {
        let pool = Pool::builder().processes(1).retries(3).build().unwrap();
        let stuck = pool.apply_async(spin, ()).unwrap();
        let_it_start();
        assert!(stuck.abort());
        // Run again, it would spin on the replacement and this would wait.
        let asked = Instant::now();
        assert_eq!(pool.apply(square, (6,)).unwrap(), 36);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "took {:?}",
            asked.elapsed()
        );
        assert!(matches!(stuck.get(WAIT), Err(Error::Aborted)));
    });
}

#[test]
fn abort_withdraws_a_queued_task_and_leaves_the_running_one_alone() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.worker_pids()[0];
        let running = pool.apply_async(nap, (300,)).unwrap();
        let queued = pool.apply_async(nap, (300,)).unwrap();
        let_it_start();
        assert!(queued.abort());
        assert!(queued.ready(), "a withdrawn task reads Aborted at once");
        assert!(matches!(
            queued.get(Some(Duration::ZERO)),
            Err(Error::Aborted)
        ));
        assert_eq!(running.get(WAIT).unwrap(), 300);
        assert_eq!(pool.worker_pids(), vec![worker], "no worker was killed");
    });
}

#[test]
fn abort_of_a_finished_result_keeps_its_value() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let r = pool.apply_async(square, (4,)).unwrap();
        assert!(r.wait(WAIT));
        assert!(!r.abort());
        assert_eq!(r.get(WAIT).unwrap(), 16);
    });
}

#[test]
fn abort_of_a_map_stops_every_chunk_and_spares_other_results() {
    bounded(LIMIT, || {
        fn spin_on(x: u64) -> u64 {
            if x < 1000 {
                spin();
            }
            x
        }
        let pool = Pool::new(2).unwrap();
        let workers = pool.worker_pids();
        let v: Vec<u64> = (0..16).collect();
        // Chunks of 1: two run (one per worker), the others wait.
        let map = pool.map_async_chunked(spin_on, &v, 1).unwrap();
        let_it_start();
        assert!(map.abort());
        assert!(matches!(map.get(WAIT), Err(Error::Aborted)));
        assert!(
            all_gone_within(&workers, Duration::from_secs(10)),
            "both spinners were killed"
        );
        let after = pool.map(square, &v).unwrap();
        assert_eq!(after, v.iter().map(|&x| square(x)).collect::<Vec<_>>());
    });
}

#[test]
fn abort_fails_a_result_with_callbacks_through_its_error_callback() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let r = pool
            .apply_async_with(spin, (), |_| {}, move |e| tx.send(e).unwrap())
            .unwrap();
        let_it_start();
        assert!(r.abort());
        let delivered = rx.recv_timeout(WAIT.unwrap()).unwrap();
        assert!(matches!(delivered, Error::Aborted), "{delivered:?}");
        assert!(matches!(r.get(WAIT), Err(Error::Aborted)));
    });
}

#[test]
fn aborting_an_awaited_future_resolves_it_to_aborted() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let rt = current_thread();
        let got = rt.block_on(async {
            let mut fut = pool.apply_async(spin, ()).unwrap().into_future();
            tokio::select! {
                r = &mut fut => r,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    assert!(fut.abort());
                    tokio::time::timeout(Duration::from_secs(30), fut).await.unwrap()
                }
            }
        });
        assert!(matches!(got, Err(Error::Aborted)), "{got:?}");
        assert_eq!(pool.apply(square, (3,)).unwrap(), 9);
    });
}

#[test]
fn dropping_an_awaited_future_withdraws_its_unstarted_task_but_kills_nothing() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.worker_pids()[0];
        let running = pool.apply_async(nap, (300,)).unwrap();
        let rt = current_thread();
        rt.block_on(async {
            let queued = pool.apply_async(nap, (5_000,)).unwrap();
            let gave_up = tokio::time::timeout(Duration::from_millis(20), queued).await;
            assert!(gave_up.is_err());
        });
        assert_eq!(running.get(WAIT).unwrap(), 300);
        // Had the 5 s nap not been withdrawn, this would wait for it.
        let asked = Instant::now();
        assert_eq!(pool.apply(square, (2,)).unwrap(), 4);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "took {:?}",
            asked.elapsed()
        );
        assert_eq!(pool.worker_pids(), vec![worker], "nothing was killed");
    });
}

#[test]
fn abort_on_drop_kills_the_task_of_a_future_dropped_at_its_deadline() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.worker_pids()[0];
        let rt = current_thread();
        rt.block_on(async {
            let r = pool.apply_async(spin, ()).unwrap().abort_on_drop(true);
            let late = tokio::time::timeout(Duration::from_millis(100), r).await;
            assert!(late.is_err());
        });
        assert!(all_gone_within(&[worker], Duration::from_secs(10)));
        let asked = Instant::now();
        assert_eq!(pool.apply(nap, (1,)).unwrap(), 1);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "took {:?}",
            asked.elapsed()
        );
    });
}

#[test]
fn the_builder_flag_makes_every_dropped_handle_abort() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(1)
            .abort_on_drop(true)
            .build()
            .unwrap();
        let worker = pool.worker_pids()[0];
        drop(pool.apply_async(spin, ()).unwrap());
        let_it_start(); // the drop withdrew it before it started: no kill
        assert_eq!(pool.worker_pids(), vec![worker]);
        let r = pool.apply_async(spin, ()).unwrap();
        let_it_start();
        drop(r);
        assert!(all_gone_within(&[worker], Duration::from_secs(10)));
        assert_eq!(pool.apply(square, (5,)).unwrap(), 25);
    });
}

#[test]
fn terminate_workers_fails_pending_tasks_with_terminated() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let workers = pool.worker_pids();
        let running = pool.apply_async(nap, (60_000,)).unwrap();
        let queued: Vec<_> = (0..10)
            .map(|_| pool.apply_async(nap, (60_000,)).unwrap())
            .collect();
        let_it_start();
        pool.terminate_workers();
        assert!(matches!(running.get(WAIT), Err(Error::Terminated)));
        for q in &queued {
            assert!(matches!(q.get(WAIT), Err(Error::Terminated)));
        }
        assert!(pool.worker_pids().is_empty());
        assert!(all_gone_within(&workers, Duration::from_secs(10)));
        assert!(matches!(pool.apply(square, (1,)), Err(Error::Closed)));
    });
}

#[test]
fn terminate_workers_kills_a_worker_that_ignores_sigterm_after_a_grace() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let worker = pool.worker_pids()[0];
        let stubborn = pool.apply_async(ignore_sigterm_then_spin, ()).unwrap();
        let_it_start();
        let started = Instant::now();
        pool.terminate_workers();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "terminate_workers took {took:?}"
        );
        assert!(matches!(stubborn.get(WAIT), Err(Error::Terminated)));
        assert!(all_gone_within(&[worker], Duration::from_secs(10)));
    });
}

#[test]
fn kill_workers_fails_an_awaited_task_with_terminated() {
    bounded(LIMIT, || {
        let pool = std::sync::Arc::new(Pool::new(1).unwrap());
        let rt = current_thread();
        let p = std::sync::Arc::clone(&pool);
        let got = rt.block_on(async move {
            let fut = p.apply_async(spin, ()).unwrap().into_future();
            let killer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                p.kill_workers();
            });
            let r = tokio::time::timeout(Duration::from_secs(30), fut)
                .await
                .unwrap();
            killer.join().unwrap();
            r
        });
        assert!(matches!(got, Err(Error::Terminated)), "{got:?}");
        assert!(pool.worker_pids().is_empty());
    });
}

#[test]
fn abort_after_the_pool_was_terminated_is_harmless() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let r = pool.apply_async(spin, ()).unwrap();
        pool.terminate();
        assert!(!r.abort(), "nothing left to stop");
        assert!(matches!(r.get(WAIT), Err(Error::Terminated)));
        drop(pool);
        let r2 = {
            let pool = Pool::new(1).unwrap();
            let r = pool.apply_async(spin, ()).unwrap();
            let_it_start();
            r
        }; // the pool is dropped: terminated
        assert!(!r2.abort());
        assert!(matches!(
            futures_executor::block_on(r2.into_future()),
            Err(Error::Terminated)
        ));
    });
}

#[test]
fn the_async_service_example_answers_and_aborts_the_late_request() {
    let exe = common::example("async_service");
    let out = bounded(LIMIT, move || {
        std::process::Command::new(exe).output().unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("request 21: 200 42"), "{text}");
    assert!(
        text.contains("request  0: 504"),
        "the endless request was aborted: {text}"
    );
    assert!(
        text.contains("request 13: 500 the parser crashed"),
        "{text}"
    );
    assert!(
        text.contains("request 50: 200 100"),
        "served after the aborts: {text}"
    );
}
