//! [`PoolBuilder`]: configuration of a pool before its workers start.

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::supervisor::Supervisor;
use crate::pool::Pool;
use std::sync::Arc;

/// The most worker processes one pool may have.
pub const MAX_PROCESSES: usize = 1 << 16;

/// Configures and starts a [`Pool`]; made by [`Pool::builder`].
///
/// ```
/// let pool = shmpool::Pool::builder().processes(2).build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
}

impl PoolBuilder {
    /// The number of worker processes. Default: the number of CPUs this
    /// process may run on (`std::thread::available_parallelism`).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Maps the shared segment and forks the workers; returns once every worker
    /// is running. Zero processes (or more than [`MAX_PROCESSES`]) is
    /// [`Error::InvalidArgument`].
    pub fn build(self) -> Result<Pool, Error> {
        let processes = match self.processes {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if processes == 0 {
            return Err(Error::invalid("a pool needs at least one process"));
        }
        if processes > MAX_PROCESSES {
            return Err(Error::invalid(format!(
                "at most {MAX_PROCESSES} processes per pool"
            )));
        }
        let core = Arc::new(Core::new(processes)?);
        Supervisor::start(&core)?;
        Ok(Pool { core })
    }
}
