//! `sagaflow api-token NAME`: makes a bearer token for the HTTP API and
//! prints it once, with the `api_tokens` entry that the daemons keep in
//! its place (its SHA-256 digest: the token itself is stored nowhere).

use super::output::outln;
use crate::http::access::{new_token, ApiToken, Scope};
use crate::protocol::control::check_name;
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow api-token dashboard-viewer
  sagaflow api-token alice --write

Prints the token (give it to its holder; it is shown only this once) and the
entry to add to the daemons' api_tokens setting (comma-separated entries, in
the configuration file or SAGAFLOW_API_TOKENS). A write token's name must
also be an operator key's (operator_keys): the daemon signs the holder's
requests with that key, and the audit names the holder.")]
pub struct ApiTokenArgs {
    /// Who holds the token: what the audit records for its writes. 1 to 64
    /// letters, digits, `.`, `_`, `@` or `-`.
    name: String,
    /// May also start sagas and make operators' requests (cancel, retry,
    /// skip, abandon).
    #[arg(long)]
    write: bool,
    /// Print only the token and the entry, one per line.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: ApiTokenArgs) -> ExitCode {
    if let Err(e) = check_name("the token name", &args.name) {
        eprintln!("sagaflow api-token: {e}");
        return ExitCode::from(2);
    }
    let scope = if args.write {
        Scope::Write
    } else {
        Scope::Read
    };
    let token = new_token();
    let entry = ApiToken::entry(&args.name, scope, &token);
    if args.quiet {
        outln!("{token}");
        outln!("{entry}");
        return ExitCode::SUCCESS;
    }
    outln!("token (give it to {}; it is not shown again):", args.name);
    outln!("  {token}");
    outln!();
    outln!("entry for the daemons' api_tokens setting:");
    outln!("  {entry}");
    if args.write {
        outln!();
        outln!(
            "a write token's name must be an operator key's: operator_keys needs `{}:<secret>`",
            args.name
        );
    }
    ExitCode::SUCCESS
}
