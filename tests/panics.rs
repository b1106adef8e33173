//! What the caller learns of a task's panic: its message, where it was
//! raised, and, from a map, which input elements its chunk covered; and a
//! panic that cannot unwind, which aborts its worker, still has its message
//! printed on stderr.

mod common;

use common::bounded;
use shmpool::{Error, PanicMessage, Pool};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// The line of the `unwrap` in [`fragile`].
const FRAGILE_LINE: u32 = line!() + 4;

fn fragile(x: u64) -> u64 {
    let found = (x != 13).then_some(x);
    found.unwrap() * 2
}

/// The `TaskPanicked` message of `result`, or a failure naming what it was.
fn panicked<T: std::fmt::Debug>(result: Result<T, Error>) -> (PanicMessage, Error) {
    match result {
        Err(err @ Error::TaskPanicked { .. }) => {
            let Error::TaskPanicked { message } = &err else {
                unreachable!()
            };
            (message.clone(), err)
        }
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
}

#[test]
fn a_panic_in_a_map_chunk_names_its_location_and_the_chunks_elements() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let items: Vec<u64> = (0..40).collect();
        let location = format!("tests/panics.rs:{FRAGILE_LINE}:11");
        let (message, err) = panicked(pool.map_chunked(fragile, &items, 10));
        assert_eq!(message, "called `Option::unwrap()` on a `None` value");
        assert_eq!(message.location(), Some(location.as_str()));
        assert_eq!(err.elements(), Some(10..20));
        assert_eq!(
            err.to_string(),
            format!(
                "the task panicked in its worker at {location}: \
                 called `Option::unwrap()` on a `None` value (input elements 10..20)"
            )
        );

        // The same through an imap, an async map and a serde map.
        let mut imap = pool.call().chunksize(4).imap(fragile, 0..40u64).unwrap();
        let err = imap.find_map(Result::err).expect("a failed chunk");
        assert_eq!(err.elements(), Some(12..16), "{err}");
        let (message, _) = panicked(Err::<(), _>(err));
        assert_eq!(message.location(), Some(location.as_str()));
        let err = pool
            .map_async_chunked(fragile, &items, 5)
            .unwrap()
            .get(Some(Duration::from_secs(30)))
            .unwrap_err();
        assert_eq!(err.elements(), Some(10..15), "{err}");
        let err = pool
            .serde()
            .map(
                |s: String| s.parse::<u64>().unwrap(),
                &["1".to_string(), "x".into()],
            )
            .unwrap_err();
        assert_eq!(err.elements(), Some(1..2), "{err}");

        // An apply has a location and no elements; the worker went on.
        let (message, err) = panicked(pool.apply(fragile, (13,)));
        assert_eq!(message.location(), Some(location.as_str()));
        assert_eq!(err.elements(), None);
        assert_eq!(pool.apply(fragile, (4,)).unwrap(), 8);
    });
}

/// The line of the uncaught panic in [`panics_after_catching`].
const UNCAUGHT_LINE: u32 = line!() + 9;

/// A task panics after catching a panic of its own: the location is the
/// second one's, never the caught one's, nor a previous task's.
fn panics_after_catching(then: u32) -> u64 {
    let _ = std::panic::catch_unwind(|| panic!("caught"));
    if then == 0 {
        return 0;
    }
    panic!("uncaught")
}

/// Unwinds without a panic (no panic hook runs, so no location is known).
fn resumes() -> u64 {
    std::panic::resume_unwind(Box::new("resumed"))
}

#[test]
fn a_panic_reports_its_own_location_not_an_earlier_caught_one() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(panics_after_catching, (0,)).unwrap(), 0);
        let (message, _) = panicked(pool.apply(panics_after_catching, (1,)));
        assert_eq!(message, "uncaught");
        let location = format!("tests/panics.rs:{UNCAUGHT_LINE}:5");
        assert_eq!(message.location(), Some(location.as_str()));
        // Not the location of a panic an earlier task caught.
        assert_eq!(pool.apply(panics_after_catching, (0,)).unwrap(), 0);
        let (message, err) = panicked(pool.apply(resumes, ()));
        assert_eq!((message.as_str(), message.location()), ("resumed", None));
        assert_eq!(err.to_string(), "the task panicked in its worker: resumed");
    });
}

/// The line of the panic in [`cannot_unwind`].
const CANNOT_UNWIND_LINE: u32 = line!() + 6;

/// Panics inside an `extern "C"` function, which cannot unwind: Rust aborts
/// the process (the worker) with a second panic.
extern "C" fn cannot_unwind(x: u64) -> u64 {
    if x > 1 {
        panic!("no unwinding out of here ({x})");
    }
    x
}

fn calls_c_abi(x: u64) -> u64 {
    cannot_unwind(x)
}

/// Run as a child process by the test below (`SHMPOOL_TEST_CHILD` set):
/// its worker's stderr is the child's, which the test reads.
#[test]
fn child_whose_task_cannot_unwind() {
    if std::env::var_os("SHMPOOL_TEST_CHILD").is_none() {
        return;
    }
    let pool = Pool::new(1).unwrap();
    let err = pool.apply(calls_c_abi, (7,)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                signal: Some(libc::SIGABRT),
                ..
            }
        ),
        "{err:?}"
    );
    eprintln!("child done: {err}");
}

/// Runs the test `name` of this binary in a child process, as its
/// `SHMPOOL_TEST_CHILD`; its stderr, once it succeeded.
fn stderr_of_child(name: &'static str) -> String {
    let out = bounded(LIMIT, || {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture"])
            .env("SHMPOOL_TEST_CHILD", "1")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("child done"), "{stderr}");
    stderr
}

#[test]
fn a_panic_that_cannot_unwind_prints_its_message_before_the_worker_aborts() {
    let stderr = stderr_of_child("child_whose_task_cannot_unwind");
    let expected = format!(
        "panicked at tests/panics.rs:{CANNOT_UNWIND_LINE}:9:\nno unwinding out of here (7)\n"
    );
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    assert!(
        stderr.contains("panic in a function that cannot unwind"),
        "{stderr}"
    );
}

fn fails_in_a_process(x: u64) {
    panic!("process task failed on {x}");
}

/// Run as a child process by the test below (`SHMPOOL_TEST_CHILD` set):
/// its `Process` child's stderr is the child's, which the test reads.
#[test]
fn child_whose_process_panics() {
    if std::env::var_os("SHMPOOL_TEST_CHILD").is_none() {
        return;
    }
    let mut p = shmpool::Process::new(fails_in_a_process, (3,));
    p.start().unwrap();
    assert_eq!(p.join(Some(Duration::from_secs(60))).unwrap(), Some(1));
    eprintln!("child done");
}

#[test]
fn a_panicking_process_says_which_process_it_is() {
    let stderr = stderr_of_child("child_whose_process_panics");
    let header = stderr
        .find("Process Process-1 (pid ")
        .unwrap_or_else(|| panic!("no process header in {stderr}"));
    let message = stderr
        .find("process task failed on 3")
        .unwrap_or_else(|| panic!("no panic message in {stderr}"));
    assert!(header < message, "{stderr}");
}
