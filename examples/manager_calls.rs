//! Where a Manager proxy call's time goes, from a child process: the
//! child's first call (which connects: handshake, session, lane) and each
//! kind of call `compare` measures. Rounds interleave three ways of running
//! the child: connected first, rows in `compare`'s order; not connected
//! first, so that the first row (dict set) pays for the connection, as
//! `compare`'s child did before it took its references on arrival; and
//! connected first, rows in reverse order (does a row's place matter?).
//! Prints medians and spreads (min–max) over the rounds.
//!
//! Run with `cargo run --release --example manager_calls --features manager
//! [-- ROUNDS [N]]` (8 rounds of 500 calls per kind by default).

#[cfg(feature = "manager")]
mod calls {
    use shmpool::manager::{Borrowed, DictProxy, ListProxy, QueueProxy, ValueProxy};
    use shmpool::{Manager, Process};
    use std::hint::black_box;
    use std::time::Instant;

    /// The rows, by index: what `compare` measures, plus the first call.
    const ROWS: [&str; 5] = [
        "first call (connects)",
        "dict set",
        "dict get",
        "list append",
        "queue put + get",
    ];

    /// How a child runs: connects before the rows, and in which order.
    const WAYS: [(&str, bool, bool); 3] = [
        ("connected first, compare's order", true, false),
        ("first row connects", false, false),
        ("connected first, reverse order", true, true),
    ];

    /// A child: its first call (unless `connect_first` is false), then `n`
    /// calls of each kind, in order or `reversed`; microseconds per call into
    /// `out`, by row.
    fn client(
        d: Borrowed<DictProxy<u32, u32>>,
        l: Borrowed<ListProxy<u32>>,
        q: Borrowed<QueueProxy<u32>>,
        out: Borrowed<ValueProxy<Vec<f64>>>,
        (n, connect_first, reversed): (u32, bool, bool),
    ) {
        let mut figures = vec![f64::NAN; ROWS.len()];
        if connect_first {
            let t = Instant::now();
            d.len().unwrap();
            figures[0] = t.elapsed().as_secs_f64() * 1e6;
        }
        let per_call = |row: usize, figures: &mut Vec<f64>| {
            let t = Instant::now();
            for i in 0..n {
                match row {
                    1 => drop(black_box(d.insert(&i, &i).unwrap())),
                    2 => drop(black_box(d.get(&i).unwrap())),
                    3 => l.push(&i).unwrap(),
                    _ => {
                        q.put(&i).unwrap();
                        black_box(q.get().unwrap());
                    }
                }
            }
            figures[row] = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        };
        let order: Vec<usize> = if reversed {
            vec![4, 3, 2, 1]
        } else {
            vec![1, 2, 3, 4]
        };
        for row in order {
            per_call(row, &mut figures);
        }
        out.set(&figures).unwrap();
    }

    pub fn main() -> Result<(), shmpool::Error> {
        shmpool::init();
        let mut args = std::env::args().skip(1);
        let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
        let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
        let manager = Manager::start()?;
        let (d, l, q) = (manager.dict()?, manager.list()?, manager.queue()?);
        let out = manager.value(&Vec::<f64>::new())?;
        // By way: rows × rounds.
        let mut seen = vec![vec![Vec::new(); ROWS.len()]; WAYS.len()];
        for round in 0..rounds * WAYS.len() {
            let way = round % WAYS.len();
            let (_, connect_first, reversed) = WAYS[way];
            let args = (
                d.borrowed(),
                l.borrowed(),
                q.borrowed(),
                out.borrowed(),
                (n, connect_first, reversed),
            );
            let mut child = Process::new(client, args);
            child.start()?;
            child.join(None)?;
            for (row, t) in out.get()?.into_iter().enumerate() {
                seen[way][row].push(t);
            }
        }
        println!("{rounds} rounds of each way, {n} calls per row; µs per call: median (min–max)");
        for ((way, ..), seen) in WAYS.iter().zip(&mut seen) {
            println!("{way}:");
            for (name, times) in ROWS.iter().zip(seen.iter_mut()) {
                times.retain(|t| !t.is_nan());
                if times.is_empty() {
                    continue;
                }
                times.sort_by(f64::total_cmp);
                println!(
                    "  {name:<22} {:>8.2} ({:.2}–{:.2})",
                    times[times.len() / 2],
                    times[0],
                    times[times.len() - 1]
                );
            }
        }
        Ok(())
    }
}

#[cfg(feature = "manager")]
fn main() -> Result<(), shmpool::Error> {
    calls::main()
}

#[cfg(not(feature = "manager"))]
fn main() {
    eprintln!("manager_calls needs the manager feature: --features manager");
}
