//! Progress bars for maps (feature `progress`): a bar on stderr counting
//! elements done, with the rate and an ETA, for pools built with
//! [`PoolBuilder::progress`](crate::PoolBuilder::progress).
//!
//! The parent advances the bar as it collects each finished chunk, so it is
//! right whatever order chunks finish in, and a chunk whose worker died
//! counts only once it has run again and finished. Without the feature, or
//! when stderr is not a terminal, [`Progress`] does nothing.

use crate::pool::core::Core;

/// One call's bar, or nothing.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// No bar.
    pub(crate) const NONE: Progress = Progress {
        #[cfg(feature = "progress")]
        bar: None,
    };

    /// A bar for a call over `len` elements (`None`: unknown, as for an
    /// `imap` over an iterator without an exact length), if the pool asked
    /// for bars and stderr is a terminal.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(crate) fn start(core: &Core, len: Option<usize>) -> Progress {
        #[cfg(feature = "progress")]
        {
            use std::io::IsTerminal;
            if !core.config.harness.progress || !std::io::stderr().is_terminal() {
                return Progress::NONE;
            }
            let target = indicatif::ProgressDrawTarget::stderr();
            let bar = match len {
                Some(n) => {
                    let bar = indicatif::ProgressBar::with_draw_target(Some(n as u64), target);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:40} {pos}/{len} ({percent}%) {per_sec} ETA {eta}",
                        )
                        .expect("a valid template"),
                    );
                    bar
                }
                None => {
                    let bar = indicatif::ProgressBar::with_draw_target(None, target);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{spinner} {pos} done {per_sec}")
                            .expect("a valid template"),
                    );
                    bar
                }
            };
            Progress { bar: Some(bar) }
        }
        #[cfg(not(feature = "progress"))]
        Progress::NONE
    }

    /// A bar for a lazy map over `input`: of its length if it knows it
    /// exactly, else a counter.
    pub(crate) fn start_lazy<I: Iterator>(core: &Core, input: &I) -> Progress {
        let exact = match input.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        Progress::start(core, exact)
    }

    /// `n` more elements are done.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(crate) fn advance(&self, n: usize) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    /// The call succeeded: the bar is drawn full and left on screen, on a
    /// line of its own.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish();
            end_line();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A call that failed leaves its bar where it stopped, on a line of
        // its own, so that the error printed next starts a line.
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
                end_line();
            }
        }
    }
}

/// Ends the line of a bar drawn for the last time: indicatif leaves the
/// cursor after it, where the program's next output would go.
#[cfg(feature = "progress")]
fn end_line() {
    use std::io::Write;
    let _ = std::io::stderr().write_all(b"\n");
}
