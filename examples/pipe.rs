//! The `Pipe` example of Python's docs (exchanging objects between processes), in Rust:
//!
//! ```python
//! def f(conn):
//!     conn.send([42, None, 'hello'])
//!     conn.close()
//! parent_conn, child_conn = Pipe()
//! p = Process(target=f, args=(child_conn,)); p.start()
//! print(parent_conn.recv())   # prints "[42, None, 'hello']"
//! p.join()
//! ```

#[path = "common/message.rs"]
mod message;

use message::Message;
use shmpool::{Connection, Pipe, Process};

fn f(conn: Connection<Message>) {
    conn.send(Message::example()).unwrap();
    conn.close().unwrap();
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let (parent_conn, child_conn) = Pipe::new()?;
    let mut p = Process::new(f, (child_conn,));
    p.start()?;
    println!("{}", parent_conn.recv()?); // prints "[42, None, 'hello']"
    p.join(None)?;
    Ok(())
}
