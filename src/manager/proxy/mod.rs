//! Proxies: copyable handles to objects a manager's server holds. Each is
//! the offset of the manager's endpoint record in the object heap, the
//! object's id on the server and the fingerprint of the proxy's types
//! (checked by the server on every call), so it is [`Pod`](crate::Pod): an ordinary
//! argument of a [`Process`](crate::Process) or a pool task, which connects
//! on its first call in whatever process it reaches.

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

use super::client;
use super::protocol::{decode, encode, number, Answer, Bytes, Op, Request, Trampoline, Types};
use crate::error::Error;
use crate::task::code_offset;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What every proxy is: the manager's endpoint record, an object id, and the
/// fingerprint of the proxy's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub(crate) struct Handle {
    pub(crate) endpoint: u64,
    pub(crate) id: u64,
    pub(crate) types: u64,
}

/// What the manager needs of a proxy type: its types, and how to make one.
pub(crate) trait Typed: Sized {
    fn of(handle: Handle) -> Self;
    fn types() -> Types;
}

impl Handle {
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
}

mod sealed {
    /// Implemented for the number types only.
    pub trait Sealed {
        /// Which `protocol::number` kind the server adds as.
        const KIND: u8;
    }
}

/// A number a manager can add to in place
/// ([`DictProxy::fetch_add`], [`ValueProxy::fetch_add`]): the integer types
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

/// A reply of the wrong shape: the peer is not the server this client
/// speaks with (another version), so it is a decoding failure.
pub(crate) fn unexpected(answer: Answer) -> Error {
    let shape = format!("{answer:?}");
    Error::Decode(format!(
        "unexpected reply from the manager: {}",
        shape.split('(').next().unwrap_or("")
    ))
}

/// Declares a proxy type: a [`Handle`] with a type marker, `Copy`, `Debug`
/// and [`Pod`](crate::Pod).
macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident $(<$($t:ident),+>)?) => {
        $(#[$doc])*
        #[repr(C)]
        pub struct $name $(<$($t),+>)? {
            pub(crate) handle: $crate::manager::proxy::Handle,
            _marker: ::std::marker::PhantomData<fn() -> ($($($t,)+)?)>,
        }

        impl $(<$($t),+>)? $crate::manager::proxy::Typed for $name $(<$($t),+>)? {
            fn of(handle: $crate::manager::proxy::Handle) -> Self {
                $name { handle, _marker: ::std::marker::PhantomData }
            }

            fn types() -> $crate::manager::protocol::Types {
                $crate::manager::protocol::Types::new(stringify!($name))
                    $($(.with::<$t>())+)?
            }
        }

        impl $(<$($t),+>)? Clone for $name $(<$($t),+>)? {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl $(<$($t),+>)? Copy for $name $(<$($t),+>)? {}

        impl $(<$($t),+>)? ::std::fmt::Debug for $name $(<$($t),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("endpoint", &self.handle.endpoint)
                    .field("id", &self.handle.id)
                    .finish()
            }
        }

        // SAFETY: three integers (a heap offset, checked against the record's
        // tag on use, a server-side id and a type fingerprint, both checked
        // by the server) and a zero-sized marker; they mean the same in every process of the
        // program.
        unsafe impl $(<$($t: 'static),+>)? $crate::Pod for $name $(<$($t),+>)? {}
    };
}
pub(crate) use proxy;
