//! [`Lock`] and [`RLock`]: process-shared robust mutexes with guards.

// Unsafe code: process-shared pthread mutexes.
#![allow(unsafe_code)]

use super::heap::{heap_handle, resolve, shared_object, Heap};
use crate::error::Error;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Kind tags at the start of every object: a forged handle is refused.
pub(crate) mod kind {
    pub(crate) const LOCK: u32 = 0x4c4f_434b; // "LOCK"
    pub(crate) const RLOCK: u32 = 0x524c_434b;
    pub(crate) const SEMAPHORE: u32 = 0x5345_4d41;
    pub(crate) const EVENT: u32 = 0x4556_4e54;
    pub(crate) const CONDITION: u32 = 0x434f_4e44;
    pub(crate) const BARRIER: u32 = 0x4241_5252;
    pub(crate) const QUEUE: u32 = 0x5155_4555;
    pub(crate) const VALUE: u32 = 0x5641_4c55;
    pub(crate) const ARRAY: u32 = 0x4152_5259;
}

/// A process-shared robust `pthread_mutex_t`, as laid out in the heap.
#[repr(C)]
pub(crate) struct RawMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: a pthread mutex initialized PTHREAD_PROCESS_SHARED is designed to be
// used concurrently from several threads and processes through its functions.
unsafe impl Sync for RawMutex {}

impl RawMutex {
    /// Initializes the mutex in place (once, by the object's creator, before
    /// the handle exists anywhere else).
    pub(crate) fn init(&self, recursive: bool) -> Result<(), Error> {
        // SAFETY: standard attribute dance on a local attr; the mutex memory
        // is ours alone until the handle is published.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(libc::pthread_mutexattr_init(&mut attr))?;
            check(libc::pthread_mutexattr_setpshared(
                &mut attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))?;
            check(libc::pthread_mutexattr_setrobust(
                &mut attr,
                libc::PTHREAD_MUTEX_ROBUST,
            ))?;
            if recursive {
                check(libc::pthread_mutexattr_settype(
                    &mut attr,
                    libc::PTHREAD_MUTEX_RECURSIVE,
                ))?;
            }
            let r = libc::pthread_mutex_init(self.inner.get(), &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            check(r)
        }
    }

    /// Locks, waiting at most `timeout`. A holder that died is reported as
    /// [`Error::OwnerDied`]: the mutex is made consistent and released, so the
    /// next call succeeds.
    pub(crate) fn lock(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let how = match timeout {
            None => Acquire::Wait,
            Some(t) => Acquire::Until(monotonic_after(t)),
        };
        match self.acquire(how) {
            libc::ETIMEDOUT => Err(Error::Timeout),
            r => self.settle(r),
        }
    }

    /// Locks if free; `Ok(false)` if another holds it.
    pub(crate) fn try_lock(&self) -> Result<bool, Error> {
        match self.acquire(Acquire::Try) {
            libc::EBUSY => Ok(false),
            r => self.settle(r).map(|()| true),
        }
    }

    /// The pthread call that takes the mutex, as `how` says; its result.
    fn acquire(&self, how: Acquire) -> libc::c_int {
        let mutex = self.inner.get();
        // SAFETY: the mutex was initialized by `init` before any handle
        // existed; it lives in the heap, which is never unmapped.
        unsafe {
            match how {
                Acquire::Wait => libc::pthread_mutex_lock(mutex),
                Acquire::Try => libc::pthread_mutex_trylock(mutex),
                Acquire::Until(deadline) => {
                    pthread_mutex_clocklock(mutex, libc::CLOCK_MONOTONIC, &deadline)
                }
            }
        }
    }

    /// Turns a lock call's result into ours; recovers a mutex whose holder
    /// died (`EOWNERDEAD` hands it to us): consistent again, released,
    /// reported as [`Error::OwnerDied`].
    fn settle(&self, r: libc::c_int) -> Result<(), Error> {
        match r {
            0 => Ok(()),
            libc::EOWNERDEAD => {
                // SAFETY: EOWNERDEAD means we now hold the mutex.
                unsafe {
                    libc::pthread_mutex_consistent(self.inner.get());
                    libc::pthread_mutex_unlock(self.inner.get());
                }
                Err(Error::OwnerDied)
            }
            e => Err(std::io::Error::from_raw_os_error(e).into()),
        }
    }

    /// Unlocks; the caller holds the mutex.
    pub(crate) fn unlock(&self) {
        // SAFETY: called only by guards, which exist only while held.
        unsafe { libc::pthread_mutex_unlock(self.inner.get()) };
    }
}

/// How [`RawMutex::acquire`] takes the mutex.
enum Acquire {
    /// Waits as long as it takes.
    Wait,
    /// Only if free now (`EBUSY` otherwise).
    Try,
    /// Waits until the `CLOCK_MONOTONIC` deadline (`ETIMEDOUT` then).
    Until(libc::timespec),
}

fn check(r: libc::c_int) -> Result<(), Error> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r).into())
    }
}

// glibc ≥ 2.30; not yet declared by the `libc` crate. `timedlock` would take a
// CLOCK_REALTIME deadline, which a clock step (NTP, settimeofday) stretches or
// cuts short.
extern "C" {
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        deadline: *const libc::timespec,
    ) -> libc::c_int;
}

/// CLOCK_MONOTONIC now + `t`, the deadline `pthread_mutex_clocklock` takes.
fn monotonic_after(t: Duration) -> libc::timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let nanos = now.tv_nsec as u64 + u64::from(t.subsec_nanos());
    libc::timespec {
        tv_sec: now.tv_sec as libc::time_t
            + t.as_secs().min(i32::MAX as u64) as libc::time_t
            + (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    }
}

/// A lock object: a kind tag and a robust mutex.
#[repr(C)]
pub(crate) struct LockObject {
    kind: AtomicU32,
    pub(crate) mutex: RawMutex,
}

/// Allocates and initializes a lock object; returns its offset.
pub(crate) fn new_lock_object(recursive: bool) -> Result<u64, Error> {
    let heap = Heap::get()?;
    let at = heap.alloc(std::mem::size_of::<LockObject>(), 64)?;
    let obj: &LockObject = heap.at(at).expect("fresh allocation");
    obj.mutex.init(recursive)?;
    let tag = if recursive { kind::RLOCK } else { kind::LOCK };
    obj.kind.store(tag, Ordering::Release);
    Ok(at)
}

shared_object!(LockObject);

macro_rules! lock_type {
    ($name:ident, $guard:ident, $tag:expr, $recursive:expr, $doc:literal, $example:literal) => {
        heap_handle! {
            #[doc = $doc]
            ///
            /// A holder that dies (killed, crashed) while holding it does not
            /// deadlock the others: the next `lock` returns
            /// [`Error::OwnerDied`] and leaves it free.
            ///
            #[doc = $example]
            $name
        }

        impl $name {
            /// A new, unlocked lock in the program's object heap.
            pub fn new() -> Result<$name, Error> {
                Ok($name {
                    at: new_lock_object($recursive)?,
                })
            }

            fn object(&self) -> Result<&'static LockObject, Error> {
                resolve(self.at, $tag)
            }

            /// Waits for the lock and returns a guard that releases it.
            pub fn lock(&self) -> Result<$guard, Error> {
                self.object()?.mutex.lock(None)?;
                Ok($guard { lock: *self })
            }

            /// [`lock`](Self::lock), giving up with [`Error::Timeout`] after
            /// `timeout`.
            pub fn lock_timeout(&self, timeout: Duration) -> Result<$guard, Error> {
                self.object()?.mutex.lock(Some(timeout))?;
                Ok($guard { lock: *self })
            }

            /// The guard if the lock is free now, else `None`.
            pub fn try_lock(&self) -> Result<Option<$guard>, Error> {
                Ok(self
                    .object()?
                    .mutex
                    .try_lock()?
                    .then_some($guard { lock: *self }))
            }
        }

        /// Holds the lock; releases it when dropped.
        #[derive(Debug)]
        #[must_use = "the lock is released when the guard is dropped"]
        pub struct $guard {
            lock: $name,
        }

        impl Drop for $guard {
            fn drop(&mut self) {
                if let Ok(obj) = self.lock.object() {
                    obj.mutex.unlock();
                }
            }
        }
    };
}

lock_type!(
    Lock,
    LockGuard,
    kind::LOCK,
    false,
    "A lock shared by the processes of the program, like Python's \
     `multiprocessing.Lock`. Copy the handle into a [`Process`](crate::Process) \
     or a pool task; it names the same lock everywhere.",
    "```\nlet lock = shmpool::Lock::new()?;\n{\n    let _held = lock.lock()?;\n    assert!(lock.try_lock()?.is_none());\n}\nassert!(lock.try_lock()?.is_some());\n# Ok::<(), shmpool::Error>(())\n```"
);

lock_type!(
    RLock,
    RLockGuard,
    kind::RLOCK,
    true,
    "A re-entrant lock shared by the processes of the program, like Python's \
     `multiprocessing.RLock`: the thread that holds it may lock it again; it is \
     free once every guard is dropped.",
    "```\nlet lock = shmpool::RLock::new()?;\nlet outer = lock.lock()?;\nlet inner = lock.lock()?; // same thread: no deadlock\ndrop(inner);\ndrop(outer);\n# Ok::<(), shmpool::Error>(())\n```"
);
