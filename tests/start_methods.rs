//! Start methods and contexts: every pool behaviour with `Spawn` and
//! `ForkServer` workers, from inside `cargo test` (whose harness `main` the
//! program cannot change). Every wait is bounded.

mod common;

use common::{all_gone_within, bounded};
use shmpool::{current_process, get_context, Error, Pool, StartMethod};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));
const REEXECUTED: [StartMethod; 2] = [StartMethod::Spawn, StartMethod::ForkServer];

fn f(x: u64) -> u64 {
    x * x
}
fn add(a: i64, b: i64) -> i64 {
    a + b
}
static GLOBAL: AtomicU64 = AtomicU64::new(0);
fn read_global() -> u64 {
    GLOBAL.load(Ordering::Relaxed)
}
fn set_global(v: u64) {
    GLOBAL.store(v, Ordering::Relaxed)
}
fn name_and_pid() -> ([u8; 32], u32) {
    let me = current_process();
    let mut name = [0u8; 32];
    name[..me.name.len()].copy_from_slice(me.name.as_bytes());
    (name, me.pid)
}
fn abort_now() -> u8 {
    std::process::abort()
}
fn sleep_secs(s: u64) {
    std::thread::sleep(Duration::from_secs(s))
}
fn parent_pid() -> u32 {
    // SAFETY: plain syscall.
    unsafe { libc::getppid() as u32 }
}

#[test]
fn reexecuted_workers_run_every_kind_of_call() {
    bounded(LIMIT, || {
        for method in REEXECUTED {
            let pool = get_context(method).pool(2).unwrap();
            assert_eq!(pool.start_method(), method);
            let v: Vec<u64> = (0..100_000).collect();
            assert_eq!(
                pool.map(f, &v).unwrap(),
                v.iter().map(|&x| x * x).collect::<Vec<_>>()
            );
            assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
            assert_eq!(pool.starmap(add, &[(1, 2)]).unwrap(), vec![3]);
            let got: Vec<u64> = pool
                .imap(f, 0..100u64)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, (0..100).map(f).collect::<Vec<_>>());
            assert_eq!(pool.map_async(f, &[3]).unwrap().get(WAIT).unwrap(), vec![9]);
            // The worker is another process, named as in Python.
            let (name, pid) = pool.apply(name_and_pid, ()).unwrap();
            let name = String::from_utf8_lossy(&name)
                .trim_end_matches('\0')
                .to_owned();
            let prefix = match method {
                StartMethod::Spawn => "SpawnPoolWorker-",
                _ => "ForkServerPoolWorker-",
            };
            assert!(name.starts_with(prefix), "{name}");
            assert!(pool.worker_pids().contains(&pid));
            assert_ne!(pid, std::process::id());
            pool.close();
            pool.join().unwrap();
        }
    });
}

#[test]
fn spawned_workers_start_from_a_fresh_program_but_forked_ones_inherit_globals() {
    bounded(LIMIT, || {
        set_global(42);
        let fork = Pool::new(1).unwrap();
        assert_eq!(fork.apply(read_global, ()).unwrap(), 42);
        for method in REEXECUTED {
            let pool = get_context(method).pool(1).unwrap();
            assert_eq!(pool.apply(read_global, ()).unwrap(), 0, "{method}");
        }
    });
}

#[test]
fn initializer_and_maxtasksperchild_work_with_every_method() {
    bounded(LIMIT, || {
        for method in REEXECUTED {
            let pool = get_context(method)
                .pool_builder()
                .processes(2)
                .initializer(set_global, (7,))
                .maxtasksperchild(2)
                .build()
                .unwrap();
            let mut pids = Vec::new();
            for _ in 0..8 {
                assert_eq!(pool.apply(read_global, ()).unwrap(), 7, "{method}");
                pids.push(pool.apply(std::process::id, ()).unwrap());
            }
            pids.sort();
            pids.dedup();
            assert!(pids.len() >= 4, "{method}: {pids:?}");
        }
    });
}

#[test]
fn a_dead_reexecuted_worker_fails_its_task_and_is_replaced() {
    bounded(LIMIT, || {
        for method in REEXECUTED {
            let pool = get_context(method).pool(2).unwrap();
            match pool.apply(abort_now, ()) {
                Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGABRT)),
                other => panic!("{method}: {other:?}"),
            }
            let wait_for_two = || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while pool.worker_pids().len() < 2 {
                    assert!(Instant::now() < deadline, "{method}: not replaced");
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            wait_for_two();
            let victim = pool.worker_pids()[1];
            // SAFETY: signalling our own worker.
            unsafe { libc::kill(victim as i32, libc::SIGKILL) };
            assert!(
                all_gone_within(&[victim], Duration::from_secs(10)),
                "{method}"
            );
            let v: Vec<u64> = (0..1000).collect();
            let out = pool.map_chunked(f, &v, 10).unwrap();
            assert_eq!(
                out,
                v.iter().map(|&x| x * x).collect::<Vec<_>>(),
                "{method}"
            );
            wait_for_two();
        }
    });
}

#[test]
fn terminate_and_drop_leave_no_reexecuted_worker_behind() {
    bounded(LIMIT, || {
        for method in REEXECUTED {
            let pool = get_context(method).pool(2).unwrap();
            let pids = pool.worker_pids();
            let _running = pool.apply_async(sleep_secs, (30,));
            drop(pool);
            assert!(
                all_gone_within(&pids, Duration::from_secs(5)),
                "{method}: {pids:?}"
            );
        }
    });
}

#[test]
fn forkserver_workers_are_children_of_one_shared_server() {
    bounded(LIMIT, || {
        let a = get_context(StartMethod::ForkServer).pool(1).unwrap();
        let b = get_context(StartMethod::ForkServer).pool(1).unwrap();
        let server_a = a.apply(parent_pid, ()).unwrap();
        let server_b = b.apply(parent_pid, ()).unwrap();
        assert_eq!(server_a, server_b, "one server per program");
        assert_ne!(server_a, std::process::id());
        let spawn = get_context(StartMethod::Spawn).pool(1).unwrap();
        assert_eq!(spawn.apply(parent_pid, ()).unwrap(), std::process::id());
    });
}

#[test]
fn start_methods_parse_and_print_pythons_names() {
    for m in StartMethod::ALL {
        assert_eq!(m.name().parse::<StartMethod>().unwrap(), m);
        assert_eq!(m.to_string(), m.name());
    }
    assert!(matches!(
        "threads".parse::<StartMethod>(),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(StartMethod::default(), StartMethod::Fork);
    assert_eq!(Pool::new(1).unwrap().start_method(), StartMethod::Fork);
}

#[test]
fn a_normal_binary_spawns_workers_from_its_own_executable() {
    let example = common::example("spawn_pool");
    let output = bounded(LIMIT, move || {
        std::process::Command::new(example).output().unwrap()
    });
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // The spawned workers do not see the parent's SETTING = 1000.
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0], "spawn: [1, 4, 9]");
    assert!(
        ["SpawnPoolWorker-1", "SpawnPoolWorker-2"].contains(&lines[1]),
        "{stdout}"
    );
    assert_eq!(lines[2], "forkserver: [1, 4, 9]");
    assert!(lines[3].starts_with("ForkServerPoolWorker-"), "{stdout}");
    assert_eq!(lines[4], "parent: MainProcess");
}
