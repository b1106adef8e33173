//! A batch job over files with `pool.serde()`: paths in, a report per file out
//! (strings and a struct of your own), as Python's
//! `pool.map(summarize, paths)` would.
//!
//! `cargo run --release --example batch_files [DIR]` summarizes every file
//! under DIR (default: this crate's `src`), largest first.

use serde::{Deserialize, Serialize};
use shmpool::{Error, Pool};
use std::path::Path;

/// What the workers send back for one file.
#[derive(Serialize, Deserialize, Debug)]
struct Summary {
    path: String,
    lines: usize,
    words: usize,
    longest_line: String,
    /// Why the file could not be read, if it could not.
    error: Option<String>,
}

/// Runs in a worker: reads one file and summarizes it.
fn summarize(path: String) -> Summary {
    match std::fs::read_to_string(&path) {
        Ok(text) => Summary {
            lines: text.lines().count(),
            words: text.split_whitespace().count(),
            longest_line: text
                .lines()
                .max_by_key(|l| l.len())
                .unwrap_or("")
                .trim()
                .to_owned(),
            error: None,
            path,
        },
        Err(e) => Summary {
            path,
            lines: 0,
            words: 0,
            longest_line: String::new(),
            error: Some(e.to_string()),
        },
    }
}

/// Every file under `dir`, as strings.
fn files_under(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
}

fn main() -> Result<(), Error> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/src").to_owned());
    let mut paths = Vec::new();
    files_under(Path::new(&dir), &mut paths);
    paths.sort();

    let pool = Pool::new(2)?;
    let mut summaries: Vec<Summary> = pool.serde().map(summarize, &paths)?;

    summaries.sort_by_key(|s| std::cmp::Reverse(s.lines));
    for s in summaries.iter().take(10) {
        match &s.error {
            None => println!(
                "{:>6} lines {:>7} words  {}\n{:>22}longest: {:.60}",
                s.lines, s.words, s.path, "", s.longest_line
            ),
            Some(e) => println!("{:>28}  {}: {e}", "unreadable", s.path),
        }
    }
    let total: usize = summaries.iter().map(|s| s.lines).sum();
    println!("{} files, {total} lines", summaries.len());
    Ok(())
}
