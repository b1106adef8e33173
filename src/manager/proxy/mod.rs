//! Proxies: handles to objects a manager's server holds, each owning one
//! reference to its object (`Clone` takes another, `Drop` gives it back),
//! and their borrowed form, [`Borrowed`], which is what travels to other
//! processes. Both are the offset of the manager's endpoint record in the
//! object heap, the object's id on the server and the fingerprint of the
//! proxy's types (checked by the server on every call); a `Borrowed` is
//! [`Pod`](crate::Pod): an ordinary argument of a
//! [`Process`](crate::Process) or a pool task, which connects on its first
//! call in whatever process it reaches. It is also a serde value (for
//! `pool.serde()` tasks), whose decoding checks what a `Pod` copy is
//! trusted for by construction: that it names a manager of this program and
//! the proxy type it is decoded as.

// Unsafe code: a client's function called through a code offset; `Borrowed` is `Pod`.
#![allow(unsafe_code)]

mod collections;
mod queue;
mod sync;
mod value;

pub use collections::{DictProxy, ListProxy, NamespaceProxy};
pub use queue::QueueProxy;
pub use sync::{
    BarrierProxy, ConditionProxy, ConditionProxyGuard, EventProxy, LockProxy, LockProxyGuard,
    RLockProxy, RLockProxyGuard, SemaphoreProxy,
};
pub use value::{ArrayProxy, ValueProxy};

use super::protocol::{decode, encode, number, Answer, Bytes, Op, Request, Trampoline, Types};
use super::{client, endpoint};
use crate::error::Error;
use crate::task::code_offset;
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::marker::PhantomData;

/// What every proxy is: the manager's endpoint record, an object id, the
/// fingerprint of the proxy's types, and whether the object is counted
/// (1) or was created by name (0: it lives as long as the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub(crate) struct Handle {
    pub(crate) endpoint: u64,
    pub(crate) id: u64,
    pub(crate) types: u64,
    pub(crate) counted: u64,
}

/// What the manager needs of a proxy type: its types, and how to make one
/// that takes over a reference the caller holds.
pub(crate) trait Typed: Sized {
    fn of(borrowed: Borrowed<Self>) -> Self;
    fn types() -> Types;
}

/// The borrowed form of a proxy `P` ([`DictProxy`], [`QueueProxy`], …):
/// what travels to another process. It has every method of its proxy (a
/// proxy dereferences to it) and is [`Pod`](crate::Pod), so it is an
/// argument of a [`Process`](crate::Process) or a pool task, or a value
/// bound by [`partial`](crate::partial). Made by the proxy's `borrowed()`.
///
/// It is also `Serialize` and `Deserialize`, so it goes wherever serde
/// values do: an argument or bound value of a [`pool.serde()`](crate::Pool::serde)
/// task, a message of a [`serial`](crate::serial) queue or of a manager's
/// queue. Its encoding means something only in this program: decoding
/// refuses one made by another program, or for another proxy type (as
/// [`Error::Decode`] from a queue; a task's decoding failure fails the
/// task).
///
/// It holds no reference: it works while a proxy of its object lives, in any
/// process. Keep the proxy until the processes that got its borrowed form
/// are done with it (join them; a map returns when its tasks are done), or
/// have them take a reference of their own with its `to_proxy()`
/// (as Python's proxies do when they reach a process). A `Borrowed` of an
/// object that was freed gives [`Error::InvalidArgument`] saying so, never
/// another object: ids are not reused. Objects made by name (`*_named`) are
/// never freed.
///
/// ```
/// use shmpool::manager::{Borrowed, DictProxy};
/// use shmpool::{Manager, Process};
///
/// fn child(d: Borrowed<DictProxy<u32, u32>>) {
///     d.insert(&1, &10).unwrap(); // works: the parent's `d` lives
///     let mine = d.to_proxy().unwrap(); // a reference of this process
///     mine.insert(&2, &20).unwrap();
/// } // `mine` dropped: its reference goes back
///
/// let manager = Manager::start()?;
/// let d = manager.dict::<u32, u32>()?;
/// let mut p = Process::new(child, (d.borrowed(),));
/// p.start()?;
/// assert_eq!(p.join(None)?, Some(0));
/// assert_eq!(d.len()?, 2);
/// drop(d); // the last proxy: the server frees the dict
/// assert_eq!(manager.object_count()?, 0);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// A batch job over files that counts into one shared dict:
///
/// ```
/// use shmpool::manager::{Borrowed, DictProxy};
/// use shmpool::{partial, Manager, Pool};
///
/// fn count(d: Borrowed<DictProxy<String, u64>>, name: String) -> usize {
///     d.fetch_add(name.as_str(), 1).unwrap();
///     d.fetch_add("total", 1).unwrap();
///     name.len()
/// }
///
/// let manager = Manager::start()?;
/// let d = manager.dict::<String, u64>()?;
/// let pool = Pool::new(2)?;
/// let names: Vec<String> = vec!["a.txt".into(), "bb.txt".into(), "a.txt".into()];
/// let lens = pool.serde().map(partial(count, d.borrowed()), &names)?;
/// assert_eq!(lens, [5, 6, 5]);
/// assert_eq!(d.get("total")?, Some(3));
/// assert_eq!(d.get("a.txt")?, Some(2));
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// A proxy itself does not travel: it owns a reference, which a copy of its
/// bytes in another process would give back a second time.
///
/// ```compile_fail,E0277
/// use shmpool::manager::DictProxy;
///
/// fn child(d: DictProxy<u32, u32>) {
///     d.insert(&1, &10).unwrap();
/// }
/// let manager = shmpool::Manager::start().unwrap();
/// let d = manager.dict::<u32, u32>().unwrap();
/// shmpool::Process::new(child, (d,)); // not `Pod`: use `d.borrowed()`
/// ```
///
/// A lock's guard borrows the proxy (or `Borrowed`) it came from, so the
/// proxy, and with it the lock, cannot go first.
///
/// ```compile_fail,E0597
/// let manager = shmpool::Manager::start().unwrap();
/// let held = {
///     let lock = manager.lock().unwrap();
///     lock.lock().unwrap()
/// }; // `lock` dropped here while `held` borrows it
/// drop(held);
/// ```
#[repr(C)]
pub struct Borrowed<P> {
    pub(crate) handle: Handle,
    _proxy: PhantomData<fn() -> P>,
}

impl<P> Borrowed<P> {
    pub(crate) fn new(handle: Handle) -> Borrowed<P> {
        Borrowed {
            handle,
            _proxy: PhantomData,
        }
    }
}

/// `to_proxy` of every proxy type (see the macro): one more reference.
pub(crate) fn adopt<P: Typed>(borrowed: &Borrowed<P>) -> Result<P, Error> {
    let h = borrowed.handle;
    if h.counted != 0 {
        match client::call(h.endpoint, &Request::Incref(h.id, h.types))? {
            Answer::Done => {}
            other => return Err(unexpected(other)),
        }
    }
    Ok(P::of(*borrowed))
}

impl<P> Clone for Borrowed<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Borrowed<P> {}

impl<P> std::fmt::Debug for Borrowed<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Borrowed")
            .field("endpoint", &self.handle.endpoint)
            .field("id", &self.handle.id)
            .finish()
    }
}

// SAFETY: four integers (a heap offset, checked against the record's tag on
// use; a server-side id and a type fingerprint, both checked by the server;
// a flag) and a zero-sized marker: they mean the same in every process of
// the program, and all zeros is a handle the record check refuses.
#[diagnostic::do_not_recommend]
unsafe impl<P: 'static> crate::Pod for Borrowed<P> {}

/// A [`Borrowed`]'s serde form: its handle, and the nonce of the endpoint
/// record its offset names, which ties it to this program's heap.
#[derive(Serialize, Deserialize)]
struct Encoded {
    endpoint: u64,
    nonce: u64,
    id: u64,
    types: u64,
    counted: u64,
}

impl<P> Serialize for Borrowed<P> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let h = self.handle;
        let record = endpoint::record(h.endpoint).map_err(S::Error::custom)?;
        Encoded {
            endpoint: h.endpoint,
            nonce: record.nonce,
            id: h.id,
            types: h.types,
            counted: h.counted,
        }
        .serialize(serializer)
    }
}

/// Decodes a `Borrowed<P>` (each proxy type's `Deserialize`, see the
/// macro), trusting the bytes no more than a `Pod` copy is trusted: the
/// offset must name an endpoint record of this program's heap with the same
/// nonce (not a record of another program's heap at that offset), the types
/// must be `P`'s (a `Pod` copy has them by construction), the flag 0 or 1.
/// The id stays for the server to check, as it is for a `Pod` copy.
pub(crate) fn deserialize<'de, P: Typed, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Borrowed<P>, D::Error> {
    use serde::de::Error as _;
    let e = Encoded::deserialize(deserializer)?;
    let ours = endpoint::record(e.endpoint).is_ok_and(|r| r.nonce == e.nonce);
    if !ours {
        return Err(D::Error::custom(
            "not a manager proxy of this program (made by another program, or forged)",
        ));
    }
    let types = P::types();
    if e.types != types.fingerprint {
        return Err(D::Error::custom(format!(
            "a manager proxy of other types than {}",
            types.names
        )));
    }
    if e.counted > 1 {
        return Err(D::Error::custom("a malformed manager proxy"));
    }
    Ok(Borrowed::new(Handle {
        endpoint: e.endpoint,
        id: e.id,
        types: e.types,
        counted: e.counted,
    }))
}

impl Handle {
    /// Takes one more reference (a proxy's `clone`). It waits for the
    /// server: a reference sent and not yet counted could be outrun by a
    /// `drop` of the original in another thread. A server that is gone
    /// counts nothing, and the clone's calls fail as the original's do.
    pub(crate) fn retain(&self) {
        if self.counted != 0 {
            let _ = client::call(self.endpoint, &Request::Incref(self.id, self.types));
        }
    }

    /// Gives one reference back (a proxy's `drop`), without waiting for the
    /// answer. If it cannot be sent (the manager is gone, or the thread is
    /// exiting), the server drops it with the process's others when the
    /// process's last connection closes.
    pub(crate) fn release(&self) {
        if self.counted != 0 {
            let _ = client::notify(self.endpoint, &Request::Decref(self.id));
        }
    }

    pub(crate) fn call(&self, op: Op) -> Result<Answer, Error> {
        client::call(self.endpoint, &Request::Call(self.id, self.types, op))
    }

    pub(crate) fn done(&self, op: Op) -> Result<(), Error> {
        match self.call(op)? {
            Answer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn flag(&self, op: Op) -> Result<bool, Error> {
        match self.call(op)? {
            Answer::Flag(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn count(&self, op: Op) -> Result<u64, Error> {
        match self.call(op)? {
            Answer::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn item(&self, op: Op) -> Result<Option<Bytes>, Error> {
        match self.call(op)? {
            Answer::Item(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn items(&self, op: Op) -> Result<Vec<Bytes>, Error> {
        match self.call(op)? {
            Answer::Items(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The item `op` answers, decoded as `T`, if there is one.
    pub(crate) fn value<T: DeserializeOwned>(&self, op: Op) -> Result<Option<T>, Error> {
        self.item(op)?.map(|v| decode(&v)).transpose()
    }

    /// The items `op` answers, each decoded as `T`.
    pub(crate) fn values<T: DeserializeOwned>(&self, op: Op) -> Result<Vec<T>, Error> {
        self.items(op)?.iter().map(|v| decode(v)).collect()
    }
}

mod sealed {
    /// Implemented for the number types only.
    pub trait Sealed {
        /// Which `protocol::number` kind the server adds as.
        const KIND: u8;
    }
}

/// A number a manager can add to in place
/// (`fetch_add` of a [`DictProxy`] or a [`ValueProxy`]): the integer types
/// (the sum is checked: an overflow is refused, never wrapped) and the
/// floats.
pub trait Number: sealed::Sealed + Serialize + DeserializeOwned + Copy {}

macro_rules! number {
    ($($t:ty => $kind:ident),+ $(,)?) => {$(
        impl sealed::Sealed for $t {
            const KIND: u8 = number::$kind;
        }
        impl Number for $t {}
    )+};
}

// `isize` and `usize` are encoded as 64-bit integers (on 64-bit targets).
#[cfg(target_pointer_width = "64")]
number!(isize => I64, usize => U64);
number!(
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    f32 => F32, f64 => F64,
);

/// `op` on behalf of `fetch_add`: adds `delta` in the server; the old value.
pub(crate) fn fetch_add<N: Number>(
    handle: &Handle,
    key: Option<Bytes>,
    delta: N,
) -> Result<N, Error> {
    let old = handle.item(Op::AddTo(key, N::KIND, encode(&delta)?))?;
    decode(&old.ok_or_else(|| Error::Decode("no old value in the reply".into()))?)
}

/// The server's half of an `update` (see `protocol::Trampoline`): decodes the
/// old value as `V`, calls the client's function, encodes what it gives.
pub(crate) fn trampoline<V: Serialize + DeserializeOwned>(
    func: usize,
    old: Option<&[u8]>,
) -> Result<Option<Bytes>, String> {
    // The server checked that the client runs this executable, and the code
    // offset it sent maps to the same function here.
    // SAFETY: so `func` is the address, in this process, of the
    // `fn(Option<V>) -> Option<V>` the client's `update` passed.
    let f = unsafe { std::mem::transmute::<usize, fn(Option<V>) -> Option<V>>(func) };
    let old = old
        .map(decode::<V>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let new = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(old)))
        .map_err(|_| "the update function panicked in the manager's server".to_owned())?;
    new.as_ref()
        .map(encode)
        .transpose()
        .map_err(|e| e.to_string())
}

/// `op` on behalf of `update`: runs `f` in the server; the new value.
pub(crate) fn update<V: Serialize + DeserializeOwned>(
    handle: &Handle,
    key: Option<Bytes>,
    f: fn(Option<V>) -> Option<V>,
) -> Result<Option<V>, Error> {
    let trampoline: Trampoline = trampoline::<V>;
    let op = Op::Update(
        key,
        code_offset(trampoline as usize),
        code_offset(f as usize),
    );
    let new = handle.item(op)?;
    new.map(|v| decode(&v)).transpose()
}

/// The methods a list and an array share (`$v`: the name Python's docs
/// would give the object).
macro_rules! indexed {
    ($v:literal) => {
        #[doc = concat!("`", $v, "[index]` (negative counts from the end); out of range")]
        /// is [`Error::InvalidArgument`] (Python's `IndexError`).
        pub fn get(&self, index: i64) -> Result<T, Error> {
            self.handle
                .value(Op::At(index))?
                .ok_or_else(|| Error::invalid("no item"))
        }

        #[doc = concat!("`", $v, "[index] = value`.")]
        pub fn set(&self, index: i64, value: &T) -> Result<(), Error> {
            self.handle.done(Op::Put(index, encode(value)?))
        }

        #[doc = concat!("`len(", $v, ")`.")]
        pub fn len(&self) -> Result<usize, Error> {
            Ok(self.handle.count(Op::Len)? as usize)
        }

        #[doc = concat!("`len(", $v, ") == 0`.")]
        pub fn is_empty(&self) -> Result<bool, Error> {
            Ok(self.len()? == 0)
        }

        #[doc = concat!("`", $v, "[:]`: a copy of every item.")]
        pub fn to_vec(&self) -> Result<Vec<T>, Error> {
            self.handle.values(Op::All)
        }
    };
}
pub(crate) use indexed;

/// A reply of the wrong shape: the peer is not the server this client
/// speaks with (another version), so it is a decoding failure.
pub(crate) fn unexpected(answer: Answer) -> Error {
    let shape = format!("{answer:?}");
    Error::Decode(format!(
        "unexpected reply from the manager: {}",
        shape.split('(').next().unwrap_or("")
    ))
}

/// Declares a proxy type: a [`Borrowed`] of itself that owns one reference
/// (`Clone` takes one more, `Drop` gives it back), dereferences to it, and
/// is `Debug`. Its methods are those of its `Borrowed`.
macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident $(<$($t:ident),+>)?) => {
        $(#[$doc])*
        pub struct $name $(<$($t),+>)? {
            borrowed: $crate::manager::proxy::Borrowed<Self>,
            _types: ::std::marker::PhantomData<fn() -> ($($($t,)+)?)>,
        }

        impl $(<$($t),+>)? $name $(<$($t),+>)? {
            /// The borrowed form of this proxy, which travels to other
            /// processes: see [`Borrowed`](crate::manager::Borrowed).
            pub fn borrowed(&self) -> $crate::manager::proxy::Borrowed<Self> {
                self.borrowed
            }
        }

        impl $(<$($t),+>)? $crate::manager::proxy::Borrowed<$name $(<$($t),+>)?> {
            /// A proxy of this object owned by the caller: one more
            /// reference, taken on the server now, so the object lives at
            /// least as long as the proxy. Fails with
            /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if
            /// the object was freed already (its last proxy went before this
            /// call), or [`Error::PeersGone`](crate::Error::PeersGone) if
            /// the manager is gone.
            pub fn to_proxy(&self) -> Result<$name $(<$($t),+>)?, $crate::Error> {
                $crate::manager::proxy::adopt(self)
            }
        }

        impl $(<$($t),+>)? $crate::manager::proxy::Typed for $name $(<$($t),+>)? {
            fn of(borrowed: $crate::manager::proxy::Borrowed<Self>) -> Self {
                $name { borrowed, _types: ::std::marker::PhantomData }
            }

            fn types() -> $crate::manager::protocol::Types {
                $crate::manager::protocol::Types::new(stringify!($name))
                    $($(.with::<$t>())+)?
            }
        }

        /// Decoded only in the program that encoded it, as this proxy
        /// type: see [`Borrowed`](crate::manager::Borrowed).
        impl<'de $($(, $t)+)?> ::serde::Deserialize<'de>
            for $crate::manager::proxy::Borrowed<$name $(<$($t),+>)?>
        {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::manager::proxy::deserialize(deserializer)
            }
        }

        impl $(<$($t),+>)? ::std::ops::Deref for $name $(<$($t),+>)? {
            type Target = $crate::manager::proxy::Borrowed<Self>;

            fn deref(&self) -> &Self::Target {
                &self.borrowed
            }
        }

        /// Another proxy of the same object: one more reference, counted
        /// by the server before `clone` returns.
        impl $(<$($t),+>)? Clone for $name $(<$($t),+>)? {
            fn clone(&self) -> Self {
                self.borrowed.handle.retain();
                $name { borrowed: self.borrowed, _types: ::std::marker::PhantomData }
            }
        }

        /// Gives the reference back: the server frees an object (not made
        /// by name) when its last proxy is dropped.
        impl $(<$($t),+>)? Drop for $name $(<$($t),+>)? {
            fn drop(&mut self) {
                self.borrowed.handle.release();
            }
        }

        impl $(<$($t),+>)? ::std::fmt::Debug for $name $(<$($t),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("endpoint", &self.borrowed.handle.endpoint)
                    .field("id", &self.borrowed.handle.id)
                    .finish()
            }
        }
    };
}
pub(crate) use proxy;
