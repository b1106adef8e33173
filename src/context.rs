//! Contexts: like Python's `multiprocessing.get_context(method)`, a
//! [`Context`] makes pools and processes started with one [`StartMethod`].

use crate::error::Error;
use crate::pool::{Pool, PoolBuilder};
use crate::start::StartMethod;

/// Makes pools and processes with one start method.
/// Returned by [`get_context`].
///
/// ```
/// use shmpool::{get_context, StartMethod};
/// fn f(x: u64) -> u64 { x + 1 }
///
/// let ctx = get_context(StartMethod::Spawn);
/// let pool = ctx.pool(1)?;                      // mp.get_context('spawn').Pool(1)
/// assert_eq!(pool.map(f, &[1, 2])?, vec![2, 3]);
/// assert_eq!(ctx.start_method(), StartMethod::Spawn);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// A [`Context`] for `method`, like Python's `multiprocessing.get_context`.
pub fn get_context(method: StartMethod) -> Context {
    Context { method }
}

impl Context {
    /// The context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// Starts a pool of `processes` workers with this context's start method.
    pub fn pool(&self, processes: usize) -> Result<Pool, Error> {
        self.pool_builder().processes(processes).build()
    }

    /// A [`PoolBuilder`] preset to this context's start method.
    pub fn pool_builder(&self) -> PoolBuilder {
        Pool::builder().start_method(self.method)
    }

    /// A [`Process`](crate::Process) started with this context's start method
    /// (Python's `ctx.Process(target=f, args=args)`).
    pub fn process<F, Args>(&self, f: F, args: Args) -> crate::Process
    where
        F: crate::Task<Args>,
        Args: crate::Pod,
    {
        crate::Process::with_method(self.method, f, args)
    }
}
