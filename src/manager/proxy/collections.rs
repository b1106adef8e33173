//! [`DictProxy`], [`ListProxy`] and [`NamespaceProxy`].

use super::{fetch_add, indexed, proxy, unexpected, update, Borrowed, Number};
use crate::error::Error;
use crate::manager::protocol::{decode, encode, Answer, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Borrow;

proxy!(
    /// A dict held by a manager, like the proxy Python's `manager.dict()`
    /// returns. Keys are compared by their encoding, so any `serde` type can
    /// be a key (floats and enums included); entries keep insertion order,
    /// as Python's dicts do. Each call is one atomic operation on the server.
    ///
    /// Methods take a key in any form `K` borrows as, as `HashMap`'s do: a
    /// `&str` for `String`, a `&[T]` for `Vec<T>`. That form must encode as
    /// `K` does, as serde's own forms do (`str` for `String`, `[T]` for
    /// `Vec<T>`, `Path` for `PathBuf`, `T` for `Box<T>`).
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let d = manager.dict::<String, u32>()?;
    /// assert_eq!(d.insert("a", &1)?, None);
    /// assert_eq!(d.insert("a", &2)?, Some(1));
    /// assert_eq!(d.get("a")?, Some(2));
    /// assert_eq!(d.get(&"a".to_string())?, Some(2)); // the same key
    /// assert_eq!(d.items()?, vec![("a".to_string(), 2)]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    DictProxy<K, V>
);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Borrowed<DictProxy<K, V>> {
    /// `d[key] = value`; the value it replaces, if any.
    pub fn insert<Q>(&self, key: &Q, value: &V) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.handle.value(Op::Insert(encode(key)?, encode(value)?))
    }

    /// `d.get(key)`.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.handle.value(Op::Lookup(encode(key)?))
    }

    /// `d.pop(key, None)`: removes the entry; its value, if there was one.
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.handle.value(Op::Remove(encode(key)?))
    }

    /// `key in d`.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.handle.flag(Op::Contains(encode(key)?))
    }

    /// `len(d)`.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(self.handle.count(Op::Len)? as usize)
    }

    /// `len(d) == 0`.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// `list(d.keys())`, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>, Error> {
        self.handle.values(Op::Keys)
    }

    /// `list(d.items())`, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>, Error> {
        match self.handle.call(Op::Entries)? {
            Answer::Pairs(pairs) => pairs
                .iter()
                .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
                .collect(),
            other => Err(unexpected(other)),
        }
    }

    /// `d.clear()`.
    pub fn clear(&self) -> Result<(), Error> {
        self.handle.done(Op::Clear)
    }

    /// `d[key] = d.get(key, 0) + delta` as one atomic operation in the
    /// server, against every other client; the value before (zero if the
    /// key was missing). An integer sum that would overflow is
    /// [`Error::InvalidArgument`] and changes nothing. Works over TCP too.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let hits = manager.dict::<String, u64>()?;
    /// assert_eq!(hits.fetch_add("/", 1)?, 0);
    /// assert_eq!(hits.fetch_add("/", 1)?, 1);
    /// assert_eq!(hits.get("/")?, Some(2));
    /// assert!(hits.fetch_add("/", u64::MAX).is_err()); // no wrap
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn fetch_add<Q>(&self, key: &Q, delta: V) -> Result<V, Error>
    where
        V: Number,
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        fetch_add(&self.handle, Some(encode(key)?), delta)
    }

    /// Replaces the entry at `key` with `f(current)` (`None`: absent, or
    /// remove it) as one atomic operation in the server: `f` runs there, on
    /// the object, while every other call on it waits, so keep it short.
    /// Returns the new value. `f` is a plain function (or a closure that
    /// captures nothing) of this executable: only clients of a local
    /// manager running the same executable may send one; others get
    /// [`Error::InvalidArgument`] (use [`fetch_add`](Self::fetch_add)). A
    /// panic in `f` is [`Error::InvalidArgument`] and changes nothing.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let words = manager.dict::<u32, Vec<String>>()?;
    /// let new = words.update(&1, |old| {
    ///     let mut list = old.unwrap_or_default();
    ///     list.push("one".into());
    ///     Some(list)
    /// })?;
    /// assert_eq!(new, Some(vec!["one".to_string()]));
    /// assert_eq!(words.update(&1, |_| None)?, None); // removed
    /// assert_eq!(words.len()?, 0);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn update<Q>(&self, key: &Q, f: fn(Option<V>) -> Option<V>) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        update(&self.handle, Some(encode(key)?), f)
    }
}

proxy!(
    /// A list held by a manager, like the proxy Python's `manager.list()`
    /// returns. Indexes may be negative (from the end), as in Python.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let l = manager.list::<i64>()?;
    /// l.extend(&[1, 2, 3])?;
    /// l.push(&4)?;
    /// l.reverse()?;
    /// assert_eq!(l.to_vec()?, [4, 3, 2, 1]);
    /// assert_eq!(l.get(-1)?, 1);
    /// assert_eq!(l.pop()?, Some(1));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ListProxy<T>
);

impl<T: Serialize + DeserializeOwned> Borrowed<ListProxy<T>> {
    /// `l.append(value)`.
    pub fn push(&self, value: &T) -> Result<(), Error> {
        self.handle.done(Op::Push(encode(value)?))
    }

    indexed!("l");

    /// `l.insert(index, value)` (an index past either end inserts there).
    pub fn insert(&self, index: i64, value: &T) -> Result<(), Error> {
        self.handle.done(Op::InsertAt(index, encode(value)?))
    }

    /// `l.pop()`, or `None` if the list is empty.
    pub fn pop(&self) -> Result<Option<T>, Error> {
        self.handle.value(Op::Pop(None))
    }

    /// `l.pop(index)`, or `None` if out of range.
    pub fn pop_at(&self, index: i64) -> Result<Option<T>, Error> {
        self.handle.value(Op::Pop(Some(index)))
    }

    /// `l.extend(values)`, in one atomic operation.
    pub fn extend(&self, values: &[T]) -> Result<(), Error> {
        let items = values.iter().map(encode).collect::<Result<_, _>>()?;
        self.handle.done(Op::Extend(items))
    }

    /// `l.reverse()`.
    pub fn reverse(&self) -> Result<(), Error> {
        self.handle.done(Op::Reverse)
    }

    /// `l.clear()`.
    pub fn clear(&self) -> Result<(), Error> {
        self.handle.done(Op::Clear)
    }
}

proxy!(
    /// A namespace held by a manager, like Python's `manager.Namespace()`:
    /// named attributes of any `serde` type (`ns.x = 1` is
    /// `ns.set("x", &1)`).
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let ns = manager.namespace()?;
    /// ns.set("x", &10)?;
    /// ns.set("y", &"hello")?;
    /// assert_eq!(ns.get::<i32>("x")?, Some(10));
    /// assert_eq!(ns.get::<String>("y")?.as_deref(), Some("hello"));
    /// assert_eq!(ns.get::<i32>("z")?, None);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    NamespaceProxy
);

impl Borrowed<NamespaceProxy> {
    /// `setattr(ns, name, value)`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), Error> {
        self.handle
            .done(Op::SetAttr(name.to_owned(), encode(value)?))
    }

    /// `getattr(ns, name, None)`; a value of another type is
    /// [`Error::Decode`].
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        self.handle.value(Op::GetAttr(name.to_owned()))
    }

    /// `delattr(ns, name)`; whether it was there.
    pub fn remove(&self, name: &str) -> Result<bool, Error> {
        Ok(self.handle.item(Op::DelAttr(name.to_owned()))?.is_some())
    }

    /// The attributes' names, sorted.
    pub fn names(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .handle
            .items(Op::Keys)?
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }
}
