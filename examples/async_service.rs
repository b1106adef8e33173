//! A small tokio service that answers requests by awaiting a process pool.
//!
//! Each request runs in a worker process: a crash there (here: a parser that
//! calls `abort()` on bad input) fails that one request, and a request past
//! its deadline is aborted, killing its worker, so it stops using a CPU and
//! the pool goes on serving. The runtime's threads never block: the timer
//! below keeps ticking while requests wait.
//!
//! ```text
//! cargo run --release --example async_service
//! ```

use shmpool::{Error, Pool};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The work a request asks for: "parse" `input`, which takes `cost_ms`.
/// Input 13 makes the native code crash, input 0 makes it loop forever.
fn parse(input: u64, cost_ms: u64) -> u64 {
    match input {
        13 => std::process::abort(),
        0 => loop {
            std::hint::spin_loop()
        },
        _ => {
            std::thread::sleep(Duration::from_millis(cost_ms));
            input * 2
        }
    }
}

/// Answers one request within `deadline`: the value, or why not.
async fn handle(pool: Arc<Pool>, input: u64, cost_ms: u64, deadline: Duration) -> String {
    let work = match pool.apply_async(parse, (input, cost_ms)) {
        Ok(work) => work.abort_on_drop(true), // giving up kills the task
        Err(e) => return format!("503 {e}"),
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(v)) => format!("200 {v}"),
        Ok(Err(Error::WorkerDied { signal, .. })) => {
            format!("500 the parser crashed (signal {signal:?})")
        }
        Ok(Err(e)) => format!("500 {e}"),
        Err(_) => format!("504 past the {deadline:?} deadline: aborted"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let pool = Arc::new(Pool::new(2)?);
    let deadline = Duration::from_millis(300);
    let started = Instant::now();

    // Shows that the runtime's only thread stays free while requests wait.
    let ticker = tokio::spawn(async {
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        let mut ticks = 0u32;
        loop {
            interval.tick().await;
            ticks += 1;
            if ticks % 25 == 0 {
                println!("    (runtime still ticking: {ticks} ticks)");
            }
        }
    });

    let requests = [(21, 50), (0, 0), (13, 0), (7, 100), (40, 10), (5, 2_000)];
    let handlers: Vec<_> = requests
        .iter()
        .map(|&(input, cost)| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { (input, handle(pool, input, cost, deadline).await) })
        })
        .collect();
    for h in handlers {
        let (input, answer) = h.await.expect("the handler ran");
        println!("request {input:>2}: {answer}");
    }
    ticker.abort();

    // The aborted requests' workers were replaced: the pool still serves.
    let after = handle(Arc::clone(&pool), 50, 1, deadline).await;
    println!("request 50: {after} (after the aborts)");
    println!("done in {:?}", started.elapsed());
    Ok(())
}
