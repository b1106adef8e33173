//! [`Queue`] and [`Pipe`] for any `serde` value, not only [`Pod`](crate::Pod)
//! ones: what Python's `multiprocessing.Queue` does with pickle. Behind the
//! `serde` feature.
//!
//! A message is encoded with [`postcard`] (compact, no allocation) into a
//! fixed frame of `N` bytes — a 4-byte length, then the encoding — and the
//! frame travels through the plain [`Pod`](crate::Pod) queue
//! ([`crate::Queue<[u8; N]>`](crate::Queue)), so everything that queue
//! promises (several producers and consumers in several processes,
//! [`Error::PeersGone`], recovery from a holder that died) holds here too. A
//! value whose encoding does not fit its frame is refused with
//! [`Error::InvalidArgument`] before anything is sent; choose `N` for the
//! largest message (the default, 1024 bytes, suits small records).
//!
//! ```
//! use shmpool::serial::Pipe;
//!
//! // Python: a.send([42, None, 'hello'])
//! let (a, b) = Pipe::new::<(i32, Option<i32>, String)>()?;
//! a.send(&(42, None, "hello".to_string()))?;
//! assert_eq!(b.recv()?, (42, None, "hello".to_string()));
//! # Ok::<(), shmpool::Error>(())
//! ```

// Unsafe code: serial queue and pipe handles are `Pod`.
#![allow(unsafe_code)]

use crate::error::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Duration;

/// Bytes of a frame taken by the message length.
const LEN_BYTES: usize = 4;

/// Encodes `value` into a frame: length (little-endian `u32`), then bytes.
fn encode<T: Serialize, const N: usize>(value: &T) -> Result<[u8; N], Error> {
    let mut frame = [0u8; N];
    if N <= LEN_BYTES {
        return Err(Error::invalid("a frame needs more than 4 bytes"));
    }
    let used = postcard::to_slice(value, &mut frame[LEN_BYTES..])
        .map_err(|e| match e {
            postcard::Error::SerializeBufferFull => Error::invalid(format!(
                "the message does not fit a {N}-byte frame; choose a larger N"
            )),
            e => Error::invalid(format!("cannot encode the message: {e}")),
        })?
        .len();
    frame[..LEN_BYTES].copy_from_slice(&(used as u32).to_le_bytes());
    Ok(frame)
}

/// Decodes a frame written by [`encode`].
fn decode<T: DeserializeOwned, const N: usize>(frame: &[u8; N]) -> Result<T, Error> {
    let mut len = [0u8; LEN_BYTES];
    len.copy_from_slice(&frame[..LEN_BYTES]);
    let len = u32::from_le_bytes(len) as usize;
    let bytes = frame
        .get(LEN_BYTES..LEN_BYTES + len)
        .ok_or_else(|| Error::invalid("a corrupt frame"))?;
    postcard::from_bytes(bytes).map_err(|e| {
        Error::invalid(format!(
            "cannot decode the message as {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// A bounded queue between processes for any `serde` value, like Python's
/// `multiprocessing.Queue`; see the [module docs](self). `N` is the frame
/// size in bytes (the largest encoded message is `N - 4`).
///
/// ```
/// use shmpool::{serial::Queue, Process};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Job { name: String, sizes: Vec<u32> }
///
/// fn worker(q: Queue<Job>) {
///     q.put(&Job { name: "from a child".into(), sizes: vec![1, 2, 3] }).unwrap();
/// }
///
/// let q = Queue::<Job>::new(8)?;
/// let mut p = Process::new(worker, (q,));
/// p.start()?;
/// assert_eq!(q.get()?, Job { name: "from a child".into(), sizes: vec![1, 2, 3] });
/// p.join(None)?;
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Queue<T, const N: usize = 1024> {
    frames: crate::Queue<[u8; N]>,
    _marker: PhantomData<fn(T) -> T>,
}

impl<T, const N: usize> Clone for Queue<T, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, const N: usize> Copy for Queue<T, N> {}
impl<T, const N: usize> std::fmt::Debug for Queue<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("serial::Queue")
            .field("frames", &self.frames)
            .finish()
    }
}

// SAFETY: a Pod queue handle (a heap offset, checked on every use) and a
// zero-sized marker.
#[diagnostic::do_not_recommend]
unsafe impl<T: 'static, const N: usize> crate::Pod for Queue<T, N> {}

impl<T: Serialize + DeserializeOwned, const N: usize> Queue<T, N> {
    /// An empty queue with room for `capacity` (≥ 1) messages.
    pub fn new(capacity: usize) -> Result<Self, Error> {
        Ok(Queue {
            frames: crate::Queue::new(capacity)?,
            _marker: PhantomData,
        })
    }

    /// Appends `value`, waiting while the queue is full.
    pub fn put(&self, value: &T) -> Result<(), Error> {
        self.frames.put(encode(value)?)
    }

    /// [`put`](Self::put), giving up with [`Error::Timeout`] after `timeout`.
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<(), Error> {
        self.frames.put_timeout(encode(value)?, timeout)
    }

    /// Removes and returns the oldest message, waiting while the queue is
    /// empty ([`Error::PeersGone`] if nothing can send one any more, as for
    /// [`Queue::get`](crate::Queue::get),
    /// [`Error::Closed`] once closed and drained).
    pub fn get(&self) -> Result<T, Error> {
        decode(&self.frames.get()?)
    }

    /// [`get`](Self::get), giving up with [`Error::Timeout`] after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        decode(&self.frames.get_timeout(timeout)?)
    }

    /// The oldest message if there is one now.
    pub fn try_get(&self) -> Result<Option<T>, Error> {
        self.frames.try_get()?.map(|f| decode(&f)).transpose()
    }

    /// How many messages are queued now.
    pub fn len(&self) -> Result<usize, Error> {
        self.frames.len()
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> Result<bool, Error> {
        self.frames.is_empty()
    }

    /// Refuses further `put`s; `get` drains what is queued, then fails with
    /// [`Error::Closed`].
    pub fn close(&self) -> Result<(), Error> {
        self.frames.close()
    }
}

/// One end of a [`Pipe`] for `serde` values (see [`crate::Connection`]).
pub struct Connection<T, const N: usize = 1024> {
    frames: crate::Connection<[u8; N]>,
    _marker: PhantomData<fn(T) -> T>,
}

impl<T, const N: usize> Clone for Connection<T, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, const N: usize> Copy for Connection<T, N> {}
impl<T, const N: usize> std::fmt::Debug for Connection<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("serial::Connection")
            .field("frames", &self.frames)
            .finish()
    }
}

// SAFETY: a Pod connection handle (heap offsets, checked on every use) and a
// zero-sized marker.
#[diagnostic::do_not_recommend]
unsafe impl<T: 'static, const N: usize> crate::Pod for Connection<T, N> {}

/// Connected pairs of [`Connection`]s for `serde` values, like Python's
/// `multiprocessing.Pipe()`.
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// A duplex pair of ends with the default 1024-byte frames (see
    /// [`with_frame`](Self::with_frame) for larger messages).
    #[allow(clippy::new_ret_no_self)] // a pipe *is* its two ends, as in Python
    pub fn new<T: Serialize + DeserializeOwned>() -> Result<(Connection<T>, Connection<T>), Error> {
        Self::with_frame()
    }

    /// A duplex pair of ends with `N`-byte frames.
    ///
    /// ```
    /// let (a, b) = shmpool::serial::Pipe::with_frame::<Vec<u64>, 65536>()?;
    /// a.send(&(0..1000).collect())?;
    /// assert_eq!(b.recv()?.len(), 1000);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn with_frame<T: Serialize + DeserializeOwned, const N: usize>(
    ) -> Result<(Connection<T, N>, Connection<T, N>), Error> {
        let (a, b) = crate::Pipe::new::<[u8; N]>()?;
        Ok((Connection::of(a), Connection::of(b)))
    }

    /// A one-way pair `(receiver, sender)` (Python's `Pipe(duplex=False)`).
    pub fn one_way<T: Serialize + DeserializeOwned>(
    ) -> Result<(Connection<T>, Connection<T>), Error> {
        let (rx, tx) = crate::Pipe::one_way::<[u8; 1024]>()?;
        Ok((Connection::of(rx), Connection::of(tx)))
    }
}

impl<T: Serialize + DeserializeOwned, const N: usize> Connection<T, N> {
    fn of(frames: crate::Connection<[u8; N]>) -> Self {
        Connection {
            frames,
            _marker: PhantomData,
        }
    }

    /// Sends `value` to the other end.
    pub fn send(&self, value: &T) -> Result<(), Error> {
        self.frames.send(encode(value)?)
    }

    /// Receives the next message, waiting for it.
    pub fn recv(&self) -> Result<T, Error> {
        decode(&self.frames.recv()?)
    }

    /// [`recv`](Self::recv), giving up with [`Error::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, Error> {
        decode(&self.frames.recv_timeout(timeout)?)
    }

    /// Whether a message is ready, waiting up to `timeout` (`None`: do not wait).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.frames.poll(timeout)
    }

    /// Closes this end's sending side.
    pub fn close(&self) -> Result<(), Error> {
        self.frames.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_what_does_not_fit() {
        let v = (42i32, None::<i32>, "hello".to_string());
        let frame: [u8; 64] = encode(&v).unwrap();
        assert_eq!(decode::<(i32, Option<i32>, String), 64>(&frame).unwrap(), v);
        let long = "x".repeat(100);
        assert!(matches!(
            encode::<_, 64>(&long),
            Err(Error::InvalidArgument(m)) if m.contains("64-byte frame")
        ));
        assert!(matches!(
            decode::<String, 64>(&[0xff; 64]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
