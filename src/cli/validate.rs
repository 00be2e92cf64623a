//! `sagaflow validate`: checks definitions, touches nothing.

use crate::definition;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  sagaflow validate sagas/")]
pub struct ValidateArgs {
    /// Directory of saga definitions (*.yaml, *.yml).
    #[arg(default_value = "sagas", env = "SAGAFLOW_SAGAS")]
    dir: PathBuf,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    match definition::load_dir(&args.dir) {
        Ok(catalog) => {
            for name in catalog.names() {
                let def = catalog.get(name).expect("listed");
                println!(
                    "{}: saga `{name}` ({} steps) is valid",
                    def.source.display(),
                    def.steps.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}
