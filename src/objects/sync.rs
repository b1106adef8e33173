//! [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`]:
//! counters and flags in the object heap, waited on with the crate's futex
//! wake word.

use super::heap::{heap_handle, resolve, shared_object, Heap};
use super::lock::{kind, RawMutex};
use crate::deadline::deadline_opt;
use crate::error::Error;
use crate::sync::wake::WakeWord;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Time left until `deadline` (`None`: no deadline); `Err(Timeout)` if past.
fn left(deadline: Option<Instant>) -> Result<Option<Duration>, Error> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(l) if !l.is_zero() => Ok(Some(l)),
            _ => Err(Error::Timeout),
        },
    }
}

/// Allocates a zeroed `O` in the heap; returns its offset and a reference.
fn alloc<O: crate::shm::region::Shared>() -> Result<(u64, &'static O), Error> {
    let heap = Heap::get()?;
    let at = heap.alloc(std::mem::size_of::<O>(), 64)?;
    Ok((at, heap.at(at).expect("fresh allocation")))
}

shared_object!(SemaphoreObject, EventObject, ConditionObject, BarrierObject);

#[repr(C)]
struct SemaphoreObject {
    kind: AtomicU32,
    value: AtomicU32,
    /// 0: unbounded; else the most `value` may reach by `release`.
    bound: AtomicU32,
    word: WakeWord,
}

fn semaphore_new(value: u32, bound: u32) -> Result<u64, Error> {
    let (at, obj) = alloc::<SemaphoreObject>()?;
    obj.value.store(value, Ordering::Relaxed);
    obj.bound.store(bound, Ordering::Relaxed);
    obj.kind.store(kind::SEMAPHORE, Ordering::Release);
    Ok(at)
}

fn semaphore(at: u64) -> Result<&'static SemaphoreObject, Error> {
    resolve(at, kind::SEMAPHORE)
}

impl SemaphoreObject {
    fn acquire(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let deadline = deadline_opt(timeout);
        loop {
            let v = self.value.load(Ordering::Acquire);
            if v > 0 {
                if self
                    .value
                    .compare_exchange(v, v - 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let wait = left(deadline)?;
            self.word
                .park_unless(|| self.value.load(Ordering::Acquire) > 0, wait);
        }
    }

    fn release(&self) -> Result<(), Error> {
        let bound = self.bound.load(Ordering::Relaxed);
        let mut v = self.value.load(Ordering::Acquire);
        loop {
            if bound != 0 && v >= bound {
                return Err(Error::invalid("BoundedSemaphore released too many times"));
            }
            match self
                .value
                .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        self.word.notify_one();
        Ok(())
    }
}

macro_rules! semaphore_type {
    ($name:ident, $doc:literal, $example:literal, $new:item) => {
        heap_handle! {
            #[doc = $doc]
            ///
            #[doc = $example]
            $name
        }

        impl $name {
            $new

            /// Takes one unit, waiting while the count is zero.
            pub fn acquire(&self) -> Result<(), Error> {
                semaphore(self.at)?.acquire(None)
            }

            /// [`acquire`](Self::acquire), giving up with [`Error::Timeout`].
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), Error> {
                semaphore(self.at)?.acquire(Some(timeout))
            }

            /// Takes one unit if there is one now; returns whether it did.
            pub fn try_acquire(&self) -> Result<bool, Error> {
                match semaphore(self.at)?.acquire(Some(Duration::ZERO)) {
                    Ok(()) => Ok(true),
                    Err(Error::Timeout) => Ok(false),
                    Err(e) => Err(e),
                }
            }

            /// Gives one unit back, waking a waiter.
            pub fn release(&self) -> Result<(), Error> {
                semaphore(self.at)?.release()
            }

            /// The current count.
            pub fn value(&self) -> Result<u32, Error> {
                Ok(semaphore(self.at)?.value.load(Ordering::Acquire))
            }
        }
    };
}

semaphore_type!(
    Semaphore,
    "A counting semaphore shared by the processes of the program, like Python's \
     `multiprocessing.Semaphore`.",
    "```\nlet sem = shmpool::Semaphore::new(2)?;\nsem.acquire()?;\nsem.acquire()?;\nassert!(!sem.try_acquire()?);\nsem.release()?;\nassert!(sem.try_acquire()?);\n# Ok::<(), shmpool::Error>(())\n```",
    /// A semaphore holding `value` units.
    pub fn new(value: u32) -> Result<Semaphore, Error> {
        Ok(Semaphore {
            at: semaphore_new(value, 0)?,
        })
    }
);

semaphore_type!(
    BoundedSemaphore,
    "A semaphore that refuses to grow past its initial value, like Python's \
     `multiprocessing.BoundedSemaphore`: a `release` without a matching \
     `acquire` is [`Error::InvalidArgument`] (Python: `ValueError`).",
    "```\nlet sem = shmpool::BoundedSemaphore::new(1)?;\nassert!(sem.release().is_err()); // past its bound\nsem.acquire()?;\nsem.release()?;\n# Ok::<(), shmpool::Error>(())\n```",
    /// A semaphore holding `value` (≥ 1) units, never more.
    pub fn new(value: u32) -> Result<BoundedSemaphore, Error> {
        if value == 0 {
            return Err(Error::invalid("a BoundedSemaphore needs a bound of at least 1"));
        }
        Ok(BoundedSemaphore {
            at: semaphore_new(value, value)?,
        })
    }
);

#[repr(C)]
struct EventObject {
    kind: AtomicU32,
    flag: AtomicU32,
    word: WakeWord,
}

heap_handle! {
    /// A flag processes can wait for, like Python's `multiprocessing.Event`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ev = shmpool::Event::new()?;
    /// assert!(!ev.wait(Some(Duration::from_millis(1)))?);
    /// ev.set()?;
    /// assert!(ev.is_set()? && ev.wait(None)?);
    /// ev.clear()?;
    /// assert!(!ev.is_set()?);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    Event
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, Error> {
        let (at, obj) = alloc::<EventObject>()?;
        obj.kind.store(kind::EVENT, Ordering::Release);
        Ok(Event { at })
    }

    fn object(&self) -> Result<&'static EventObject, Error> {
        resolve(self.at, kind::EVENT)
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<(), Error> {
        let obj = self.object()?;
        obj.flag.store(1, Ordering::Release);
        obj.word.notify_all();
        Ok(())
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), Error> {
        self.object()?.flag.store(0, Ordering::Release);
        Ok(())
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, Error> {
        Ok(self.object()?.flag.load(Ordering::Acquire) != 0)
    }

    /// Waits until the flag is set or `timeout` passes; returns whether it is set.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let obj = self.object()?;
        let deadline = deadline_opt(timeout);
        loop {
            if obj.flag.load(Ordering::Acquire) != 0 {
                return Ok(true);
            }
            let Ok(wait) = left(deadline) else {
                return Ok(false);
            };
            obj.word
                .park_unless(|| obj.flag.load(Ordering::Acquire) != 0, wait);
        }
    }
}

/// A condition: a notify grants wake-ups ("tokens") to the waiters waiting
/// at that moment; a waiter leaves `wait` only by taking one (or at its
/// timeout), so `notify(n)` wakes at most `n`, however the futex behaves.
#[repr(C)]
struct ConditionObject {
    kind: AtomicU32,
    mutex: RawMutex,
    word: WakeWord,
    /// Waiters registered (under `mutex`) and not yet granted a wake-up.
    waiters: AtomicU32,
    /// Wake-ups granted by notifies and not yet taken.
    tokens: AtomicU32,
    /// Bumped (under `mutex`) by every notify that grants wake-ups: a waiter
    /// takes a token only if a notify came after it registered, so a later
    /// waiter cannot take the wake-up of an earlier one.
    generation: AtomicU32,
}

impl ConditionObject {
    /// Takes a wake-up for a waiter registered in `generation`, if one is due.
    fn take_token(&self, generation: u32) -> bool {
        self.generation.load(Ordering::Acquire) != generation
            && self
                .tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
                .is_ok()
    }
}

heap_handle! {
    /// A condition variable shared by processes, with its own lock, like Python's
    /// `multiprocessing.Condition`. Wait and notify through the guard that
    /// [`lock`](Condition::lock) returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cond = shmpool::Condition::new()?;
    /// let mut guard = cond.lock()?;
    /// guard.notify_all();                       // nobody waits: nothing happens
    /// assert!(!guard.wait(Some(Duration::from_millis(5)))?); // times out
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    Condition
}

impl Condition {
    /// A new condition with its own (non-recursive, robust) lock.
    pub fn new() -> Result<Condition, Error> {
        let (at, obj) = alloc::<ConditionObject>()?;
        obj.mutex.init(false)?;
        obj.kind.store(kind::CONDITION, Ordering::Release);
        Ok(Condition { at })
    }

    fn object(&self) -> Result<&'static ConditionObject, Error> {
        resolve(self.at, kind::CONDITION)
    }

    /// Takes the condition's lock.
    pub fn lock(&self) -> Result<ConditionGuard, Error> {
        let obj = self.object()?;
        obj.mutex.lock(None)?;
        Ok(ConditionGuard { obj })
    }
}

/// Holds a [`Condition`]'s lock; releases it when dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ConditionGuard {
    obj: &'static ConditionObject,
}

impl ConditionGuard {
    /// Releases the lock, sleeps until notified (or `timeout`), takes the lock
    /// again. Returns `true` if notified, `false` on timeout. No spurious
    /// wake-ups: it returns `true` only for a notify made after it began
    /// waiting, and [`notify(n)`](Self::notify) wakes at most `n` waiters, as
    /// with Python's `Condition`.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let obj = self.obj;
        let deadline = deadline_opt(timeout);
        // Registered under the lock: a notify after the unlock counts us.
        let generation = obj.generation.load(Ordering::Relaxed);
        obj.waiters.fetch_add(1, Ordering::Relaxed);
        obj.mutex.unlock();
        let mut notified = loop {
            if obj.take_token(generation) {
                break true;
            }
            let Ok(wait) = left(deadline) else {
                break false;
            };
            obj.word.park_unless(
                || {
                    obj.generation.load(Ordering::Acquire) != generation
                        && obj.tokens.load(Ordering::Acquire) > 0
                },
                wait,
            );
        };
        let locked = obj.mutex.lock(None);
        if !notified {
            // Timed out: a notify may have counted us meanwhile; if not, we
            // are no longer a waiter for the next one to count.
            notified = obj.take_token(generation);
            if !notified {
                obj.waiters.fetch_sub(1, Ordering::Relaxed);
            }
        }
        locked?;
        Ok(notified)
    }

    /// Waits while `blocked()` holds (checked with the lock held), at most
    /// `timeout`; returns whether `blocked()` became false.
    pub fn wait_while(
        &mut self,
        mut blocked: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, Error> {
        let deadline = deadline_opt(timeout);
        while blocked() {
            let Ok(wait) = left(deadline) else {
                return Ok(false);
            };
            self.wait(wait)?;
        }
        Ok(true)
    }

    /// Wakes up to `n` of the waiters waiting now.
    pub fn notify(&mut self, n: u32) {
        let obj = self.obj;
        let granted = n.min(obj.waiters.load(Ordering::Relaxed));
        if granted == 0 {
            return;
        }
        obj.waiters.fetch_sub(granted, Ordering::Relaxed);
        obj.tokens.fetch_add(granted, Ordering::Release);
        obj.generation.fetch_add(1, Ordering::Release);
        // Every sleeper looks; those a token is for take one, the others
        // sleep on.
        obj.word.notify_sleepers();
    }

    /// Wakes every waiter waiting now.
    pub fn notify_all(&mut self) {
        self.notify(u32::MAX);
    }
}

impl Drop for ConditionGuard {
    fn drop(&mut self) {
        self.obj.mutex.unlock();
    }
}

impl std::fmt::Debug for ConditionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConditionGuard")
    }
}

#[repr(C)]
struct BarrierObject {
    kind: AtomicU32,
    parties: AtomicU32,
    waiting: AtomicU32,
    generation: AtomicU32,
    broken: AtomicU32,
    mutex: RawMutex,
    word: WakeWord,
}

heap_handle! {
    /// A barrier for a fixed number of processes, like Python's
    /// `multiprocessing.Barrier`: each [`wait`](Barrier::wait) blocks until
    /// `parties` waits are in progress, then all return.
    ///
    /// A waiter that times out breaks the barrier: it and every other waiter get
    /// [`Error::BrokenBarrier`] (or [`Error::Timeout`] for the one that timed out),
    /// so a party that died can never hang the others forever — if they wait with
    /// a timeout.
    ///
    /// ```
    /// let b = shmpool::Barrier::new(1)?;
    /// assert_eq!(b.wait(None)?, 0); // one party: passes at once
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    Barrier
}

impl Barrier {
    /// A barrier for `parties` (≥ 1) waiters.
    pub fn new(parties: u32) -> Result<Barrier, Error> {
        if parties == 0 {
            return Err(Error::invalid("a barrier needs at least one party"));
        }
        let (at, obj) = alloc::<BarrierObject>()?;
        obj.mutex.init(false)?;
        obj.parties.store(parties, Ordering::Relaxed);
        obj.kind.store(kind::BARRIER, Ordering::Release);
        Ok(Barrier { at })
    }

    fn object(&self) -> Result<&'static BarrierObject, Error> {
        resolve(self.at, kind::BARRIER)
    }

    /// Waits for all parties; returns this waiter's arrival index
    /// (`0..parties`, as Python).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u32, Error> {
        let obj = self.object()?;
        let deadline = deadline_opt(timeout);
        obj.mutex.lock(None)?;
        if obj.broken.load(Ordering::Acquire) != 0 {
            obj.mutex.unlock();
            return Err(Error::BrokenBarrier);
        }
        let generation = obj.generation.load(Ordering::Acquire);
        let index = obj.waiting.fetch_add(1, Ordering::AcqRel);
        if index + 1 == obj.parties.load(Ordering::Relaxed) {
            obj.waiting.store(0, Ordering::Release);
            obj.generation.fetch_add(1, Ordering::AcqRel);
            obj.mutex.unlock();
            obj.word.notify_all();
            return Ok(index);
        }
        obj.mutex.unlock();
        let released = || {
            obj.generation.load(Ordering::Acquire) != generation
                || obj.broken.load(Ordering::Acquire) != 0
        };
        loop {
            if obj.generation.load(Ordering::Acquire) != generation {
                return Ok(index);
            }
            if obj.broken.load(Ordering::Acquire) != 0 {
                return Err(Error::BrokenBarrier);
            }
            match left(deadline) {
                Ok(wait) => obj.word.park_unless(released, wait),
                Err(timeout) => {
                    obj.mutex.lock(None)?;
                    let passed = obj.generation.load(Ordering::Acquire) != generation;
                    if !passed {
                        obj.broken.store(1, Ordering::Release);
                    }
                    obj.mutex.unlock();
                    obj.word.notify_all();
                    return if passed { Ok(index) } else { Err(timeout) };
                }
            }
        }
    }

    /// Breaks the barrier: current and future waiters get
    /// [`Error::BrokenBarrier`].
    pub fn abort(&self) -> Result<(), Error> {
        let obj = self.object()?;
        obj.broken.store(1, Ordering::Release);
        obj.word.notify_all();
        Ok(())
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> Result<bool, Error> {
        Ok(self.object()?.broken.load(Ordering::Acquire) != 0)
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<u32, Error> {
        Ok(self.object()?.parties.load(Ordering::Relaxed))
    }

    /// How many waiters are waiting now.
    pub fn n_waiting(&self) -> Result<u32, Error> {
        Ok(self.object()?.waiting.load(Ordering::Acquire))
    }
}
