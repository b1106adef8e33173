//! Options for benchmark harnesses and long batch runs: where workers run
//! (CPU pinning) and how many threads the libraries inside them start.
//! Each is a [`PoolBuilder`] method; the worker applies them to itself as
//! it starts (`worker::setup`), for every start method.

use crate::error::Error;
use crate::pool::builder::PoolBuilder;
use crate::shm::layout::{Layout, PIN_CPUS};
use std::sync::atomic::Ordering;

/// The harness options a builder collects.
#[derive(Debug, Clone, Default)]
pub(crate) struct HarnessConfig {
    /// As given to `cpu_ids`.
    cpu_ids: Option<Vec<Vec<usize>>>,
    pin_workers: bool,
    threads_per_worker: Option<usize>,
    /// Per worker index, the CPUs it runs on (empty: not pinned); set by
    /// [`resolve`](Self::resolve).
    pins: Vec<Vec<usize>>,
    /// The thread count workers set (resolved).
    threads: u32,
    max_memory: Option<u64>,
    memory_limit: Option<u64>,
    /// Draw progress bars (`pool::progress`).
    pub(crate) progress: bool,
}

/// The most threads [`PoolBuilder::threads_per_worker`] accepts.
const MAX_THREADS_PER_WORKER: usize = 1 << 16;

impl HarnessConfig {
    /// Checks the options against `processes` and this process's allowed
    /// CPUs, and works out each worker's CPUs and thread count.
    pub(crate) fn resolve(&mut self, processes: usize) -> Result<(), Error> {
        let allowed = allowed_cpus()?;
        self.pins = match (&self.cpu_ids, self.pin_workers) {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "cpu_ids and pin_workers both place workers: use one of them",
                ))
            }
            (Some(sets), false) => {
                if sets.len() != processes && sets.len() != 1 {
                    return Err(Error::invalid(format!(
                        "cpu_ids has {} CPU sets: give one per worker ({processes}) or one for all",
                        sets.len()
                    )));
                }
                for set in sets {
                    if set.is_empty() {
                        return Err(Error::invalid("cpu_ids has an empty CPU set"));
                    }
                    if let Some(cpu) = set.iter().find(|c| !allowed.contains(c)) {
                        return Err(Error::invalid(format!(
                            "cpu_ids names CPU {cpu}, which this process may not run on \
                             (allowed: {allowed:?})"
                        )));
                    }
                }
                (0..processes)
                    .map(|k| sets[if sets.len() == 1 { 0 } else { k }].clone())
                    .collect()
            }
            (None, true) => (0..processes)
                .map(|k| vec![allowed[k % allowed.len()]])
                .collect(),
            (None, false) => Vec::new(),
        };
        if self.max_memory == Some(0) || self.memory_limit == Some(0) {
            return Err(Error::invalid(
                "max_memory_per_worker and memory_limit_per_worker must be more than zero",
            ));
        }
        self.threads = match self.threads_per_worker {
            Some(0) => return Err(Error::invalid("threads_per_worker must be at least 1")),
            Some(k) if k > MAX_THREADS_PER_WORKER => {
                return Err(Error::invalid(format!(
                    "threads_per_worker is at most {MAX_THREADS_PER_WORKER}"
                )))
            }
            Some(k) => k as u32,
            // As loky: the CPUs shared out among the workers, at least one.
            None => {
                let cpus = crate::pool::builder::available_cpus();
                (cpus / processes).max(1) as u32
            }
        };
        Ok(())
    }

    /// Writes what workers read at start into the segment's settings (before
    /// any worker starts).
    pub(crate) fn write_settings(&self, layout: &Layout) {
        let settings = &layout.header().settings;
        settings
            .threads_per_worker
            .store(self.threads, Ordering::Relaxed);
        for (k, cpus) in self.pins.iter().enumerate() {
            let pin = layout.cpu_pin(k as u32);
            for &cpu in cpus {
                // Below PIN_CPUS: `resolve` allowed only CPUs of this process's
                // set, which `allowed_cpus` reads from a cpu_set_t.
                pin.words[cpu / 64].fetch_or(1 << (cpu % 64), Ordering::Relaxed);
            }
        }
        settings
            .pinned
            .store(u32::from(!self.pins.is_empty()), Ordering::Relaxed);
        settings
            .memory_limit
            .store(self.memory_limit.unwrap_or(0), Ordering::Relaxed);
        // Rounded up, so that a cap below 1 KiB is not "no cap".
        let cap_kib = self.max_memory.map_or(0, |b| b.div_ceil(1024));
        settings.max_rss_kib.store(cap_kib, Ordering::Relaxed);
    }
}

/// The CPUs this thread may run on (`sched_getaffinity`), ascending.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, Error> {
    let set = rustix::thread::sched_getaffinity(None).map_err(|e| Error::Io(e.into()))?;
    Ok((0..PIN_CPUS).filter(|&c| set.is_set(c)).collect())
}

impl PoolBuilder {
    /// Pins workers to CPUs, after MPIRE's `cpu_ids`: `sets` holds either one
    /// CPU set per worker (`sets.len()` equal to the number of processes) or
    /// one set shared by all workers (`sets.len() == 1`). A replaced worker
    /// runs on the same CPUs as the one it replaces.
    ///
    /// [`build`](Self::build) fails with [`Error::InvalidArgument`] on any
    /// other length, an empty set, a CPU this process may not run on (see
    /// `sched_getaffinity(2)`), or when [`pin_workers`](Self::pin_workers)
    /// is also given. The worker pins itself with `sched_setaffinity` as it
    /// starts, before its initializer.
    ///
    /// ```
    /// fn my_cpus() -> u64 {
    ///     // The worker's CPU mask as the kernel shows it: hex words, CPU 0 last.
    ///     let status = std::fs::read_to_string("/proc/self/status").unwrap();
    ///     let mask = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed:")).unwrap();
    ///     let hex = mask.trim().replace(',', "");
    ///     u64::from_str_radix(&hex[hex.len().saturating_sub(16)..], 16).unwrap()
    /// }
    /// let pool = shmpool::Pool::builder().processes(2).cpu_ids(vec![vec![0]]).build()?;
    /// assert_eq!(pool.apply(my_cpus, ())?, 1); // CPU 0 only
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn cpu_ids(mut self, sets: Vec<Vec<usize>>) -> Self {
        self.config.harness.cpu_ids = Some(sets);
        self
    }

    /// Pins each worker to one CPU: worker k to the k-th CPU this process may
    /// run on, round-robin when there are more workers than CPUs. A replaced
    /// worker runs on the same CPU. For benchmarks whose timings should not
    /// depend on the scheduler moving workers around.
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(2).pin_workers().build()?;
    /// assert_eq!(pool.map(|x: u32| x * 2, &[1, 2, 3])?, vec![2, 4, 6]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn pin_workers(mut self) -> Self {
        self.config.harness.pin_workers = true;
        self
    }

    /// How many threads the libraries inside a worker should start: sets
    /// `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`,
    /// `BLIS_NUM_THREADS`, `VECLIB_MAXIMUM_THREADS` and `RAYON_NUM_THREADS`
    /// to `k` in every worker, for every start method, so that a task calling
    /// BLAS, OpenMP or rayon in a pool of N workers on N CPUs does not start
    /// N × N threads.
    ///
    /// Default: the number of CPUs divided by the number of processes, at
    /// least 1 (as loky does). A variable the program itself has set (in its
    /// environment when the worker starts) is left as it is: the user's
    /// setting wins. Zero is [`Error::InvalidArgument`] at `build`, as is
    /// more than 65,536.
    ///
    /// The worker sets them as it starts, while it has a single thread; a
    /// forked worker does so without `setenv` (another thread of the parent
    /// could have held the environment's lock at the fork), by installing a
    /// new `environ` array.
    ///
    /// ```
    /// fn omp_threads() -> u32 {
    ///     std::env::var("OMP_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
    /// }
    /// # if std::env::var_os("OMP_NUM_THREADS").is_none() {
    /// let pool = shmpool::Pool::builder().processes(2).threads_per_worker(3).build()?;
    /// assert_eq!(pool.apply(omp_threads, ())?, 3);
    /// # }
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn threads_per_worker(mut self, k: usize) -> Self {
        self.config.harness.threads_per_worker = Some(k);
        self
    }

    /// Replaces a worker after a task during which it gained more than
    /// `bytes` of memory: for tasks that leak (or C libraries that do, as in
    /// loky's and joblib's reports), without a fixed task quota. The task's
    /// result is kept; the worker exits once it has handed it back, and a
    /// fresh one takes its index. Replacements count in
    /// [`PoolStats::memory_replacements`](crate::PoolStats::memory_replacements),
    /// not as deaths.
    ///
    /// Measured by the worker after each task: its anonymous resident memory
    /// (`/proc/self/statm`: resident minus shared pages, so the pool's
    /// shared memory does not count) beyond what it had when it became
    /// ready (pages a forked worker shares with the parent are not its own
    /// gain). Memory that came and went within one task is not seen. The
    /// check reads a `/proc` file (a few microseconds) after every task, so
    /// only pools that ask for it pay. Zero is [`Error::InvalidArgument`] at
    /// `build`.
    ///
    /// ```
    /// fn leak(mib: u64) -> u64 {
    ///     let kept = vec![1u8; (mib << 20) as usize];
    ///     std::mem::forget(kept); // a leak, as a C library might have
    ///     mib
    /// }
    /// let pool = shmpool::Pool::builder()
    ///     .processes(1)
    ///     .max_memory_per_worker(32 << 20)
    ///     .build()?;
    /// let first = pool.worker_pids();
    /// assert_eq!(pool.apply(leak, (64,))?, 64); // the result is kept
    /// assert_eq!(pool.apply(leak, (0,))?, 0);   // run by a fresh worker
    /// assert_ne!(pool.worker_pids(), first);
    /// assert_eq!(pool.stats().memory_replacements, 1);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.config.harness.max_memory = Some(bytes);
        self
    }

    /// Limits how much more address space each worker may map, with
    /// `RLIMIT_AS`, so that a runaway allocation fails inside the task
    /// instead of waking the kernel's OOM killer (which may pick another
    /// process). The limit is `bytes` beyond the worker's address space at
    /// start, which includes the reservation of the pool's shared memory
    /// (tens of GiB, virtual). It applies to the initializer and every task.
    ///
    /// What a failed allocation does depends on who allocates: C's `malloc`
    /// returns NULL, Rust's `Vec::try_reserve` returns an error (a task can
    /// turn it into a panic, so [`Error::TaskPanicked`]), and Rust's
    /// ordinary allocations abort the process, as Rust does on allocation
    /// failure: the task then fails with [`Error::WorkerDied`] whose cause
    /// is [`DeathCause::MemoryLimit`](crate::DeathCause::MemoryLimit) (see
    /// there how it is told apart), and the pool replaces the worker. Zero
    /// is [`Error::InvalidArgument`] at `build`.
    ///
    /// ```
    /// use shmpool::{DeathCause, Error};
    /// fn grab(mib: u64) -> u64 {
    ///     let mut v: Vec<u8> = Vec::new();
    ///     match v.try_reserve_exact((mib << 20) as usize) {
    ///         Ok(()) => mib,
    ///         Err(e) => panic!("out of memory: {e}"),
    ///     }
    /// }
    /// fn grab_or_abort(mib: u64) -> u64 {
    ///     let v = vec![1u8; (mib << 20) as usize];
    ///     v.len() as u64
    /// }
    /// let pool = shmpool::Pool::builder()
    ///     .processes(1)
    ///     .memory_limit_per_worker(256 << 20)
    ///     .build()?;
    /// assert_eq!(pool.apply(grab, (16,))?, 16);
    /// assert!(matches!(pool.apply(grab, (1024,)), Err(Error::TaskPanicked { .. })));
    /// match pool.apply(grab_or_abort, (1024,)) {
    ///     Err(Error::WorkerDied { cause, .. }) => assert_eq!(cause, DeathCause::MemoryLimit),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn memory_limit_per_worker(mut self, bytes: u64) -> Self {
        self.config.harness.memory_limit = Some(bytes);
        self
    }

    /// Draws a progress bar on stderr for each `map`, `starmap`, `map_into`,
    /// `map_inplace` (and their `_chunked` forms) and `imap*` call, and for
    /// the same calls of [`Pool::serde`](crate::Pool::serde): elements
    /// done, the rate and an ETA. Needs the feature `progress` (which brings
    /// in `indicatif`); without it, this does nothing. Default: `false`.
    ///
    /// The bar is drawn only when stderr is a terminal, so logs and CI
    /// output stay clean. It advances as the caller collects each finished
    /// chunk, so it is right when chunks finish out of order or a worker dies
    /// (a retried chunk counts once, when it finishes). The `*_async` maps
    /// draw none: an [`Imap`](crate::Imap) is an ordinary `Iterator`, so
    /// indicatif's `ProgressIterator` works on it directly for any other
    /// display:
    ///
    /// ```
    /// # #[cfg(feature = "progress")] {
    /// use indicatif::ProgressIterator;
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = shmpool::Pool::new(2)?; // no bar of the pool's own
    /// let squares: Vec<u64> = pool
    ///     .imap(square, 0..10_000u64)?
    ///     .progress_count(10_000)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(squares[99], 99 * 99);
    /// # }
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = shmpool::Pool::builder().processes(2).progress(true).build()?;
    /// let items: Vec<u64> = (0..10_000).collect();
    /// assert_eq!(pool.map(square, &items)?.len(), 10_000); // a bar, on a terminal
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn progress(mut self, enabled: bool) -> Self {
        self.config.harness.progress = enabled;
        self
    }
}
