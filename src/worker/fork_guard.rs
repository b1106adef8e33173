//! What happens to processes a task forks from its worker.
//!
//! A task may call `fork()`. Its child returns from the task's function into
//! the worker's code, which would go on to write results into shared memory,
//! or into the caller's memory, as if it were the worker. Three rules:
//!
//! * **Only the worker writes.** A `pthread_atfork` child handler sets a
//!   process-local flag in every child; the entry points [`check`] it after
//!   every call of the task's function, before writing its result, and a
//!   child leaves at once (`_exit(0)`), having written nothing. The check is
//!   one relaxed load of a static, no system call.
//! * **The worker reaps its children.** After each task, a worker that has
//!   forked reaps every child of its own that has exited (`waitpid(-1,
//!   WNOHANG)`), so the children the rule above ends leave no zombies. A task
//!   that needs the exit status of a child must wait for it before returning.
//! * **A task's children die with their worker.** A child of the worker gets
//!   `SIGKILL` when the worker thread that forked it ends
//!   (`PR_SET_PDEATHSIG`), so nothing a task started outlives the pool's
//!   workers (close, terminate, a crash, `max_tasks`); a process meant to
//!   outlive the pool must fork again (the death signal is not inherited).
//!   It is named `PoolTaskChild` (`/proc/<pid>/comm`), so it is not taken
//!   for a worker.
//!
//! Only `fork()` through libc counts: glibc's `_Fork`, `vfork`, `posix_spawn`
//! and raw `clone` run no atfork handler (and the last three exec or exit).

// Unsafe code: `pthread_atfork` handlers; a plain read of the fork flag.
#![allow(unsafe_code)]

use rustix::io::Errno;
use rustix::process::WaitOptions;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set in a child of a worker by the atfork child handler: this process is
/// not the worker.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Set in the worker by the atfork parent handler: it may have children to
/// reap.
static HAS_CHILDREN: AtomicBool = AtomicBool::new(false);

/// The worker's pid (0 before [`arm`]), for the child handler to tell the
/// worker's own children from grandchildren.
static WORKER_PID: AtomicI32 = AtomicI32::new(0);

/// The name a worker's child takes (at most 15 bytes).
pub(crate) const CHILD_NAME: &[u8] = b"PoolTaskChild";

extern "C" fn in_parent() {
    HAS_CHILDREN.store(true, Ordering::Relaxed);
}

extern "C" fn in_child() {
    if FORKED.swap(true, Ordering::Relaxed) {
        return; // a grandchild: its parent is not the worker
    }
    crate::start::fork::set_process_name(CHILD_NAME);
    // Die with the worker, unless it already died before this took effect.
    crate::start::fork::die_with_parent(WORKER_PID.load(Ordering::Relaxed) as u32);
}

/// Makes this process the worker: installs the atfork handlers (once per
/// process image; a forked worker inherits them, a spawned one installs its
/// own) and clears the flags it may have inherited (a worker forked by a task
/// of another pool's worker).
pub(crate) fn arm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers handlers that only store atomics and make
        // async-signal-safe system calls (prctl, getppid, _exit), as a forked
        // child requires.
        unsafe { libc::pthread_atfork(None, Some(in_parent), Some(in_child)) };
    });
    FORKED.store(false, Ordering::Relaxed);
    HAS_CHILDREN.store(false, Ordering::Relaxed);
    WORKER_PID.store(std::process::id() as i32, Ordering::Relaxed);
}

/// In a process a task forked from the worker: leaves at once, touching no
/// slot, output, log or record, and running no destructor of the worker's.
#[inline(always)]
pub(crate) fn check() {
    // A plain read, not an atomic load: it may stay in a register across a
    // task's function the compiler sees cannot fork (a map of `x * x` stays
    // vectorized), and is read again after any call it cannot see into, such
    // as `fork`; measured, the atomic load cost a warm 10^4-element map of
    // `x * x` about 45%. The flag is written only by `arm` (before this
    // process runs any task) and by `in_child`, inside `fork()`, in the
    // child's only thread: this thread, before `fork` returns into the task.
    // SAFETY: so no write races with this read.
    if unsafe { *FORKED.as_ptr() } {
        forked_exit()
    }
}

#[cold]
#[inline(never)]
fn forked_exit() -> ! {
    // Nothing of the pool's is touched.
    crate::sys::process::exit_now(0)
}

/// Reaps every exited child of the worker, if it ever forked; between tasks.
pub(crate) fn reap_children() {
    // Cleared first: a fork racing with this (from a thread the task left
    // running) sets it again after its child exists.
    if !HAS_CHILDREN.swap(false, Ordering::Relaxed) {
        return;
    }
    loop {
        match rustix::process::waitpid(None, WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(Errno::INTR) => continue,
            Ok(None) => {
                // Some still run: look again after the next task.
                HAS_CHILDREN.store(true, Ordering::Relaxed);
                return;
            }
            Err(_) => return, // ECHILD: none left until the next fork
        }
    }
}
