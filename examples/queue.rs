//! The `Queue` example of Python's docs (exchanging objects between processes), in Rust:
//!
//! ```python
//! def f(q):
//!     q.put([42, None, 'hello'])
//! q = Queue(); p = Process(target=f, args=(q,)); p.start()
//! print(q.get())    # prints "[42, None, 'hello']"
//! p.join()
//! ```

#[path = "common/message.rs"]
mod message;

use message::Message;
use shmpool::{Process, Queue};

fn f(q: Queue<Message>) {
    q.put(Message::example()).unwrap();
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let q = Queue::new(16)?;
    let mut p = Process::new(f, (q,));
    p.start()?;
    println!("{}", q.get()?); // prints "[42, None, 'hello']"
    p.join(None)?;
    Ok(())
}
