//! Lock-like proxies: [`LockProxy`], [`RLockProxy`], [`SemaphoreProxy`],
//! [`EventProxy`], [`ConditionProxy`], [`BarrierProxy`].
//!
//! The server ties a lock to the connection that acquired it, and a
//! connection to a thread (see `client`), so a guard is not `Send`: it must
//! be released from the thread that took it. A holder whose connection
//! closes — its process died, or its thread ended — releases the lock, and
//! the next `lock` gets [`Error::OwnerDied`] (then finds it free), as with
//! [`Lock`](crate::Lock).

use super::{proxy, Borrowed, Handle};
use crate::error::Error;
use crate::manager::protocol::{micros, Op};
use std::marker::PhantomData;
use std::time::Duration;

/// Makes guards `!Send` (and `!Sync`), and ties them to the proxy (or
/// borrowed proxy) they came from, which they cannot outlive.
type Tied<'a> = PhantomData<(*const (), &'a ())>;

fn acquire(handle: &Handle, timeout: Option<u64>) -> Result<bool, Error> {
    handle.flag(Op::Acquire(timeout))
}

macro_rules! lock_proxy {
    ($name:ident, $guard:ident, $(#[$doc:meta])*) => {
        proxy!($(#[$doc])* $name);

        impl Borrowed<$name> {
            /// Waits for the lock; the guard releases it when dropped.
            pub fn lock(&self) -> Result<$guard<'_>, Error> {
                acquire(&self.handle, None)?;
                Ok($guard { handle: self.handle, _tied: PhantomData })
            }

            /// [`lock`](Self::lock), giving up with [`Error::Timeout`].
            pub fn lock_timeout(&self, timeout: Duration) -> Result<$guard<'_>, Error> {
                if !acquire(&self.handle, micros(timeout))? {
                    return Err(Error::Timeout);
                }
                Ok($guard { handle: self.handle, _tied: PhantomData })
            }

            /// The guard if the lock is free now.
            pub fn try_lock(&self) -> Result<Option<$guard<'_>>, Error> {
                Ok(acquire(&self.handle, Some(0))?
                    .then_some($guard { handle: self.handle, _tied: PhantomData }))
            }
        }

        /// Holds a manager's lock; releases it when dropped (from the thread
        /// that took it). It borrows the proxy it came from: the proxy, and
        /// so the lock, outlives it.
        #[derive(Debug)]
        #[must_use = "the lock is released when the guard is dropped"]
        pub struct $guard<'a> {
            handle: Handle,
            _tied: Tied<'a>,
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                // A manager that is gone holds no lock any more.
                let _ = self.handle.done(Op::Release);
            }
        }
    };
}

lock_proxy!(
    LockProxy,
    LockProxyGuard,
    /// A lock held by a manager, like Python's `manager.Lock()`. A holder
    /// that dies releases it; the next `lock` is [`Error::OwnerDied`].
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let lock = manager.lock()?;
    /// {
    ///     let _held = lock.lock()?;
    ///     // Another thread (a connection of its own) finds it taken.
    ///     std::thread::scope(|s| {
    ///         s.spawn(|| assert!(lock.try_lock().unwrap().is_none()));
    ///     });
    /// }
    /// assert!(lock.try_lock()?.is_some());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
);

lock_proxy!(
    RLockProxy,
    RLockProxyGuard,
    /// A re-entrant lock held by a manager, like Python's `manager.RLock()`:
    /// the thread holding it may take it again; it is free once every guard
    /// is dropped.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let lock = manager.rlock()?;
    /// let outer = lock.lock()?;
    /// let inner = lock.lock()?;
    /// drop((inner, outer));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
);

proxy!(
    /// A semaphore held by a manager, like Python's `manager.Semaphore(n)`
    /// and `manager.BoundedSemaphore(n)` (whose `release` past its initial
    /// value is [`Error::InvalidArgument`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let manager = shmpool::Manager::start()?;
    /// let s = manager.bounded_semaphore(1)?;
    /// assert!(s.acquire_timeout(Duration::ZERO)?);
    /// assert!(!s.acquire_timeout(Duration::from_millis(10))?);
    /// s.release()?;
    /// assert!(s.release().is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    SemaphoreProxy
);

impl Borrowed<SemaphoreProxy> {
    /// Waits until the count is positive, then decrements it.
    pub fn acquire(&self) -> Result<(), Error> {
        acquire(&self.handle, None).map(drop)
    }

    /// [`acquire`](Self::acquire) within `timeout`; whether it was acquired.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        acquire(&self.handle, micros(timeout))
    }

    /// Increments the count, waking a waiter.
    pub fn release(&self) -> Result<(), Error> {
        self.handle.done(Op::Release)
    }
}

proxy!(
    /// An event held by a manager, like Python's `manager.Event()`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let manager = shmpool::Manager::start()?;
    /// let ev = manager.event()?;
    /// assert!(!ev.wait_timeout(Duration::from_millis(10))?);
    /// ev.set()?;
    /// assert!(ev.is_set()? && ev.wait_timeout(Duration::ZERO)?);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    EventProxy
);

impl Borrowed<EventProxy> {
    /// `ev.set()`: wakes every waiter.
    pub fn set(&self) -> Result<(), Error> {
        self.handle.done(Op::Set)
    }

    /// `ev.clear()`.
    pub fn clear(&self) -> Result<(), Error> {
        self.handle.done(Op::Unset)
    }

    /// `ev.is_set()`.
    pub fn is_set(&self) -> Result<bool, Error> {
        self.handle.flag(Op::IsSet)
    }

    /// `ev.wait()`: waits until set.
    pub fn wait(&self) -> Result<(), Error> {
        self.handle.flag(Op::Wait(None)).map(drop)
    }

    /// `ev.wait(timeout)`: whether it was set in time.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.handle.flag(Op::Wait(micros(timeout)))
    }
}

proxy!(
    /// A condition variable held by a manager, like Python's
    /// `manager.Condition()` (with its own re-entrant lock): wait and notify
    /// on the guard that holds the lock.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let manager = shmpool::Manager::start()?;
    /// let cond = manager.condition()?;
    /// let flag = manager.value(&false)?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         let held = cond.lock().unwrap();
    ///         flag.set(&true).unwrap();
    ///         held.notify_all().unwrap();
    ///     });
    ///     let held = cond.lock().unwrap();
    ///     while !flag.get().unwrap() {
    ///         held.wait_timeout(Duration::from_secs(5)).unwrap();
    ///     }
    /// });
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ConditionProxy
);

impl Borrowed<ConditionProxy> {
    /// Takes the condition's lock.
    pub fn lock(&self) -> Result<ConditionProxyGuard<'_>, Error> {
        acquire(&self.handle, None)?;
        Ok(ConditionProxyGuard {
            handle: self.handle,
            _tied: PhantomData,
        })
    }
}

/// Holds a [`ConditionProxy`]'s lock; releases it when dropped. It borrows
/// the proxy it came from.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct ConditionProxyGuard<'a> {
    handle: Handle,
    _tied: Tied<'a>,
}

impl ConditionProxyGuard<'_> {
    /// Releases the lock, waits for a notification, takes the lock again.
    pub fn wait(&self) -> Result<(), Error> {
        self.handle.flag(Op::CondWait(None)).map(drop)
    }

    /// [`wait`](Self::wait) at most `timeout`; whether it was notified. The
    /// lock is held again either way.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.handle.flag(Op::CondWait(micros(timeout)))
    }

    /// Wakes up to `n` waiters; how many were waiting to be woken.
    pub fn notify(&self, n: usize) -> Result<usize, Error> {
        Ok(self.handle.count(Op::Notify(n as u64))? as usize)
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<usize, Error> {
        self.notify(usize::MAX)
    }
}

impl Drop for ConditionProxyGuard<'_> {
    fn drop(&mut self) {
        let _ = self.handle.done(Op::Release);
    }
}

proxy!(
    /// A barrier for `n` parties held by a manager, like Python's
    /// `manager.Barrier(n)`.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let b = manager.barrier(2)?;
    /// std::thread::scope(|s| {
    ///     let other = s.spawn(|| b.wait().unwrap());
    ///     let mine = b.wait().unwrap();
    ///     assert_eq!(mine + other.join().unwrap(), 1); // indexes 0 and 1
    /// });
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    BarrierProxy
);

impl Borrowed<BarrierProxy> {
    /// Waits until `n` parties wait; this party's arrival index (`0..n`).
    /// A broken barrier is [`Error::BrokenBarrier`].
    pub fn wait(&self) -> Result<usize, Error> {
        Ok(self.handle.count(Op::BarrierWait(None))? as usize)
    }

    /// [`wait`](Self::wait) at most `timeout`. A timeout breaks the barrier,
    /// as in Python: the other parties get [`Error::BrokenBarrier`]; the one
    /// that timed out gets [`Error::Timeout`] (Python raises
    /// `BrokenBarrierError` there too), as with the heap's
    /// [`Barrier`](crate::Barrier), so that the two agree and a caller can
    /// tell who gave up. `Duration::ZERO` passes only the last party.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, Error> {
        Ok(self.handle.count(Op::BarrierWait(micros(timeout)))? as usize)
    }

    /// Breaks the barrier: current and future waiters get
    /// [`Error::BrokenBarrier`].
    pub fn abort(&self) -> Result<(), Error> {
        self.handle.done(Op::Abort)
    }
}
