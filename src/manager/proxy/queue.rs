//! [`QueueProxy`].

use super::{proxy, Borrowed};
use crate::error::Error;
use crate::manager::protocol::{encode, micros, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

proxy!(
    /// An unbounded FIFO queue held by a manager, like the proxy of Python's
    /// `manager.Queue()`: any number of producers and consumers, in any
    /// processes (or programs, over TCP).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let manager = shmpool::Manager::start()?;
    /// let q = manager.queue::<String>()?;
    /// q.put(&"hello".to_string())?;
    /// assert_eq!(q.get()?, "hello");
    /// assert!(matches!(
    ///     q.get_timeout(Duration::from_millis(10)),
    ///     Err(shmpool::Error::Timeout)
    /// ));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    QueueProxy<T>
);

impl<T: Serialize + DeserializeOwned> Borrowed<QueueProxy<T>> {
    /// `q.put(value)`.
    pub fn put(&self, value: &T) -> Result<(), Error> {
        self.handle.done(Op::Enqueue(encode(value)?))
    }

    /// `q.get()`: waits for an item. If the manager goes away meanwhile:
    /// [`Error::PeersGone`].
    pub fn get(&self) -> Result<T, Error> {
        self.take(None)
    }

    /// `q.get(timeout=t)`: [`Error::Timeout`] if nothing came in time.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.take(micros(timeout))
    }

    /// `q.get_nowait()`: an item if one is queued now.
    pub fn try_get(&self) -> Result<Option<T>, Error> {
        match self.take(Some(0)) {
            Err(Error::Timeout) => Ok(None),
            other => other.map(Some),
        }
    }

    fn take(&self, timeout: Option<u64>) -> Result<T, Error> {
        self.handle
            .value(Op::Dequeue(timeout))?
            .ok_or(Error::Timeout)
    }

    /// `q.qsize()`.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(self.handle.count(Op::Len)? as usize)
    }

    /// `q.empty()`.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }
}
