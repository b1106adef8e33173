//! [`PoolBuilder`]: configuration of a pool before its workers start.

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::supervisor::Supervisor;
use crate::pool::Pool;
use crate::shm::layout::INIT_ARGS_BYTES;
use crate::start::StartMethod;
use crate::task::{init_entry, ApplyInput, EntryPoint, Task};
use crate::Pod;
use std::mem::{align_of, size_of, MaybeUninit};
use std::sync::Arc;
use std::time::Duration;

/// The most worker processes one pool may have.
pub const MAX_PROCESSES: usize = crate::shm::layout::MAX_PROCESSES;

/// Configures and starts a [`Pool`]; made by [`Pool::builder`] (or
/// [`Context::pool_builder`](crate::Context::pool_builder)).
///
/// ```
/// use shmpool::{Pool, StartMethod};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// static OFFSET: AtomicU64 = AtomicU64::new(0);
/// fn set_offset(k: u64) { OFFSET.store(k, Ordering::Relaxed) }
/// fn shifted(x: u64) -> u64 { x + OFFSET.load(Ordering::Relaxed) }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(set_offset, (1000,))   // once in every worker
///     .maxtasksperchild(50)                // a worker is replaced after 50 tasks
///     .start_method(StartMethod::Fork)
///     .build()?;
/// assert_eq!(pool.map(shifted, &[1, 2])?, vec![1001, 1002]);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    pub(crate) config: PoolConfig,
}

impl Default for PoolBuilder {
    /// One process per CPU, the program's start method
    /// ([`set_start_method`](crate::set_start_method); fork by default).
    fn default() -> Self {
        PoolBuilder {
            config: PoolConfig {
                start_method: crate::start::default_method(),
                zero_copy: true,
                ..PoolConfig::default()
            },
        }
    }
}

/// Everything a builder collects; read by the core and the supervisor.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolConfig {
    pub(crate) processes: Option<usize>,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) start_method: StartMethod,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    /// Hand workers the caller's memory (`pool::zero_copy`).
    pub(crate) zero_copy: bool,
    /// The stack tasks run on (`None`: [`default_stack_size`]): the
    /// supervisor thread's with fork, a worker thread's otherwise.
    pub(crate) stack_size: Option<usize>,
    /// The harness options (`pool::harness`).
    pub(crate) harness: crate::pool::harness::HarnessConfig,
    /// Dropping an unfinished result handle (or its future) aborts its work.
    pub(crate) abort_on_drop: bool,
}

/// The smallest [`PoolBuilder::stack_size`] accepted.
pub(crate) const MIN_STACK_SIZE: usize = 256 << 10;

/// The stack fork workers run tasks on unless configured: the main thread's,
/// that is `RLIMIT_STACK`'s soft limit, and at least 8 MiB (also when the
/// limit is infinite, or above 1 GiB).
pub(crate) fn default_stack_size() -> usize {
    const MAIN_THREAD_DEFAULT: usize = 8 << 20;
    // `None`: unlimited (RLIM_INFINITY).
    let current = rustix::process::getrlimit(rustix::process::Resource::Stack).current;
    match current.map(usize::try_from) {
        Some(Ok(bytes)) if bytes <= 1 << 30 => bytes.max(MAIN_THREAD_DEFAULT),
        _ => MAIN_THREAD_DEFAULT,
    }
}

/// `std::thread::available_parallelism()` (1 if unknown), remembered for as
/// long as this process's CPU affinity mask keeps its size: std reads the
/// cgroup's CPU quota files on every call, ~20 µs of a pool's start, while
/// the mask is one system call.
pub(crate) fn available_cpus() -> usize {
    static SEEN: std::sync::Mutex<Option<(u32, usize)>> = std::sync::Mutex::new(None);
    let mask = rustix::thread::sched_getaffinity(None).map_or(0, |set| set.count());
    let mut seen = crate::sync::lock(&SEEN);
    match *seen {
        Some((m, cpus)) if m == mask && mask != 0 => cpus,
        _ => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            *seen = Some((mask, cpus));
            cpus
        }
    }
}

/// An initializer's entry point and its argument bytes.
#[derive(Clone)]
pub(crate) struct Initializer {
    pub(crate) entry: EntryPoint,
    pub(crate) args: InitBytes,
    /// Set when the arguments do not fit: reported by `build`.
    pub(crate) too_large: Option<String>,
}

impl std::fmt::Debug for Initializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initializer")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// Room for an argument tuple, aligned like the shared copy it is written to.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct InitBytes(pub(crate) [MaybeUninit<u8>; INIT_ARGS_BYTES]);

impl PoolBuilder {
    /// The number of worker processes. Default: the number of CPUs this
    /// process may run on (`std::thread::available_parallelism`).
    pub fn processes(mut self, n: usize) -> Self {
        self.config.processes = Some(n);
        self
    }

    /// Runs `f(args...)` once in every worker when it starts, before its first
    /// task — in replacement workers too — like Python's
    /// `Pool(initializer=f, initargs=args)`. Use it to set per-process state
    /// (a global, a seed, a C library's init).
    ///
    /// If it panics in a worker starting with the pool, [`build`](Self::build)
    /// returns [`Error::InitializerFailed`] and no worker is left running.
    /// `build` waits for every initializer to finish (with spawn and
    /// forkserver workers, at most 30 s, then [`Error::StartFailed`]). The
    /// arguments may take up to 128 bytes.
    pub fn initializer<F, Args>(mut self, f: F, args: Args) -> Self
    where
        F: Task<Args>,
        Args: Pod,
    {
        crate::task::travels!(F);
        let mut bytes = InitBytes([MaybeUninit::uninit(); INIT_ARGS_BYTES]);
        let input_size = size_of::<ApplyInput<F, Args>>();
        let too_large = if input_size > INIT_ARGS_BYTES || align_of::<ApplyInput<F, Args>>() > 64 {
            Some(format!(
                "initializer arguments (with bound values) take {input_size} bytes; \
                 at most {INIT_ARGS_BYTES} fit"
            ))
        } else {
            match f.bind() {
                Ok(bound) => {
                    let input: ApplyInput<F, Args> = (bound, args);
                    // Room for it (checked); `bytes` is aligned like the
                    // shared copy, so the worker reads it in place.
                    bytes.0[..input_size].copy_from_slice(crate::pod::bytes_of(&input));
                    None
                }
                Err(e) => Some(format!("the initializer cannot travel: {e}")),
            }
        };
        self.config.initializer = Some(Initializer {
            entry: EntryPoint::new(init_entry::<F, Args>),
            args: bytes,
            too_large,
        });
        self
    }

    /// A worker exits after running `n` tasks and is replaced by a fresh one,
    /// like Python's `maxtasksperchild`: a way to bound the memory a leaky task
    /// function (or C library) can accumulate. A task is one `apply`, or one
    /// chunk of a `map`. No work is lost or run twice. Zero is
    /// [`Error::InvalidArgument`] (from `build`). Default: no limit.
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.config.max_tasks = Some(n);
        self
    }

    /// Runs a task again, up to `n` more times, when its worker dies while
    /// running it (killed, `abort()`, a segfault, `exit()`); after that the
    /// task fails with [`Error::WorkerDied`]. A panic is not retried (the task
    /// ran and failed), nor is a task that exceeded the
    /// [`task_timeout`](Self::task_timeout). Default: 0, like Python.
    ///
    /// With retries a task may run more than once, so it should be idempotent
    /// (a `map` chunk is: it rewrites its own outputs).
    ///
    /// A chunk of `map`, `starmap` or `map_into` (and their `_chunked` forms,
    /// and [`pool.serde()`](crate::Pool::serde)'s `map` and `starmap`) is
    /// not run again whole: each retry runs its two halves. A worker that
    /// died by chance costs only that rerun; an input that kills every
    /// worker it meets still fails the map, and the error names the elements
    /// that do ([`Error::elements`]), down to a single one given enough
    /// retries.
    ///
    /// ```
    /// fn f(x: u64) -> u64 { x + 1 }
    /// let pool = shmpool::Pool::builder().processes(2).retries(3).build()?;
    /// assert_eq!(pool.map(f, &[1, 2])?, vec![2, 3]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }

    /// Kills a task (with its worker) that runs longer than `limit`: the task
    /// fails with [`Error::TaskTimedOut`], the worker is replaced, the pool goes on.
    /// Measured with a millisecond clock from the moment a worker starts the
    /// task (a `map` chunk is one task). Default: no limit. A zero limit is
    /// [`Error::InvalidArgument`].
    ///
    /// This is not [`AsyncResult::get`](crate::AsyncResult::get)'s timeout,
    /// which only stops *waiting*.
    ///
    /// A worker that is stopped (`SIGSTOP`, `SIGTSTP`, a debugger) runs
    /// nothing: without a limit, a task it holds (and the `map` waiting for
    /// it) waits until the worker is continued (`SIGCONT`), as in Python; with
    /// one, the limit kills it like any other. The pool's supervisor notices a
    /// stopped worker within a second and says so on stderr;
    /// [`Pool::stopped_workers`](crate::Pool::stopped_workers) lists them.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn spin() { loop { std::hint::spin_loop() } }
    /// let pool = shmpool::Pool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// assert!(matches!(pool.apply(spin, ()), Err(shmpool::Error::TaskTimedOut { .. })));
    /// assert_eq!(pool.apply(|| 7u8, ())?, 7); // a fresh worker took over
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.config.task_timeout = Some(limit);
        self
    }

    /// Whether dropping an unfinished [`AsyncResult`](crate::AsyncResult),
    /// or the future `.await` made of it, [aborts](crate::AsyncResult::abort)
    /// its work: running tasks are stopped by killing their workers, like
    /// tokio's `JoinHandle::abort`. Default `false`: a drop only withdraws
    /// tasks that have not started, and running ones finish unobserved.
    /// One result can choose otherwise with
    /// [`AsyncResult::abort_on_drop`](crate::AsyncResult::abort_on_drop).
    ///
    /// ```
    /// use std::time::Duration;
    /// fn spin() { loop { std::hint::spin_loop() } }
    /// let pool = shmpool::Pool::builder().processes(1).abort_on_drop(true).build()?;
    /// let stuck = pool.apply_async(spin, ())?;
    /// std::thread::sleep(Duration::from_millis(50));
    /// drop(stuck);                                 // kills its worker
    /// assert_eq!(pool.apply(|| 7u8, ())?, 7);      // served by a new one
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn abort_on_drop(mut self, enabled: bool) -> Self {
        self.config.abort_on_drop = enabled;
        self
    }

    /// How workers are started; see [`StartMethod`]. Default:
    /// [`StartMethod::Fork`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.config.start_method = method;
        self
    }

    /// Whether workers may read and write the caller's memory, so that
    /// [`Pool::map`], [`starmap`](Pool::starmap),
    /// [`map_inplace`](Pool::map_inplace) and [`map_into`](Pool::map_into)
    /// over plain slices copy nothing through the parent. Default: `true`.
    ///
    /// Workers reach the parent's memory with `process_vm_readv` and
    /// `process_vm_writev`. Under Yama's `ptrace_scope=1` (the default of
    /// common distributions) that needs the parent's consent, so while a pool
    /// with zero-copy lives the program calls
    /// `prctl(PR_SET_PTRACER, getpid())`: **every descendant of the program**
    /// (workers, but also programs it or its tasks run) may then read and write
    /// its memory, as a debugger could. When the last such pool is dropped the
    /// program calls `prctl(PR_SET_PTRACER, 0)`. Yama holds one tracer per
    /// process and has no getter: a program that declared its own tracer (a
    /// crash reporter, say) loses that declaration. Pass `false` to avoid all
    /// of this; maps then copy through the pool's shared memory.
    ///
    /// Where the kernel refuses (Yama scope 2 or 3, a seccomp filter, another
    /// user namespace), the pool finds out as its workers start and copies
    /// instead; a chunk refused before that is redone by copying. Results are
    /// the same either way. [`Pool::zero_copy`] tells which path a pool takes.
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(2).zero_copy(false).build()?;
    /// assert_eq!(pool.map(|x: u32| x + 1, &[1, 2])?, vec![2, 3]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn zero_copy(mut self, enabled: bool) -> Self {
        self.config.zero_copy = enabled;
        self
    }

    /// The stack size, in bytes, that tasks run on, with every start method.
    /// Default: the main thread's (`RLIMIT_STACK`, usually 8 MiB), at least
    /// 8 MiB.
    ///
    /// Fork workers are forked from the pool's supervisor thread, so they run
    /// on a copy of its stack: this sets that thread's stack. Spawn and
    /// forkserver workers, whose main thread's stack `RLIMIT_STACK` set when
    /// they started, run their tasks on a thread of this stack size instead.
    /// Like any thread's, it is reserved address space, backed by memory only
    /// as far as a task uses it. Less than 256 KiB is
    /// [`Error::InvalidArgument`] at `build`; more than the system can reserve
    /// is [`Error::Io`] (fork) or [`Error::StartFailed`] at `build`.
    ///
    /// ```
    /// fn deep(x: u64) -> u64 {
    ///     let local = std::hint::black_box([x as u8; 16 << 20]); // 16 MiB
    ///     local.iter().map(|&b| u64::from(b)).sum()
    /// }
    /// let pool = shmpool::Pool::builder().processes(1).stack_size(64 << 20).build()?;
    /// assert_eq!(pool.apply(deep, (1,))?, 16 << 20);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// Maps the shared segment and starts the workers; returns once every
    /// worker is running (and, with an initializer or a start method other
    /// than fork, once every worker has reported in).
    ///
    /// Errors: zero processes (or more than [`MAX_PROCESSES`]) or a zero
    /// `maxtasksperchild` is [`Error::InvalidArgument`]; a panicking
    /// initializer is [`Error::InitializerFailed`]; a worker that cannot start
    /// is [`Error::StartFailed`] or [`Error::Io`].
    pub fn build(self) -> Result<Pool, Error> {
        // A spawned child whose start-up hook did not run takes its role here.
        crate::start::bootstrap::take_role();
        let mut config = self.config;
        let processes = match config.processes {
            Some(n) => n,
            None => available_cpus(),
        };
        if processes == 0 {
            return Err(Error::invalid("a pool needs at least one process"));
        }
        if processes > MAX_PROCESSES {
            return Err(Error::invalid(format!(
                "at most {MAX_PROCESSES} processes per pool"
            )));
        }
        if config.task_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid("task_timeout must be longer than zero"));
        }
        if config.stack_size.is_some_and(|b| b < MIN_STACK_SIZE) {
            return Err(Error::invalid(format!(
                "stack_size must be at least {} KiB",
                MIN_STACK_SIZE >> 10
            )));
        }
        if config.max_tasks == Some(0) {
            return Err(Error::invalid("maxtasksperchild must be at least 1"));
        }
        if let Some(why) = config
            .initializer
            .as_ref()
            .and_then(|i| i.too_large.clone())
        {
            return Err(Error::invalid(why));
        }
        config.harness.resolve(processes)?;
        config.processes = Some(processes);
        crate::panic::install_quiet_panic_hook();
        // Workers must map the program's object heap (shared locks, queues):
        // forked ones inherit it, so it must exist before they are forked.
        crate::objects::Heap::get()?;
        let core = Arc::new(Core::new(config)?);
        Supervisor::start(&core)?;
        Ok(Pool { core })
    }
}
