//! Regression tests for reliability bugs: huge timeouts, task limits, the
//! supervisor, inherited descriptors, the tracker, retiring workers, nested
//! processes and panicking inputs. Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{
    get_context, Barrier, Condition, Error, Event, Lock, Pipe, Pool, Process, Queue, Semaphore,
    StartMethod,
};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn square(x: u64) -> u64 {
    x * x
}
fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}
fn abort_now() -> u8 {
    std::process::abort()
}

#[test]
fn duration_max_timeouts_mean_no_deadline() {
    bounded(LIMIT, || {
        let max = Duration::MAX;
        let pool = Pool::new(1).unwrap();

        // Each call's value is already there, so "no deadline" returns at once.
        let res = pool.apply_async(square, (7,)).unwrap();
        assert!(res.wait(Some(max)));
        assert_eq!(res.get(Some(max)).unwrap(), 49);
        let mut it = pool.imap(square, 0..2u64).unwrap();
        assert_eq!(it.next_timeout(max).unwrap().unwrap(), 0);
        assert_eq!(it.next_timeout(max).unwrap().unwrap(), 1);
        assert!(it.next_timeout(max).is_none());

        let q = Queue::<u64>::new(1).unwrap();
        q.put_timeout(5, max).unwrap();
        assert_eq!(q.get_timeout(max).unwrap(), 5);

        let (a, b) = Pipe::new::<u64>().unwrap();
        a.send(6).unwrap();
        assert!(b.poll(Some(max)).unwrap());
        assert_eq!(b.recv_timeout(max).unwrap(), 6);

        let sem = Semaphore::new(1).unwrap();
        sem.acquire_timeout(max).unwrap();
        let ev = Event::new().unwrap();
        ev.set().unwrap();
        assert!(ev.wait(Some(max)).unwrap());
        assert_eq!(Barrier::new(1).unwrap().wait(Some(max)).unwrap(), 0);
        let cond = Condition::new().unwrap();
        assert!(cond
            .lock()
            .unwrap()
            .wait_while(|| false, Some(max))
            .unwrap());
        drop(Lock::new().unwrap().lock_timeout(max).unwrap());

        let mut p = Process::new(sleep_ms, (0,));
        p.start().unwrap();
        assert_eq!(p.join(Some(max)).unwrap(), Some(0));
    });
}

#[test]
fn task_timeouts_too_long_to_count_in_milliseconds_or_poll_never_fire() {
    bounded(LIMIT, || {
        for limit in [
            // Its milliseconds wrap a u64 to 385.
            Duration::from_secs(18_446_744_073_709_552),
            // Its milliseconds overflow poll's c_int.
            Duration::from_secs(25 * 24 * 3600),
            Duration::MAX,
        ] {
            let pool = Pool::builder()
                .processes(1)
                .task_timeout(limit)
                .build()
                .unwrap();
            let slow = pool.apply_async(sleep_ms, (1000,)).unwrap();
            assert_eq!(
                slow.get(WAIT).map_err(|e| e.to_string()),
                Ok(()),
                "{limit:?}"
            );
            let dies = pool.apply_async(abort_now, ()).unwrap();
            assert!(
                matches!(dies.get(WAIT), Err(Error::WorkerDied { .. })),
                "{limit:?}"
            );
            assert_eq!(pool.apply(square, (3,)).unwrap(), 9);
        }
    });
}

#[test]
fn process_join_with_a_month_long_timeout_waits_for_the_exit() {
    bounded(LIMIT, || {
        let mut p = Process::new(sleep_ms, (300,));
        p.start().unwrap();
        let month = Duration::from_secs(30 * 24 * 3600);
        assert_eq!(p.join(Some(month)).unwrap(), Some(0));
    });
}

/// The descriptors a program run by a task holds, as bits (bit 63: any fd
/// ≥ 63), leaving out the one `ls` opens to read its own fd directory.
fn fds_of_a_program_a_task_runs() -> u64 {
    let out = std::process::Command::new("sh")
        .args(["-c", "ls -l /proc/self/fd"])
        .output()
        .expect("sh runs");
    let mut mask = 0u64;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((left, target)) = line.split_once(" -> ") else {
            continue;
        };
        if target.starts_with("/proc/") && target.ends_with("/fd") {
            continue;
        }
        if let Some(fd) = left.rsplit(' ').next().and_then(|f| f.parse::<u32>().ok()) {
            mask |= 1 << fd.min(63);
        }
    }
    mask
}

#[test]
fn programs_a_task_runs_inherit_only_stdio_with_every_start_method() {
    // Whatever this test's own launcher leaked into it (a CI runner's fds)
    // reaches the programs it runs too, and is none of the pool's doing.
    let outside = fds_of_a_program_a_task_runs() & !0b111;
    bounded(Duration::from_secs(120), move || {
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(1).unwrap();
            let fds = pool.apply(fds_of_a_program_a_task_runs, ()).unwrap() & !outside;
            assert_eq!(
                fds, 0b111,
                "{method}: fds {fds:#b} leaked to an exec'd program"
            );
        }
    });
}

/// Starts `crash_parent` (a pool and a named SharedMemory) as the leader of
/// its own process group, sends `signal` to that whole group, and returns
/// whether the name was gone within 5 s.
fn name_removed_after_group_signal(signal: i32) -> bool {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(common::example("crash_parent"));
    // SAFETY: setrlimit is async-signal-safe; no core file from SIGQUIT.
    unsafe {
        command.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        })
    };
    let mut child = command
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let name = line.split_whitespace().nth(3).expect("a name").to_owned();
    let path = format!("/dev/shm{name}");
    assert!(std::path::Path::new(&path).exists());
    // SAFETY: plain syscall; the group is the child's alone (process_group(0)).
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), signal) }, 0);
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&path).exists() {
        if std::time::Instant::now() > deadline {
            let _ = std::fs::remove_file(&path); // leave nothing behind
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn no_signal_to_the_whole_process_group_leaks_a_shared_memory_name() {
    bounded(LIMIT, || {
        for signal in [
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGKILL,
        ] {
            assert!(name_removed_after_group_signal(signal), "signal {signal}");
        }
    });
}

fn nap_then(ms: u64, k: u64) -> u64 {
    sleep_ms(ms);
    k
}

// CPython's bpo-10332: workers retiring after close() must still be replaced
// while tasks are queued.
#[test]
fn maxtasksperchild_with_an_early_close_still_runs_every_task() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(3)
            .maxtasksperchild(1)
            .build()
            .unwrap();
        let results: Vec<_> = (0..6)
            .map(|k| pool.apply_async(nap_then, (300, k)).unwrap())
            .collect();
        pool.close();
        pool.join().unwrap();
        for (k, r) in results.iter().enumerate() {
            assert!(r.ready(), "task {k} had not finished when join returned");
            assert_eq!(r.get(Some(Duration::ZERO)).unwrap(), k as u64);
        }
    });
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

/// A child's body: starts a grandchild with `StartMethod::ALL[method]` that
/// exits with 7, and exits with the grandchild's code (99 if it got none).
fn start_a_grandchild(method: u8) {
    let mut grandchild = get_context(StartMethod::ALL[method as usize]).process(exit_with, (7,));
    let code = match grandchild.start() {
        Ok(()) => grandchild.join(Some(Duration::from_secs(10))),
        Err(e) => Err(e),
    };
    std::process::exit(match code {
        Ok(Some(c)) => c,
        _ => 99,
    })
}

#[test]
fn children_of_every_start_method_start_grandchildren_of_every_start_method() {
    bounded(Duration::from_secs(120), || {
        for child_method in StartMethod::ALL {
            for (m, grandchild_method) in StartMethod::ALL.iter().enumerate() {
                let mut child = get_context(child_method).process(start_a_grandchild, (m as u8,));
                child.start().unwrap();
                assert_eq!(
                    child.join(Some(Duration::from_secs(15))).unwrap(),
                    Some(7),
                    "a {child_method} child starting a {grandchild_method} grandchild"
                );
            }
        }
    });
}

/// 0..10, panicking when it reaches `at`.
fn input_panicking_at(at: u64) -> impl Iterator<Item = u64> {
    (0..10u64).inspect(move |&x| {
        if x == at {
            panic!("the input broke at {x}");
        }
    })
}

#[test]
fn imap_yields_the_results_before_a_panicking_input_then_the_error() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for chunksize in [1, 3] {
            for ordered in [true, false] {
                let it = if ordered {
                    pool.imap_chunked(square, input_panicking_at(5), chunksize)
                } else {
                    pool.imap_unordered_chunked(square, input_panicking_at(5), chunksize)
                };
                let results: Vec<Result<u64, Error>> = it.unwrap().collect();
                let what = format!("chunksize {chunksize}, ordered {ordered}");
                assert_eq!(results.len(), 6, "{what}: {results:?}");
                let mut got: Vec<u64> = results[..5].iter().map(|r| *r.as_ref().unwrap()).collect();
                if !ordered {
                    got.sort();
                }
                assert_eq!(got, [0, 1, 4, 9, 16], "{what}");
                assert!(
                    matches!(&results[5], Err(Error::InputPanicked { message })
                        if message == "the input broke at 5"),
                    "{what}: {:?}",
                    results[5]
                );
            }
        }
        assert_eq!(pool.apply(square, (6,)).unwrap(), 36, "the pool goes on");
    });
}

/// The parent pid of process `pid`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    after
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// A forkserver grandchild: exits 0 if its fork server is a child of
/// `child`, 1 if it belongs to another process.
fn check_my_fork_server(child: u32) {
    // SAFETY: plain syscall.
    let server = unsafe { libc::getppid() } as u32;
    std::process::exit(if parent_of(server) == child { 0 } else { 1 })
}

/// A fork child: starts a forkserver grandchild and exits with its code.
fn start_a_forkserver_grandchild() {
    let mut grandchild =
        get_context(StartMethod::ForkServer).process(check_my_fork_server, (std::process::id(),));
    let code = match grandchild.start() {
        Ok(()) => grandchild.join(Some(Duration::from_secs(10))),
        Err(e) => Err(e),
    };
    std::process::exit(match code {
        Ok(Some(c)) => c,
        _ => 99,
    })
}

#[test]
fn a_fork_child_uses_a_fork_server_of_its_own_not_its_parents() {
    bounded(LIMIT, || {
        // The parent's fork server exists (it serves this pool).
        let pool = get_context(StartMethod::ForkServer).pool(1).unwrap();
        assert_eq!(pool.apply(square, (2,)).unwrap(), 4);
        let mut child = get_context(StartMethod::Fork).process(start_a_forkserver_grandchild, ());
        child.start().unwrap();
        assert_eq!(child.join(Some(Duration::from_secs(30))).unwrap(), Some(0));
    });
}

/// Forks; the child returns at once, the parent after 100 ms (so that a
/// child that went on as a worker would finish the slot first). Returns
/// `x * x` and the fork's result (the child's pid in the parent, 0 in it).
fn fork_then_square(x: u64) -> (u64, i64) {
    // SAFETY: plain fork; both sides only return.
    let pid = unsafe { libc::fork() };
    if pid > 0 {
        sleep_ms(100);
    }
    (x * x, i64::from(pid))
}

/// Whether `pid` has exited (a zombie, or gone altogether).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

#[test]
fn a_process_a_task_forks_exits_when_the_task_returns_instead_of_serving() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(1).unwrap();
            let (squared, child) = pool.apply(fork_then_square, (12,)).unwrap();
            assert_eq!(squared, 144, "{method}");
            assert!(child > 0, "{method}: the worker's own result, got {child}");
            let child = child as u32;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !exited(child) && std::time::Instant::now() < deadline {
                sleep_ms(5);
            }
            let ghost = !exited(child);
            if ghost {
                // SAFETY: plain syscall; do not leave it serving after the test.
                unsafe { libc::kill(child as i32, libc::SIGKILL) };
            }
            assert!(!ghost, "{method}: the forked child still runs");
            for k in 0..300u64 {
                assert_eq!(pool.apply(square, (k,)).unwrap(), k * k, "{method}");
            }
            let items: Vec<u64> = (0..10_000).collect();
            let expect: Vec<u64> = items.iter().map(|x| x * x).collect();
            assert_eq!(pool.map(square, &items).unwrap(), expect, "{method}");
        }
    });
}

#[test]
fn get_and_wait_inside_a_callback_on_a_result_whose_callbacks_are_pending_fail_at_once() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        // Its callbacks can only run on the callback thread, after the one
        // below returns: waiting for them there would wait forever.
        let slow = pool
            .apply_async_with(nap_then, (500, 1), |_| {}, |_| {})
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let _outer = pool
            .apply_async_with(
                square,
                (3,),
                move |v| {
                    let started = std::time::Instant::now();
                    let got = slow.get(None).map_err(|e| e.to_string());
                    let timed = slow.get(Some(Duration::from_secs(20)));
                    let waited = slow.wait(None);
                    let _ = tx.send((v, got, timed.is_ok(), waited, started.elapsed()));
                },
                |_| {},
            )
            .unwrap();
        let (v, got, timed_ok, waited, took) = rx.recv_timeout(LIMIT).unwrap();
        assert_eq!(v, 9);
        let message = got.unwrap_err();
        assert!(message.contains("get() inside a callback"), "{message}");
        assert!(!timed_ok && !waited);
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(pool.apply(square, (4,)).unwrap(), 16, "the pool goes on");
    });
}

#[test]
fn terminate_returns_within_a_grace_period_while_a_callback_is_stuck() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let _stuck = pool
            .apply_async_with(
                square,
                (2,),
                move |_| {
                    started_tx.send(()).unwrap();
                    let _ = release_rx.recv(); // until the test lets it go
                },
                |_| {},
            )
            .unwrap();
        started_rx.recv_timeout(WAIT.unwrap()).unwrap();
        let t0 = std::time::Instant::now();
        pool.terminate();
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(12), "terminate took {took:?}");
        drop(pool);
        drop(release_tx);
    });
}

/// Fills a local array of `N` bytes and sums it (black-boxed, so it stays on
/// the stack).
fn sum_of_a_big_local<const N: usize>(seed: u64) -> u64 {
    let mut local = [0u8; N];
    let local = std::hint::black_box(&mut local);
    for (i, b) in local.iter_mut().enumerate() {
        *b = (i as u64 ^ seed) as u8;
    }
    std::hint::black_box(&*local)
        .iter()
        .map(|&b| u64::from(b))
        .sum()
}

#[test]
fn tasks_have_a_main_thread_sized_stack_and_stack_size_sets_it() {
    bounded(LIMIT, || {
        const MIB: usize = 1 << 20;
        let expect = |n: usize| {
            sum_of_a_big_local::<0>(0) + (0..n as u64).map(|i| (i ^ 5) as u8 as u64).sum::<u64>()
        };
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(1).unwrap();
            let got = pool.apply(sum_of_a_big_local::<MIB>, (5,));
            assert_eq!(got.unwrap(), expect(MIB), "{method}: a 1 MiB local");
            let got = pool.apply(sum_of_a_big_local::<{ 4 * MIB }>, (5,));
            assert_eq!(got.unwrap(), expect(4 * MIB), "{method}: a 4 MiB local");
        }
        for method in StartMethod::ALL {
            let pool = get_context(method)
                .pool_builder()
                .processes(1)
                .stack_size(64 << 20)
                .maxtasksperchild(1)
                .build()
                .unwrap();
            let got = pool.apply(sum_of_a_big_local::<{ 32 * MIB }>, (5,));
            assert_eq!(
                got.unwrap(),
                expect(32 * MIB),
                "{method}: a 32 MiB local, 64 MiB stack"
            );
            // Replacements (one task each) get it too.
            let got = pool.map(sum_of_a_big_local::<{ 32 * MIB }>, &[5, 5]);
            assert_eq!(got.unwrap(), vec![expect(32 * MIB); 2], "{method}: map");
        }
    });
}

/// What `ps` shows for `pid` (`/proc/<pid>/comm`, at most 15 bytes).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// `name` cut to the 15 bytes a process name holds.
fn cut15(name: &str) -> &str {
    &name[..name.len().min(15)]
}

#[test]
fn workers_the_fork_server_and_the_tracker_carry_python_style_process_names() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(2).unwrap();
            let prefix = match method {
                StartMethod::Fork => "Fork",
                StartMethod::Spawn => "Spawn",
                _ => "ForkServer",
            };
            let mut pids = pool.worker_pids();
            pids.sort();
            let expect: Vec<String> = (1..=2)
                .map(|n| cut15(&format!("{prefix}PoolWorker-{n}")).to_owned())
                .collect();
            // A worker names itself as it starts, which a fork pool's build
            // does not wait for: give it a moment.
            let names = || {
                let mut names: Vec<String> = pids.iter().map(|&p| comm(p)).collect();
                names.sort();
                names
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while names() != expect && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(names(), expect, "{method}");
            if method == StartMethod::ForkServer {
                assert_eq!(comm(parent_of(pids[0])), "ForkServer");
            }
        }
        let _named = shmpool::SharedMemory::create(64).unwrap();
        let tracker_named = || {
            common::children()
                .into_iter()
                .any(|p| comm(p as u32) == "ResourceTracker")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !tracker_named() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let names: Vec<String> = common::children()
            .into_iter()
            .map(|p| comm(p as u32))
            .collect();
        assert!(tracker_named(), "children: {names:?}");
    });
}

/// This process's resident shared memory (`RssShmem`), in MiB.
fn resident_shared_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssShmem:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        >> 10
}

fn add_one(x: u32) -> u32 {
    x.wrapping_add(1)
}

#[test]
fn a_large_map_gives_its_shared_memory_back_beyond_64_mib_once_done() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let items: Vec<u32> = (0..(96u32 << 20) / 4).collect(); // 96 MiB
        let before = resident_shared_mib();
        let result = pool.map_async(add_one, &items).unwrap();
        let out = result.get(WAIT).unwrap();
        assert_eq!(out.len(), items.len());
        assert!(out.iter().zip(&items).all(|(&o, &i)| o == i + 1));
        let during = resident_shared_mib();
        assert!(
            during >= before + 150,
            "in and out were resident: {before} -> {during} MiB"
        );
        drop(result);
        let after = resident_shared_mib();
        // 192 MiB of block, of which at most the first 64 MiB of the arena
        // stay resident (other tests' pools may move the figures a little).
        assert!(
            after + 100 <= during,
            "beyond 64 MiB given back: {before} -> {during} -> {after} MiB"
        );
        assert_eq!(
            pool.map_async(add_one, &items[..1000])
                .unwrap()
                .get(WAIT)
                .unwrap()[999],
            1000
        );
    });
}

#[test]
fn a_stack_size_no_thread_can_have_is_an_error_with_every_start_method() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            let built = get_context(method)
                .pool_builder()
                .processes(1)
                .stack_size(1 << 60)
                .build();
            match built {
                Err(Error::StartFailed(_) | Error::Io(_)) => {}
                other => panic!("{method}: {other:?}"),
            }
        }
    });
}
