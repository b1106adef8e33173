//! The `Pipe` example of Python's docs with a message of any `serde` type (feature
//! `serde`): Python's `[42, None, 'hello']` is the tuple `(42, None, "hello")`.
//!
//! ```sh
//! cargo run --example serde_pipe --features serde   # prints [42, None, 'hello']
//! ```

use shmpool::serial::{Connection, Pipe};
use shmpool::Process;

type Message = (i32, Option<i32>, String);

fn f(conn: Connection<Message>) {
    conn.send(&(42, None, "hello".to_string())).unwrap();
    conn.close().unwrap();
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let (parent_conn, child_conn) = Pipe::new::<Message>()?;
    let mut p = Process::new(f, (child_conn,));
    p.start()?;
    let (number, nothing, text) = parent_conn.recv()?;
    let nothing = nothing.map_or("None".to_string(), |n| n.to_string());
    println!("[{number}, {nothing}, '{text}']"); // prints "[42, None, 'hello']"
    p.join(None)?;
    Ok(())
}
