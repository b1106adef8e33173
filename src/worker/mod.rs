//! The worker loop: what every worker process runs after it starts.
//!
//! Run the pool's initializer (if any) and report in; then claim a slot from
//! the ring, run its entry point under `catch_unwind`, write the outcome, finish
//! the slot; when there is nothing to do, spin briefly, then sleep on the
//! header's wake word. Exit (status 0) once the pool is closed and the ring is
//! empty, or after `max_tasks` tasks (the supervisor then starts a replacement).

// Unsafe code: runs entry points on the data the parent laid out.
#![allow(unsafe_code)]

pub(crate) mod fork_guard;

use crate::panic::{install_quiet_panic_hook, panic_message};
use crate::remote::{self, AccessRefused, Peer, Stage};
use crate::shm::layout::{Layout, INIT_FAILED_EXIT, SLOT_CAPACITY};
use crate::sync::slot::INLINE_CAPACITY;
use crate::sync::slot::{
    Held, Outcome, HEAP_FRESH_OUTPUT, HEAP_INPUT, HEAP_OUTPUT, REMOTE_INPUT, REMOTE_OUTPUT, WATCHED,
};
use crate::sync::spin::SpinWait;
use crate::task::{EntryPoint, Remote, TaskIo};
use std::os::fd::BorrowedFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{fence, AtomicU64, Ordering};

mod setup;

/// Who a worker is and how it tells the parent it is ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerStart<'fd> {
    /// The worker's index in the pool (`0..processes`), kept by replacements.
    pub(crate) index: u32,
    /// An eventfd the worker adds 1 to once its initializer has run (the
    /// parent's; the worker's inherited copy).
    pub(crate) ready_fd: BorrowedFd<'fd>,
    /// How the worker process was started (for `current_process().name`).
    pub(crate) method: crate::StartMethod,
}

/// Serves tasks until the pool closes or the task quota is used up; returns
/// the exit status.
pub(crate) fn serve(layout: Layout, start: WorkerStart<'_>) -> i32 {
    // Done by the parent before forking; a spawned process installs it here.
    install_quiet_panic_hook();
    fork_guard::arm();
    crate::process::enter_worker(start.index as usize, start.method);
    let counters = &layout.worker_record(start.index).counters;
    counters
        .serving_since
        .store(crate::shm::layout::monotonic_ns(), Ordering::Relaxed);
    // Before `prepare` caps the address space: the view counts as already there.
    crate::shared_alloc::map_inherited_view(
        layout.header().settings.parent_pid.load(Ordering::Relaxed),
    );
    setup::prepare(layout, start.index);
    let init_began = crate::shm::layout::monotonic_ns();
    let initialized = initialize(layout);
    fork_guard::check();
    fork_guard::reap_children();
    if let Err(message) = initialized {
        record_init_failure(layout, &message);
        return INIT_FAILED_EXIT;
    }
    let peer = reach_parent(layout);
    let mut stage = Stage::default();
    let ready_at = crate::shm::layout::monotonic_ns();
    counters
        .initializer
        .store(ready_at.saturating_sub(init_began), Ordering::Relaxed);
    counters.ready_at.store(ready_at, Ordering::Relaxed);
    let memory_cap_kib = layout.header().settings.max_rss_kib.load(Ordering::Acquire);
    if memory_cap_kib != 0 {
        setup::note_baseline();
    }
    report_ready(start.ready_fd);
    let max_tasks = layout.header().settings.max_tasks.load(Ordering::Acquire);
    let track = layout.header().settings.track_tasks.load(Ordering::Acquire) != 0;
    let mut tasks_run = 0u64;
    let ring = layout.ring();
    let header = layout.header();
    let my_bit = crate::shm::layout::searching_bit(start.index);
    let record = layout.worker_record(start.index);
    let pop = || ring.try_pop_noting(|slot| record.note_taking(slot));
    // One searcher at a time: with another worker spinning already, a worker
    // that finds the ring empty sleeps at once (`park_unless` re-checks the
    // ring first). A second spinner would find nothing the first does not,
    // and with as many workers as CPUs it takes the CPU the submitting thread
    // needs.
    let another_searches = || header.searching.load(Ordering::Relaxed) & !my_bit != 0;
    // Set when this worker returns from sleeping: producers that saw the
    // searcher's bit woke nobody for their tasks, and the searcher wakes one
    // sleeper only, so each woken worker wakes the next while tasks remain.
    let mut woken = false;
    loop {
        let mut popped = pop();
        let mut may_owe_a_wake_up = std::mem::take(&mut woken);
        if popped.is_none() && !another_searches() {
            // Searching: while our bit is set, producers leave sleepers be,
            // so a stream of tasks costs no wake-up syscall.
            header.searching.fetch_or(my_bit, Ordering::SeqCst);
            let mut spin = SpinWait::new();
            while popped.is_none() && spin.spin() {
                popped = pop();
            }
            if let Some(slot) = popped.filter(|&i| (i as usize) < SLOT_CAPACITY) {
                // Its lines travel from the submitting CPU while this worker
                // clears its searching bit and looks for a next entry.
                layout.slot(slot).prefetch();
            }
            header.searching.fetch_and(!my_bit, Ordering::SeqCst);
            may_owe_a_wake_up = true;
        }
        if may_owe_a_wake_up && popped.is_some() {
            // A producer may have skipped waking a sleeper for a task we did
            // not take: if one is left, wake a sleeper for it. (Dekker pair
            // with the producer's push-fence-read of `searching`.)
            fence(Ordering::SeqCst);
            if ring.next_is_ready() {
                header.work.notify_one_fenced();
            }
        }
        if let Some(slot) = popped {
            if run(layout, slot, start.index, track, peer, &mut stage) {
                tasks_run += 1;
                let over_memory = memory_cap_kib != 0
                    && setup::over_memory_cap(layout, start.index, memory_cap_kib);
                if over_memory || (max_tasks != 0 && tasks_run >= max_tasks) {
                    // Holding no task and no popped entry: say so, so the
                    // supervisor replaces us without settling anything.
                    layout.worker_record(start.index).retire();
                    return 0;
                }
            }
            continue;
        }
        // `closing` first: once it is seen, every push made before close is too.
        if layout.is_closing() && ring.is_empty() {
            return 0;
        }
        header
            .work
            .park_unless(|| layout.is_closing() || !ring.is_empty(), None);
        woken = true;
    }
}

/// Runs the pool's initializer, if it has one; `Err` holds its panic message.
fn initialize(layout: Layout) -> Result<(), String> {
    let settings = &layout.header().settings;
    if settings.init_set.load(Ordering::Acquire) == 0 {
        return Ok(());
    }
    let entry = settings.init_entry.load(Ordering::Acquire);
    let io = TaskIo::local(settings.init_args.0.get().cast(), std::ptr::null_mut(), 1);
    let entry = EntryPoint(entry);
    // An init entry touches no caller memory, so it cannot be refused. Only
    // the parent writes the initializer, before any worker starts.
    // SAFETY: made with EntryPoint::new in this binary, with its argument
    // tuple in `init_args` (64-aligned, never written again); no output.
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| unsafe { entry.call(io) }));
    crate::panic::task_ended();
    ran.map(drop).map_err(|payload| panic_message(&payload))
}

/// Publishes the first initializer failure for the parent (later ones lose the
/// race and only exit).
fn record_init_failure(layout: Layout, message: &str) {
    let settings = &layout.header().settings;
    if settings
        .init_failed
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    // Winning `init_failed` makes this worker the message's only writer; the
    // parent reads it only after reaping this process.
    settings.set_init_message(truncate(message, crate::shm::layout::INIT_MESSAGE_BYTES));
}

/// The parent, if zero-copy maps are on and the kernel lets this worker reach
/// the parent's memory; a refusal is reported in the header, so the parent
/// stops handing out its memory (chunks it already did are refused one by one,
/// and redone).
fn reach_parent(layout: Layout) -> Option<Peer> {
    let settings = &layout.header().settings;
    if settings.zero_copy.load(Ordering::Acquire) == 0 {
        return None;
    }
    let peer = Peer {
        pid: settings.parent_pid.load(Ordering::Relaxed) as libc::pid_t,
    };
    match remote::probe(peer, settings.probe_target.load(Ordering::Relaxed)) {
        Ok(()) => Some(peer),
        Err(errno) => {
            layout
                .header()
                .zero_copy_refused
                .store(errno.max(1) as u32, Ordering::Relaxed);
            None
        }
    }
}

/// Adds 1 to the parent's ready counter (an eventfd this process inherited
/// as `fd`).
fn report_ready(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Runs the task in slot `index` if this worker wins the claim; returns
/// whether it did. `track`: keep this worker's record (for the task timeout).
/// `peer`: the parent, if this worker can reach its memory.
fn run(
    layout: Layout,
    index: u32,
    me: u32,
    track: bool,
    peer: Option<Peer>,
    stage: &mut Stage,
) -> bool {
    if index as usize >= crate::shm::layout::SLOT_CAPACITY {
        return false; // a ring entry written over: no slot of ours
    }
    let slot = layout.slot(index);
    let Some(mut held) = slot.claim(me) else {
        return false; // a stale ring entry, or another worker was faster
    };
    // Read at the claim, so that a worker reaped holding this slot never
    // shows the previous task's start (the supervisor counts the time).
    let began = crate::shm::layout::ticks();
    layout.worker_record(me).note_began(began);
    #[cfg(test)]
    hostile::running(layout, index, me);
    if track {
        layout
            .worker_record(me)
            .start(index, crate::shm::layout::monotonic_ms());
    }
    // We hold RUNNING(me); the parent wrote desc and the inline bytes before
    // publishing (docs/ARCHITECTURE.md, "Slots"). Both are copied: the task's
    // view of them cannot change under it.
    let desc = *held.desc();
    let context = *held.inline();
    // Read now: once the slot is finished, the parent may reuse it.
    let watched = desc.flags & WATCHED != 0;
    let (remote_in, remote_out) = (
        desc.flags & REMOTE_INPUT != 0,
        desc.flags & REMOTE_OUTPUT != 0,
    );
    let remote = match (remote_in || remote_out, peer) {
        (false, _) => None,
        (true, Some(peer)) => Some(Remote {
            peer,
            input: remote_in,
            output: remote_out,
            stage,
        }),
        (true, None) => {
            // Handed the parent's memory before the parent heard that this
            // worker cannot reach it: refuse, having touched nothing.
            return finish(layout, me, track, watched, (index, held, began), || {
                Err(AccessRefused {
                    errno: libc::EPERM,
                    wrote: false,
                })
            });
        }
    };
    let (heap_input, heap_output) = match heap_sides(layout, &desc) {
        Ok(sides) => sides,
        // The parent's heap is out of reach (or an offset lies outside it):
        // refuse, having touched nothing; the parent redoes the chunk.
        Err(errno) => {
            return finish(layout, me, track, watched, (index, held, began), || {
                Err(AccessRefused {
                    errno,
                    wrote: false,
                })
            });
        }
    };
    // A side in the parent's memory is an address there, one in its heap an
    // address in this worker's view of it, else an offset in the segment.
    let io = TaskIo {
        input: match heap_input {
            Some(input) => input,
            None if remote_in => desc.input as *const u8,
            None => layout.at(desc.input),
        },
        output: match heap_output {
            Some(output) => output,
            None if remote_out => desc.output as *mut u8,
            None => layout.at(desc.output),
        },
        len: desc.len as usize,
        remote,
        context: &context,
        segment: layout.at(0),
    };
    let entry = EntryPoint(desc.entry);
    let task = move || {
        // Only the parent writes entries (ARCHITECTURE.md, "Slots",
        // "Zero-copy maps").
        // SAFETY: made with EntryPoint::new in this binary, with input and
        // output laid out for it, ours while we hold the slot, until DONE.
        unsafe { entry.call(io) }
    };
    finish(layout, me, track, watched, (index, held, began), task)
}

/// The sides of a chunk that lie in the parent's shared heap (`HEAP_INPUT`,
/// `HEAP_OUTPUT`), as addresses in this worker's view of it, mapped on first
/// use; `Err(errno)` if the view cannot be had or an offset lies outside it.
/// Asks for a fresh output's pages to be populated (`HEAP_FRESH_OUTPUT`).
fn heap_sides(
    layout: Layout,
    desc: &crate::sync::slot::TaskDesc,
) -> Result<(Option<*const u8>, Option<*mut u8>), i32> {
    let (heap_in, heap_out) = (desc.flags & HEAP_INPUT != 0, desc.flags & HEAP_OUTPUT != 0);
    if !heap_in && !heap_out {
        return Ok((None, None));
    }
    let parent = layout.header().settings.parent_pid.load(Ordering::Relaxed);
    let view = crate::shared_alloc::view_of(parent)?;
    let at = |flag: bool, offset: u64| match flag {
        false => Ok(None),
        true => view.at(offset).map(Some).ok_or(libc::EFAULT),
    };
    let (input, output) = (at(heap_in, desc.input)?, at(heap_out, desc.output)?);
    if heap_out && desc.flags & HEAP_FRESH_OUTPUT != 0 {
        crate::shared_alloc::output_is_fresh();
    }
    Ok((input.map(<*mut u8>::cast_const), output))
}

/// Runs `task` under `catch_unwind` in slot `index`, `held` as RUNNING(me)
/// since `began` ([`ticks`](crate::shm::layout::ticks)), writes its outcome and finishes the slot. Returns `true` (a task ran).
/// A process the task forked leaves here, as the task returns in it.
fn finish(
    layout: Layout,
    me: u32,
    track: bool,
    watched: bool,
    (index, mut held, began): (u32, Held<'_>, u64),
    task: impl FnOnce() -> Result<(), AccessRefused>,
) -> bool {
    let result = std::panic::catch_unwind(AssertUnwindSafe(task));
    let took = crate::shm::layout::ticks().saturating_sub(began);
    fork_guard::check();
    let location = crate::panic::task_ended();
    // Still RUNNING(me): the outcome is ours to write.
    match result {
        Ok(Ok(())) => held.desc().outcome = Outcome::Returned as u32,
        Ok(Err(refused)) => {
            let desc = held.desc();
            desc.outcome = Outcome::AccessRefused as u32;
            desc.detail = refused.errno as u32;
            desc.signal = i32::from(refused.wrote);
        }
        Err(payload) => {
            // The location first (its end, if long: the file's name and the
            // line), then as much of the message as fits.
            let location = tail(location.as_deref().unwrap_or(""), LOCATION_BYTES);
            let message = panic_message(&payload);
            let text = truncate(&message, INLINE_CAPACITY - location.len());
            // At most INLINE_CAPACITY bytes in all.
            let inline = held.inline();
            inline[..location.len()].copy_from_slice(location);
            inline[location.len()..][..text.len()].copy_from_slice(text);
            let desc = held.desc();
            desc.outcome = Outcome::Panicked as u32;
            desc.detail = (location.len() + text.len()) as u32;
            desc.signal = location.len() as i32;
            // A payload whose destructor panics must not take the worker down.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        }
    }
    if track {
        // Before `finish`: once DONE, the slot may be reused for another task,
        // which the record must not seem to be running.
        layout.worker_record(me).idle();
    }
    count_task(layout, me, took);
    held.finish();
    if watched {
        // Before the notify: its fence publishes the entry to a parked reader.
        layout.finish_log(me).push(index);
    }
    layout.header().done.notify_sleepers();
    fork_guard::reap_children();
    true
}

/// Adds a finished task to this worker's counters (`Pool::stats`). Only this
/// worker writes them, so a load and a store add up without a locked
/// instruction. Called before the slot is finished: a parent that saw the
/// result (with Acquire) sees it counted.
fn count_task(layout: Layout, me: u32, took: u64) {
    let counters = &layout.worker_record(me).counters;
    let add = |word: &AtomicU64, v: u64| {
        word.store(
            word.load(Ordering::Relaxed).wrapping_add(v),
            Ordering::Relaxed,
        )
    };
    add(&counters.tasks_done, 1);
    add(&counters.busy, took);
    if took > counters.slowest.load(Ordering::Relaxed) {
        counters.slowest.store(took, Ordering::Relaxed);
    }
}

/// The most bytes of a panic's slot its location may take (a longer one
/// keeps its end); the message has the rest.
const LOCATION_BYTES: usize = 96;

/// The longest suffix of `s` of at most `max` bytes starting on a char boundary.
fn tail(s: &str, max: usize) -> &[u8] {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s.as_bytes()[start..]
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// For the tests: where the running task's slot and finish log are, so a
/// task can write over them as a hostile task (or a C library) could.
#[cfg(test)]
pub(crate) mod hostile {
    use crate::shm::layout::Layout;
    use crate::sync::finish_log::FinishLog;
    use crate::sync::slot::TaskSlot;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    /// The worker's segment (one per worker process).
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    static SLOT: AtomicU32 = AtomicU32::new(0);
    static WORKER: AtomicU32 = AtomicU32::new(0);

    pub(super) fn running(layout: Layout, slot: u32, me: u32) {
        let _ = LAYOUT.set(layout);
        SLOT.store(slot, Ordering::Relaxed);
        WORKER.store(me, Ordering::Relaxed);
    }

    fn layout() -> &'static Layout {
        LAYOUT.get().expect("called from a task, in a worker")
    }

    /// The slot of the task this worker runs (or ran last).
    pub(crate) fn slot() -> &'static TaskSlot {
        layout().slot(SLOT.load(Ordering::Relaxed))
    }

    /// This worker's finish log.
    pub(crate) fn log() -> &'static FinishLog {
        layout().finish_log(WORKER.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::slot::TaskDesc;
    use crate::{Error, Pool};
    use std::time::Duration;

    /// Runs `f` on a thread; fails if it takes longer than `limit`.
    fn bounded(limit: Duration, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(limit)
            .expect("finished in time, without a panic");
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    /// Writes garbage over the whole of its slot's description, then returns.
    fn scribble_over_the_description(x: u64) -> u64 {
        let slot = hostile::slot();
        // SAFETY: none: this plays a task with an `unsafe` bug. The worker
        // copied the description before the task began.
        unsafe {
            std::ptr::write_bytes(
                (slot.held().desc() as *mut TaskDesc).cast::<u8>(),
                0xA5,
                std::mem::size_of::<TaskDesc>(),
            )
        };
        x + 1
    }

    /// A panic payload that writes over the slot's outcome when the worker
    /// drops it: after the worker wrote the outcome, before it hands the slot
    /// back (as a thread the task left running could).
    struct LateScribble {
        outcome: u32,
        detail: u32,
    }

    impl Drop for LateScribble {
        fn drop(&mut self) {
            // SAFETY: none, as above.
            let mut held = unsafe { hostile::slot().held() };
            let desc = held.desc();
            desc.outcome = self.outcome;
            desc.detail = self.detail;
        }
    }

    fn panic_then_scribble(outcome: u32, detail: u32) -> u64 {
        std::panic::panic_any(LateScribble { outcome, detail })
    }

    /// Writes impossible positions over its worker's finish log, then returns.
    fn scribble_over_the_finish_log(x: u64) -> u64 {
        hostile::log().write_positions(5, 5 + (1 << 40));
        x * x
    }

    #[test]
    #[cfg_attr(miri, ignore)] // forks workers over a memfd segment
    fn a_task_writing_over_its_slot_gets_a_clear_error_and_the_pool_goes_on() {
        bounded(Duration::from_secs(60), || {
            let pool = Pool::new(1).unwrap();
            // The parent uses its own record of where the result is.
            assert_eq!(
                pool.apply(scribble_over_the_description, (41,)).unwrap(),
                42
            );
            for (outcome, detail) in [(Outcome::Panicked as u32, 100_000), (0xDEAD, 0)] {
                match pool.apply(panic_then_scribble, (outcome, detail)) {
                    Err(Error::SlotCorrupted(what)) => {
                        assert!(what.contains("reads"), "{what}")
                    }
                    other => panic!("outcome {outcome:#x}, detail {detail}: {other:?}"),
                }
                assert_eq!(pool.apply(square, (7,)).unwrap(), 49, "the pool goes on");
            }
            let items: Vec<u64> = (0..1000).collect();
            let squares: Vec<u64> = items.iter().map(|x| x * x).collect();
            assert_eq!(pool.map(square, &items).unwrap(), squares);
        });
    }

    #[test]
    #[cfg_attr(miri, ignore)] // forks workers over a memfd segment
    fn a_task_writing_over_its_finish_log_still_gets_its_callback() {
        bounded(Duration::from_secs(60), || {
            let pool = Pool::new(1).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let sent = tx.clone();
            let _r = pool
                .apply_async_with(
                    scribble_over_the_finish_log,
                    (5,),
                    move |v| sent.send(v).unwrap(),
                    |e| panic!("{e}"),
                )
                .unwrap();
            let wait = Duration::from_secs(30);
            assert_eq!(rx.recv_timeout(wait), Ok(25));
            // The log is consistent again: later callbacks come through it.
            for k in 0..200u64 {
                let sent = tx.clone();
                pool.apply_async_with(square, (k,), move |v| sent.send(v).unwrap(), |_| {})
                    .unwrap();
            }
            let mut got: Vec<u64> = (0..200).map(|_| rx.recv_timeout(wait).unwrap()).collect();
            got.sort();
            assert_eq!(got, (0..200u64).map(|k| k * k).collect::<Vec<_>>());
            assert_eq!(pool.apply(square, (7,)).unwrap(), 49);
        });
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), b"h");
        assert_eq!(truncate("héllo", 3), "hé".as_bytes());
        assert_eq!(truncate("short", 100), b"short");
        assert_eq!(tail("src/é.rs:1:2", 8), b".rs:1:2");
        assert_eq!(tail("src/é.rs:1:2", 9), "é.rs:1:2".as_bytes());
        assert_eq!(tail("short", 100), b"short");
    }
}
