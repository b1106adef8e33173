//! The objects a server holds, and the operations on them. Each object is a
//! `Mutex` around its state with a `Condvar` for waiters, so one operation on
//! one object is atomic, as with Python's proxies (whose server serializes
//! the calls on one object too).
//!
//! Waiting is done in slices of [`SLICE`]: between slices a waiter checks
//! that its client is still connected and the server is not stopping, so a
//! client that dies while blocked frees its thread within one slice.

// Unsafe code: an `update` runs a client's trampoline through a code offset.
#![allow(unsafe_code)]

use super::protocol::{add_encoded, Answer, Bytes, Fault, Op, Spec, Trampoline, Types};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a waiter sleeps between checks of its client.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// Identifies a client connection (lock ownership).
pub(crate) type ConnId = u64;

/// What the server knows about the caller of an operation.
pub(crate) trait Caller {
    fn id(&self) -> ConnId;
    /// Whether the caller has gone (disconnected, or the server stops).
    fn gone(&self) -> bool;
    /// Whether the caller runs this server's executable, so that a code
    /// offset it sends names a function of ours (`update`).
    fn runs_our_code(&self) -> bool;
}

pub(crate) struct Object {
    state: Mutex<State>,
    changed: Condvar,
    /// Set when the server frees it (its last proxy went): a call waiting
    /// in it ends.
    freed: AtomicBool,
    /// The types of the proxy that made it.
    pub(crate) types: Types,
}

/// A dict that keeps insertion order, as Python's does: keys to their
/// sequence number, and entries by sequence number.
#[derive(Default)]
struct OrderedMap {
    index: HashMap<Bytes, u64>,
    entries: BTreeMap<u64, (Bytes, Bytes)>,
    next: u64,
}

#[derive(Default)]
struct LockState {
    owner: Option<ConnId>,
    depth: u64,
    recursive: bool,
    /// The holder disconnected holding it: the next acquirer is told.
    owner_died: bool,
}

enum State {
    Dict(OrderedMap),
    List(Vec<Bytes>),
    Namespace(BTreeMap<String, Bytes>),
    Queue(VecDeque<Bytes>),
    Lock(LockState),
    Semaphore {
        value: u64,
        bound: Option<u64>,
    },
    Event(bool),
    /// A lock, and its waiters in arrival order (ticket, notified).
    Condition {
        lock: LockState,
        waiters: VecDeque<(u64, bool)>,
        next: u64,
    },
    Barrier {
        parties: u64,
        arrived: u64,
        generation: u64,
        broken: bool,
    },
    Value(Bytes),
    Array(Vec<Bytes>),
}

impl Object {
    pub(crate) fn new(spec: Spec, types: Types) -> Result<Object, Fault> {
        let state = match spec {
            Spec::Dict => State::Dict(OrderedMap::default()),
            Spec::List(items) => State::List(items),
            Spec::Namespace => State::Namespace(BTreeMap::new()),
            Spec::Queue => State::Queue(VecDeque::new()),
            Spec::Lock | Spec::RLock => State::Lock(LockState {
                recursive: spec == Spec::RLock,
                ..LockState::default()
            }),
            Spec::Semaphore { value, bounded } => State::Semaphore {
                value,
                bound: bounded.then_some(value),
            },
            Spec::Event => State::Event(false),
            Spec::Condition => State::Condition {
                lock: LockState {
                    recursive: true, // Python's Condition() wraps an RLock
                    ..LockState::default()
                },
                waiters: VecDeque::new(),
                next: 0,
            },
            Spec::Barrier { parties: 0 } => {
                return Err(Fault::Invalid("a barrier needs at least one party".into()))
            }
            Spec::Barrier { parties } => State::Barrier {
                parties,
                arrived: 0,
                generation: 0,
                broken: false,
            },
            Spec::Value(v) => State::Value(v),
            Spec::Array(items) => State::Array(items),
        };
        Ok(Object {
            state: Mutex::new(state),
            changed: Condvar::new(),
            freed: AtomicBool::new(false),
            types,
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic on the server is a bug; the state stays usable.
        crate::sync::lock(&self.state)
    }

    /// Whether this object's kind is `kind` (for named objects).
    pub(crate) fn is(&self, spec: &Spec) -> bool {
        let state = self.lock_state();
        matches!(
            (&*state, spec),
            (State::Dict(_), Spec::Dict)
                | (State::List(_), Spec::List(_))
                | (State::Namespace(_), Spec::Namespace)
                | (State::Queue(_), Spec::Queue)
                | (State::Event(_), Spec::Event)
                | (State::Condition { .. }, Spec::Condition)
                | (State::Barrier { .. }, Spec::Barrier { .. })
                | (State::Value(_), Spec::Value(_))
                | (State::Array(_), Spec::Array(_))
        ) || match (&*state, spec) {
            (State::Lock(l), Spec::Lock) => !l.recursive,
            (State::Lock(l), Spec::RLock) => l.recursive,
            (State::Semaphore { bound, .. }, Spec::Semaphore { bounded, .. }) => {
                bound.is_some() == *bounded
            }
            _ => false,
        }
    }

    /// Marks it freed (the server no longer holds it) and wakes the calls
    /// waiting in it, which end with an error.
    pub(crate) fn free(&self) {
        let _state = self.lock_state();
        self.freed.store(true, Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// Releases a lock held by `conn`, which disconnected: the next acquirer
    /// gets [`Fault::OwnerDied`].
    pub(crate) fn abandon(&self, conn: ConnId) {
        let mut state = self.lock_state();
        let lock = match &mut *state {
            State::Lock(lock) | State::Condition { lock, .. } => lock,
            _ => return,
        };
        if lock.owner == Some(conn) {
            lock.owner = None;
            lock.depth = 0;
            lock.owner_died = true;
            self.changed.notify_all();
        }
    }

    /// Waits until `ready` yields, at most until `deadline`, while the
    /// caller is connected.
    fn wait_for<'a, T>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        caller: &dyn Caller,
        mut ready: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<(T, MutexGuard<'a, State>), Fault> {
        loop {
            if let Some(t) = ready(&mut state) {
                return Ok((t, state));
            }
            let slice = match deadline {
                None => SLICE,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(SLICE),
                    _ => return Err(Fault::Timeout),
                },
            };
            state = crate::sync::unpoisoned(self.changed.wait_timeout(state, slice)).0;
            // Checked after each wake, before `ready` takes anything: a
            // client that died while waiting must not take a queue's item or
            // a lock that a live client could have.
            if caller.gone() {
                return Err(Fault::Timeout); // nobody reads the answer
            }
            if self.freed.load(Ordering::Relaxed) {
                return Err(Fault::Invalid(
                    "the manager's object was freed while this call waited in it".into(),
                ));
            }
        }
    }

    /// Applies `op`. `held` is told which locks the caller now holds (`true`)
    /// or released (`false`), so they are freed if it disconnects.
    pub(crate) fn apply(
        &self,
        op: Op,
        caller: &dyn Caller,
        held: &mut dyn FnMut(bool),
    ) -> Result<Answer, Fault> {
        let state = self.lock_state();
        let deadline =
            |t: Option<u64>| t.and_then(|us| Instant::now().checked_add(Duration::from_micros(us)));
        match op {
            Op::Dequeue(t) => {
                let (item, state) = self.wait_for(state, deadline(t), caller, |s| match s {
                    State::Queue(q) => q.pop_front().map(Ok),
                    _ => Some(Err(wrong("dequeue"))),
                })?;
                drop(state);
                Ok(Answer::Item(Some(item?)))
            }
            Op::Acquire(t) => self.acquire(state, deadline(t), caller, held),
            Op::Release => self.release(state, caller, held),
            Op::Wait(t) => {
                if !matches!(&*state, State::Event(_)) {
                    return Err(wrong("wait"));
                }
                let set = self
                    .wait_for(state, deadline(t), caller, |s| {
                        matches!(s, State::Event(true)).then_some(())
                    })
                    .is_ok();
                Ok(Answer::Flag(set))
            }
            Op::CondWait(t) => self.condition_wait(state, deadline(t), caller),
            Op::BarrierWait(t) => self.barrier_wait(state, deadline(t), caller),
            op => {
                let mut state = state;
                let answer = apply_now(&mut state, op, caller)?;
                self.changed.notify_all();
                Ok(answer)
            }
        }
    }

    fn acquire(
        &self,
        state: MutexGuard<'_, State>,
        deadline: Option<Instant>,
        caller: &dyn Caller,
        held: &mut dyn FnMut(bool),
    ) -> Result<Answer, Fault> {
        let me = caller.id();
        let outcome = self.wait_for(state, deadline, caller, |s| match s {
            State::Lock(lock) | State::Condition { lock, .. } => try_lock(lock, me),
            State::Semaphore { value, .. } => (*value > 0).then(|| {
                *value -= 1;
                Ok(false)
            }),
            _ => Some(Err(wrong("acquire"))),
        });
        match outcome {
            Ok((Ok(is_lock), _)) => {
                if is_lock {
                    held(true);
                }
                Ok(Answer::Flag(true))
            }
            Ok((Err(fault), _)) => Err(fault),
            Err(Fault::Timeout) => Ok(Answer::Flag(false)),
            Err(fault) => Err(fault),
        }
    }

    fn release(
        &self,
        mut state: MutexGuard<'_, State>,
        caller: &dyn Caller,
        held: &mut dyn FnMut(bool),
    ) -> Result<Answer, Fault> {
        match &mut *state {
            State::Lock(lock) | State::Condition { lock, .. } => {
                if lock.owner != Some(caller.id()) {
                    return Err(Fault::Invalid(
                        "release of a lock this thread does not hold".into(),
                    ));
                }
                lock.depth -= 1;
                if lock.depth == 0 {
                    lock.owner = None;
                    held(false);
                }
            }
            State::Semaphore { value, bound } => {
                if bound.is_some_and(|b| *value >= b) {
                    return Err(Fault::Invalid(
                        "a bounded semaphore was released too many times".into(),
                    ));
                }
                *value = value.checked_add(1).ok_or_else(|| {
                    Fault::Invalid("the semaphore's count is at its largest (u64::MAX)".into())
                })?;
            }
            _ => return Err(wrong("release")),
        }
        self.changed.notify_all();
        Ok(Answer::Done)
    }

    /// Releases the condition's lock entirely, waits for a notification,
    /// takes the lock back at the same depth.
    fn condition_wait(
        &self,
        mut state: MutexGuard<'_, State>,
        deadline: Option<Instant>,
        caller: &dyn Caller,
    ) -> Result<Answer, Fault> {
        let me = caller.id();
        let (depth, ticket) = match &mut *state {
            State::Condition {
                lock,
                waiters,
                next,
            } => {
                if lock.owner != Some(me) {
                    return Err(Fault::Invalid(
                        "wait on a condition whose lock this thread does not hold".into(),
                    ));
                }
                let ticket = *next;
                *next = next.wrapping_add(1); // tickets are compared, never ordered
                waiters.push_back((ticket, false));
                let depth = std::mem::take(&mut lock.depth);
                lock.owner = None;
                (depth, ticket)
            }
            _ => return Err(wrong("wait on a condition")),
        };
        self.changed.notify_all();
        let notified = |s: &mut State| match s {
            State::Condition { waiters, .. } => {
                let at = waiters.iter().position(|w| w.0 == ticket)?;
                waiters[at].1.then(|| {
                    waiters.remove(at);
                })
            }
            _ => None,
        };
        let (notified, state) = match self.wait_for(state, deadline, caller, notified) {
            Ok(((), state)) => (true, state),
            Err(_) => {
                // Timed out, unless notified at the last moment: leave the line.
                let mut state = self.lock_state();
                let mut was_notified = false;
                if let State::Condition { waiters, .. } = &mut *state {
                    if let Some(at) = waiters.iter().position(|w| w.0 == ticket) {
                        was_notified = waiters.remove(at).is_some_and(|w| w.1);
                    }
                }
                (was_notified, state)
            }
        };
        self.retake(state, depth, notified, caller)
    }

    /// Takes a condition's lock back for `caller` at `depth` (always waits:
    /// a waiter holds the lock again when `wait` returns, as in Python).
    fn retake(
        &self,
        state: MutexGuard<'_, State>,
        depth: u64,
        notified: bool,
        caller: &dyn Caller,
    ) -> Result<Answer, Fault> {
        let me = caller.id();
        let ((), state) = self.wait_for(state, None, caller, |s| match s {
            State::Condition { lock, .. } if lock.owner.is_none() => {
                lock.owner = Some(me);
                lock.depth = depth;
                lock.owner_died = false;
                Some(())
            }
            _ => None,
        })?;
        drop(state);
        Ok(Answer::Flag(notified))
    }

    fn barrier_wait(
        &self,
        mut state: MutexGuard<'_, State>,
        deadline: Option<Instant>,
        caller: &dyn Caller,
    ) -> Result<Answer, Fault> {
        let (index, my_generation) = match &mut *state {
            State::Barrier { broken: true, .. } => return Err(Fault::BrokenBarrier),
            State::Barrier {
                parties,
                arrived,
                generation,
                ..
            } => {
                let index = *arrived;
                *arrived += 1;
                if *arrived == *parties {
                    *arrived = 0;
                    *generation += 1;
                    self.changed.notify_all();
                    return Ok(Answer::Count(index));
                }
                (index, *generation)
            }
            _ => return Err(wrong("wait on a barrier")),
        };
        let passed = self.wait_for(state, deadline, caller, |s| match s {
            State::Barrier { generation, .. } if *generation != my_generation => Some(Ok(())),
            State::Barrier { broken: true, .. } => Some(Err(Fault::BrokenBarrier)),
            _ => None,
        });
        match passed {
            Ok((Ok(()), _)) => Ok(Answer::Count(index)),
            Ok((Err(fault), _)) => Err(fault),
            Err(_) => {
                // A waiter that times out breaks the barrier (Python's rule):
                // the others get `BrokenBarrier`; it gets `Timeout`, as with
                // the heap's `Barrier`, so the caller can tell who gave up.
                let mut state = self.lock_state();
                if let State::Barrier {
                    broken,
                    generation,
                    arrived,
                    ..
                } = &mut *state
                {
                    if *generation != my_generation {
                        return Ok(Answer::Count(index));
                    }
                    *broken = true;
                    *arrived = 0;
                }
                self.changed.notify_all();
                Err(Fault::Timeout)
            }
        }
    }
}

/// Takes `lock` for `me` if it is free (or already `me`'s and recursive):
/// `Some(Ok(true))`; a dead holder's lock is reported once and left free.
fn try_lock(lock: &mut LockState, me: ConnId) -> Option<Result<bool, Fault>> {
    match lock.owner {
        None if lock.owner_died => {
            lock.owner_died = false;
            Some(Err(Fault::OwnerDied))
        }
        None => {
            lock.owner = Some(me);
            lock.depth = 1;
            Some(Ok(true))
        }
        Some(owner) if owner == me && lock.recursive => Some(match lock.depth.checked_add(1) {
            Some(depth) => {
                lock.depth = depth;
                Ok(true)
            }
            None => Err(Fault::Invalid("the lock is held too many times".into())),
        }),
        Some(owner) if owner == me => Some(Err(Fault::Invalid(
            "this thread already holds the lock (a Lock is not re-entrant; use an RLock)".into(),
        ))),
        Some(_) => None,
    }
}

fn wrong(op: &str) -> Fault {
    Fault::Invalid(format!("this manager object does not support {op}"))
}

/// Python's index rule: negative counts from the end; `None` if outside.
fn index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    (0..len as i64).contains(&i).then_some(i as usize)
}

fn out_of_range(i: i64, len: usize) -> Fault {
    Fault::Invalid(format!("index {i} out of range for a list of {len}"))
}

/// Sets (`Some`) or removes (`None`) a dict's entry; the value it had.
fn dict_put(d: &mut OrderedMap, k: Bytes, v: Option<Bytes>) -> Result<Option<Bytes>, Fault> {
    Ok(match (d.index.get(&k), v) {
        (Some(seq), Some(v)) => {
            let slot = d.entries.get_mut(seq).expect("indexed entry");
            Some(std::mem::replace(&mut slot.1, v))
        }
        (Some(_), None) => {
            let seq = d.index.remove(&k).expect("indexed entry");
            d.entries.remove(&seq).map(|(_, v)| v)
        }
        (None, Some(v)) => {
            let seq = d.next;
            d.next = d.next.checked_add(1).ok_or_else(|| {
                Fault::Invalid("the dict has had too many entries (u64::MAX)".into())
            })?;
            d.index.insert(k.clone(), seq);
            d.entries.insert(seq, (k, v));
            None
        }
        (None, None) => None,
    })
}

/// Runs a client's update function on `old`: only for a client of this
/// executable (checked by the acceptor), whose code offsets name our code.
fn run_update(
    caller: &dyn Caller,
    trampoline: u64,
    func: u64,
    old: Option<&[u8]>,
) -> Result<Option<Bytes>, Fault> {
    if !caller.runs_our_code() {
        return Err(Fault::Invalid(
            "update runs a function in the server: only local clients of the same executable \
             may send one (fetch_add works for every client)"
                .into(),
        ));
    }
    let at = crate::task::code_at(trampoline);
    // The caller runs this executable (the acceptor compared its
    // `/proc/<pid>/exe` with ours) and proved it knows the key; its proxies
    // send the code offset of a `Trampoline` monomorphized for the value
    // type, which the object's type fingerprint (checked before this call)
    // pins, and of a function of the type that trampoline casts to.
    // SAFETY: so `at` is the address of such a trampoline in this process.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(at) };
    trampoline(crate::task::code_at(func), old).map_err(Fault::Invalid)
}

/// The operations that never wait.
fn apply_now(state: &mut State, op: Op, caller: &dyn Caller) -> Result<Answer, Fault> {
    use Answer::*;
    Ok(match (state, op) {
        (State::Dict(d), Op::Len) => Count(d.index.len() as u64),
        (State::List(l) | State::Array(l), Op::Len) => Count(l.len() as u64),
        (State::Queue(q), Op::Len) => Count(q.len() as u64),
        (State::Dict(d), Op::Clear) => {
            *d = OrderedMap::default();
            Done
        }
        (State::List(l), Op::Clear) => {
            l.clear();
            Done
        }
        (State::Dict(d), Op::Insert(k, v)) => Item(dict_put(d, k, Some(v))?),
        (State::Dict(d), Op::Lookup(k)) => {
            Item(d.index.get(&k).map(|seq| d.entries[seq].1.clone()))
        }
        (State::Dict(d), Op::Remove(k)) => Item(dict_put(d, k, None)?),
        (State::Dict(d), Op::Contains(k)) => Flag(d.index.contains_key(&k)),
        (State::Dict(d), Op::Keys) => Items(d.entries.values().map(|(k, _)| k.clone()).collect()),
        (State::Dict(d), Op::Entries) => Pairs(d.entries.values().cloned().collect()),
        (State::List(l), Op::Push(v)) => {
            l.push(v);
            Done
        }
        (State::List(l) | State::Array(l), Op::At(i)) => {
            let at = index(i, l.len()).ok_or_else(|| out_of_range(i, l.len()))?;
            Item(Some(l[at].clone()))
        }
        (State::List(l) | State::Array(l), Op::Put(i, v)) => {
            let at = index(i, l.len()).ok_or_else(|| out_of_range(i, l.len()))?;
            l[at] = v;
            Done
        }
        (State::List(l), Op::InsertAt(i, v)) => {
            // Python's list.insert clamps the index.
            let len = l.len() as i64;
            let at = if i < 0 { (len + i).max(0) } else { i.min(len) };
            l.insert(at as usize, v);
            Done
        }
        (State::List(l), Op::Pop(None)) => Item(l.pop()),
        (State::List(l), Op::Pop(Some(i))) => Item(index(i, l.len()).map(|at| l.remove(at))),
        (State::List(l), Op::Extend(items)) => {
            l.extend(items);
            Done
        }
        (State::List(l), Op::Reverse) => {
            l.reverse();
            Done
        }
        (State::List(l) | State::Array(l), Op::All) => Items(l.clone()),
        (State::Namespace(ns), Op::SetAttr(name, v)) => {
            ns.insert(name, v);
            Done
        }
        (State::Namespace(ns), Op::GetAttr(name)) => Item(ns.get(&name).cloned()),
        (State::Namespace(ns), Op::DelAttr(name)) => Item(ns.remove(&name)),
        (State::Namespace(ns), Op::Keys) => {
            Items(ns.keys().map(|k| k.as_bytes().to_vec()).collect())
        }
        (State::Queue(q), Op::Enqueue(v)) => {
            q.push_back(v);
            Done
        }
        (State::Event(flag), Op::Set) => {
            *flag = true;
            Done
        }
        (State::Event(flag), Op::Unset) => {
            *flag = false;
            Done
        }
        (State::Event(flag), Op::IsSet) => Flag(*flag),
        (State::Condition { lock, waiters, .. }, Op::Notify(n)) => {
            if lock.owner != Some(caller.id()) {
                return Err(Fault::Invalid(
                    "notify on a condition whose lock this thread does not hold".into(),
                ));
            }
            let mut woken = 0;
            for waiter in waiters.iter_mut().filter(|w| !w.1).take(n as usize) {
                waiter.1 = true;
                woken += 1;
            }
            Count(woken)
        }
        (
            State::Barrier {
                broken, arrived, ..
            },
            Op::Abort,
        ) => {
            *broken = true;
            *arrived = 0;
            Done
        }
        (State::Value(v), Op::Load) => Item(Some(v.clone())),
        (State::Value(v), Op::Store(new)) => {
            *v = new;
            Done
        }
        (State::Dict(d), Op::AddTo(Some(k), kind, delta)) => {
            let old = d.index.get(&k).map(|seq| &d.entries[seq].1);
            let (old, new) = add_encoded(old.map(Vec::as_slice), kind, &delta)?;
            dict_put(d, k, Some(new))?;
            Item(Some(old))
        }
        (State::Value(v), Op::AddTo(None, kind, delta)) => {
            let (old, new) = add_encoded(Some(v), kind, &delta)?;
            *v = new;
            Item(Some(old))
        }
        (State::Dict(d), Op::Update(Some(k), trampoline, func)) => {
            let old = d.index.get(&k).map(|seq| d.entries[seq].1.as_slice());
            let new = run_update(caller, trampoline, func, old)?;
            dict_put(d, k, new.clone())?;
            Item(new)
        }
        (State::Value(v), Op::Update(None, trampoline, func)) => {
            let new = run_update(caller, trampoline, func, Some(v))?
                .ok_or_else(|| Fault::Invalid("an update of a value must give a value".into()))?;
            *v = new.clone();
            Item(Some(new))
        }
        (_, op) => return Err(wrong(op.name())),
    })
}
