//! The first `Process` example of Python's docs, in Rust:
//!
//! ```python
//! def f(name):
//!     print('hello', name)
//! p = Process(target=f, args=('bob',)); p.start(); p.join()
//! ```
//!
//! `cargo run --example process` prints `hello bob`.

use shmpool::Process;

/// A short string as a fixed array: arguments are plain data.
fn text(s: &str) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..s.len()].copy_from_slice(s.as_bytes());
    a
}

fn f(name: [u8; 16]) {
    let name = String::from_utf8_lossy(&name);
    println!("hello {}", name.trim_end_matches('\0'));
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let mut p = Process::new(f, (text("bob"),));
    p.start()?;
    p.join(None)?;
    Ok(())
}
