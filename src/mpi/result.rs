//! [`AsyncResult`]: the handle `apply_async` returns.

use super::protocol::RemoteError;
use super::{from_bytes, Shared};
use crate::error::Error;
use crate::Pod;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The result of an [`apply_async`](super::Pool::apply_async), to collect
/// with [`get`](AsyncResult::get) (like Python's `AsyncResult`, or a
/// `concurrent.futures.Future` of mpi4py's executors).
///
/// Dropping the handle does not cancel a task a rank runs already; its result
/// is thrown away when it comes. A task still queued is not sent at all.
pub struct AsyncResult<R: Pod> {
    shared: Arc<Shared>,
    id: u64,
    value: OnceLock<Result<R, RemoteError>>,
}

impl<R: Pod> AsyncResult<R> {
    pub(crate) fn new(shared: Arc<Shared>, id: u64) -> AsyncResult<R> {
        AsyncResult {
            shared,
            id,
            value: OnceLock::new(),
        }
    }

    /// Waits at most `timeout` (`None`: as long as it takes) for the result.
    /// [`Error::Timeout`] if it has not come by then (the task goes on; call
    /// `get` again). A task that panicked gives [`Error::TaskPanicked`]; one
    /// whose local worker died, [`Error::WorkerDied`]; one dropped with the
    /// pool before it ran, [`Error::Terminated`]. The result (or error) is
    /// kept: `get` may be called again.
    pub fn get(&self, timeout: Option<Duration>) -> Result<R, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        if self.value.get().is_none() {
            let id = self.id;
            let found = match self.shared.wait(deadline, |d| d.take(id)) {
                Ok(Some(done)) => done,
                Ok(None) => return Err(Error::Timeout),
                Err(_) => Err(RemoteError::Terminated),
            };
            let value = found.map(|bytes| from_bytes::<R>(&bytes, 1)[0]);
            let _ = self.value.set(value);
        }
        self.value
            .get()
            .expect("set above")
            .clone()
            .map_err(Error::from)
    }

    /// Whether the result has come (without waiting).
    pub fn ready(&self) -> bool {
        let _ = self.get(Some(Duration::ZERO));
        self.value.get().is_some()
    }
}

impl<R: Pod> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        if self.value.get().is_none() {
            self.shared.lock().abandon(self.id);
        }
    }
}

impl<R: Pod> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("id", &self.id)
            .field("ready", &self.value.get().is_some())
            .finish()
    }
}
