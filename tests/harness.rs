//! Options for benchmark harnesses and batch runs: CPU pinning, thread limits
//! inside workers, statistics, memory caps, and which input killed a worker.
//! Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{current_process, Error, Pool, StartMethod};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::ForkServer,
    StartMethod::Spawn,
];

/// The CPUs the calling thread may run on.
fn affinity() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: writes at most size_of_val(&set) bytes into `set`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(r, 0);
    // SAFETY: reads bits of a valid set, below its size.
    (0..1024)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Inside a task: this worker's index and its CPUs (as a mask of CPUs 0-63).
fn where_am_i() -> (u64, u64) {
    let mask = affinity()
        .iter()
        .filter(|&&c| c < 64)
        .map(|&c| 1u64 << c)
        .sum();
    (current_process().index.unwrap() as u64, mask)
}

fn mask(cpus: &[usize]) -> u64 {
    cpus.iter().map(|&c| 1u64 << c).sum()
}

#[test]
fn pinned_workers_run_on_their_cpus_and_replacements_keep_them() {
    bounded(LIMIT, || {
        let allowed = affinity();
        assert!(allowed.iter().all(|&c| c < 64), "the test reads CPUs 0-63");
        for method in METHODS {
            // One task per worker: every task after the first two runs in a
            // replacement.
            let pool = Pool::builder()
                .processes(3)
                .pin_workers()
                .maxtasksperchild(1)
                .start_method(method)
                .build()
                .unwrap();
            for _ in 0..12 {
                let (index, got) = pool.apply(where_am_i, ()).unwrap();
                let want = 1u64 << allowed[index as usize % allowed.len()];
                assert_eq!(got, want, "{method:?}: worker {index}");
            }
        }
    });
}

#[test]
fn cpu_ids_take_one_set_per_worker_or_one_for_all() {
    bounded(LIMIT, || {
        let allowed = affinity();
        let (first, last) = (allowed[0], *allowed.last().unwrap());
        for method in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .cpu_ids(vec![vec![first], vec![last]])
                .maxtasksperchild(2)
                .start_method(method)
                .build()
                .unwrap();
            for _ in 0..8 {
                let (index, got) = pool.apply(where_am_i, ()).unwrap();
                let want = if index == 0 { first } else { last };
                assert_eq!(got, 1 << want, "{method:?}: worker {index}");
            }
            let shared = Pool::builder()
                .processes(2)
                .cpu_ids(vec![allowed.clone()])
                .start_method(method)
                .build()
                .unwrap();
            assert_eq!(shared.apply(where_am_i, ()).unwrap().1, mask(&allowed));
        }
    });
}

#[test]
fn bad_cpu_sets_are_refused_at_build() {
    let allowed = affinity();
    let outside = (0..).find(|c| !allowed.contains(c)).unwrap();
    let cases: Vec<(&str, shmpool::PoolBuilder)> = vec![
        (
            "three sets for two workers",
            Pool::builder()
                .processes(2)
                .cpu_ids(vec![vec![allowed[0]]; 3]),
        ),
        ("no set", Pool::builder().processes(2).cpu_ids(vec![])),
        (
            "an empty set",
            Pool::builder().processes(1).cpu_ids(vec![vec![]]),
        ),
        (
            "a CPU not allowed",
            Pool::builder().processes(1).cpu_ids(vec![vec![outside]]),
        ),
        (
            "a CPU past any cpu_set_t",
            Pool::builder().processes(1).cpu_ids(vec![vec![1 << 40]]),
        ),
        (
            "both placements",
            Pool::builder()
                .processes(1)
                .cpu_ids(vec![vec![allowed[0]]])
                .pin_workers(),
        ),
    ];
    for (what, builder) in cases {
        match builder.build() {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

const THREAD_VARS: [&str; 6] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
];

/// Inside a task: the thread variables, parsed (0: unset).
fn thread_vars() -> [u32; 6] {
    THREAD_VARS.map(|v| {
        std::env::var(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    })
}

/// Runs in a fresh copy of this test binary (started by the test below)
/// so that the fork server starts with this environment too.
#[test]
#[ignore = "run by workers_get_thread_limits_and_the_programs_own_setting_wins"]
fn thread_limits_in_a_fresh_program() {
    bounded(LIMIT, || {
        assert_eq!(std::env::var("BLIS_NUM_THREADS").as_deref(), Ok("7"));
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        for method in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .threads_per_worker(3)
                .start_method(method)
                .build()
                .unwrap();
            assert_eq!(
                pool.apply(thread_vars, ()).unwrap(),
                [3, 3, 3, 7, 3, 3],
                "{method:?}"
            );
            let default = Pool::builder()
                .processes(1)
                .start_method(method)
                .build()
                .unwrap();
            let d = cpus.max(1);
            assert_eq!(
                default.apply(thread_vars, ()).unwrap(),
                [d, d, d, 7, d, d],
                "{method:?}: CPUs / processes"
            );
        }
        assert!(matches!(
            Pool::builder().threads_per_worker(0).build(),
            Err(Error::InvalidArgument(_))
        ));
        // The parent's own environment is untouched.
        assert!(std::env::var_os("OMP_NUM_THREADS").is_none());
    });
}

#[test]
fn workers_get_thread_limits_and_the_programs_own_setting_wins() {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "thread_limits_in_a_fresh_program",
        "--ignored",
        "--test-threads=1",
    ]);
    for var in THREAD_VARS {
        cmd.env_remove(var);
    }
    cmd.env("BLIS_NUM_THREADS", "7");
    let out = bounded(LIMIT, move || cmd.output().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills its worker on element 13.
fn fragile(x: u64) -> u64 {
    if x == 13 {
        std::process::abort()
    }
    x * 2
}

fn fragile_pair(x: u64, y: u64) -> u64 {
    fragile(x) + y
}

#[test]
fn a_dead_workers_error_names_the_elements_of_its_chunk() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let items: Vec<u64> = (0..40).collect();
        let pairs: Vec<(u64, u64)> = items.iter().map(|&x| (x, 1)).collect();
        let died = |r: Result<Vec<u64>, Error>, what: &str| match r {
            Err(Error::WorkerDied {
                elements, signal, ..
            }) => {
                assert_eq!(signal, Some(libc::SIGABRT), "{what}");
                assert_eq!(elements, Some(10..20), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        };
        died(pool.map_chunked(fragile, &items, 10), "map");
        died(pool.starmap_chunked(fragile_pair, &pairs, 10), "starmap");
        let async_map = pool.map_async_chunked(fragile, &items, 10).unwrap();
        died(async_map.get(Some(Duration::from_secs(60))), "map_async");
        let mut out = vec![0u64; 40];
        match pool.map_into_chunked(fragile, &items, &mut out, 10) {
            Err(e) => assert_eq!(e.elements(), Some(10..20), "map_into: {e}"),
            Ok(()) => panic!("map_into succeeded"),
        }
        for ordered in [true, false] {
            let it = if ordered {
                pool.imap_chunked(fragile, items.clone(), 10).unwrap()
            } else {
                pool.imap_unordered_chunked(fragile, items.clone(), 10)
                    .unwrap()
            };
            let errors: Vec<Error> = it.filter_map(Result::err).collect();
            assert_eq!(errors.len(), 1, "imap (ordered: {ordered}): {errors:?}");
            assert_eq!(errors[0].elements(), Some(10..20), "{}", errors[0]);
        }
        // apply names no elements.
        match pool.apply(fragile, (13,)) {
            Err(e @ Error::WorkerDied { .. }) => assert_eq!(e.elements(), None),
            other => panic!("{other:?}"),
        }
        // The recipe: re-run the suspects one element per task.
        let suspects = pool.map_chunked(fragile, &items, 10).unwrap_err();
        let culprits: Vec<usize> = suspects
            .elements()
            .unwrap()
            .filter(|&i| pool.map_chunked(fragile, &items[i..i + 1], 1).is_err())
            .collect();
        assert_eq!(culprits, vec![13]);
    });
}

#[test]
fn with_retries_a_dying_chunk_is_split_until_the_error_names_one_element() {
    bounded(LIMIT, || {
        let items: Vec<u64> = (0..40).collect();
        for (retries, want) in [
            (1, 10..15),
            (2, 12..15),
            (3, 13..15),
            (4, 13..14),
            (9, 13..14),
        ] {
            let pool = Pool::builder()
                .processes(2)
                .retries(retries)
                .build()
                .unwrap();
            for zero_copy in [true, false] {
                let pool_ref = &pool;
                let got = if zero_copy {
                    pool_ref.map_chunked(fragile, &items, 10)
                } else {
                    let copy = Pool::builder()
                        .processes(2)
                        .retries(retries)
                        .zero_copy(false)
                        .build()
                        .unwrap();
                    copy.map_chunked(fragile, &items, 10)
                };
                match got {
                    Err(e @ Error::WorkerDied { .. }) => {
                        assert_eq!(e.elements(), Some(want.clone()), "retries {retries}: {e}")
                    }
                    other => panic!("retries {retries}: {other:?}"),
                }
            }
        }
    });
}

/// Kills its worker the first time it sees element 13 in this test run
/// (a marker file, named after the test process, records that it did).
fn fragile_once(x: u64) -> u64 {
    if x == 13 {
        let marker = format!(
            "/tmp/shmpool-harness-once-{}",
            std::os::unix::process::parent_id()
        );
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok()
        {
            std::process::abort()
        }
    }
    x * 2
}

#[test]
fn a_chunk_retried_after_a_passing_death_brings_every_result_back() {
    bounded(LIMIT, || {
        let marker = format!("/tmp/shmpool-harness-once-{}", std::process::id());
        let _ = std::fs::remove_file(&marker);
        let pool = Pool::builder().processes(2).retries(1).build().unwrap();
        let items: Vec<u64> = (0..40).collect();
        let got = pool.map_chunked(fragile_once, &items, 10);
        let _ = std::fs::remove_file(&marker);
        assert_eq!(
            got.unwrap(),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        // The dead worker's replacement may still be starting when the map
        // returns: wait for it, bounded.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while pool.worker_pids().len() < 2 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.worker_pids().len(), 2);
    });
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn abort_task() -> u8 {
    std::process::abort()
}

#[test]
fn stats_count_tasks_time_deaths_retries_and_timeouts() {
    bounded(LIMIT, || {
        for method in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .retries(1)
                .task_timeout(Duration::from_secs(2))
                .start_method(method)
                .build()
                .unwrap();
            let fresh = pool.stats();
            assert_eq!(fresh.tasks_done, 0);
            assert_eq!(fresh.workers.len(), 2);
            assert_eq!(
                fresh.workers.iter().map(|w| w.index).collect::<Vec<_>>(),
                vec![0, 1]
            );
            assert!(fresh.workers.iter().all(|w| w.pid != 0 && w.deaths == 0));

            // Eight tasks of 30 ms: at least 240 ms of work in all.
            pool.map_chunked(nap_ms, &[30; 8], 1).unwrap();
            let s = pool.stats();
            assert_eq!(s.tasks_done, 8, "{method:?}: {s:?}");
            assert_eq!(s.workers.iter().map(|w| w.tasks_done).sum::<u64>(), 8);
            assert!(s.busy >= Duration::from_millis(240), "{s:?}");
            assert!(s.busy < s.uptime * 2, "{s:?}");
            for w in &s.workers {
                assert!(w.slowest_task >= Duration::from_millis(30), "{w:?}");
                assert!(w.busy >= w.slowest_task, "{w:?}");
                assert!(w.startup > Duration::ZERO, "{w:?}");
                assert!(w.busy + w.idle <= s.uptime, "{w:?} {s:?}");
            }

            // A death at index k: counted there, and the replacement keeps k.
            assert!(pool.apply(abort_task, ()).is_err());
            let s = pool.stats();
            assert_eq!(s.worker_deaths, 2, "died, retried, died: {s:?}");
            assert_eq!(s.retries, 1, "{s:?}");
            assert_eq!(s.workers.iter().map(|w| w.deaths).sum::<u64>(), 2);
            assert_eq!(s.workers.len(), 2);
            assert_eq!(s.tasks_done, 8, "tasks of the dead are kept: {s:?}");

            assert!(pool.apply(nap_ms, (10_000,)).is_err());
            let s = pool.stats();
            assert_eq!(s.timeouts, 1, "{s:?}");
            assert_eq!(s.worker_deaths, 2, "a timeout is no death: {s:?}");

            let text = pool.insights().to_string();
            for word in [
                "working",
                "waiting",
                "starting",
                "slowest tasks",
                "timeouts 1, worker deaths 2",
            ] {
                assert!(text.contains(word), "{word}: {text}");
            }
        }
    });
}

/// Works (spins) for `ms` milliseconds, then aborts its worker.
fn work_then_abort(ms: u64) -> u8 {
    let until = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
    std::process::abort()
}

#[test]
fn tasks_that_never_finished_count_as_work_and_a_timeout_is_no_death() {
    bounded(LIMIT, || {
        for method in METHODS {
            let pool = Pool::builder()
                .processes(1)
                .task_timeout(Duration::from_millis(300))
                .start_method(method)
                .build()
                .unwrap();
            assert!(matches!(
                pool.apply(nap_ms, (10_000,)),
                Err(Error::TaskTimedOut { .. })
            ));
            assert!(matches!(
                pool.apply(work_then_abort, (250,)),
                Err(Error::WorkerDied { .. })
            ));
            let s = pool.stats();
            assert_eq!(s.timeouts, 1, "{method:?}: {s:?}");
            assert_eq!(s.worker_deaths, 1, "only the abort: {s:?}");
            assert_eq!(s.workers[0].deaths, 1, "{s:?}");
            assert_eq!(s.tasks_done, 0, "neither task finished: {s:?}");
            // 300 ms until the timeout's kill, 250 ms until the abort.
            assert!(s.busy >= Duration::from_millis(450), "{method:?}: {s:?}");
            assert!(s.idle < s.busy / 2, "{method:?}: {s:?}");
            let text = pool.insights().to_string();
            assert!(share_after(&text, "working ") > 50.0, "{text}");
            assert!(text.contains("timeouts 1, worker deaths 1"), "{text}");
        }
    });
}

#[test]
fn retired_workers_figures_stay_in_the_totals() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .maxtasksperchild(3)
            .build()
            .unwrap();
        let items: Vec<u64> = (0..30).collect();
        pool.map_chunked(|x: u64| x + 1, &items, 1).unwrap();
        let s = pool.stats();
        assert_eq!(s.tasks_done, 30, "{s:?}");
        assert_eq!(s.worker_deaths, 0, "retiring is no death: {s:?}");
        assert!(s.workers.iter().all(|w| w.tasks_done <= 3), "{s:?}");
    });
}

/// The percentage `text` gives after `label` (`"working 12.5 %"`).
fn share_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label}: {text}"))
        + label.len();
    text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn init_nap() {
    std::thread::sleep(Duration::from_millis(5));
}

#[test]
fn insights_count_the_time_of_replaced_workers_and_no_initializer_that_is_not_there() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(1)
            .maxtasksperchild(1)
            .build()
            .unwrap();
        for _ in 0..4 {
            assert_eq!(pool.apply(nap_ms, (40,)).unwrap(), 40);
        }
        // Every worker that worked was replaced: the live one has done nothing.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let s = loop {
            let s = pool.stats();
            if s.workers.len() == 1 && s.workers[0].tasks_done == 0 && s.tasks_done == 4 {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "{s:?}");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(s.busy >= Duration::from_millis(160), "{s:?}");
        assert!(s.startup > Duration::ZERO, "{s:?}");
        assert_eq!(s.initializer, Duration::ZERO, "no initializer: {s:?}");
        let text = pool.insights().to_string();
        let working = share_after(&text, "working ");
        assert!(working > 10.0, "the replaced workers' work counts: {text}");
        let row = |first: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(first));
            let line = line.unwrap_or_else(|| panic!("no row {first}: {text}"));
            line.split_whitespace().map(str::to_owned).collect()
        };
        // The replaced workers' row: tasks, working, waiting, startup, initializer.
        let replaced = row("replaced");
        assert_eq!(replaced[1], "4", "{text}");
        // The initializer column says there is none.
        assert_eq!(replaced[5], "-", "{text}");
        assert_eq!(row("0")[6], "-", "{text}");

        // With an initializer, its time is shown.
        let pool = Pool::builder()
            .processes(1)
            .initializer(init_nap, ())
            .build()
            .unwrap();
        let s = pool.stats();
        assert!(s.initializer >= Duration::from_millis(5), "{s:?}");
        assert!(!pool.insights().to_string().contains(" - "));
    });
}

/// Leaks `mib` MiB (as a leaky C library would), touched.
fn leak(mib: u64) -> u64 {
    let kept = vec![1u8; (mib << 20) as usize];
    std::mem::forget(kept);
    std::process::id() as u64
}

#[test]
fn a_worker_over_the_memory_cap_is_replaced_after_its_task_and_the_result_is_kept() {
    bounded(LIMIT, || {
        for method in [StartMethod::Fork, StartMethod::Spawn] {
            let pool = Pool::builder()
                .processes(1)
                .max_memory_per_worker(48 << 20)
                .start_method(method)
                .build()
                .unwrap();
            // Under the cap: the same worker goes on.
            let a = pool.apply(leak, (16,)).unwrap();
            let b = pool.apply(leak, (16,)).unwrap();
            assert_eq!(a, b, "{method:?}");
            // 64 MiB more: past the cap. The result comes back, then a fresh
            // worker takes over.
            let c = pool.apply(leak, (32,)).unwrap();
            assert_eq!(
                c, a,
                "{method:?}: the result of the task that passed the cap"
            );
            let d = pool.apply(leak, (0,)).unwrap();
            assert_ne!(d, a, "{method:?}: replaced");
            let s = pool.stats();
            assert_eq!(s.memory_replacements, 1, "{method:?}: {s:?}");
            assert_eq!(s.worker_deaths, 0, "{method:?}: {s:?}");
            assert!(pool
                .insights()
                .to_string()
                .contains("memory replacements 1"));
        }
        assert!(matches!(
            Pool::builder().max_memory_per_worker(0).build(),
            Err(Error::InvalidArgument(_))
        ));
    });
}

/// Reserves `mib` MiB with `try_reserve`: a failure is a panic.
fn reserve(mib: u64) -> u64 {
    let mut v: Vec<u8> = Vec::new();
    match v.try_reserve_exact((mib << 20) as usize) {
        Ok(()) => mib,
        Err(e) => panic!("could not reserve: {e}"),
    }
}

/// Allocates `mib` MiB the ordinary way: a failure aborts the process.
fn allocate(mib: u64) -> u64 {
    let v = vec![1u8; (mib << 20) as usize];
    std::hint::black_box(&v);
    v.len() as u64
}

#[test]
fn past_the_memory_limit_an_allocation_fails_in_the_task_and_the_death_says_so() {
    bounded(LIMIT, || {
        // Spawn: a fresh process, whatever this test binary has printed.
        let pool = Pool::builder()
            .processes(1)
            .memory_limit_per_worker(256 << 20)
            .start_method(StartMethod::Spawn)
            .build()
            .unwrap();
        assert_eq!(pool.apply(reserve, (64,)).unwrap(), 64);
        assert_eq!(pool.apply(allocate, (64,)).unwrap(), 64 << 20);
        match pool.apply(reserve, (2048,)) {
            Err(Error::TaskPanicked { message }) => {
                assert!(message.contains("reserve"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match pool.apply(allocate, (2048,)) {
            Err(e @ Error::WorkerDied { .. }) => {
                let Error::WorkerDied { cause, signal, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(*cause, shmpool::DeathCause::MemoryLimit, "{e}");
                assert_eq!(*signal, Some(libc::SIGABRT));
                assert!(e.to_string().contains("memory_limit_per_worker"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Another abort is not put down to memory.
        match pool.apply(abort_task, ()) {
            Err(Error::WorkerDied { cause, .. }) => {
                assert_eq!(cause, shmpool::DeathCause::Other)
            }
            other => panic!("{other:?}"),
        }
        let s = pool.stats();
        assert_eq!((s.memory_limit_deaths, s.worker_deaths), (1, 2), "{s:?}");
        assert_eq!(
            pool.apply(allocate, (1,)).unwrap(),
            1 << 20,
            "the pool goes on"
        );
        assert!(matches!(
            Pool::builder().memory_limit_per_worker(0).build(),
            Err(Error::InvalidArgument(_))
        ));
    });
}

/// Kills its worker the first time it sees element 13 in this test run
/// (its own marker file, apart from [`fragile_once`]'s).
fn fragile_once_in_a_fold(x: u64) -> u64 {
    if x == 13 {
        let marker = format!(
            "/tmp/shmpool-harness-fold-once-{}",
            std::os::unix::process::parent_id()
        );
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok()
        {
            std::process::abort()
        }
    }
    x * 2
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn a_folding_chunk_whose_worker_died_is_retried_whole_not_split() {
    // Each chunk of map_reduce writes one value: halves would write two, the
    // second over the next chunk's.
    bounded(LIMIT, || {
        let marker = format!("/tmp/shmpool-harness-fold-once-{}", std::process::id());
        for zero_copy in [true, false] {
            let _ = std::fs::remove_file(&marker);
            let pool = Pool::builder()
                .processes(2)
                .retries(1)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            let items: Vec<u64> = (0..40).collect();
            let got = pool
                .call()
                .chunksize(10)
                .map_reduce(fragile_once_in_a_fold, add, &items);
            let died = std::fs::remove_file(&marker).is_ok();
            assert!(
                died,
                "zero_copy {zero_copy}: the task never killed its worker"
            );
            assert_eq!(got.unwrap(), Some(items.iter().map(|x| x * 2).sum()));
        }
    });
}
