//! What the commands print, and the exit codes they share.
//!
//! Output goes through [`outln!`] rather than `println!`, which panics when
//! the reader has gone away (`sagaflow list | head -1`): a closed pipe ends
//! the command quietly, with exit code 0, as it ends `watch`. Resetting
//! `SIGPIPE` to its default would do the same for stdout, but would also
//! kill the daemon without a word when Redis closes a Unix socket under a
//! write.

use std::io::Write;
use std::process::ExitCode;

/// The answer is no: no such saga, not in a state for that request, a
/// request the daemon refused, a bad configuration file. With `--wait`,
/// the saga was compensated.
pub const NO: u8 = 1;
/// The command line is wrong (clap's own code for usage errors). With
/// `--wait`, the saga failed or its start was rejected.
pub const USAGE: u8 = 2;
/// Redis could not be reached or read, no daemon answered in time, or the
/// saga could not be followed to its end.
pub const UNAVAILABLE: u8 = 3;
/// `start` without `--wait`: a saga was started earlier with this
/// idempotency key; its id is printed.
pub const DUPLICATE: u8 = 4;

/// Prints one line on stdout; a reader that went away ends the process
/// quietly.
macro_rules! outln {
    () => { $crate::cli::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}
pub(crate) use outln;

/// What [`outln!`] does.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("sagaflow: cannot write to stdout: {e}");
            std::process::exit(i32::from(UNAVAILABLE));
        }
    }
}

/// Prints `value` as one line of JSON.
pub fn json_line(value: &serde_json::Value) {
    line(format_args!("{value}"));
}

/// Why a command did not do what was asked, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn no(message: impl Into<String>) -> Self {
        Self {
            code: NO,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: USAGE,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: UNAVAILABLE,
            message: message.into(),
        }
    }
}

/// Most errors on the way are Redis's.
impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::unavailable(message)
    }
}

/// The exit of `command`: its own code, or the failure's after saying why.
pub fn exit(command: &str, result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("sagaflow {command}: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Cuts `text` to `width` characters, the last one an ellipsis when cut.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A step's or a branch's name (`step[branch]`) cut to `width` characters
/// like [`fit`], but keeping the branch: a long step name loses its end,
/// never the `[branch]` that tells the lines of its branches apart.
pub fn fit_unit(label: &str, width: usize) -> String {
    let n = label.chars().count();
    let branch_at = label.rfind('[').filter(|_| label.ends_with(']'));
    match branch_at {
        Some(at) if n > width => {
            let suffix = &label[at..];
            let keep = width.saturating_sub(suffix.chars().count());
            if keep < 2 {
                return fit(label, width);
            }
            format!("{}{suffix}", fit(&label[..at], keep))
        }
        _ => fit(label, width),
    }
}

#[cfg(test)]
mod tests {
    use super::{fit, fit_unit};

    #[test]
    fn a_branch_is_kept_when_its_step_is_cut() {
        assert_eq!(
            fit_unit("perform_exploration[0]", 24),
            "perform_exploration[0]"
        );
        assert_eq!(
            fit_unit("perform_exploration[12]", 20),
            "perform_explora…[12]"
        );
        assert_eq!(fit_unit("perform_exploration", 10), "perform_e…");
        assert_eq!(fit_unit("a[123456789]", 8), "a[12345…");
    }

    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(fit("allocate_resources", 30), "allocate_resources");
        assert_eq!(fit("allocate_resources", 8), "allocat…");
        assert_eq!(fit("ééééé", 3), "éé…");
        assert_eq!(fit("abc", 3), "abc");
    }
}
