//! The README's programs build and run as written: each is copied from
//! README.md into a scratch project depending on this crate, as a reader
//! would paste it (`common::scratch`).

mod common;

use common::scratch::{build_with, program};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first ```rust block after the heading `section` in README.md.
fn readme_block(section: &str) -> String {
    let readme = include_str!("../README.md");
    let after = &readme[readme
        .find(&format!("\n{section}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {section:?}"))..];
    let start = after.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let len = after[start..].find("```\n").expect("a closed block");
    after[start..start + len].to_owned()
}

/// Runs `path`; its stdout, if it exits successfully within `limit`.
fn run(path: &std::path::Path, limit: Duration) -> String {
    let mut child = Command::new(path).stdout(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{} did not finish within {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}: {out:?}", path.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_manager_section_is_a_program_that_prints_what_python_does() {
    let source = readme_block("## Manager: a server process with proxies");
    let (ok, err) = build_with("readme_manager", &["manager"], &source);
    assert!(ok, "the README's Manager program does not build:\n{err}");
    let out = run(&program("readme_manager"), Duration::from_secs(60));
    assert_eq!(
        out, "[(1, \"1\")]\n[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]\n",
        "{source}"
    );
}
