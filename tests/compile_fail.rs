//! What the compiler says to a user who writes a task that cannot travel.
//!
//! Each case is a small program, built with `cargo build` (some refusals
//! come only after monomorphization, which `cargo check` skips) against this
//! crate in a scratch project; the test asserts that the build fails and
//! that the message names the user's code and says what to write instead.
//! The scratch project shares one target directory, so only the first case
//! builds shmpool.

mod common;

use common::scratch::build_with;

/// Builds `main_rs` as a program depending on this crate (default
/// features); returns whether the build succeeded, and the compiler's
/// output.
fn build(name: &str, main_rs: &str) -> (bool, String) {
    build_with(name, &[], main_rs)
}

/// One program per case would rebuild nothing but itself; all cases run in
/// one test so they build one after another.
#[test]
fn tasks_that_cannot_travel_fail_to_build_with_a_message_saying_what_to_write() {
    // A capturing closure: refused after monomorphization, naming the
    // closure's place in the user's file and `shmpool::partial`.
    let (ok, err) = build(
        "capturing_closure",
        r#"
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    let scale = std::env::args().count() as f64;
    let v = vec![1.0f64, 2.0];
    let out = pool.map(move |x: f64| (x * scale).sin(), &v).unwrap();
    println!("{out:?}");
}
"#,
    );
    assert!(!ok, "a capturing closure built:\n{err}");
    assert!(
        err.contains("a closure that captures variables cannot run in a worker process"),
        "{err}"
    );
    assert!(err.contains("shmpool::partial(f, value)"), "{err}");
    // The compiler's note shows the user's call, not only a type name.
    assert!(
        err.contains("encountered while instantiating `fn Pool::map::<{closure@src/main.rs:6:"),
        "{err}"
    );
    assert!(
        err.contains("--> src/main.rs:6:15"),
        "the user's call is not shown:\n{err}"
    );

    // The same through `pool.call()`, whose methods name the task's check
    // too: the note shows the user's call.
    let (ok, err) = build(
        "capturing_closure_through_call",
        r#"
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    let scale = std::env::args().count() as f64;
    let v = vec![1.0f64, 2.0];
    let out = pool.call().chunksize(1).map(move |x: f64| x * scale, &v).unwrap();
    println!("{out:?}");
}
"#,
    );
    assert!(!ok, "a capturing closure built:\n{err}");
    assert!(
        err.contains(
            "encountered while instantiating `fn Call::<'_>::map::<{closure@src/main.rs:6:"
        ),
        "{err}"
    );
    assert!(err.contains("--> src/main.rs:6:15"), "{err}");

    // A closure that captures a `String`: refused at type checking, naming
    // `partial` and `pool.serde()` rather than `String: Copy`.
    let (ok, err) = build(
        "capturing_string_closure",
        r#"
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    let suffix = std::env::args().next().unwrap();
    let v = vec![1.0f64, 2.0];
    let out = pool.map(move |x: f64| x + suffix.len() as f64, &v).unwrap();
    println!("{out:?}");
}
"#,
    );
    assert!(!ok, "a closure capturing a String built:\n{err}");
    assert!(
        err.contains(
            "cannot run in a worker process: a closure that captures variables cannot travel"
        ),
        "{err}"
    );
    assert!(err.contains("shmpool::partial(f, value)"), "{err}");
    assert!(err.contains("pool.serde().map(shmpool::partial"), "{err}");
    assert!(err.contains("src/main.rs:6"), "{err}");

    // A task taking a reference: the message says to take the value.
    let (ok, err) = build(
        "reference_argument",
        r#"
fn sq(x: &f64) -> f64 { x * x }
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    let v = vec![1.0f64, 2.0];
    println!("{:?}", pool.map(sq, &v));
}
"#,
    );
    assert!(!ok, "a task taking a reference built:\n{err}");
    assert!(err.contains("`&f64` is not `shmpool::Pod`"), "{err}");
    assert!(
        err.contains("a task takes its arguments by value: write `x: f64`, not `x: &f64`"),
        "{err}"
    );
    assert!(!err.contains("pointers into this process"), "{err}");
    assert!(
        !err.contains("the following other types implement trait `Pod`"),
        "{err}"
    );

    // An `Option` argument holds no pointer; the message does not say it does.
    let (ok, err) = build(
        "option_argument",
        r#"
fn f(x: Option<u64>) -> u64 { x.unwrap_or(0) }
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    println!("{:?}", pool.apply(f, (Some(1u64),)));
}
"#,
    );
    assert!(!ok, "an Option argument built:\n{err}");
    assert!(
        err.contains("`Option<u64>` is not `shmpool::Pod`: it cannot cross a process boundary"),
        "{err}"
    );
    assert!(err.contains("use `pool.serde()`"), "{err}");
    assert!(!err.contains("pointers into this process"), "{err}");

    // A user's struct, the natural way: declared inside `pod!`, with no
    // dependency on zerocopy. It builds.
    let (ok, err) = build(
        "pod_struct",
        r#"
shmpool::pod! {
    #[derive(Debug)]
    pub struct Particle { pub x: f64, pub y: f64 }
    struct Meters(f64);
}
fn step(p: Particle) -> Particle { Particle { x: p.x + 1.0, ..p } }
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    let out = pool.map(step, &[Particle { x: 0.0, y: 1.0 }]).unwrap();
    println!("{out:?} {}", Meters(1.0).0);
}
"#,
    );
    assert!(ok, "a pod! struct did not build:\n{err}");

    // A `pod!` struct with a field that is not plain data: refused at the
    // field.
    let (ok, err) = build(
        "pod_struct_string_field",
        r#"
shmpool::pod! {
    pub struct Named { pub name: String, pub x: f64 }
}
fn main() {}
"#,
    );
    assert!(!ok, "a pod! struct with a String built:\n{err}");
    assert!(err.contains("`String` is not `shmpool::Pod`"), "{err}");
    assert!(err.contains("--> src/main.rs:3:34"), "{err}");

    // `pod!(Type)` on a struct without zerocopy's derives: the message
    // names the form of `pod!` that needs no other dependency.
    let (ok, err) = build(
        "pod_of_a_plain_struct",
        r#"
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Particle { pub x: f64, pub y: f64 }
shmpool::pod!(Particle);
fn main() {}
"#,
    );
    assert!(!ok, "pod!(Particle) without the derives built:\n{err}");
    assert!(
        err.contains("`shmpool::pod!(Particle)` cannot check `Particle`"),
        "{err}"
    );
    assert!(err.contains("declare the struct inside the macro"), "{err}");

    // A queue of strings: the message names the serde queue.
    let (ok, err) = build(
        "queue_of_strings",
        r#"
fn main() {
    let q = shmpool::Queue::<String>::new(3).unwrap();
    q.put("a".to_string()).unwrap();
}
"#,
    );
    assert!(!ok, "a Queue<String> built:\n{err}");
    assert!(
        err.contains("`String` is not `shmpool::Pod`, so `shmpool::Queue` and `shmpool::Pipe` cannot carry it"),
        "{err}"
    );
    assert!(
        err.contains("use `shmpool::serial::Queue<String>`"),
        "{err}"
    );
    assert!(!err.contains("proxy.borrowed()"), "{err}");

    // A `String` argument: refused at type checking (so `cargo check` too),
    // at the user's call site, naming `pool.serde()`.
    let (ok, err) = build(
        "string_argument",
        r#"
fn count_lines(p: String) -> usize { p.len() }
fn main() {
    let pool = shmpool::Pool::new(2).unwrap();
    let paths: Vec<String> = vec!["a".into()];
    let counts = pool.map(count_lines, &paths).unwrap();
    println!("{counts:?}");
}
"#,
    );
    assert!(!ok, "a String task built:\n{err}");
    assert!(err.contains("`String` is not `shmpool::Pod`"), "{err}");
    assert!(err.contains("pool.serde()"), "{err}");
    // Without the `manager` feature, no word of proxies.
    assert!(!err.contains("proxy.borrowed()"), "{err}");
    assert!(
        err.contains("src/main.rs:6"),
        "the user's call is not named:\n{err}"
    );

    // A `Vec` result, through `apply`.
    let (ok, err) = build(
        "vec_result",
        r#"
fn make(n: u64) -> Vec<u64> { vec![n] }
fn main() {
    let pool = shmpool::Pool::new(1).unwrap();
    println!("{:?}", pool.apply(make, (1,)));
}
"#,
    );
    assert!(!ok, "a Vec result built:\n{err}");
    assert!(
        err.contains("fn(u64) -> Vec<u64> {make}` cannot run in a worker process as a task"),
        "{err}"
    );
    assert!(err.contains("use `pool.serde()`"), "{err}");
    assert!(
        err.contains("src/main.rs:5"),
        "the user's call is not named:\n{err}"
    );

    // A bound value that is not plain data.
    let (ok, err) = build(
        "partial_string",
        r#"
fn greet(name: String, x: u64) -> u64 { name.len() as u64 + x }
fn main() {
    let pool = shmpool::Pool::new(1).unwrap();
    println!("{:?}", pool.map(shmpool::partial(greet, "a".to_string()), &[1u64]));
}
"#,
    );
    assert!(!ok, "a String bound value built:\n{err}");
    assert!(
        err.contains("String>` cannot run in a worker process as a task"),
        "{err}"
    );
    // `pool.serde()` takes it.
    assert!(err.contains("use `pool.serde()`"), "{err}");
    assert!(
        err.contains("a value bound by `shmpool::partial` must be `Pod` too"),
        "{err}"
    );

    // A Manager proxy as a task argument: it owns a reference, so it is not
    // plain data; the message names its borrowed form.
    let (ok, err) = build_with(
        "manager_proxy_argument",
        &["manager"],
        r#"
use shmpool::manager::DictProxy;
fn count(d: DictProxy<String, u64>, i: u64) -> u64 {
    d.insert(&format!("k{i}"), &i).unwrap();
    i
}
fn main() {
    let manager = shmpool::Manager::start().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let pool = shmpool::Pool::new(2).unwrap();
    println!("{:?}", pool.apply(count, (d.clone(), 3)));
}
"#,
    );
    assert!(!ok, "a proxy argument built:\n{err}");
    assert!(
        err.contains("`DictProxy<String, u64>` is not `shmpool::Pod`"),
        "{err}"
    );
    assert!(err.contains("pass `proxy.borrowed()`"), "{err}");
    assert!(
        err.contains("src/main.rs:11"),
        "the user's call is not named:\n{err}"
    );
    // Proxies bound by `partial` into a map: the task is refused as a whole,
    // and the message still names the borrowed form.
    let (ok, err) = build_with(
        "manager_proxy_partial",
        &["manager"],
        r#"
use shmpool::manager::{DictProxy, ListProxy};
fn work((d, l): (DictProxy<String, u64>, ListProxy<u64>), x: u64) -> u64 {
    d.insert(&x.to_string(), &x).unwrap();
    l.push(&x).unwrap();
    x
}
fn main() {
    let manager = shmpool::Manager::start().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let l = manager.list::<u64>().unwrap();
    let pool = shmpool::Pool::new(2).unwrap();
    let xs = [1u64, 2, 3];
    println!("{:?}", pool.map(shmpool::partial(work, (d.clone(), l.clone())), &xs));
}
"#,
    );
    assert!(!ok, "proxies bound by partial built:\n{err}");
    assert!(
        err.contains("cannot run in a worker process as a task"),
        "{err}"
    );
    assert!(err.contains("pass `proxy.borrowed()`"), "{err}");
    assert!(
        err.contains("src/main.rs:14"),
        "the user's call is not named:\n{err}"
    );

    // The same through `pool.serde()`: a proxy is no serde value either.
    let (ok, err) = build_with(
        "manager_proxy_serde_partial",
        &["manager"],
        r#"
use shmpool::manager::DictProxy;
fn count(d: DictProxy<String, u64>, name: String) -> usize {
    d.fetch_add(name.as_str(), 1).unwrap();
    name.len()
}
fn main() {
    let manager = shmpool::Manager::start().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let pool = shmpool::Pool::new(2).unwrap();
    let names: Vec<String> = vec!["a".into()];
    println!("{:?}", pool.serde().map(shmpool::partial(count, d.clone()), &names));
}
"#,
    );
    assert!(!ok, "a proxy bound by partial in a serde map built:\n{err}");
    assert!(
        err.contains("cannot run in a worker process as a serde task"),
        "{err}"
    );
    assert!(err.contains("pass `proxy.borrowed()`"), "{err}");
    assert!(
        err.contains("src/main.rs:12"),
        "the user's call is not named:\n{err}"
    );
}
