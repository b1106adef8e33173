//! What may cross a process boundary: [`Pod`].

// Unsafe code: the `Pod` contract: its impls, and the bytes of `Pod` values.
#![allow(unsafe_code)]

/// Plain old data: a `Copy` value with no pointer, reference or handle inside,
/// so its bytes mean the same thing in every process of the pool.
///
/// Arguments and results of pool tasks must be `Pod`. It is implemented for the
/// primitive numbers, `bool`, `char`, `()`, arrays and tuples (up to 8) of `Pod`.
/// Declare your own structs inside [`pod!`](crate::pod!), which makes them
/// `Pod` once it has checked that every field is:
///
/// ```
/// shmpool::pod! {
///     #[derive(Debug, PartialEq)]
///     pub struct Point { pub x: f64, pub y: f64 }
/// }
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
    message = "`{Self}` is not `shmpool::Pod`: it cannot cross a process boundary as plain bytes",
    label = "not `shmpool::Pod`",
    note = "a task takes its arguments by value: write `x: f64`, not `x: &f64`",
    note = "`Pod` values are numbers, `bool`, `char`, arrays and tuples of them, and your own structs declared inside `shmpool::pod! {{ pub struct P {{ pub x: f64, pub y: f64 }} }}`",
    note = "for `String`, `Vec`, `Option`, paths or your own `serde` types, use `pool.serde()`: the same pool, encoding values with serde"
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
        // Not recommended: the compiler then lists none of these under "the
        // following other types implement trait `Pod`".
        #[diagnostic::do_not_recommend]
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

/// Makes your structs [`Pod`].
///
/// Write the struct inside the macro. It is declared as written, with
/// `#[repr(C)]` and `Clone` and `Copy` derived (do not derive them yourself),
/// and made `Pod` after a compile-time check that every field is `Pod`. No
/// other dependency is needed:
///
/// ```
/// shmpool::pod! {
///     /// A point of the simulation.
///     #[derive(Debug, PartialEq, Default)]
///     pub struct Particle { pub x: f64, pub y: f64, pub id: u32 }
///
///     pub struct Meters(pub f64);
/// }
///
/// fn step(p: Particle) -> Particle { Particle { x: p.x + 1.0, ..p } }
/// let pool = shmpool::Pool::new(2)?;
/// let out = pool.map(step, &[Particle::default()])?;
/// assert_eq!(out[0].x, 1.0);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// A field that is not `Pod` does not compile, with the error at that field:
///
/// ```compile_fail,E0277
/// shmpool::pod! {
///     struct Named { name: String, x: f64 }
/// }
/// ```
///
/// A struct declared elsewhere (generated code, another crate's derive) can
/// be named instead: `shmpool::pod!(Point);` makes it `Pod` if it is `Copy`
/// and derives zerocopy's `FromBytes` and `Immutable`, which rule out
/// references, pointers and interior mutability. This form needs zerocopy in
/// your own `Cargo.toml`: `zerocopy = { version = "0.8", features = ["derive"] }`.
///
/// ```compile_fail,E0277
/// #[derive(Clone, Copy)]
/// struct Handle(&'static u8);
/// shmpool::pod!(Handle);
/// ```
#[macro_export]
macro_rules! pod {
    // A struct with named fields, then the rest.
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident : $field_ty:ty ),* $(,)?
        }
        $($rest:tt)*
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(::core::clone::Clone, ::core::marker::Copy)]
        $vis struct $name {
            $( $(#[$field_meta])* $field_vis $field : $field_ty ),*
        }
        $crate::pod!(@fields $name: $($field_ty),*);
        $crate::pod! { $($rest)* }
    };
    // A tuple struct, then the rest.
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident (
            $( $(#[$field_meta:meta])* $field_vis:vis $field_ty:ty ),* $(,)?
        );
        $($rest:tt)*
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(::core::clone::Clone, ::core::marker::Copy)]
        $vis struct $name (
            $( $(#[$field_meta])* $field_vis $field_ty ),*
        );
        $crate::pod!(@fields $name: $($field_ty),*);
        $crate::pod! { $($rest)* }
    };
    (@fields $name:ident: $($field_ty:ty),*) => {
        const _: () = {
            fn field_is_pod<T: $crate::Pod>() {}
            fn every_field_is_pod() {
                $( field_is_pod::<$field_ty>(); )*
            }
        };
        // SAFETY: every field is `Pod` (checked above), so the struct holds
        // no pointer or handle, each field's all-zero and copied bytes are
        // valid, and so are the struct's (its padding is never read as a
        // value); it is `Copy` (derived above).
        unsafe impl $crate::Pod for $name {}
    };
    () => {};
    // Types declared elsewhere, checked through zerocopy's derives.
    ($($t:ty),+ $(,)?) => { $(
        const _: () = {
            fn assert_zerocopy_pod<T: $crate::__private::CheckedPlainBytes>() {}
            let _ = assert_zerocopy_pod::<$t>;
        };
        // SAFETY: `FromBytes + Immutable` (checked above) means every bit pattern
        // is a valid value and there is no reference, pointer or UnsafeCell inside.
        unsafe impl $crate::Pod for $t {}
    )+ };
}

/// What `pod!(Type)` checks of a type declared elsewhere: zerocopy's
/// `FromBytes` and `Immutable` (no reference, pointer or `UnsafeCell`, and
/// every bit pattern valid), and `Copy`. Only its compiler message differs
/// from those bounds': it names the form of `pod!` that needs no zerocopy.
#[diagnostic::on_unimplemented(
    message = "`shmpool::pod!({Self})` cannot check `{Self}`: it must be `Copy` and derive zerocopy's `FromBytes` and `Immutable`",
    label = "not checked plain data",
    note = "declare the struct inside the macro instead, which needs no other dependency: `shmpool::pod! {{ pub struct P {{ pub x: f64, pub y: f64 }} }}`",
    note = "or add `#[repr(C)] #[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::Immutable)]` to it, with `zerocopy = {{ version = \"0.8\", features = [\"derive\"] }}` in your Cargo.toml"
)]
#[doc(hidden)]
pub trait CheckedPlainBytes:
    zerocopy::FromBytes + zerocopy::Immutable + Copy + Send + Sync + 'static
{
}
#[diagnostic::do_not_recommend]
impl<T> CheckedPlainBytes for T where
    T: zerocopy::FromBytes + zerocopy::Immutable + Copy + Send + Sync + 'static
{
}

/// A task's argument or result: a [`Pod`] value. Only its compiler message
/// differs from `Pod`'s (it says how to write a task's parameters).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `shmpool::Pod`, so a task cannot take or return it",
    label = "a task taking or returning `{Self}`",
    note = "a task takes its arguments by value: write `x: f64`, not `x: &f64`, and `s: String` (with `pool.serde()`), not `s: &str`",
    note = "`Pod` values are numbers, `bool`, `char`, arrays and tuples of them, and your own structs declared inside `shmpool::pod! {{ pub struct P {{ pub x: f64, pub y: f64 }} }}`",
    note = "for `String`, `Vec`, `Option`, paths or your own `serde` types, use `pool.serde()`: the same pool, encoding values with serde"
)]
#[cfg_attr(
    feature = "manager",
    diagnostic::on_unimplemented(
        note = "for a Manager proxy (`DictProxy`, `QueueProxy`, ...), pass `proxy.borrowed()` and take a `shmpool::manager::Borrowed<...>` in the task"
    )
)]
#[doc(hidden)]
pub trait TaskValue: Pod {}
// Not recommended: the compiler then reports `TaskValue`, with its message,
// rather than looking through to `Pod`.
#[diagnostic::do_not_recommend]
impl<T: Pod> TaskValue for T {}

/// A value bound by [`partial`](crate::partial): a [`Pod`] value, with a
/// message of its own.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be bound by `shmpool::partial`: a bound value must be `shmpool::Pod`",
    label = "this bound value is not `shmpool::Pod`",
    note = "with `pool.serde()`, `partial` binds any serde value: `pool.serde().map(shmpool::partial(f, value), &xs)`",
    note = "for many values, put them in an `shmpool::Array` (`Array::new(&values)?`) and bind the handle, which is `Pod`",
    note = "your own structs are `Pod` when declared inside `shmpool::pod! {{ pub struct P {{ pub x: f64, pub y: f64 }} }}`"
)]
#[doc(hidden)]
pub trait BoundValue: Pod {}
#[diagnostic::do_not_recommend]
impl<T: Pod> BoundValue for T {}

/// What a [`Queue`](crate::Queue) or a [`Pipe`](crate::Pipe) carries: a
/// [`Pod`] value, with a message naming the serde queues.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `shmpool::Pod`, so `shmpool::Queue` and `shmpool::Pipe` cannot carry it",
    label = "not `shmpool::Pod`",
    note = "for `String`, `Vec` or your own `serde` types, use `shmpool::serial::Queue<{Self}>` or `shmpool::serial::Pipe::new::<{Self}>()`: the same queues and pipes, encoding each message with serde",
    note = "your own structs are `Pod` when declared inside `shmpool::pod! {{ pub struct P {{ pub x: f64, pub y: f64 }} }}`"
)]
#[doc(hidden)]
pub trait Message: Pod {}
#[diagnostic::do_not_recommend]
impl<T: Pod> Message for T {}

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
