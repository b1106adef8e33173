//! [`StartMethod`]: how worker processes come to exist, and the program's
//! default ([`set_start_method`]).

use crate::error::Error;

/// How a pool starts its worker processes.
///
/// * [`Fork`](StartMethod::Fork) (the default): the worker is a `fork` of the
///   pool's process. Fastest to start in a small process (~0.1 ms); the worker
///   sees the parent's memory as it was at that instant, so globals set before
///   the pool was made are visible in tasks. Signal handlers are the
///   exception: a worker resets the program's to their defaults (those of
///   the fault signals, `SIGSEGV` and the like, excepted), so a handler the
///   program installed, such as a runtime's shutdown on `SIGTERM`, never runs
///   in a worker, and `SIGTERM` ends one. With every start method, workers
///   ignore `SIGINT`: Ctrl-C, which the terminal sends to the whole
///   foreground process group, reaches the program alone, which may drain
///   its pool; workers die with a program that dies of it. A fork copies the parent's page
///   tables, which takes about 30 ms per GiB the parent has touched: a program
///   that makes pools after loading its data pays that per worker.
/// * [`Spawn`](StartMethod::Spawn): the worker is a fresh execution of this
///   program's own executable (`/proc/self/exe`), which becomes a worker
///   before `main` runs. Slower to start (~1 ms plus the program's own
///   start-up); shares nothing with the parent but the pool's segment, and is
///   unaffected by locks other threads held or by the parent's heap size.
/// * [`ForkServer`](StartMethod::ForkServer): a small server process, spawned
///   once per program, forks the workers. Workers start fast and clean, from a
///   process with a tiny heap and a single thread. **The choice for a program
///   that holds much memory** (a benchmark harness that creates pools after
///   loading its data): creating and dropping a 2-worker pool takes about
///   0.5 ms whatever the parent holds, against ~60 ms by fork in a parent
///   holding 1 GiB (`docs/PERFORMANCE.md`, "Pool creation"). Like spawned
///   workers, these do not inherit what the program did after it started:
///   pass what tasks need as arguments, [`partial`](crate::partial) values or
///   an [initializer](crate::PoolBuilder::initializer).
///
/// Re-executing the program (for `Spawn`, and to start the fork server) uses
/// `clone(CLONE_VM | CLONE_VFORK)` rather than `fork`, so it too costs the
/// same whatever memory the parent holds.
///
/// Fork stays the default because what a worker inherits must not depend on
/// how much memory the program happens to hold when it makes a pool: a
/// program whose tasks read what it set up before the pool keeps working
/// as its data grows. To keep fork fast in a big program, put the big data
/// in the shared heap ([`SharedAlloc`](crate::SharedAlloc) as the global
/// allocator): fork copies no page table of a shared mapping, so a parent
/// holding 1 GiB there makes a pool in about 1 ms. Or choose the fork server
/// for the whole program with
/// [`set_start_method`], or per pool with
/// [`PoolBuilder::start_method`](crate::PoolBuilder::start_method);
/// [`Pool::insights`](crate::Pool::insights) says when forking was slow.
///
/// With `Spawn` and `ForkServer`, functions still travel as offsets into the
/// executable: a task function must be part of the executable itself (not of
/// a library loaded with `dlopen`), else the call fails with
/// [`Error::InvalidArgument`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// `fork()` from the pool's supervisor thread.
    #[default]
    Fork,
    /// `fork()` from a single-threaded server process started once.
    ForkServer,
    /// Re-execute this program's executable as a worker.
    Spawn,
}

impl StartMethod {
    /// Python's name for the method: `"fork"`, `"forkserver"` or `"spawn"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::ForkServer => "forkserver",
            StartMethod::Spawn => "spawn",
        }
    }

    /// Whether workers run a fresh copy of the executable (spawn, and the
    /// fork server's children): a task function must then be part of the
    /// executable, and a worker must report in before the pool trusts it.
    pub(crate) fn runs_a_fresh_executable(self) -> bool {
        match self {
            StartMethod::Fork => false,
            StartMethod::ForkServer | StartMethod::Spawn => true,
        }
    }

    pub(crate) fn name_prefix(self) -> &'static str {
        match self {
            StartMethod::Fork => "Fork",
            StartMethod::ForkServer => "ForkServer",
            StartMethod::Spawn => "Spawn",
        }
    }

    /// Every start method, for iteration in tests and benchmarks.
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ];
}

impl std::str::FromStr for StartMethod {
    type Err = Error;

    /// Parses Python's names (`"fork"`, `"forkserver"`, `"spawn"`).
    fn from_str(s: &str) -> Result<Self, Error> {
        StartMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::invalid(format!("unknown start method {s:?}")))
    }
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The start method chosen with [`set_start_method`], if any.
static DEFAULT_METHOD: std::sync::OnceLock<StartMethod> = std::sync::OnceLock::new();

/// Chooses how this program starts its processes and pool workers from now
/// on, like Python's `multiprocessing.set_start_method`. Like Python, it may be
/// called once: a second call is [`Error::InvalidState`] ("context has
/// already been set"). Prefer [`get_context`](crate::get_context) in libraries.
///
/// ```
/// shmpool::set_start_method(shmpool::StartMethod::Spawn)?;
/// assert!(shmpool::set_start_method(shmpool::StartMethod::Fork).is_err());
/// assert_eq!(shmpool::Pool::new(1)?.start_method(), shmpool::StartMethod::Spawn);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn set_start_method(method: StartMethod) -> Result<(), Error> {
    DEFAULT_METHOD.set(method).map_err(|_| {
        Error::state("context has already been set (set_start_method was called before)")
    })
}

/// The program's start method: as set, else fork.
pub(crate) fn default_method() -> StartMethod {
    DEFAULT_METHOD.get().copied().unwrap_or_default()
}
