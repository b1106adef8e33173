//! A signal handler the program installs is the program's own: a worker
//! forked after it runs none of it. An inherited handler would run the
//! program's code in the worker, on the program's descriptors (a runtime's
//! self-pipe, say), and a worker that handles `SIGTERM` would not end on
//! `terminate_workers` until the `SIGKILL` that follows 2 seconds later.
//!
//! A test binary of its own: the handler is process-wide.

use shmpool::{get_context, StartMethod};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The write end of the pipe the handler reports on.
static REPORT: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let byte = b"s";
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte.
    unsafe { libc::write(REPORT.load(Ordering::Relaxed), byte.as_ptr().cast(), 1) };
}

/// Installs [`on_signal`] for `sig` (the program's handler).
fn handle(sig: libc::c_int) {
    // SAFETY: a zeroed sigaction with a handler that is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
}

/// The signals among `SIGTERM`, `SIGINT`, `SIGHUP` and `SIGUSR1` that have a
/// handler in the calling process, as bits.
fn handled_here() -> u64 {
    let mut bits = 0;
    for (bit, sig) in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1]
        .into_iter()
        .enumerate()
    {
        // SAFETY: reads the disposition into a zeroed sigaction.
        let handler = unsafe {
            let mut now: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut now);
            now.sa_sigaction
        };
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            bits |= 1 << bit;
        }
    }
    bits
}

#[test]
fn workers_run_none_of_the_programs_signal_handlers_and_end_on_sigterm() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    REPORT.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
        handle(sig);
    }
    assert_eq!(
        handled_here(),
        0b1111,
        "the program's handlers are in place"
    );

    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let pool = get_context(method).pool(2).unwrap();
        assert_eq!(
            pool.apply(handled_here, ()).unwrap(),
            0,
            "{method}: a worker has the program's handlers"
        );
        let started = Instant::now();
        pool.terminate_workers();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "{method}: SIGTERM did not end the workers ({took:?}: they waited for SIGKILL)"
        );
    }

    // No handler ran anywhere: this process received no signal, and no
    // worker ran the handler on the shared pipe.
    let mut byte = [0u8; 1];
    // SAFETY: a non-blocking read into a local byte.
    let n = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
    assert_eq!(n, -1, "a handler of the program ran and wrote to its pipe");
    // SAFETY: closes the pipe made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Ctrl-C sends `SIGINT` to the terminal's whole foreground process group,
/// workers included: a program that handles it to drain its pool must not
/// see the tasks in flight die with their workers.
#[test]
fn a_task_whose_worker_gets_sigint_completes() {
    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let pool = get_context(method).pool(1).unwrap();
        let pid = pool.worker_pids()[0];
        let running = pool.apply_async(nap, (400,)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: plain syscall, aimed at this pool's own worker.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
        assert_eq!(
            running.get(Some(Duration::from_secs(10))).unwrap(),
            400,
            "{method}"
        );
        assert_eq!(pool.worker_pids(), vec![pid], "{method}: worker replaced");
    }
}
