//! A map with a progress bar (feature `progress`): on a terminal, stderr
//! shows the bar filling up to 100 %. With `fail`, a task panics halfway:
//! the bar stops there, and the error is printed on the next line. With
//! `serde`, a `pool.serde()` map and imap over strings, each with its bar.
//!
//! ```text
//! cargo run --features progress --example progress [-- fail | -- serde]
//! ```

use std::time::Duration;

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    x * x
}

#[cfg(feature = "serde")]
fn slow_len(s: String) -> usize {
    std::thread::sleep(Duration::from_micros(200));
    s.len()
}

fn fails_halfway(x: u64) -> u64 {
    assert!(x < 2_500, "stopped at {x}");
    slow_square(x)
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let pool = shmpool::Pool::builder()
        .processes(2)
        .progress(true)
        .build()?;
    #[cfg(feature = "serde")]
    if std::env::args().nth(1).as_deref() == Some("serde") {
        let words: Vec<String> = (0..3_000).map(|i| i.to_string()).collect();
        let lens = pool.serde().map_chunked(slow_len, &words, 50)?;
        let more = pool
            .serde()
            .imap_chunked(slow_len, words[..2_000].to_vec(), 50)?
            .collect::<Result<Vec<_>, _>>()?;
        let total: usize = lens.iter().chain(&more).sum();
        println!("total length: {total}");
        return Ok(());
    }
    let items: Vec<u64> = (0..5_000).collect();
    let fail = std::env::args().nth(1).as_deref() == Some("fail");
    let f: fn(u64) -> u64 = if fail { fails_halfway } else { slow_square };
    let squares = pool.map_chunked(f, &items, 50)?;
    println!("sum of squares: {}", squares.iter().sum::<u64>());
    Ok(())
}
