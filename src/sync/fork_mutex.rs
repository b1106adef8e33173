//! A mutex for the process-wide statics a `fork` child inherits (the
//! launcher's channel, the fork server's socket, the tracker's socket).
//!
//! A `std` mutex that a thread of the parent held at the moment of the fork
//! stays locked for ever in the child, where that thread does not exist. This
//! one records which process holds it, so a child finding it held by another
//! process takes it over. What it guards may then be half-updated: each user
//! keys its data by pid and discards what a parent left.

// Unsafe code: a mutex's guarded value.
#![allow(unsafe_code)]

use super::futex;
use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

pub(crate) struct ForkMutex<T> {
    /// 0: free; else the pid of the process one of whose threads holds it.
    holder: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is reached only through a guard, and `lock` gives out one
// guard at a time per process (a child's takeover leaves the parent's guard in
// the parent, another address space), as `std::sync::Mutex` does.
unsafe impl<T: Send> Sync for ForkMutex<T> {}

impl<T> ForkMutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        ForkMutex {
            holder: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> ForkMutexGuard<'_, T> {
        let me = std::process::id();
        loop {
            match self
                .holder
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                // Another thread of this process holds it: sleep until it
                // unlocks (which always wakes, so no wake-up is lost: the word
                // is no longer `h` by then).
                Err(h) if h == me => futex::wait(&self.holder, h, None),
                // Held at the fork by a thread of the process this one was
                // forked from: that thread is not here, so take it over.
                Err(h) => {
                    if self
                        .holder
                        .compare_exchange(h, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        break;
                    }
                }
            }
        }
        ForkMutexGuard { mutex: self }
    }
}

pub(crate) struct ForkMutexGuard<'a, T> {
    mutex: &'a ForkMutex<T>,
}

impl<T> Deref for ForkMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock, so no other reference exists.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> DerefMut for ForkMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only one.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for ForkMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.holder.store(0, Ordering::Release);
        futex::wake(&self.mutex.holder, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_take_turns() {
        static COUNTER: ForkMutex<u64> = ForkMutex::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        *COUNTER.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*COUNTER.lock(), 4000);
    }

    #[test]
    fn a_lock_held_by_another_process_is_taken_over() {
        let m = ForkMutex::new(5u32);
        // As a fork child finds it: held by its parent's pid.
        m.holder.store(std::process::id() + 1, Ordering::Relaxed);
        assert_eq!(*m.lock(), 5);
    }
}
