//! A map with a progress bar (feature `progress`): on a terminal, stderr
//! shows the bar filling up to 100 %.
//!
//! ```text
//! cargo run --features progress --example progress
//! ```

use std::time::Duration;

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    x * x
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let pool = shmpool::Pool::builder()
        .processes(2)
        .progress(true)
        .build()?;
    let items: Vec<u64> = (0..5_000).collect();
    let squares = pool.map_chunked(slow_square, &items, 50)?;
    println!("sum of squares: {}", squares.iter().sum::<u64>());
    Ok(())
}
