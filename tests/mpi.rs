//! The MPI pool under a real `mpirun -n 3`: each test runs one check of
//! `examples/mpi_pool.rs` (built by `cargo test --features mpi` next to the
//! test binaries) and reads its verdict; rank 0 prints `ok <check>` only
//! if every assertion there held. Every run is bounded: on timeout mpirun is
//! told to end the job (SIGTERM, which it forwards to the ranks), then killed.
//!
//! Needs Open MPI's `mpirun` (`scripts/install-mpi.sh`).

#![cfg(feature = "mpi")]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// The example's binary, built once (in this test's profile) by cargo.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-j1", "--features", "mpi", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo");
        assert!(status.success(), "cargo build --example {name} failed");
    });
    dir.join("examples").join(name)
}

/// Runs `mpirun -n 3 mpi_pool <check>`; its exit status, stdout and stderr.
fn mpirun(check: &str) -> (bool, String, String) {
    mpirun_n(3, check)
}

/// Runs `mpirun -n <ranks> mpi_pool <check>`. One job at a time: concurrent
/// mpiruns race creating their session directories ("File exists"), and 2
/// cores have no room for more.
fn mpirun_n(ranks: usize, check: &str) -> (bool, String, String) {
    static ONE_JOB: Mutex<()> = Mutex::new(());
    let _turn = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new("mpirun")
        .args([
            "-n",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .arg(example("mpi_pool"))
        .arg(check)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("mpirun (run scripts/install-mpi.sh)");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        let pgid = child.id() as libc::pid_t;
        // SAFETY: signals to the process group of the mpirun we started.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_secs(5));
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        panic!(
            "mpirun {check} did not finish within {LIMIT:?}; stderr:\n{}",
            err.join().unwrap()
        );
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

fn passes(check: &str) {
    let (ok, out, err) = mpirun(check);
    assert!(
        ok && out.lines().any(|l| l == format!("ok {check}")),
        "mpirun {check}: success {ok}\nstdout:\n{out}\nstderr:\n{err}"
    );
}

#[test]
fn map_starmap_imap_and_apply_async_give_what_a_local_pool_gives() {
    passes("results");
}

#[test]
fn a_task_aborting_on_rank_2_is_worker_died_on_rank_0_and_the_next_map_succeeds() {
    passes("crash");
}

#[test]
fn crashes_stay_local_with_workers_started_by_a_fork_server() {
    passes("crash-forkserver");
}

#[test]
fn results_time_out_and_come_later_and_dropped_handles_leave_the_pool_working() {
    passes("lifecycle");
}

#[test]
fn with_retries_a_task_whose_worker_died_runs_again_and_succeeds() {
    passes("retry");
}

#[test]
fn worker_ranks_waiting_for_work_use_almost_no_cpu() {
    passes("idle");
}

#[test]
fn rank_0_runs_chunks_and_apply_tasks_in_its_own_local_pool() {
    passes("every-rank");
}

#[test]
fn with_no_processes_on_rank_0_only_the_worker_ranks_compute() {
    passes("root-idle");
}

#[test]
fn each_rank_rank_0_included_runs_two_tasks_at_once() {
    passes("in-flight");
}

#[test]
fn a_job_of_one_rank_runs_every_task_in_rank_0s_local_pool() {
    let (ok, out, err) = mpirun_n(1, "results");
    assert!(
        ok && out.lines().any(|l| l == "ok results"),
        "success {ok}\nstdout:\n{out}\nstderr:\n{err}"
    );
    // With no processes on rank 0, nobody would run them: refused.
    let (ok, out, err) = mpirun_n(1, "root-idle");
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("at least 2 ranks"),
        "success {ok}\nstdout:\n{out}\nstderr:\n{err}"
    );
}

// 10^6 elements in a release build, 10^5 in a debug one (see the example).
#[test]
fn a_one_microsecond_function_over_many_elements_gives_the_sequential_results() {
    passes("million");
}

#[test]
fn every_rank_returns_and_rank_0_reports_the_job() {
    let (ok, out, err) = mpirun("demo");
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    // Three ranks that compute (rank 0 too), at least one local process each.
    assert!(out.contains("3 ranks, "), "{out}");
    assert!(out.contains("squares[999] = 998001, 20 + 22 = 42"), "{out}");
    // Only rank 0 prints: the worker ranks got None and returned.
    assert_eq!(out.matches("ok demo").count(), 1, "{out}");
}
