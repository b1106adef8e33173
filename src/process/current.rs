//! [`current_process`]: which process a piece of code runs in.

use crate::StartMethod;
use std::io::Write;
use std::sync::OnceLock;

/// The identity of a process of this program: the parent, or one of a pool's
/// workers. Returned by [`current_process`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// The worker's index in its pool (`0..processes`; a replacement keeps the
    /// index of the worker it replaces), or `None` outside a worker.
    pub index: Option<usize>,
    /// The operating-system process id.
    pub pid: u32,
    /// `"MainProcess"` in the main process; a [`Process`](crate::Process)'s
    /// name (`"Process-1"`, …) in its child; in a pool worker, Python's naming:
    /// `"ForkPoolWorker-1"`, `"ForkServerPoolWorker-2"`, `"SpawnPoolWorker-1"`
    /// (the number is `index + 1`). Workers and `Process` children also
    /// carry it as their process name (`ps`, `/proc/<pid>/comm`), cut to the
    /// 15 bytes the kernel keeps.
    pub name: String,
}

/// Set once, in a worker process, before its first task.
static WORKER: OnceLock<(usize, StartMethod)> = OnceLock::new();
/// Set once, in a [`Process`](crate::Process) child, before its function runs.
static PROCESS_NAME: OnceLock<String> = OnceLock::new();

/// Marks this process as the child of a `Process` named `name`.
pub(crate) fn enter_process(name: String) {
    crate::start::fork::set_process_name(name.as_bytes());
    let _ = PROCESS_NAME.set(name);
}

/// The name of this `Process` child (`"Process-1"`), if it is one.
pub(crate) fn process_name() -> Option<&'static str> {
    PROCESS_NAME.get().map(String::as_str)
}

/// Marks this process as worker `index` of a pool started with `method`,
/// and names it like Python does (`ForkPoolWorker-1`, ...) for `ps`.
pub(crate) fn enter_worker(index: usize, method: StartMethod) {
    let _ = WORKER.set((index, method));
    let mut name = [0u8; 64];
    let mut out = &mut name[..];
    let _ = write!(out, "{}PoolWorker-{}", method.name_prefix(), index + 1);
    let len = 64 - out.len();
    crate::start::fork::set_process_name(&name[..len]);
}

/// Whether this process is a pool worker.
pub(crate) fn in_worker() -> bool {
    WORKER.get().is_some()
}

/// Describes the calling process: inside a task, the worker running it;
/// elsewhere, the main process. Like Python's
/// `multiprocessing.current_process()`.
///
/// ```
/// use shmpool::{current_process, Pool};
///
/// fn my_index() -> u64 { current_process().index.unwrap() as u64 }
///
/// assert_eq!(current_process().name, "MainProcess");
/// assert_eq!(current_process().index, None);
/// let pool = Pool::new(2)?;
/// assert!(pool.apply(my_index, ())? < 2);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn current_process() -> ProcessInfo {
    let pid = std::process::id();
    match WORKER.get() {
        Some(&(index, method)) => ProcessInfo {
            index: Some(index),
            pid,
            name: format!("{}PoolWorker-{}", method.name_prefix(), index + 1),
        },
        None => ProcessInfo {
            index: None,
            pid,
            name: PROCESS_NAME
                .get()
                .cloned()
                .unwrap_or_else(|| "MainProcess".to_owned()),
        },
    }
}
