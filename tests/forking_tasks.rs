//! Tasks that call `fork()`: the children never write a result, the workers
//! reap the ones that end, and the ones still running die with their worker,
//! named so they are not taken for workers. Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{get_context, Pool, StartMethod};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// Forks `n` times; each child returns 0 at once, the parent `n` at the end.
fn fork_returning(n: u64) -> u64 {
    for _ in 0..n {
        // SAFETY: plain fork; the child only returns.
        if unsafe { libc::fork() } == 0 {
            return 0;
        }
    }
    n
}

/// As [`fork_returning`], in place and through `starmap`.
fn fork_returning_pair(n: u64, k: u64) -> u64 {
    fork_returning(n) + k
}

fn square(x: u64) -> u64 {
    x * x
}

/// The state letter of `pid` (`Z` for a zombie), `None` once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// The children of `pid` that are zombies.
fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .filter(|&p| state(p) == Some('Z')),
        );
    }
    out
}

#[test]
fn a_child_a_task_forks_never_writes_a_result_with_any_map_or_start_method() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(2).unwrap();
            for round in 0..5 {
                let got = pool.map_chunked(fork_returning, &[200, 200, 200, 200], 1);
                assert_eq!(got.unwrap(), vec![200; 4], "{method}, round {round}");
                let mut data = [50u64; 8];
                pool.map_inplace_chunked(fork_returning, &mut data, 1)
                    .unwrap();
                assert_eq!(data, [50; 8], "{method}, round {round}: in place");
                let got = pool.starmap_chunked(fork_returning_pair, &[(50, 1), (50, 2)], 1);
                assert_eq!(
                    got.unwrap(),
                    vec![51, 52],
                    "{method}, round {round}: starmap"
                );
                assert_eq!(pool.apply(fork_returning, (50,)).unwrap(), 50);
            }
            let items: Vec<u64> = (0..1000).collect();
            let expect: Vec<u64> = items.iter().map(|x| x * x).collect();
            assert_eq!(pool.map(square, &items).unwrap(), expect, "{method}");
        }
    });
}

#[test]
fn workers_reap_the_children_of_tasks_that_end() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for _ in 0..5 {
            let got = pool.map_chunked(fork_returning, &[250; 4], 1).unwrap();
            assert_eq!(got, vec![250; 4]);
        }
        // The last children may end after their worker's last task: more
        // tasks give each worker the chance to reap them.
        let deadline = Instant::now() + Duration::from_secs(20);
        let zombies = loop {
            let items: Vec<u64> = (0..64).collect();
            pool.map_chunked(square, &items, 1).unwrap();
            let zombies: usize = pool
                .worker_pids()
                .into_iter()
                .map(|w| zombie_children(w).len())
                .sum();
            if zombies == 0 || Instant::now() > deadline {
                break zombies;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            zombies, 0,
            "zombie children of the workers after 5,000 forks"
        );
    });
}

/// Forks a child that sleeps for a minute; returns its pid.
fn fork_a_sleeper() -> i32 {
    // SAFETY: plain fork; the child only sleeps and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain syscalls in the child.
        unsafe {
            libc::sleep(60);
            libc::_exit(0)
        }
    }
    pid
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// Whether `pid` has exited (a zombie, or gone altogether) within `limit`.
fn exits_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(state(pid), None | Some('Z')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_task_child_still_running_is_named_as_such_and_dies_with_the_pool() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            for terminate in [false, true] {
                let pool = get_context(method).pool(1).unwrap();
                let child = pool.apply(fork_a_sleeper, ()).unwrap();
                assert!(child > 0, "{method}");
                let child = child as u32;
                // The child names itself as it starts, maybe after the
                // worker returned its pid.
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut name = comm(child);
                while name != "PoolTaskChild" && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                    name = comm(child);
                }
                assert_eq!(name, "PoolTaskChild", "{method}");
                assert!(!name.contains("PoolWorker"), "{method}: {name}");
                if terminate {
                    pool.terminate();
                }
                drop(pool);
                let gone = exits_within(child, Duration::from_secs(10));
                if !gone {
                    // SAFETY: plain syscall; leave nothing behind after the test.
                    unsafe { libc::kill(child as i32, libc::SIGKILL) };
                }
                assert!(
                    gone,
                    "{method}, terminate {terminate}: the task's child outlived the pool"
                );
            }
        }
    });
}
