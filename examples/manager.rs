//! Python's Manager example (section "Server process" of
//! https://docs.python.org/3/library/multiprocessing.html#sharing-state-between-processes),
//! in Rust. Prints
//!
//! ```text
//! {0.25: None, 1: '1', '2': 2}
//! [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
//! ```
//!
//! Python's dict mixes key and value types; here an enum, [`Py`], does, with
//! Python's `repr` as its `Display`.
//!
//! Run with `cargo run --example manager --features manager`.

use serde::{Deserialize, Serialize};
use shmpool::manager::{Borrowed, DictProxy, ListProxy};
use shmpool::{Manager, Process};
use std::cmp::Ordering;
use std::fmt;

/// A Python value of the kinds the example uses.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Py {
    None,
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for Py {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Py::None => f.write_str("None"),
            Py::Int(i) => write!(f, "{i}"),
            Py::Float(x) => write!(f, "{x:?}"), // 0.25, 1.0: as Python's repr
            Py::Str(s) => write!(f, "'{s}'"),
        }
    }
}

impl Py {
    /// Numbers by value, then strings: the order the docs' output shows.
    fn order(&self, other: &Py) -> Ordering {
        let number = |p: &Py| match p {
            Py::Int(i) => Some(*i as f64),
            Py::Float(x) => Some(*x),
            _ => None,
        };
        match (number(self), number(other), self, other) {
            (Some(a), Some(b), ..) => a.total_cmp(&b),
            (Some(_), None, ..) => Ordering::Less,
            (None, Some(_), ..) => Ordering::Greater,
            (_, _, Py::Str(a), Py::Str(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }
}

fn f(d: Borrowed<DictProxy<Py, Py>>, l: Borrowed<ListProxy<i64>>) {
    d.insert(&Py::Int(1), &Py::Str("1".into())).unwrap();
    d.insert(&Py::Str("2".into()), &Py::Int(2)).unwrap();
    d.insert(&Py::Float(0.25), &Py::None).unwrap();
    l.reverse().unwrap();
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let manager = Manager::start()?;
    let d = manager.dict::<Py, Py>()?;
    let l = manager.list::<i64>()?;
    l.extend(&(0..10).collect::<Vec<_>>())?;

    // What travels is each proxy's borrowed form; `d` and `l` keep the
    // objects alive until the child is done.
    let mut p = Process::new(f, (d.borrowed(), l.borrowed()));
    p.start()?;
    p.join(None)?;

    // The dict keeps insertion order, as Python ≥ 3.7 does; the docs' output
    // predates that and shows the keys sorted, so sort them to match it.
    let mut items = d.items()?;
    items.sort_by(|a, b| a.0.order(&b.0));
    let body: Vec<String> = items.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("{{{}}}", body.join(", "));
    println!("{:?}", l.to_vec()?);
    Ok(())
}
