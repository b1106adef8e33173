//! The supervisor: one parent thread per pool that starts the workers, learns of
//! each worker's exit at once (a pidfd per worker, in one `poll`), settles the
//! task a dead worker held, and replaces the worker.
//!
//! Workers are forked from this thread because `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked a child exits: the supervisor lives exactly as long as
//! the pool, so workers die with the pool or with the parent process, never
//! with a short-lived thread that happened to call `Pool::new`.
//!
//! What a worker's exit means:
//! * status 0 after `close`, holding no task: a normal end; not replaced.
//! * anything else (a signal, `abort()`, `exit(n)` from a task): the slot it held
//!   (`RUNNING(k)`) fails with `WorkerDied`; every `QUEUED` slot is pushed again
//!   (the dead worker may have popped one without claiming it; duplicates are
//!   harmless); a new worker takes index k.
//! * after `terminate`: every worker is killed and reaped, every unfinished slot
//!   fails with `Terminated`, and the thread ends.

use crate::error::Error;
use crate::pool::core::{Core, TERMINATED};
use crate::pool::slot::{Outcome, SlotState};
use crate::pool::worker;
use crate::start::fork::{self, Child};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// The parent's handle on the supervisor thread.
pub(crate) struct Supervisor {
    /// An eventfd the thread polls: written to make it look at the lifecycle.
    wake: OwnedFd,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    pub(crate) fn new() -> io::Result<Supervisor> {
        // SAFETY: plain syscall.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Supervisor {
            // SAFETY: a fresh descriptor that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(raw) },
            thread: Mutex::new(None),
        })
    }

    /// Starts the thread and its workers; returns once all workers are forked.
    pub(crate) fn start(core: &Arc<Core>) -> Result<(), Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_core = Arc::clone(core);
        let handle = std::thread::Builder::new()
            .name("shmpool-supervisor".into())
            .spawn(move || run(thread_core, ready_tx))?;
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::Io(io::Error::other(
                "the supervisor thread panicked",
            )))
        });
        if started.is_err() {
            let _ = handle.join();
        } else {
            *core
                .supervisor
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        started
    }

    /// Makes the thread re-read the pool's lifecycle.
    pub(crate) fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits for the thread to end (after close or terminate). Idempotent.
    pub(crate) fn join(&self) {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn spawn_worker(core: &Core, index: usize) -> io::Result<Child> {
    let layout = *core.layout();
    let child = fork::fork_child(move || worker::serve(layout, index as u32))?;
    core.set_pid(index, Some(child.pid as u32));
    Ok(child)
}

fn run(core: Arc<Core>, ready: mpsc::Sender<Result<(), Error>>) {
    let mut workers: Vec<Option<Child>> = Vec::with_capacity(core.processes);
    for index in 0..core.processes {
        match spawn_worker(&core, index) {
            Ok(child) => workers.push(Some(child)),
            Err(e) => {
                workers.into_iter().flatten().for_each(|w| {
                    fork::kill_and_reap(w.pid);
                });
                let _ = ready.send(Err(e.into()));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    let mut respawn: Vec<usize> = Vec::new();
    loop {
        if core.lifecycle() == TERMINATED {
            terminate_all(&core, &mut workers);
            return;
        }
        respawn.retain(|&k| match spawn_worker(&core, k) {
            Ok(child) => {
                workers[k] = Some(child);
                false
            }
            Err(_) => true, // e.g. EAGAIN: try again after the poll timeout
        });
        let live: Vec<usize> = (0..workers.len())
            .filter(|&k| workers[k].is_some())
            .collect();
        if live.is_empty() && respawn.is_empty() && core.layout().is_closing() {
            return; // closed, and every worker has finished
        }
        let mut fds: Vec<libc::pollfd> = std::iter::once(core.supervisor.wake.as_raw_fd())
            .chain(
                live.iter()
                    .map(|&k| workers[k].as_ref().map_or(-1, |w| w.pidfd.as_raw_fd())),
            )
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout_ms = if respawn.is_empty() { -1 } else { 100 };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            continue; // EINTR
        }
        if fds[0].revents != 0 {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
            unsafe {
                libc::read(
                    core.supervisor.wake.as_raw_fd(),
                    (&mut count as *mut u64).cast(),
                    8,
                )
            };
        }
        for (pfd, &k) in fds[1..].iter().zip(&live) {
            if pfd.revents == 0 {
                continue;
            }
            let Some(child) = workers[k].take() else {
                continue;
            };
            let Some(status) = fork::reap(child.pid, false) else {
                workers[k] = Some(child); // spurious readiness
                continue;
            };
            core.set_pid(k, None);
            if let Some(queued) = settle_exit(&core, k, child.pid, status) {
                if core.lifecycle() == TERMINATED {
                    continue;
                }
                // Replace first, then re-push: with a full ring, pushing can wait
                // for a worker to make room, and this may be the only one.
                match spawn_worker(&core, k) {
                    Ok(child) => workers[k] = Some(child),
                    Err(_) => respawn.push(k),
                }
                queued.into_iter().for_each(|i| core.push(i));
            }
        }
    }
}

/// Settles worker `k`'s exit: fails the task it held. Returns `None` for a
/// normal end (no replacement), else the slots still queued, to push again once
/// a replacement runs (the dead worker may have popped one without claiming it;
/// duplicates are harmless).
fn settle_exit(core: &Core, k: usize, pid: libc::pid_t, status: libc::c_int) -> Option<Vec<u32>> {
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let layout = core.layout();
    let mut held_task = false;
    let mut queued = Vec::new();
    for i in 0..core.slots_in_use() {
        let slot = layout.slot(i);
        match slot.state() {
            SlotState::Running { worker } if worker as usize == k => {
                held_task |= slot.finish_for(
                    |s| s == SlotState::Running { worker: k as u32 },
                    Outcome::WorkerDied,
                    pid as u32,
                    signal.unwrap_or(-1),
                );
            }
            SlotState::Queued => queued.push(i),
            _ => {}
        }
    }
    if clean && !held_task && layout.is_closing() {
        None
    } else {
        Some(queued)
    }
}

fn terminate_all(core: &Core, workers: &mut [Option<Child>]) {
    for w in workers.iter().flatten() {
        // SAFETY: `w.pid` is our unreaped child.
        unsafe { libc::kill(w.pid, libc::SIGKILL) };
    }
    for (k, w) in workers.iter_mut().enumerate() {
        if let Some(w) = w.take() {
            fork::reap(w.pid, true);
            core.set_pid(k, None);
        }
    }
    let layout = core.layout();
    for i in 0..core.slots_in_use() {
        layout.slot(i).finish_for(
            |s| matches!(s, SlotState::Queued | SlotState::Running { .. }),
            Outcome::Terminated,
            0,
            -1,
        );
    }
}
