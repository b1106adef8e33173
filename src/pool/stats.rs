//! [`Pool::stats`] and [`Pool::insights`]: what the workers did, for
//! display.
//!
//! Counting stays off the task's path: each worker keeps its figures in its
//! own record of the segment (`shm::layout::WorkerCounters`), with plain
//! relaxed stores after it has handed the result back; the parent reads them
//! only when asked. The parent keeps what outlives a worker (start times,
//! deaths, totals of replaced workers) in a [`StatsBook`]. A task can write
//! anything over its worker's record, so figures read from it are
//! saturated, clamped to what is possible, and never used for a decision.

use crate::error::DeathCause;
use crate::pool::Pool;
use crate::shm::layout::{monotonic_ns, ticks, WorkerCounters};
use crate::start::StartMethod;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// What a pool's workers have done so far: returned by [`Pool::stats`].
///
/// A *task* is one `apply` or one chunk of a map. Times are wall-clock
/// (`CLOCK_MONOTONIC`), measured by each worker around each task; a task
/// that never finished (killed by the
/// [`task_timeout`](crate::PoolBuilder::task_timeout), or its worker died)
/// counts as work from its start until the pool reaped its worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The live workers, by index.
    pub workers: Vec<WorkerStats>,
    /// Tasks finished (returned or panicked) by every worker since the pool
    /// started, replaced ones included.
    pub tasks_done: u64,
    /// Tasks (or map chunk halves) run again after their worker died: see
    /// [`PoolBuilder::retries`](crate::PoolBuilder::retries).
    pub retries: u64,
    /// Tasks killed by the [`task_timeout`](crate::PoolBuilder::task_timeout)
    /// (each with its worker, which the pool replaced: not a death).
    pub timeouts: u64,
    /// Workers that died (a signal, `abort()`, an `exit()` from a task, a
    /// kill by [`AsyncResult::abort`](crate::AsyncResult::abort)) and were
    /// replaced. Workers killed for a task's timeout count in
    /// [`timeouts`](Self::timeouts) instead, and those that exit after their
    /// `maxtasksperchild` quota, or after a memory cap, are not deaths either.
    pub worker_deaths: u64,
    /// Workers replaced because the memory they gained passed
    /// [`max_memory_per_worker`](crate::PoolBuilder::max_memory_per_worker)
    /// (not deaths).
    pub memory_replacements: u64,
    /// Worker deaths the pool put down to the kernel's OOM killer
    /// ([`DeathCause::OutOfMemory`](crate::DeathCause::OutOfMemory)).
    pub out_of_memory: u64,
    /// Worker deaths from an allocation failed past
    /// [`memory_limit_per_worker`](crate::PoolBuilder::memory_limit_per_worker)
    /// ([`DeathCause::MemoryLimit`](crate::DeathCause::MemoryLimit)).
    pub memory_limit_deaths: u64,
    /// Time spent running tasks, by every worker since the pool started
    /// (replaced ones included, as for the three figures below), those that
    /// never finished included.
    pub busy: Duration,
    /// Time spent waiting for work, by every worker since it was ready.
    pub idle: Duration,
    /// Time spent starting (see [`WorkerStats::startup`]), by every worker.
    pub startup: Duration,
    /// Time spent in the pool's initializer, by every worker (zero without
    /// one).
    pub initializer: Duration,
    /// How long the pool has existed.
    pub uptime: Duration,
}

/// One live worker's figures, in [`PoolStats::workers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's index (`0..processes`); a replacement keeps it.
    pub index: usize,
    /// Its process id.
    pub pid: u32,
    /// Tasks this process has finished.
    pub tasks_done: u64,
    /// Time this process spent running the tasks it finished (the one it
    /// runs now counts once it finishes, or once the process is reaped).
    pub busy: Duration,
    /// Time this process spent waiting for work since it was ready.
    pub idle: Duration,
    /// From the parent's start request to the worker loop (fork or exec,
    /// mapping the segment).
    pub startup: Duration,
    /// How long the pool's initializer took in this process (plus the
    /// zero-copy probe); zero if the pool has none (the probe is then part
    /// of `startup`).
    pub initializer: Duration,
    /// How many workers at this index died (see [`PoolStats::worker_deaths`]:
    /// timeouts are not deaths).
    pub deaths: u64,
    /// The longest task this process ran.
    pub slowest_task: Duration,
}

/// The parent's side of the figures: what outlives a worker.
#[derive(Debug)]
pub(crate) struct StatsBook {
    created_ns: u64,
    /// [`ticks`] at `created_ns`: the two give the tick rate later.
    created_ticks: u64,
    /// Per index: when the parent asked for its current worker.
    spawned_at: Vec<AtomicU64>,
    /// Per index: deaths.
    deaths: Vec<AtomicU64>,
    retired_tasks: AtomicU64,
    /// In [`ticks`].
    retired_busy: AtomicU64,
    /// The waiting, start-up and initializer times of workers gone, in ns.
    retired_idle: AtomicU64,
    retired_startup: AtomicU64,
    retired_initializer: AtomicU64,
    /// Whether the pool has an initializer (else its time is start-up).
    has_initializer: bool,
    retries: AtomicU64,
    timeouts: AtomicU64,
    worker_deaths: AtomicU64,
    memory_replacements: AtomicU64,
    /// The slowest tasks of workers gone, in [`ticks`], longest first (at
    /// most [`SLOWEST_KEPT`]).
    slowest: Mutex<Vec<u64>>,
    /// Held by the supervisor from a worker's reaping until its figures are
    /// in the totals, and by `stats` while it reads.
    accounting: Mutex<()>,
    out_of_memory: AtomicU64,
    memory_limit_deaths: AtomicU64,
    /// The kernel's OOM kill count when the pool last looked.
    oom_kills_seen: AtomicU64,
    /// Recent deaths put down to memory, by pid (at most [`CAUSES_KEPT`]).
    causes: Mutex<std::collections::VecDeque<(u32, DeathCause)>>,
}

/// How many deaths' causes are kept for the errors that report them.
const CAUSES_KEPT: usize = 1024;

/// The kernel's count of OOM kills (`oom_kill` in `/proc/vmstat`), if known.
/// The text of a small `/proc` file, read into a 4 KiB buffer: such files
/// report their size as 0, so `read_to_string` would grow its buffer from
/// 32 bytes, one system call (each formatting the whole file) per doubling.
pub(crate) fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn oom_kills() -> Option<u64> {
    let text = read_proc("/proc/vmstat")?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// How many of the slowest tasks' durations insights show.
const SLOWEST_KEPT: usize = 5;

/// Why a worker left, for the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaving {
    /// Quota used up, pool closed: not a death.
    Retired,
    /// Over the memory cap after a task: replaced, not a death.
    OverMemory,
    /// Killed, crashed, or exited from a task.
    Died,
    /// Killed by the pool for its task's timeout: counted in `timeouts`
    /// (by the supervisor, with the task's failure), not as a death.
    TimedOut,
}

impl StatsBook {
    pub(crate) fn new(processes: usize, has_initializer: bool) -> StatsBook {
        StatsBook {
            created_ns: monotonic_ns(),
            created_ticks: ticks(),
            spawned_at: (0..processes).map(|_| AtomicU64::new(0)).collect(),
            deaths: (0..processes).map(|_| AtomicU64::new(0)).collect(),
            retired_tasks: AtomicU64::new(0),
            retired_busy: AtomicU64::new(0),
            retired_idle: AtomicU64::new(0),
            retired_startup: AtomicU64::new(0),
            retired_initializer: AtomicU64::new(0),
            has_initializer,
            retries: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            worker_deaths: AtomicU64::new(0),
            memory_replacements: AtomicU64::new(0),
            slowest: Mutex::new(Vec::new()),
            accounting: Mutex::new(()),
            out_of_memory: AtomicU64::new(0),
            memory_limit_deaths: AtomicU64::new(0),
            oom_kills_seen: AtomicU64::new(u64::MAX),
            causes: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Notes the kernel's OOM kill count (supervisor side, after start-up:
    /// off `build`'s path).
    pub(crate) fn note_oom_kills(&self) {
        if let Some(n) = oom_kills() {
            self.oom_kills_seen.store(n, Ordering::Relaxed);
        }
    }

    /// Whether the kernel's OOM kill count went up since last noted (and
    /// notes the new count).
    pub(crate) fn oom_kills_rose(&self) -> bool {
        let Some(now) = oom_kills() else { return false };
        let before = self.oom_kills_seen.swap(now, Ordering::Relaxed);
        before != u64::MAX && now > before
    }

    /// Records why worker `pid` died, for the errors of its tasks.
    pub(crate) fn died_of(&self, pid: u32, cause: DeathCause) {
        match cause {
            DeathCause::Other => return,
            DeathCause::OutOfMemory => saturating_add(&self.out_of_memory, 1),
            DeathCause::MemoryLimit => saturating_add(&self.memory_limit_deaths, 1),
        }
        let mut causes = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if causes.len() == CAUSES_KEPT {
            causes.pop_front();
        }
        causes.push_back((pid, cause));
    }

    /// Why worker `pid` died, if it was put down to memory.
    pub(crate) fn cause_of(&self, pid: u32) -> DeathCause {
        let causes = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        causes
            .iter()
            .rev()
            .find(|(p, _)| *p == pid)
            .map_or(DeathCause::Other, |&(_, c)| c)
    }

    /// See [`StatsBook::accounting`]'s field.
    pub(crate) fn accounting(&self) -> std::sync::MutexGuard<'_, ()> {
        self.accounting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The parent is about to start worker `index`.
    pub(crate) fn spawning(&self, index: usize) {
        self.spawned_at[index].store(monotonic_ns(), Ordering::Relaxed);
    }

    /// Worker `index` left (`how`), its counters still in its record: adds
    /// them to the pool's totals before the record is reset.
    pub(crate) fn left(&self, index: usize, counters: &WorkerCounters, how: Leaving) {
        let tasks = counters.tasks_done.load(Ordering::Relaxed);
        let busy = counters.busy.load(Ordering::Relaxed);
        saturating_add(&self.retired_tasks, tasks);
        saturating_add(&self.retired_busy, busy);
        let now = monotonic_ns();
        let times = self.times(index, counters, now, self.tick_rate(now));
        saturating_add(&self.retired_idle, times.idle);
        saturating_add(&self.retired_startup, times.startup);
        saturating_add(&self.retired_initializer, times.initializer);
        self.keep_slowest(counters.slowest.load(Ordering::Relaxed));
        match how {
            Leaving::Retired | Leaving::TimedOut => {}
            Leaving::OverMemory => saturating_add(&self.memory_replacements, 1),
            Leaving::Died => {
                saturating_add(&self.worker_deaths, 1);
                saturating_add(&self.deaths[index], 1);
            }
        }
    }

    pub(crate) fn retried(&self) {
        saturating_add(&self.retries, 1);
    }

    pub(crate) fn timed_out(&self) {
        saturating_add(&self.timeouts, 1);
    }

    fn keep_slowest(&self, ns: u64) {
        if ns == 0 {
            return;
        }
        let mut kept = self.slowest.lock().unwrap_or_else(PoisonError::into_inner);
        kept.push(ns);
        kept.sort_unstable_by(|a, b| b.cmp(a));
        kept.truncate(SLOWEST_KEPT);
    }
}

fn saturating_add(word: &AtomicU64, v: u64) {
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
        Some(x.saturating_add(v))
    });
}

fn ns(v: u64) -> Duration {
    Duration::from_nanos(v)
}

/// A worker's times until `now`, in ns: from the parent's start request to
/// the worker loop, in the initializer, running tasks, waiting.
struct Times {
    startup: u64,
    initializer: u64,
    busy: u64,
    idle: u64,
}

impl StatsBook {
    /// Worker `index`'s [`Times`] until `now`, from its record, clamped to
    /// what the parent knows is possible: a worker's record is not to be
    /// trusted. `rate`: ticks per nanosecond.
    fn times(&self, index: usize, c: &WorkerCounters, now: u64, rate: f64) -> Times {
        let spawned = self.spawned_at[index].load(Ordering::Relaxed);
        let serving = c.serving_since.load(Ordering::Relaxed);
        let ready = c.ready_at.load(Ordering::Relaxed);
        let alive = now.saturating_sub(spawned);
        let (mut startup, mut initializer, up) = if serving == 0 || ready == 0 {
            (alive, 0, 0)
        } else {
            let startup = serving.saturating_sub(spawned).min(alive);
            let init = c.initializer.load(Ordering::Relaxed).min(alive - startup);
            (startup, init, now.saturating_sub(ready).min(alive))
        };
        if !self.has_initializer {
            // Only the zero-copy probe: part of getting ready.
            startup += std::mem::take(&mut initializer);
        }
        // Saturates: `as` from f64 clamps to the u64 range.
        let busy = ((c.busy.load(Ordering::Relaxed) as f64 / rate) as u64).min(up);
        Times {
            startup,
            initializer,
            busy,
            idle: up - busy,
        }
    }

    /// Ticks per nanosecond, measured from the pool's creation to `now_ns`
    /// (1 if too little time has passed to tell, or the counter went back).
    fn tick_rate(&self, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.created_ns);
        let ticked = ticks().saturating_sub(self.created_ticks);
        if elapsed < 100_000 || ticked == 0 {
            return 1.0;
        }
        ticked as f64 / elapsed as f64
    }
}

impl Pool {
    /// What the workers have done so far: tasks, time working, waiting and
    /// starting, deaths, retries, timeouts. Cheap (it reads a few words per
    /// worker); figures are for display, as workers update them without
    /// synchronizing with the caller.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = shmpool::Pool::new(2)?;
    /// pool.map_chunked(square, &[1, 2, 3, 4], 1)?;
    /// let stats = pool.stats();
    /// assert_eq!(stats.tasks_done, 4);
    /// assert_eq!(stats.workers.len(), 2);
    /// assert_eq!(stats.workers.iter().map(|w| w.tasks_done).sum::<u64>(), 4);
    /// assert_eq!(stats.worker_deaths, 0);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        let core = &*self.core;
        let book = &core.stats;
        let _accounting = book.accounting();
        let now = monotonic_ns();
        let rate = book.tick_rate(now);
        // Saturates: `as` from f64 clamps to the u64 range.
        let to_ns = |t: u64| (t as f64 / rate) as u64;
        let pids = core
            .pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut workers = Vec::new();
        for (index, pid) in pids.iter().enumerate() {
            let Some(pid) = *pid else { continue };
            let c = &core.layout().worker_record(index as u32).counters;
            let t = book.times(index, c, now, rate);
            workers.push(WorkerStats {
                index,
                pid,
                tasks_done: c.tasks_done.load(Ordering::Relaxed),
                busy: ns(t.busy),
                idle: ns(t.idle),
                startup: ns(t.startup),
                initializer: ns(t.initializer),
                deaths: book.deaths[index].load(Ordering::Relaxed),
                slowest_task: ns(to_ns(c.slowest.load(Ordering::Relaxed)).min(t.busy)),
            });
        }
        let live_tasks = workers
            .iter()
            .fold(0u64, |a, w| a.saturating_add(w.tasks_done));
        let live = |g: fn(&WorkerStats) -> Duration| {
            workers
                .iter()
                .fold(Duration::ZERO, |a, w| a.saturating_add(g(w)))
        };
        let gone = |word: &AtomicU64| ns(word.load(Ordering::Relaxed));
        PoolStats {
            tasks_done: book
                .retired_tasks
                .load(Ordering::Relaxed)
                .saturating_add(live_tasks),
            retries: book.retries.load(Ordering::Relaxed),
            timeouts: book.timeouts.load(Ordering::Relaxed),
            worker_deaths: book.worker_deaths.load(Ordering::Relaxed),
            memory_replacements: book.memory_replacements.load(Ordering::Relaxed),
            out_of_memory: book.out_of_memory.load(Ordering::Relaxed),
            memory_limit_deaths: book.memory_limit_deaths.load(Ordering::Relaxed),
            busy: ns(to_ns(book.retired_busy.load(Ordering::Relaxed)))
                .saturating_add(live(|w| w.busy)),
            idle: gone(&book.retired_idle).saturating_add(live(|w| w.idle)),
            startup: gone(&book.retired_startup).saturating_add(live(|w| w.startup)),
            initializer: gone(&book.retired_initializer).saturating_add(live(|w| w.initializer)),
            uptime: ns(now.saturating_sub(book.created_ns)),
            workers,
        }
    }

    /// A summary to print, like MPIRE's `print_insights`: the shares of the
    /// workers' time (every worker since the pool started, replaced ones
    /// included) spent working (running tasks, those killed by the timeout
    /// or by their worker's death included), waiting (ready, with
    /// nothing to do) and starting (start-up and initializer); the totals
    /// of [`stats`](Self::stats); a row per live worker, and one for the
    /// workers replaced; and the durations of the slowest tasks (the slowest
    /// of each worker, live or gone, a task that never finished included,
    /// longest first).
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = shmpool::Pool::new(2)?;
    /// pool.map(square, &[1, 2, 3])?;
    /// let text = pool.insights().to_string();
    /// assert!(text.contains("working"), "{text}");
    /// println!("{text}");
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn insights(&self) -> Insights {
        let stats = self.stats();
        let book = &self.core.stats;
        let rate = book.tick_rate(monotonic_ns());
        let mut slowest = book
            .slowest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|&v| ns((v as f64 / rate) as u64))
            .chain(stats.workers.iter().map(|w| w.slowest_task))
            .filter(|d| !d.is_zero())
            .collect::<Vec<_>>();
        slowest.sort_unstable_by(|a, b| b.cmp(a));
        slowest.truncate(SLOWEST_KEPT);
        Insights {
            stats,
            slowest,
            start_method: self.core.config.start_method,
        }
    }
}

/// The summary [`Pool::insights`] returns; print it with `{}`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Insights {
    /// The figures it summarizes.
    pub stats: PoolStats,
    /// The slowest tasks' durations, longest first (at most five).
    pub slowest: Vec<Duration>,
    /// How the pool starts its workers.
    pub start_method: StartMethod,
}

/// A forked worker's start-up past which the summary names the cause: `fork`
/// copies the parent's page tables, about 30 ms per GiB the parent has
/// touched, while the fork server starts a worker in well under a millisecond
/// whatever the parent holds (`docs/PERFORMANCE.md`, "Pool creation").
const SLOW_FORK: Duration = Duration::from_millis(5);

fn share(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        100.0 * part.as_secs_f64() / whole.as_secs_f64()
    }
}

impl fmt::Display for Insights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let sum = |g: fn(&WorkerStats) -> Duration| {
            s.workers
                .iter()
                .fold(Duration::ZERO, |a, w| a.saturating_add(g(w)))
        };
        let (busy, idle) = (s.busy, s.idle);
        let starting = s.startup.saturating_add(s.initializer);
        let total = busy.saturating_add(idle).saturating_add(starting);
        // The workers replaced: what the totals hold beyond the live ones.
        let gone = WorkerStats {
            tasks_done: s
                .tasks_done
                .saturating_sub(s.workers.iter().map(|w| w.tasks_done).sum()),
            busy: s.busy.saturating_sub(sum(|w| w.busy)),
            idle: s.idle.saturating_sub(sum(|w| w.idle)),
            startup: s.startup.saturating_sub(sum(|w| w.startup)),
            initializer: s.initializer.saturating_sub(sum(|w| w.initializer)),
            ..WorkerStats::default()
        };
        let any_gone = gone.tasks_done != 0 || !gone.startup.is_zero();
        // No initializer, no figures for it (rather than zeros).
        let initializer = |d: Duration| match s.initializer.is_zero() {
            true => "-".to_owned(),
            false => format!("{d:.3?}"),
        };
        writeln!(
            f,
            "pool insights: {} live workers, up {:.3?}",
            s.workers.len(),
            s.uptime
        )?;
        writeln!(
            f,
            "  tasks done {}, retries {}, timeouts {}, worker deaths {} (out of memory {}, \
             past the memory limit {}), memory replacements {}",
            s.tasks_done,
            s.retries,
            s.timeouts,
            s.worker_deaths,
            s.out_of_memory,
            s.memory_limit_deaths,
            s.memory_replacements
        )?;
        writeln!(
            f,
            "  workers' time (replaced ones included): working {:.1} %, waiting {:.1} %, \
             starting {:.1} % (of {:.3?})",
            share(busy, total),
            share(idle, total),
            share(starting, total),
            total
        )?;
        writeln!(
            f,
            "  {:>6} {:>8} {:>8} {:>12} {:>12} {:>12} {:>12} {:>6}",
            "worker", "pid", "tasks", "working", "waiting", "startup", "initializer", "deaths"
        )?;
        for w in &s.workers {
            writeln!(
                f,
                "  {:>6} {:>8} {:>8} {:>12} {:>12} {:>12} {:>12} {:>6}",
                w.index,
                w.pid,
                w.tasks_done,
                format!("{:.3?}", w.busy),
                format!("{:.3?}", w.idle),
                format!("{:.3?}", w.startup),
                initializer(w.initializer),
                w.deaths
            )?;
        }
        if any_gone {
            writeln!(
                f,
                "  {:>15} {:>8} {:>12} {:>12} {:>12} {:>12}",
                "replaced",
                gone.tasks_done,
                format!("{:.3?}", gone.busy),
                format!("{:.3?}", gone.idle),
                format!("{:.3?}", gone.startup),
                initializer(gone.initializer),
            )?;
        }
        let slowest_start = s.workers.iter().map(|w| w.startup).max();
        if self.start_method == StartMethod::Fork && slowest_start >= Some(SLOW_FORK) {
            writeln!(
                f,
                "  a worker took {:.1?} to start: fork copies this process's page tables \
                 (~30 ms per GiB it has touched); StartMethod::ForkServer starts workers \
                 in well under 1 ms whatever this process holds, and with SharedAlloc as \
                 the global allocator, large data costs a fork nothing",
                slowest_start.unwrap_or_default()
            )?;
        }
        let slowest: Vec<String> = self.slowest.iter().map(|d| format!("{d:.3?}")).collect();
        write!(
            f,
            "  slowest tasks: {}",
            if slowest.is_empty() {
                "none yet".into()
            } else {
                slowest.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insights_name_fork_as_the_cause_of_slow_starts_and_only_then() {
        let summary = |method, startup| {
            let worker = WorkerStats {
                startup,
                ..WorkerStats::default()
            };
            let stats = PoolStats {
                workers: vec![worker],
                ..PoolStats::default()
            };
            Insights {
                stats,
                slowest: Vec::new(),
                start_method: method,
            }
            .to_string()
        };
        let slow = Duration::from_millis(40);
        assert!(summary(StartMethod::Fork, slow).contains("StartMethod::ForkServer"));
        assert!(summary(StartMethod::Fork, slow).contains("SharedAlloc"));
        let quick = Duration::from_micros(300);
        assert!(!summary(StartMethod::Fork, quick).contains("page tables"));
        assert!(!summary(StartMethod::ForkServer, slow).contains("page tables"));
    }

    #[test]
    fn the_kernels_oom_kill_count_is_read_and_causes_are_kept_per_pid() {
        // Linux 4.13 and later count OOM kills in /proc/vmstat.
        assert!(oom_kills().is_some());
        let book = StatsBook::new(1, false);
        assert!(!book.oom_kills_rose(), "nothing noted yet");
        book.note_oom_kills();
        book.died_of(7, DeathCause::MemoryLimit);
        book.died_of(8, DeathCause::Other);
        assert_eq!(book.cause_of(7), DeathCause::MemoryLimit);
        assert_eq!(book.cause_of(8), DeathCause::Other);
        for pid in 100..100 + CAUSES_KEPT as u32 {
            book.died_of(pid, DeathCause::OutOfMemory);
        }
        assert_eq!(
            book.cause_of(7),
            DeathCause::Other,
            "the oldest are dropped"
        );
        assert_eq!(
            book.out_of_memory.load(Ordering::Relaxed),
            CAUSES_KEPT as u64
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)] // forks workers over a memfd segment
    fn garbage_in_a_workers_counters_gives_clamped_figures_not_a_panic() {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(|x: u64| x + 1, (1,)).unwrap(), 2);
        // As a task (or a C library) in the worker could write them.
        let c = &pool.core.layout().worker_record(0).counters;
        for (word, value) in [
            (&c.serving_since, u64::MAX),
            (&c.initializer, u64::MAX),
            (&c.ready_at, 1),
            (&c.tasks_done, u64::MAX),
            (&c.busy, u64::MAX),
            (&c.slowest, u64::MAX),
        ] {
            word.store(value, Ordering::Relaxed);
        }
        let s = pool.stats();
        let w = &s.workers[0];
        assert!(w.busy + w.idle <= s.uptime, "{s:?}");
        assert!(w.startup <= s.uptime && w.initializer <= s.uptime, "{s:?}");
        assert!(w.slowest_task <= w.busy, "{s:?}");
        assert_eq!(s.tasks_done, u64::MAX, "saturated, not wrapped");
        assert!(pool.insights().to_string().contains("working"));
        // The pool goes on.
        assert_eq!(pool.apply(|x: u64| x + 1, (2,)).unwrap(), 3);
    }
}
