//! `sagaflow validate`: checks definitions, touches nothing.

use crate::cli::output::outln;
use crate::definition;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow validate sagas/
  sagaflow validate sagas/mission_start.yaml

Every problem is printed as <file>:<line>:<column>: <problem> (1-based), all of a
file's at once; exit 0 when every definition is valid, 1 otherwise.")]
pub struct ValidateArgs {
    /// A directory of saga definitions (*.yaml, *.yml), or one definition file.
    #[arg(default_value = "sagas", env = "SAGAFLOW_SAGAS")]
    path: PathBuf,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    match definition::load_dir(&args.path) {
        Ok(catalog) => {
            for name in catalog.names() {
                let def = catalog.get(name).expect("listed");
                outln!(
                    "{}: saga `{name}` ({} steps) is valid",
                    def.source.display(),
                    def.steps.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "sagaflow: {} problem(s) in the saga definitions",
                errors.0.len()
            );
            ExitCode::FAILURE
        }
    }
}
