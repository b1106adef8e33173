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
//! * status 0, holding no task, having run its `maxtasksperchild` quota: it
//!   is replaced, unless the pool is closed and no task is queued. It exits
//!   right after finishing a task, so it holds no popped ring entry and
//!   nothing needs pushing again.
//! * anything else (a signal, `abort()`, `exit(n)` from a task): the one slot
//!   its record names (the ring entry it took or was about to take) is
//!   settled: `RUNNING(k)` fails with `WorkerDied` or is requeued for a retry;
//!   `QUEUED` with its ring entry gone (popped, not claimed) is pushed again
//!   (a duplicate entry is harmless: claims are CASes). A new worker takes
//!   index k. Settling is O(1), however many tasks are queued.
//! * after `terminate`: every worker is killed and reaped, every unfinished slot
//!   fails with `Terminated`, and the thread ends. `terminate_workers` sends
//!   `SIGTERM` first and `SIGKILL` only to workers still alive after
//!   [`TERM_GRACE`].
//! * killed for `AsyncResult::abort`: the slot it was killed for is finished
//!   with `Aborted` (never retried); a task it took up in the instant before
//!   the kill is innocent and runs again, as after a task timeout.
//!
//! Should the thread itself panic, nobody would settle exits or enforce
//! timeouts again, and waiters would hang: the panic is caught, the pool
//! marked broken, and everything ends as after `terminate`, every unfinished
//! slot failing with `PoolBroken`.

// Unsafe code: reads the slot of a worker it reaped.
#![allow(unsafe_code)]

use crate::error::{DeathCause, Error};
use crate::pool::core::{Core, Lifecycle};
use crate::pool::stats::Leaving;
use crate::shm::layout::INIT_FAILED_EXIT;
use crate::start::fork::Child;
use crate::sync::lock;
use crate::sync::slot::{Outcome, SlotState, IN_PLACE, MAX_WORKER_INDEX, SPLIT};
use crate::sync::spin::{yield_until, HAND_OFF_YIELD};
use crate::worker::WorkerStart;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The parent's handle on the supervisor thread.
pub(crate) struct Supervisor {
    /// An eventfd the thread polls: written to make it look at the lifecycle.
    wake: OwnedFd,
    /// An eventfd each worker adds 1 to once it is initialized.
    ready: OwnedFd,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Slots whose workers `AsyncResult::abort` asks to be killed.
    aborts: Mutex<Vec<u32>>,
    /// The signal `terminate` sends the workers (`SIGKILL` unless
    /// `terminate_workers` asked for `SIGTERM`).
    stop_signal: AtomicI32,
    /// Makes the thread panic at its next wake-up, for the tests.
    #[cfg(test)]
    panic_on_wake: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    pub(crate) fn new() -> io::Result<Supervisor> {
        Ok(Supervisor {
            wake: eventfd()?,
            ready: eventfd()?,
            thread: Mutex::new(None),
            aborts: Mutex::new(Vec::new()),
            stop_signal: AtomicI32::new(libc::SIGKILL),
            #[cfg(test)]
            panic_on_wake: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the thread and its workers; returns once all workers are forked.
    pub(crate) fn start(core: &Arc<Core>) -> Result<(), Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_core = Arc::clone(core);
        // Fork workers run their tasks on a copy of this thread's stack
        // (spawn and forkserver workers make their own: `become_worker`).
        let stack = match core.config.start_method {
            crate::StartMethod::Fork => core.config.stack_size,
            _ => None,
        }
        .unwrap_or_else(crate::pool::builder::default_stack_size);
        let handle = std::thread::Builder::new()
            .name("shmpool-supervisor".into())
            .stack_size(stack)
            .spawn(move || run(thread_core, ready_tx))?;
        // The forks take ~0.1 ms each in a small parent: yield until they
        // are done rather than sleep, whose wake-up costs as much again.
        let mut early = None;
        yield_until(HAND_OFF_YIELD, || match ready_rx.try_recv() {
            Ok(started) => {
                early = Some(Ok(started));
                true
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                early = Some(Err(mpsc::RecvError));
                true
            }
            Err(mpsc::TryRecvError::Empty) => false,
        });
        let started = early
            .unwrap_or_else(|| ready_rx.recv())
            .unwrap_or_else(|_| Err(Error::PoolBroken("the supervisor thread panicked".into())));
        if started.is_err() {
            let _ = handle.join();
        } else {
            *lock(&core.supervisor.thread) = Some(handle);
        }
        started
    }

    /// Makes the thread re-read the pool's lifecycle.
    pub(crate) fn poke(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Asks the thread to kill the workers running `slots` (checked again
    /// there: a slot that finished meanwhile costs nothing).
    pub(crate) fn abort(&self, slots: &[u32]) {
        lock(&self.aborts).extend_from_slice(slots);
        self.poke();
    }

    /// Makes the coming `terminate` send `signal` (`SIGTERM` or `SIGKILL`)
    /// first; called before the lifecycle changes.
    pub(crate) fn set_stop_signal(&self, signal: libc::c_int) {
        self.stop_signal.store(signal, Ordering::SeqCst);
    }

    /// Waits for the thread to end (after close or terminate). Idempotent.
    pub(crate) fn join(&self) {
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            // It is reaping killed workers, ~0.1 ms: yield until it is done
            // rather than sleep (a wake-up costs as much again).
            yield_until(HAND_OFF_YIELD, || handle.is_finished());
            let _ = handle.join();
        }
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// `poll(2)` with a timeout in milliseconds (negative: none).
fn poll_ms(fds: &mut [PollFd<'_>], ms: i32) -> rustix::io::Result<usize> {
    let timeout = u64::try_from(ms)
        .ok()
        .map(|ms| Timespec::try_from(Duration::from_millis(ms)).expect("in range"));
    rustix::event::poll(fds, timeout.as_ref())
}

/// Reads (and resets) an eventfd's counter; 0 if nothing was written.
fn drain(fd: &OwnedFd) -> u64 {
    let mut count = [0u8; 8];
    match rustix::io::read(fd, &mut count) {
        Ok(8) => u64::from_ne_bytes(count),
        _ => 0, // EAGAIN: nothing written
    }
}

fn spawn_worker(core: &Core, index: usize) -> Result<Child, Error> {
    let start = WorkerStart {
        index: index as u32,
        ready_fd: core.supervisor.ready.as_fd(),
        method: core.config.start_method,
    };
    core.stats.spawning(index);
    let child = crate::start::start_worker(core.layout(), core.segment_fd(), start)?;
    core.set_pid(index, Some(child.pid as u32));
    Ok(child)
}

/// How long a re-executed (spawn, forkserver) worker may take to report in. A
/// forked worker has no such limit: it cannot miss the start-up hook, and its
/// exit is seen at once, so only a slow initializer keeps `build` waiting —
/// as in Python.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every worker has run the initializer and reported in; fails if
/// one exits first or none report within [`START_TIMEOUT`].
fn await_ready(core: &Core, workers: &mut [Option<Child>]) -> Result<(), Error> {
    let deadline = (core.config.start_method.runs_a_fresh_executable())
        .then(|| Instant::now() + START_TIMEOUT);
    let mut ready = 0u64;
    loop {
        ready += drain(&core.supervisor.ready);
        if ready >= workers.len() as u64 {
            return Ok(());
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let Some(left) = deadline
            .unwrap_or(far)
            .checked_duration_since(Instant::now())
        else {
            return Err(Error::StartFailed(format!(
                "{} of {} workers did not report in within {START_TIMEOUT:?} (a spawned \
                 program must reach shmpool's start-up hook: call shmpool::init() first \
                 thing in main)",
                workers.len() as u64 - ready,
                workers.len()
            )));
        };
        let mut fds: Vec<PollFd<'_>> = std::iter::once(&core.supervisor.ready)
            .chain(workers.iter().flatten().map(|w| &w.pidfd))
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        let timeout_ms = left.as_millis().min(1000) as i32 + 1;
        let _ = poll_ms(&mut fds, timeout_ms);
        let ready_fds: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        for (&exited, worker) in ready_fds[1..]
            .iter()
            .zip(workers.iter_mut().filter(|w| w.is_some()))
        {
            if exited {
                if let Some(status) = worker.as_ref().and_then(|w| w.reap(false)) {
                    *worker = None; // reaped: its pid may be reused
                    return Err(start_failure(core, status));
                }
            }
        }
    }
}

/// Why a worker that exited during start-up did so.
fn start_failure(core: &Core, status: libc::c_int) -> Error {
    let settings = &core.layout().header().settings;
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == INIT_FAILED_EXIT {
        // The failing worker wrote it before exiting, and it has been reaped.
        let bytes = settings.init_message();
        return Error::InitializerFailed {
            message: String::from_utf8_lossy(&bytes).into_owned(),
        };
    }
    let how = if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    };
    match crate::start::explain_exit(status) {
        Some(why) => Error::StartFailed(why.to_owned()),
        None => Error::StartFailed(format!("a worker {how} while starting")),
    }
}

fn run(core: Arc<Core>, ready: mpsc::Sender<Result<(), Error>>) {
    // Outside the unwind boundary, so that a panic leaves them to be killed
    // and reaped here, not to zombies.
    let mut workers: Vec<Option<Child>> = Vec::with_capacity(core.processes);
    let supervised = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        supervise(&core, &mut workers, ready)
    }));
    if let Err(payload) = supervised {
        let message = crate::panic::panic_message(&payload);
        core.mark_broken(format!("its supervisor thread panicked: {message}"));
        terminate_all(&core, &mut workers);
    }
}

fn supervise(
    core: &Core,
    workers: &mut Vec<Option<Child>>,
    ready: mpsc::Sender<Result<(), Error>>,
) {
    for index in 0..core.processes {
        match spawn_worker(core, index) {
            Ok(child) => workers.push(Some(child)),
            Err(e) => {
                workers.drain(..).flatten().for_each(|w| {
                    w.kill_and_reap();
                });
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let needs_handshake =
        core.config.initializer.is_some() || core.config.start_method.runs_a_fresh_executable();
    if needs_handshake {
        if let Err(e) = await_ready(core, workers) {
            for w in workers.iter_mut().filter_map(Option::take) {
                w.kill_and_reap();
            }
            (0..core.processes).for_each(|k| core.set_pid(k, None));
            let _ = ready.send(Err(e));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);
    core.stats.note_oom_kills();

    let mut respawn: Vec<usize> = Vec::new();
    // Per worker: the slot it was killed for (having exceeded the task
    // timeout, or aborted), and the outcome that slot gets.
    let mut killed_for: Vec<Option<(u32, Outcome)>> = vec![None; core.processes];
    // Per worker: the pid last reported stopped (a stopped worker sends no
    // event on its pidfd: it is looked at every STOP_CHECK_MS).
    let mut reported_stopped: Vec<Option<libc::pid_t>> = vec![None; core.processes];
    loop {
        if core.lifecycle() == Lifecycle::Terminated {
            terminate_all(core, workers);
            return;
        }
        respawn.retain(|&k| match spawn_worker(core, k) {
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
        // `live` names exactly the workers present: one pidfd each, in order.
        let mut fds: Vec<PollFd<'_>> = std::iter::once(&core.supervisor.wake)
            .chain(
                live.iter()
                    .filter_map(|&k| workers[k].as_ref().map(|w| &w.pidfd)),
            )
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        notice_stopped(workers, &mut reported_stopped);
        let mut timeout_ms = if respawn.is_empty() {
            STOP_CHECK_MS
        } else {
            100
        };
        if let Some(limit) = core.config.task_timeout {
            let next = enforce_timeout(core, workers, &mut killed_for, limit);
            timeout_ms = timeout_ms.min(next);
        }
        if poll_ms(&mut fds, timeout_ms).is_err() {
            continue; // EINTR
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        if ready[0] {
            drain(&core.supervisor.wake);
            #[cfg(test)]
            if core.supervisor.panic_on_wake.swap(false, Ordering::SeqCst) {
                panic!("injected by a test");
            }
            kill_aborted(core, workers, &mut killed_for);
        }
        for (&ready, &k) in ready[1..].iter().zip(&live) {
            if !ready {
                continue;
            }
            let Some(child) = workers[k].take() else {
                continue;
            };
            let Some(status) = child.reap(false) else {
                workers[k] = Some(child); // spurious readiness
                continue;
            };
            // Held until the worker's figures are in the totals and it is
            // replaced, so that `Pool::stats` never sees it gone and not yet
            // counted.
            let accounting = core.stats.accounting();
            core.set_pid(k, None);
            let exit = settle_exit(core, k, child.pid, status, killed_for[k].take());
            // Before the index's next worker starts: its figures join the
            // pool's totals, and the record starts from zero.
            let counters = &core.layout().worker_record(k as u32).counters;
            let how = match exit {
                Exit::Died {
                    timed_out: true, ..
                } => Leaving::TimedOut,
                Exit::Died { .. } => Leaving::Died,
                _ if counters.over_memory.load(Ordering::Relaxed) != 0 => Leaving::OverMemory,
                _ => Leaving::Retired,
            };
            core.stats.left(k, counters, how);
            counters.reset();
            if matches!(exit, Exit::Died { .. }) {
                // It may have finished a slot without logging it, and the slot
                // it held was just finished here, unlogged.
                core.callbacks.rescan();
            }
            core.layout().header().done.notify_sleepers();
            if exit == Exit::Finished || core.lifecycle() == Lifecycle::Terminated {
                continue;
            }
            // Replace first, then re-push: with a full ring, pushing can wait
            // for a worker to make room, and this may be the only one.
            match spawn_worker(core, k) {
                Ok(child) => workers[k] = Some(child),
                Err(_) => respawn.push(k),
            }
            // Released once replaced: `stats` after a failed task lists the
            // replacement, with the death at its index.
            drop(accounting);
            if let Exit::Died { again: Some(i), .. } = exit {
                core.push(i);
            }
        }
    }
}

/// How long `terminate_workers` waits for workers to end after `SIGTERM`
/// before it kills the rest.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(2);

/// What a worker's exit calls for.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// The pool is closed and the worker finished: no replacement.
    Finished,
    /// The worker ran its task quota: replace it.
    Retired,
    /// The worker died: replace it, then push `again` into the ring: the
    /// slot it had popped without claiming it, or the task being retried.
    /// `timed_out`: the pool killed it for its task's timeout, and the task
    /// failed with `TaskTimedOut`.
    Died { again: Option<u32>, timed_out: bool },
}

/// Kills the workers running the slots `AsyncResult::abort` asked for
/// (recording each slot in `killed_for`).
fn kill_aborted(core: &Core, workers: &[Option<Child>], killed_for: &mut [Option<(u32, Outcome)>]) {
    let slots = std::mem::take(&mut *lock(&core.supervisor.aborts));
    for i in slots {
        if i >= core.slots_in_use() {
            continue;
        }
        // Checked here, just before the kill: a slot finished meanwhile (or
        // its worker already dying) needs none.
        let SlotState::Running { worker } = core.layout().slot(i).state() else {
            continue;
        };
        let k = worker as usize;
        if let (Some(Some(w)), Some(None)) = (workers.get(k), killed_for.get(k)) {
            killed_for[k] = Some((i, Outcome::Aborted));
            w.kill(); // settled as Aborted when its pidfd reports the exit
        }
    }
}

/// Kills every worker whose task has run longer than `limit` (recording the
/// slot in `killed_for`); returns how long `poll` may sleep before the next
/// running task could expire, in milliseconds.
fn enforce_timeout(
    core: &Core,
    workers: &[Option<Child>],
    timed_out: &mut [Option<(u32, Outcome)>],
    limit: Duration,
) -> libc::c_int {
    // Saturate: `as u64` would wrap a limit of 2^64 ms to a few ms.
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    let now = crate::shm::layout::monotonic_ms();
    let mut next_ms = limit_ms;
    for (k, w) in workers.iter().enumerate() {
        let (Some(w), None) = (w, timed_out[k]) else {
            continue;
        };
        let Some((slot, started)) = core.layout().worker_record(k as u32).running() else {
            continue;
        };
        let ran = now.saturating_sub(started);
        if ran >= limit_ms {
            timed_out[k] = Some((slot, Outcome::TimedOut));
            if is_stopped(w.pid) {
                warn(&format!(
                    "worker {} (pid {}) was stopped when its task reached the pool's \
                     task_timeout; it is killed and replaced",
                    k + 1,
                    w.pid
                ));
            }
            w.kill(); // settled as Timeout when its pidfd reports the exit
        } else {
            next_ms = next_ms.min(limit_ms - ran);
        }
    }
    // +1 so that poll does not wake just before the expiry; saturated, as a
    // limit of weeks does not fit a c_int of milliseconds.
    next_ms.saturating_add(1).min(i32::MAX as u64) as libc::c_int
}

/// How often the supervisor looks for stopped workers, in milliseconds.
const STOP_CHECK_MS: libc::c_int = 1000;

/// Whether process `pid` is stopped (`SIGSTOP`, `SIGTSTP`, a debugger): it
/// runs nothing, its tasks included, until it is continued.
pub(crate) fn is_stopped(pid: libc::pid_t) -> bool {
    crate::pool::stats::read_proc(&format!("/proc/{pid}/stat")).is_some_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// Says once on stderr that a worker is stopped (and forgets it once it runs
/// again or is replaced), since a task it holds, and whatever waits for that
/// task, waits with it.
fn notice_stopped(workers: &[Option<Child>], reported: &mut [Option<libc::pid_t>]) {
    for (k, w) in workers.iter().enumerate() {
        let Some(w) = w else {
            reported[k] = None;
            continue;
        };
        let stopped = is_stopped(w.pid);
        if stopped && reported[k] != Some(w.pid) {
            warn(&format!(
                "worker {} (pid {}) is stopped (SIGSTOP or a debugger): a task it holds \
                 waits until it is continued (SIGCONT), or until the pool's task_timeout",
                k + 1,
                w.pid
            ));
        }
        reported[k] = stopped.then_some(w.pid);
    }
}

/// Writes `shmpool: <message>` to stderr (the descriptor itself: this thread
/// may have inherited a test harness's output capture).
fn warn(message: &str) {
    let line = format!("shmpool: {message}\n");
    // A closed stderr only makes it fail.
    let _ = rustix::io::write(io::stderr(), line.as_bytes());
}

/// Settles worker `k`'s exit: fails the task it held (with the outcome
/// `killed_for` names if it is that slot), or queues it again if retries are
/// left.
fn settle_exit(
    core: &Core,
    k: usize,
    pid: libc::pid_t,
    status: libc::c_int,
    killed_for: Option<(u32, Outcome)>,
) -> Exit {
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let layout = core.layout();
    let record = layout.worker_record(k as u32);
    let retired = record.is_retired();
    let last_taken = record.take_last_taken();
    let began = record.take_task_began();
    // Before any slot is finished: its error reads the cause.
    let over_limit = record.over_limit.swap(0, Ordering::Relaxed) != 0;
    if !clean {
        let killed_by_us = killed_for.is_some() || core.lifecycle() == Lifecycle::Terminated;
        let cause = if over_limit {
            DeathCause::MemoryLimit
        } else if signal == Some(libc::SIGKILL) && !killed_by_us && core.stats.oom_kills_rose() {
            DeathCause::OutOfMemory
        } else {
            DeathCause::Other
        };
        core.stats.died_of(pid as u32, cause);
    }
    // The index's next worker starts from a clean record.
    record.idle();
    // A worker killed while searching cannot clear its bit; a stale bit would
    // keep producers from ever waking a sleeper.
    layout.header().searching.fetch_and(
        !crate::shm::layout::searching_bit(k as u32),
        Ordering::SeqCst,
    );
    if clean && retired {
        // It said it holds nothing. After `close` too, queued tasks still
        // need a worker: the replacement runs them, then sees `closing`
        // with an empty ring and exits (CPython's bpo-10332).
        return if layout.is_closing() && layout.ring().is_empty() {
            Exit::Finished
        } else {
            Exit::Retired
        };
    }
    // The worker takes one ring entry at a time and notes it before taking
    // it, so the slot it noted last is the only one it can hold: running
    // (claimed), or popped but not yet claimed (still queued, and in no ring
    // entry any more). A note for an entry it did not get in the end leaves
    // the slot queued *and* in the ring: pushing it again is harmless (the
    // claim is a CAS on the slot's state).
    let mut held_task = false;
    let mut timed_out = false;
    let mut again = None;
    if let Some(i) = last_taken.filter(|&i| i < core.slots_in_use()) {
        let slot = layout.slot(i);
        match slot.state() {
            SlotState::Running { worker } if worker as usize == k => {
                held_task = true;
                // Its task never finished: the time from its claim to now
                // was spent on it (killed or dead, the worker could not say).
                if began != 0 {
                    let took = crate::shm::layout::ticks().saturating_sub(began);
                    record.counters.count_unfinished(took);
                }
                if let Some((_, why)) = killed_for.filter(|&(slot, _)| slot == i) {
                    if why == Outcome::TimedOut {
                        core.stats.timed_out();
                        timed_out = true;
                    }
                    slot.finish_for(
                        |s| s == SlotState::Running { worker: k as u32 },
                        why,
                        pid as u32,
                        signal.unwrap_or(-1),
                    );
                } else {
                    // SAFETY: the slot is RUNNING(k) and k is reaped: the
                    // supervisor is its only accessor (module doc of `slot`).
                    let mut held = unsafe { slot.held() };
                    let desc = held.desc();
                    // Killed for a task that finished in the instant between
                    // the timeout check and the kill: this one is innocent,
                    // so it runs again without using up a retry.
                    let innocent = killed_for.is_some();
                    // In place: a second run would read the first one's
                    // outputs. Split: the parent runs its halves again.
                    let no_rerun = desc.flags & IN_PLACE != 0
                        || (desc.flags & SPLIT != 0 && desc.len > 1 && !innocent);
                    let retried = if no_rerun {
                        false
                    } else if innocent {
                        slot.requeue(k as u32)
                    } else {
                        desc.retries_used < core.config.retries && {
                            desc.retries_used += 1;
                            core.stats.retried();
                            slot.requeue(k as u32)
                        }
                    };
                    if retried {
                        again = Some(i);
                    } else {
                        slot.finish_for(
                            |s| s == SlotState::Running { worker: k as u32 },
                            Outcome::WorkerDied,
                            pid as u32,
                            signal.unwrap_or(-1),
                        );
                    }
                }
            }
            SlotState::Queued => again = Some(i),
            _ => {}
        }
    }
    match (clean && !held_task, layout.is_closing()) {
        (true, true) => Exit::Finished,
        (true, false) => Exit::Retired,
        (false, _) => Exit::Died { again, timed_out },
    }
}

fn terminate_all(core: &Core, workers: &mut [Option<Child>]) {
    let signal = core.supervisor.stop_signal.load(Ordering::SeqCst);
    for w in workers.iter().flatten() {
        if signal == libc::SIGKILL {
            w.kill();
        } else {
            w.signal(signal);
        }
    }
    if signal != libc::SIGKILL {
        // A worker that handles or blocks the signal (a handler inherited
        // at fork, say) must not hang `terminate_workers`.
        let deadline = Instant::now() + TERM_GRACE;
        let mut pause = Duration::from_micros(100);
        for (k, slot) in workers.iter_mut().enumerate() {
            while let Some(w) = slot.as_ref() {
                if w.reap(false).is_some() {
                    *slot = None;
                    core.set_pid(k, None);
                } else if Instant::now() >= deadline {
                    w.kill();
                    break;
                } else {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
        }
    }
    for (k, w) in workers.iter_mut().enumerate() {
        if let Some(w) = w.take() {
            // A killed worker is gone within ~0.1 ms: yield until it can be
            // reaped rather than sleep in `waitpid`.
            if !yield_until(HAND_OFF_YIELD, || w.reap(false).is_some()) {
                w.reap(true);
            }
            core.set_pid(k, None);
        }
    }
    let layout = core.layout();
    for i in 0..core.slots_in_use() {
        // A slot held by the placeholder is being finished by `abort` now.
        layout.slot(i).finish_for(
            |s| match s {
                SlotState::Queued => true,
                SlotState::Running { worker } => worker != MAX_WORKER_INDEX,
                _ => false,
            },
            Outcome::Terminated,
            0,
            -1,
        );
    }
    core.callbacks.rescan();
    layout.header().done.notify_sleepers();
}

#[cfg(test)]
mod tests {
    use crate::{Error, Pool};
    use std::time::Duration;

    const WAIT: Option<Duration> = Some(Duration::from_secs(30));

    fn nap(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms))
    }
    fn square(x: u64) -> u64 {
        x * x
    }
    fn is_broken<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
        matches!(&r, Err(Error::PoolBroken(why)) if why.contains("injected by a test"))
    }

    #[test]
    fn a_supervisor_panic_fails_every_pending_and_future_call() {
        // On a thread, so that a hang (dropping a pool whose callbacks never
        // came) fails the test instead.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            supervisor_panic_scenario();
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(90))
            .expect("finished within 90 s without a panic");
    }

    fn supervisor_panic_scenario() {
        let pool = Pool::new(1).unwrap();
        let running = pool.apply_async(nap, (60_000,)).unwrap();
        let queued = pool.apply_async(square, (3,)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let watched = pool
            .apply_async_with(square, (4,), |_| {}, move |e| tx.send(e).unwrap())
            .unwrap();
        let worker = pool.worker_pids()[0];
        let supervisor = &pool.core.supervisor;
        supervisor
            .panic_on_wake
            .store(true, std::sync::atomic::Ordering::SeqCst);
        supervisor.poke();

        assert!(is_broken(running.get(WAIT)));
        assert!(is_broken(queued.get(WAIT)));
        assert!(is_broken(watched.get(WAIT)));
        let delivered = rx.recv_timeout(WAIT.unwrap()).map(Err::<(), _>);
        assert!(is_broken(delivered.unwrap()));
        assert!(is_broken(pool.apply(square, (5,))));
        assert!(is_broken(pool.apply_async(square, (5,))));
        pool.close();
        assert!(is_broken(pool.join()));
        // Killed and reaped, not left a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{worker}")).exists());
        assert!(pool.worker_pids().is_empty());
    }
}
