//! `sagaflow health`: asks a daemon's `/healthz` (or `/readyz`), for
//! container health checks in an image without curl.

use super::output::outln;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow health                      # exit 0 when the daemon on 127.0.0.1:9464 is alive
  sagaflow health --ready --addr 127.0.0.1:9464

Exit 0 when the answer is 200, 1 otherwise (no answer within 3 s included).")]
pub struct HealthArgs {
    /// The daemon's HTTP address (its --http-addr).
    #[arg(long, env = "SAGAFLOW_HEALTH_ADDR", default_value = "127.0.0.1:9464")]
    addr: String,
    /// Ask /readyz (Redis reachable, not stopping) instead of /healthz.
    #[arg(long)]
    ready: bool,
}

pub async fn run(args: HealthArgs) -> ExitCode {
    let path = if args.ready { "/readyz" } else { "/healthz" };
    match tokio::time::timeout(Duration::from_secs(3), get(&args.addr, path)).await {
        Ok(Ok((200, body))) => {
            outln!("{}", body.trim_end_matches('\n'));
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            eprintln!("sagaflow health: {path} answered {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("sagaflow health: no answer from {}{path}: {e}", args.addr);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "sagaflow health: no answer from {}{path} within 3 s",
                args.addr
            );
            ExitCode::FAILURE
        }
    }
}

/// A plain HTTP/1.1 GET: the status code and the body.
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}
