//! A parent with a busy pool and a named shared-memory object, for
//! `tests/parent_death.rs` to `kill -9`; also a demonstration that nothing
//! outlives a parent killed without warning.
//!
//! `cargo run --example crash_parent -- [fork|forkserver|spawn]` prints one line —
//! `<worker pid> <worker pid> <worker's parent pid> <shared-memory name>` —
//! then keeps its workers busy for a minute. Kill it with `kill -9`: the
//! workers exit at once, and the resource tracker removes the shared-memory
//! object and says so on stderr.

use shmpool::{get_context, SharedMemory, StartMethod};
use std::io::Write;
use std::time::Duration;

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn parent_pid() -> u32 {
    // SAFETY: plain syscall.
    unsafe { libc::getppid() as u32 }
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let method: StartMethod = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fork".into())
        .parse()?;
    let pool = get_context(method).pool(2)?;
    let shm = SharedMemory::create(1 << 16)?;
    let worker_parent = pool.apply(parent_pid, ())?;
    let _busy = pool.map_async_chunked(nap, &[100u64; 1200], 1)?;
    let pids = pool.worker_pids();
    println!("{} {} {} {}", pids[0], pids[1], worker_parent, shm.name());
    std::io::stdout().flush().expect("stdout");
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}
