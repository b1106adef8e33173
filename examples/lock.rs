//! The `Lock` example of Python's docs (synchronization between processes), in Rust: ten processes print one line each,
//! holding a shared lock so that only one prints at a time.
//!
//! ```python
//! def f(l, i):
//!     l.acquire()
//!     try:
//!         print('hello world', i)
//!     finally:
//!         l.release()
//! lock = Lock()
//! for num in range(10):
//!     Process(target=f, args=(lock, num)).start()
//! ```

use shmpool::{Lock, Process};

fn f(l: Lock, i: u32) {
    let _held = l.lock().unwrap(); // released when `_held` is dropped
    println!("hello world {i}");
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let lock = Lock::new()?;
    let mut children: Vec<Process> = (0..10).map(|num| Process::new(f, (lock, num))).collect();
    for p in &mut children {
        p.start()?;
    }
    for p in &mut children {
        p.join(None)?;
    }
    Ok(())
}
