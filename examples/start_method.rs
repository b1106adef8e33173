//! The start-method example of Python's docs (contexts and start methods), with a context, in Rust:
//!
//! ```python
//! def foo(q):
//!     q.put('hello')
//! ctx = mp.get_context('spawn')
//! q = ctx.Queue()
//! p = ctx.Process(target=foo, args=(q,))
//! p.start(); print(q.get()); p.join()
//! ```
//!
//! `cargo run --example start_method` prints `hello`. The child is this
//! program started again (spawn), and becomes the process before `main`.

use shmpool::{get_context, Queue, StartMethod};

fn foo(q: Queue<[u8; 8]>) {
    q.put(*b"hello\0\0\0").unwrap();
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let ctx = get_context(StartMethod::Spawn);
    let q = Queue::new(16)?;
    let mut p = ctx.process(foo, (q,));
    p.start()?;
    let msg = q.get()?;
    println!("{}", String::from_utf8_lossy(&msg).trim_end_matches('\0'));
    p.join(None)?;
    Ok(())
}
