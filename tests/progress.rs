//! Progress bars (feature `progress`): drawn under a pseudo-terminal, and up
//! to 100 %; absent when stderr is not a terminal. Every wait is bounded.
#![cfg(feature = "progress")]

mod common;

use common::{bounded, example};
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Runs the `progress` example with `args` under a pseudo-terminal (which
/// `script` gives it as its stdio); its exit status and what it wrote.
fn under_a_terminal(args: &str) -> (std::process::ExitStatus, String) {
    let command = format!("{} {args}", example("progress").display());
    let out = bounded(LIMIT, move || {
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from util-linux")
    });
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_map_under_a_pseudo_terminal_draws_its_bar_up_to_100_percent() {
    let (status, text) = under_a_terminal("");
    assert!(status.success(), "{text}");
    assert!(text.contains("5000/5000 (100%)"), "{text}");
    assert!(text.contains("/s"), "the rate: {text}");
    assert!(text.contains("ETA"), "{text}");
    // The program's next output starts a line of its own.
    assert!(text.contains("\nsum of squares: 41654167500"), "{text:?}");
    let bar_line = text.lines().find(|l| l.contains("5000/5000")).unwrap();
    assert!(!bar_line.contains("sum of squares"), "{bar_line:?}");
}

#[test]
fn a_failed_map_leaves_its_bar_on_a_line_of_its_own_above_the_error() {
    let (status, text) = under_a_terminal("fail");
    assert!(!status.success(), "{text}");
    let error_line = text
        .lines()
        .find(|l| l.contains("TaskPanicked"))
        .unwrap_or_else(|| panic!("no error in {text:?}"));
    assert!(error_line.starts_with("Error: "), "{error_line:?}");
    assert!(text.contains("stopped at 2500"), "{text:?}");
}

#[cfg(feature = "serde")]
#[test]
fn serde_maps_and_imaps_under_a_pseudo_terminal_draw_their_bars_up_to_100_percent() {
    let exe = example("progress");
    let out = bounded(LIMIT, move || {
        let command = format!("{} serde", exe.to_str().unwrap());
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from util-linux")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3000/3000 (100%)"), "the map's bar: {text}");
    assert!(text.contains("2000/2000 (100%)"), "the imap's bar: {text}");
    // 0..3000 in decimal: 10 + 90 * 2 + 900 * 3 + 2000 * 4 digits, and
    // 0..2000 again: 10 + 180 + 2700 + 1000 * 4.
    assert!(text.contains("total length: 17780"), "{text}");
}

#[test]
fn without_a_terminal_no_bar_is_drawn() {
    let exe = example("progress");
    let out = bounded(LIMIT, move || Command::new(exe).output().unwrap());
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sum of squares: 41654167500\n"
    );
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn maps_and_imaps_with_progress_on_return_the_same_results() {
    bounded(LIMIT, || {
        let pool = shmpool::Pool::builder()
            .processes(2)
            .progress(true)
            .build()
            .unwrap();
        let items: Vec<u64> = (0..3000).collect();
        let want: Vec<u64> = items.iter().map(|x| x * x).collect();
        assert_eq!(pool.map_chunked(square, &items, 7).unwrap(), want);
        let got: Vec<u64> = pool
            .imap_chunked(square, items.clone(), 7)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, want);
    });
}
