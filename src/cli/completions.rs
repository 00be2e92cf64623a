//! `sagaflow completions SHELL`: the shell's completion script, on stdout.

use super::output::outln;
use clap::Args;
use clap_complete::Shell;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow completions bash > ~/.local/share/bash-completion/completions/sagaflow
  sagaflow completions zsh > \"${fpath[1]}/_sagaflow\"
  sagaflow completions fish > ~/.config/fish/completions/sagaflow.fish

Exit codes: 0 printed; 2 a usage error (a shell not listed).")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: CompletionsArgs) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut super::command(), "sagaflow", &mut script);
    outln!(
        "{}",
        String::from_utf8_lossy(&script).trim_end_matches('\n')
    );
    ExitCode::SUCCESS
}
