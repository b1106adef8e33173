//! How worker processes are started: `fork` (default), `spawn` (re-execute
//! this program) and `forkserver` (fork from a small server process).
//!
//! * `fork`: forking safely from a multithreaded parent.
//! * `spawn`: `fork` + `execve("/proc/self/exe")` with a role in the
//!   environment; the new process becomes a worker in `bootstrap`, before
//!   `main`.
//! * `forkserver`: one server process per program (spawned the same way) that
//!   forks workers on request and reaps them for us.
//! * `bootstrap`: the `.init_array` hook that gives a re-executed process its
//!   role.
//!
//! Whatever the method, a worker ends up in `worker::serve` with the
//! pool's segment mapped and reports in through the pool's `ready` eventfd.

// Unsafe code: the probe entry point shares the entry points' `unsafe fn` contract.
#![allow(unsafe_code)]

pub(crate) mod bootstrap;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod method;

/// Every environment variable that names the role of a re-executed process
/// starts with this; none is passed on to the processes it starts.
pub(crate) const ROLE_PREFIX: &str = "SHMPOOL_ROLE_";
pub(crate) mod spawn;

pub(crate) use method::default_method;
pub use method::{set_start_method, StartMethod};

use crate::error::Error;
use crate::remote::AccessRefused;
use crate::shm::layout::Layout;
use crate::task::{Entry, EntryPoint, TaskIo};
use crate::worker::{self, WorkerStart};
use fork::Child;
use std::os::fd::BorrowedFd;

/// Starts one worker of the pool whose segment is `layout` / `segment_fd`.
/// Called from the pool's supervisor thread.
pub(crate) fn start_worker(
    layout: &Layout,
    segment_fd: BorrowedFd<'_>,
    start: WorkerStart<'_>,
) -> Result<Child, Error> {
    match start.method {
        StartMethod::Fork => {
            let layout = *layout;
            Ok(fork::fork_child(move || worker::serve(layout, start))?)
        }
        StartMethod::Spawn => spawn::spawn_worker(segment_fd, start),
        StartMethod::ForkServer => forkserver::start_worker(segment_fd, start),
    }
}

/// Exit statuses of a re-executed process that could not become a worker.
pub(crate) const BINARY_MISMATCH_EXIT: i32 = 72;
pub(crate) const BAD_SEGMENT_EXIT: i32 = 73;
/// A spawn or forkserver worker could not make the stack
/// `PoolBuilder::stack_size` asked for.
pub(crate) const STACK_FAILED_EXIT: i32 = 74;

/// What an exit status of a starting worker means, if it is one of ours.
pub(crate) fn explain_exit(status: libc::c_int) -> Option<&'static str> {
    if !libc::WIFEXITED(status) {
        return None;
    }
    match libc::WEXITSTATUS(status) {
        BINARY_MISMATCH_EXIT => Some(
            "the re-executed program is not the same binary as this one \
             (was the executable replaced on disk?)",
        ),
        BAD_SEGMENT_EXIT => Some("the worker could not map the pool's shared memory"),
        STACK_FAILED_EXIT => {
            Some("the worker could not make a thread with the stack_size asked for")
        }
        _ => None,
    }
}

/// A function whose entry offset proves that two processes run the same
/// binary: a re-executed worker compares its own offset with the parent's.
///
/// Never inlined: a small function is otherwise instantiated once per codegen
/// unit that uses it, and two copies have two addresses.
///
/// # Safety
/// Reads nothing from its argument; callable with any `TaskIo`.
#[inline(never)]
pub(crate) unsafe fn probe_entry(io: TaskIo<'_>) -> Result<(), AccessRefused> {
    std::hint::black_box(io.len);
    Ok(())
}

/// The probe's offset in this binary.
pub(crate) fn probe_offset() -> u64 {
    EntryPoint::new(probe_entry).0
}

/// Encodes `entry` for workers started with `method`. Spawned and forkserver
/// workers run a fresh copy of the executable, so the function must be part of
/// it (not of a library loaded at run time).
pub(crate) fn check_entry(method: StartMethod, entry: Entry) -> Result<EntryPoint, Error> {
    check_code(method, entry as usize).map(EntryPoint)
}

/// Encodes the code address `addr` (a function) for workers started with
/// `method`, as [`check_entry`] does for entry points.
pub(crate) fn check_code(method: StartMethod, addr: usize) -> Result<u64, Error> {
    if method.runs_a_fresh_executable() {
        let (start, end) = crate::sys::executable::text();
        let in_executable = |a: usize| (start..end).contains(&a);
        // Offsets are taken from shmpool's own code; a shared library is
        // mapped at an address of its own in each process, so from there no
        // function of the executable has a fixed offset.
        if !in_executable(crate::task::anchor_address()) {
            return Err(Error::invalid(
                "with the spawn and forkserver start methods, shmpool must be linked \
                 into the executable (libshmpool.a), not loaded as a shared library \
                 (libshmpool.so); the fork start method works with either",
            ));
        }
        if !in_executable(addr) {
            return Err(Error::invalid(
                "with the spawn and forkserver start methods, a task function must be \
                 part of the executable (not of a dynamically loaded library)",
            ));
        }
    }
    Ok(crate::task::code_offset(addr))
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    fn square(x: u64) -> u64 {
        x * x
    }

    #[test]
    fn functions_of_this_binary_pass_and_foreign_code_is_rejected() {
        fn entry_of<F: crate::Task<(u64,), Output = u64>>(_: F) -> Entry {
            crate::task::map_entry::<F, u64>
        }
        assert!(check_entry(StartMethod::Spawn, entry_of(square)).is_ok());
        // libc's code lives in a shared library, outside the executable.
        // SAFETY: only the address is used; it is never called as an Entry.
        let foreign: Entry = unsafe {
            std::mem::transmute(libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize)
        };
        assert!(matches!(
            check_entry(StartMethod::ForkServer, foreign),
            Err(Error::InvalidArgument(_))
        ));
        assert!(check_entry(StartMethod::Fork, foreign).is_ok());
    }
}
