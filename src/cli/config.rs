//! `sagaflow config`: the settings the daemon would run with, from the
//! same flags, environment and file, and where each comes from.

use super::output::outln;
use super::run::{settings_from, RunArgs};
use clap::ArgMatches;
use std::process::ExitCode;

pub fn run(args: &RunArgs, matches: &ArgMatches) -> ExitCode {
    match settings_from(args, matches) {
        Ok(resolved) => {
            for (key, value, source) in &resolved.sources {
                outln!("{key:<24} {value:<32} {source}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sagaflow config: bad configuration: {e}");
            ExitCode::FAILURE
        }
    }
}
