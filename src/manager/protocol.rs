//! What travels after authentication: one [`Request`] frame from the client,
//! one [`Reply`] frame back, both encoded with postcard. Values the server
//! holds are opaque bytes (their postcard encoding): the server never needs
//! their types, and only the client that decodes a value can find it is not
//! what it expected ([`Error::Decode`]).

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// A value as the server holds it: its postcard encoding.
pub(crate) type Bytes = Vec<u8>;

/// Which object to make, and its initial state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Spec {
    Dict,
    List(Vec<Bytes>),
    Namespace,
    Queue,
    Lock,
    RLock,
    Semaphore { value: u64, bounded: bool },
    Event,
    Condition,
    Barrier { parties: u64 },
    Value(Bytes),
    Array(Vec<Bytes>),
}

impl Spec {
    /// The kind of object, ignoring its initial state (for named objects).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Spec::Dict => "dict",
            Spec::List(_) => "list",
            Spec::Namespace => "namespace",
            Spec::Queue => "queue",
            Spec::Lock => "lock",
            Spec::RLock => "rlock",
            Spec::Semaphore { bounded: false, .. } => "semaphore",
            Spec::Semaphore { bounded: true, .. } => "bounded semaphore",
            Spec::Event => "event",
            Spec::Condition => "condition",
            Spec::Barrier { .. } => "barrier",
            Spec::Value(_) => "value",
            Spec::Array(_) => "array",
        }
    }
}

/// What types a proxy reads and writes an object's values as: a fingerprint
/// (FNV-1a of the proxy's kind and each type parameter's name, size and
/// alignment) that every call carries, and their names for messages. A proxy
/// of other types is refused before any value is read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Types {
    pub(crate) fingerprint: u64,
    pub(crate) names: String,
}

impl Types {
    /// Starts the description of proxy kind `kind`.
    pub(crate) fn new(kind: &str) -> Types {
        let mut types = Types {
            fingerprint: 0xcbf2_9ce4_8422_2325, // FNV-1a's offset basis
            names: kind.to_owned(),
        };
        types.hash(kind.as_bytes());
        types
    }

    /// Adds a type parameter.
    pub(crate) fn with<T>(mut self) -> Types {
        let name = std::any::type_name::<T>();
        // Each parameter added closes the list: reopen it.
        self.names = match self.names.strip_suffix('>') {
            Some(head) => format!("{head}, {name}>"),
            None => format!("{}<{name}>", self.names),
        };
        self.hash(name.as_bytes());
        self.hash(&(std::mem::size_of::<T>() as u64).to_le_bytes());
        self.hash(&(std::mem::align_of::<T>() as u64).to_le_bytes());
        self
    }

    fn hash(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&[0xff]) {
            self.fingerprint ^= u64::from(b);
            self.fingerprint = self.fingerprint.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Which number type a `fetch_add` adds as ([`AddKind`]'s values).
pub(crate) mod number {
    pub(crate) const I8: u8 = 1;
    pub(crate) const I16: u8 = 2;
    pub(crate) const I32: u8 = 3;
    pub(crate) const I64: u8 = 4;
    pub(crate) const U8: u8 = 5;
    pub(crate) const U16: u8 = 6;
    pub(crate) const U32: u8 = 7;
    pub(crate) const U64: u8 = 8;
    pub(crate) const F32: u8 = 9;
    pub(crate) const F64: u8 = 10;
}

/// Adds `delta` (a number of kind `kind`, encoded) to `old` (absent: zero),
/// checked: an integer that would overflow is refused, never wrapped.
/// Returns the old value and the new one, encoded.
pub(crate) fn add_encoded(
    old: Option<&[u8]>,
    kind: u8,
    delta: &[u8],
) -> Result<(Bytes, Bytes), Fault> {
    fn exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Fault> {
        match postcard::take_from_bytes(bytes) {
            Ok((value, [])) => Ok(value),
            _ => Err(Fault::TypeMismatch(format!(
                "the value is not a {}",
                std::any::type_name::<T>()
            ))),
        }
    }
    fn add<T>(
        old: Option<&[u8]>,
        delta: &[u8],
        plus: impl Fn(T, T) -> Option<T>,
    ) -> Result<(Bytes, Bytes), Fault>
    where
        T: Serialize + serde::de::DeserializeOwned + Default + Copy,
    {
        let old: T = old.map(exact).transpose()?.unwrap_or_default();
        let new = plus(old, exact(delta)?).ok_or_else(|| {
            Fault::Invalid(format!(
                "the sum overflows {} (refused, not wrapped)",
                std::any::type_name::<T>()
            ))
        })?;
        let enc = |v: T| postcard::to_allocvec(&v).expect("a number encodes");
        Ok((enc(old), enc(new)))
    }
    use number::*;
    match kind {
        I8 => add(old, delta, i8::checked_add),
        I16 => add(old, delta, i16::checked_add),
        I32 => add(old, delta, i32::checked_add),
        I64 => add(old, delta, i64::checked_add),
        U8 => add(old, delta, u8::checked_add),
        U16 => add(old, delta, u16::checked_add),
        U32 => add(old, delta, u32::checked_add),
        U64 => add(old, delta, u64::checked_add),
        F32 => add(old, delta, |a: f32, b| Some(a + b)),
        F64 => add(old, delta, |a: f64, b| Some(a + b)),
        _ => Err(Fault::Invalid(format!("no number kind {kind}"))),
    }
}

/// The server-side half of an `update`: runs the function at code address
/// `func` on the old value (encoded; absent: `None`) and returns the new one
/// (`None`: remove the entry), or why it could not.
pub(crate) type Trampoline = fn(usize, Option<&[u8]>) -> Result<Option<Bytes>, String>;

/// A timeout in microseconds (`None`: wait as long as it takes).
pub(crate) type Micros = Option<u64>;

/// Converts a caller's timeout for the wire.
pub(crate) fn micros(t: std::time::Duration) -> Micros {
    Some(u64::try_from(t.as_micros()).unwrap_or(u64::MAX))
}

/// One request.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Request {
    /// Makes an object; answers [`Answer::Id`].
    Create(Spec, Types),
    /// The object registered under the name, made from `Spec` if there is
    /// none; answers [`Answer::Id`]. Another kind or other types are refused.
    Named(String, Spec, Types),
    /// An operation on object `id`, by a proxy of the types of this
    /// fingerprint.
    Call(u64, u64, Op),
    /// Ends the server (after answering).
    Shutdown,
    /// Binds the connection to its client process's session (a random
    /// token per process): the references a process holds are dropped when
    /// its last connection closes, however it closes. Answers
    /// [`Answer::Done`].
    Session(u64),
    /// One more reference to object `id` (a proxy of the types of this
    /// fingerprint), held by the connection's session; answers
    /// [`Answer::Done`], or fails if the object was freed.
    Incref(u64, u64),
    /// One reference fewer to object `id`: at zero, an object not created by
    /// name is freed. Answers [`Answer::Done`].
    Decref(u64),
    /// How many objects the server holds; answers [`Answer::Count`].
    Objects,
    /// Asks for a shared-memory lane (a local connection, once): answered
    /// by one byte with the lane's memfd (`lane::send_fd`), not a frame.
    Lane,
}

/// Operations on objects; each applies to the kinds named in its comment.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Op {
    /// dict, list, queue, array: how many entries.
    Len,
    /// dict, list: removes everything.
    Clear,
    /// dict: old value if any.
    Insert(Bytes, Bytes),
    /// dict.
    Lookup(Bytes),
    /// dict: the removed value if any.
    Remove(Bytes),
    /// dict.
    Contains(Bytes),
    /// dict: keys in insertion order.
    Keys,
    /// dict: pairs in insertion order.
    Entries,
    /// list.
    Push(Bytes),
    /// list, array: the item at an index (negative counts from the end).
    At(i64),
    /// list, array.
    Put(i64, Bytes),
    /// list.
    InsertAt(i64, Bytes),
    /// list: the last item, or the one at the index.
    Pop(Option<i64>),
    /// list.
    Extend(Vec<Bytes>),
    /// list.
    Reverse,
    /// list, array: every item.
    All,
    /// namespace.
    SetAttr(String, Bytes),
    /// namespace.
    GetAttr(String),
    /// namespace: the removed value if any.
    DelAttr(String),
    /// queue.
    Enqueue(Bytes),
    /// queue: waits for an item.
    Dequeue(Micros),
    /// lock, rlock, semaphore, condition: whether it was acquired in time.
    Acquire(Micros),
    /// lock, rlock, semaphore, condition.
    Release,
    /// event.
    Set,
    /// event.
    Unset,
    /// event.
    IsSet,
    /// event: whether it was set in time.
    Wait(Micros),
    /// condition (lock held): waits for a notify; whether one came in time.
    CondWait(Micros),
    /// condition (lock held): wakes up to this many waiters.
    Notify(u64),
    /// barrier: this waiter's arrival index.
    BarrierWait(Micros),
    /// barrier: breaks it for every waiter.
    Abort,
    /// value.
    Load,
    /// value.
    Store(Bytes),
    /// dict (the key), value (`None`): adds a number of this kind (encoded)
    /// in place; the old value (a missing entry counts as zero).
    AddTo(Option<Bytes>, u8, Bytes),
    /// dict (the key), value (`None`): the new value made by a function of
    /// this executable, run in the server (code offsets of a
    /// [`Trampoline`] and of the function); local clients of the same
    /// executable only.
    Update(Option<Bytes>, u64, u64),
}

impl Op {
    /// The operation's name, for error messages (without its data).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Len => "len",
            Op::Clear => "clear",
            Op::Insert(..) => "insert",
            Op::Lookup(_) => "get",
            Op::Remove(_) => "remove",
            Op::Contains(_) => "contains_key",
            Op::Keys => "keys",
            Op::Entries => "items",
            Op::Push(_) => "push",
            Op::At(_) => "get",
            Op::Put(..) => "set",
            Op::InsertAt(..) => "insert",
            Op::Pop(_) => "pop",
            Op::Extend(_) => "extend",
            Op::Reverse => "reverse",
            Op::All => "to_vec",
            Op::SetAttr(..) => "set",
            Op::GetAttr(_) => "get",
            Op::DelAttr(_) => "remove",
            Op::Enqueue(_) => "put",
            Op::Dequeue(_) => "get",
            Op::Acquire(_) => "acquire",
            Op::Release => "release",
            Op::Set => "set",
            Op::Unset => "clear",
            Op::IsSet => "is_set",
            Op::Wait(_) => "wait",
            Op::CondWait(_) => "wait",
            Op::Notify(_) => "notify",
            Op::BarrierWait(_) => "wait",
            Op::Abort => "abort",
            Op::Load => "get",
            Op::Store(_) => "set",
            Op::AddTo(..) => "fetch_add",
            Op::Update(..) => "update",
        }
    }
}

/// A successful reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Answer {
    Done,
    Id(u64),
    Flag(bool),
    Count(u64),
    Item(Option<Bytes>),
    Items(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
}

/// Why a request failed on the server.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Fault {
    /// The request frame did not decode.
    Decode(String),
    /// No object has this id, or it is not of the kind the operation needs.
    Invalid(String),
    /// The wait ended before the object was ready.
    Timeout,
    /// The lock's holder disconnected (died) holding it; it is free now.
    OwnerDied,
    /// The barrier is broken.
    BrokenBarrier,
    /// The reply would exceed the frame limit.
    TooLarge(u64),
    /// The object holds values of other types than the proxy's.
    TypeMismatch(String),
}

/// One reply.
pub(crate) type Reply = Result<Answer, Fault>;

impl From<Fault> for Error {
    fn from(fault: Fault) -> Error {
        match fault {
            Fault::Decode(why) | Fault::TypeMismatch(why) => Error::Decode(why),
            Fault::Invalid(why) => Error::InvalidArgument(why),
            Fault::Timeout => Error::Timeout,
            Fault::OwnerDied => Error::OwnerDied,
            Fault::BrokenBarrier => Error::BrokenBarrier,
            Fault::TooLarge(n) => Error::InvalidArgument(format!(
                "the reply ({n} bytes) exceeds the manager's frame limit"
            )),
        }
    }
}

/// A value's encoding.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Error> {
    postcard::to_allocvec(value)
        .map_err(|e| Error::invalid(format!("cannot encode the value: {e}")))
}

/// Decodes a value the server held or returned. Bytes left over mean the
/// value was written as another type (postcard does not describe types, so
/// this is the check it allows).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let failed = |why: String| {
        Error::Decode(format!(
            "the manager's value does not decode as {}: {why}",
            std::any::type_name::<T>()
        ))
    };
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(failed(format!("{} bytes left over", rest.len()))),
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_another_type_is_a_decode_error() {
        let bytes = encode(&"not a number").unwrap();
        assert!(
            matches!(decode::<Vec<String>>(&bytes), Err(Error::Decode(m)) if m.contains("Vec"))
        );
        assert_eq!(decode::<String>(&bytes).unwrap(), "not a number");
        assert!(matches!(decode::<u8>(&bytes), Err(Error::Decode(m)) if m.contains("left over")));
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::Call(7, 9, Op::Insert(vec![1], vec![2, 3]));
        let bytes = postcard::to_allocvec(&req).unwrap();
        let back: Request = postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(back, Request::Call(7, 9, Op::Insert(k, v)) if k == [1] && v == [2, 3]));
    }

    #[test]
    fn fingerprints_tell_types_apart_and_name_them() {
        let a = Types::new("DictProxy").with::<u64>().with::<String>();
        let b = Types::new("DictProxy").with::<String>().with::<i32>();
        let c = Types::new("DictProxy").with::<u64>().with::<String>();
        assert_eq!(a, c);
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_ne!(
            Types::new("ListProxy").with::<u32>().fingerprint,
            Types::new("QueueProxy").with::<u32>().fingerprint
        );
        assert_eq!(a.names, "DictProxy<u64, alloc::string::String>");
    }

    #[test]
    fn adding_is_checked_never_wrapped() {
        let enc = |v: u64| postcard::to_allocvec(&v).unwrap();
        let (old, new) = add_encoded(Some(&enc(4000)), number::U64, &enc(1)).unwrap();
        assert_eq!(
            (decode::<u64>(&old).unwrap(), decode::<u64>(&new).unwrap()),
            (4000, 4001)
        );
        let (old, new) = add_encoded(None, number::U64, &enc(5)).unwrap();
        assert_eq!(
            (decode::<u64>(&old).unwrap(), decode::<u64>(&new).unwrap()),
            (0, 5)
        );
        assert!(matches!(
            add_encoded(Some(&enc(u64::MAX)), number::U64, &enc(1)),
            Err(Fault::Invalid(m)) if m.contains("overflow")
        ));
        let i8s = postcard::to_allocvec(&-128i8).unwrap();
        assert!(add_encoded(Some(&i8s), number::I8, &i8s).is_err());
        let f = |v: f64| postcard::to_allocvec(&v).unwrap();
        let (_, new) = add_encoded(Some(&f(0.5)), number::F64, &f(0.25)).unwrap();
        assert_eq!(decode::<f64>(&new).unwrap(), 0.75);
        // A stored value of another type is refused, not misread.
        let text = postcard::to_allocvec("four").unwrap();
        assert!(matches!(
            add_encoded(Some(&text), number::F64, &f(1.0)),
            Err(Fault::TypeMismatch(_))
        ));
        assert!(add_encoded(None, 200, &[]).is_err());
    }
}
