//! What may cross a process boundary: [`Pod`].

// Unsafe code: the `Pod` contract: its impls, and the bytes of `Pod` values.
#![allow(unsafe_code)]

/// Plain old data: a `Copy` value with no pointer, reference or handle inside,
/// so its bytes mean the same thing in every process of the pool.
///
/// Arguments and results of pool tasks must be `Pod`. It is implemented for the
/// primitive numbers, `bool`, `char`, `()`, arrays and tuples (up to 8) of `Pod`.
/// For your own `#[repr(C)]` structs, derive zerocopy's `FromBytes` and
/// `Immutable` and let [`pod!`](crate::pod!) check them:
///
/// ```
/// use zerocopy::{FromBytes, Immutable};
///
/// #[derive(Clone, Copy, FromBytes, Immutable, Debug, PartialEq)]
/// #[repr(C)]
/// struct Point { x: f64, y: f64 }
/// shmpool::pod!(Point);
///
/// fn norm2(p: Point) -> f64 { p.x * p.x + p.y * p.y }
/// let pool = shmpool::Pool::new(2)?;
/// assert_eq!(pool.map(norm2, &[Point { x: 3.0, y: 4.0 }])?, vec![25.0]);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// References, `Box`, `Vec`, `String` and the like are not `Pod`, so a task that
/// takes or returns them does not compile:
///
/// ```compile_fail,E0277
/// fn len(s: &'static str) -> usize { s.len() }
/// let pool = shmpool::Pool::new(1).unwrap();
/// pool.apply(len, ("a pointer into the parent",)).unwrap();
/// ```
///
/// ```compile_fail,E0277
/// fn make() -> Vec<u8> { vec![1] }
/// let pool = shmpool::Pool::new(1).unwrap();
/// pool.apply(make, ()).unwrap();
/// ```
///
/// # Safety
/// An implementor must hold no pointer, reference, file descriptor or other
/// value whose meaning depends on the process that created it, and every bit
/// pattern a value of it can take in one process must be a valid value in
/// another process running the same binary. All-zero bytes must be a valid
/// value (true of every implementor here, and of any `FromBytes` type).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a process boundary as plain bytes (it is not `shmpool::Pod`)",
    label = "not plain data: this value would hold pointers into this process",
    note = "for `String`, `Vec`, `PathBuf` or your own `serde` types, use `pool.serde()`: the same pool, encoding values with serde",
    note = "for your own `#[repr(C)]` struct of plain fields, derive zerocopy's `FromBytes` and `Immutable` and add `shmpool::pod!(YourType);`"
)]
#[cfg_attr(
    feature = "manager",
    diagnostic::on_unimplemented(
        note = "for a Manager proxy (`DictProxy`, `QueueProxy`, ...), pass `proxy.borrowed()` and take a `shmpool::manager::Borrowed<...>` in the task"
    )
)]
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: a primitive without pointers; valid values stay valid when copied.
        unsafe impl Pod for $t {}
    )* };
}
impl_pod!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    ()
);

// SAFETY: an array of Pod holds only Pod.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// Calls `$m!` with every prefix of the names, the empty one first
/// (`$m!(); $m!(A); $m!(A, B); …`): a trait's impls for tuples of each
/// arity, written once.
macro_rules! for_each_arity {
    ($m:ident: $($name:ident),*) => {
        $crate::pod::for_each_arity!(@ $m [] $($name)*);
    };
    (@ $m:ident [$($done:ident)*]) => {
        $m!($($done),*);
    };
    (@ $m:ident [$($done:ident)*] $next:ident $($rest:ident)*) => {
        $m!($($done),*);
        $crate::pod::for_each_arity!(@ $m [$($done)* $next] $($rest)*);
    };
}
pub(crate) use for_each_arity;

macro_rules! impl_pod_tuple {
    () => {}; // `()` is among the primitives above
    ($($name:ident),+) => {
        // SAFETY: a tuple of Pod holds only Pod; its layout is the same in every
        // process of the same binary.
        unsafe impl<$($name: Pod),+> Pod for ($($name,)+) {}
    };
}
for_each_arity!(impl_pod_tuple: A, B, C, D, E, F, G, H);

/// Implements [`Pod`] for your types, after checking at compile time that each
/// one derives zerocopy's `FromBytes` and `Immutable` (which rule out references,
/// pointers and interior mutability) and is `Copy`.
///
/// See [`Pod`] for an example. A type without those derives does not compile:
///
/// ```compile_fail,E0277
/// #[derive(Clone, Copy)]
/// struct Handle(&'static u8);
/// shmpool::pod!(Handle);
/// ```
#[macro_export]
macro_rules! pod {
    ($($t:ty),+ $(,)?) => { $(
        const _: () = {
            fn assert_zerocopy_pod<
                T: $crate::__private::zerocopy::FromBytes
                    + $crate::__private::zerocopy::Immutable
                    + ::core::marker::Copy
                    + ::core::marker::Send
                    + ::core::marker::Sync
                    + 'static,
            >() {}
            let _ = assert_zerocopy_pod::<$t>;
        };
        // SAFETY: `FromBytes + Immutable` (checked above) means every bit pattern
        // is a valid value and there is no reference, pointer or UnsafeCell inside.
        unsafe impl $crate::Pod for $t {}
    )+ };
}

/// The all-zero value of a [`Pod`] type (valid by the trait's contract).
pub(crate) fn zeroed<T: Pod>() -> T {
    // SAFETY: all-zero bytes are a valid value of every Pod type (the
    // trait's safety contract).
    unsafe { std::mem::MaybeUninit::<T>::zeroed().assume_init() }
}

/// The bytes of `value`, as possibly uninitialized bytes (padding): what a
/// byte copy of it into a slot needs.
pub(crate) fn bytes_of<T: ?Sized>(value: &T) -> &[std::mem::MaybeUninit<u8>] {
    // SAFETY: `size_of_val(value)` bytes of a live value (or slice),
    // borrowed for the result's life; `MaybeUninit<u8>` has no validity
    // requirement and alignment 1.
    unsafe {
        std::slice::from_raw_parts(
            (value as *const T).cast::<std::mem::MaybeUninit<u8>>(),
            std::mem::size_of_val(value),
        )
    }
}
