//! The shortest real command handler on the crate's handler SDK: it serves
//! `allocate_resources` and its compensation `release_resources` on
//! `resources:commands`. The runner does the rest of the wire contract
//! (consumer group, `start`/`progress`/final replies, deduplication on
//! `request_id`, deadlines, acknowledgement).
//!
//! ```sh
//! cargo run --example tiny_handler -- redis://127.0.0.1:6379
//! ```
//!
//! Stop it with Ctrl-C: commands in hand are answered first.

use sagaflow::handler::{Context, HandlerError, Handlers};
use sagaflow::protocol::Command;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The step's payload is `{"area": ..., "robots": ...}` (its `input` template
/// in sagas/mission_start.yaml); `robots` may be a number or a string.
async fn allocate(cmd: Command, ctx: Context) -> Result<Value, HandlerError> {
    let robots = &cmd.payload["robots"];
    let count = robots
        .as_u64()
        .or_else(|| robots.as_str()?.trim().parse().ok())
        .unwrap_or(2);
    if count == 0 || count > 64 {
        // Trying again cannot help: the saga compensates.
        return Err(HandlerError::Fatal(format!(
            "cannot allocate {count} robots"
        )));
    }
    ctx.progress(50.0).await;
    let robot_ids: Vec<String> = (1..=count).map(|i| format!("robot-{i}")).collect();
    Ok(json!({"robot_ids": robot_ids, "area": cmd.payload["area"]}))
}

/// The compensation has no `input` template, so its payload is the saga's
/// context: `{"input": ..., "steps": {...}, "failure": {...}}`. It must be
/// idempotent; releasing robots twice is harmless.
async fn release(cmd: Command, _ctx: Context) -> Result<Value, HandlerError> {
    let robot_ids = &cmd.payload["steps"]["allocate_resources"]["result"]["robot_ids"];
    Ok(json!({"released": robot_ids}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init(); // RUST_LOG=info shows what the runner does
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url)?;

    let shutdown = CancellationToken::new();
    let on_ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });

    Handlers::new(client, "tiny-handler")
        .on("resources:commands", "allocate_resources", allocate)
        .on("resources:commands", "release_resources", release)
        .run(shutdown)
        .await?;
    Ok(())
}
