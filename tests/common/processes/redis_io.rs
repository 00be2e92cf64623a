//! Plain connections and stream reads for the process tests.

use super::*;

// ---------------------------------------------------------------- redis

/// A connection whose commands give up after a second, so that a test
/// never hangs on a Redis that is down.
pub(super) async fn try_connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    must("a connection", try_connect(url)).await
}

/// [`try_connect`] to one server (`RedisMode::Single`), or a connection
/// through which each command goes to the node of its key on a cluster.
pub(super) async fn try_conn(url: &str, mode: RedisMode) -> redis::RedisResult<Conn> {
    if mode == RedisMode::Single {
        return Ok(Conn::Multiplexed(try_connect(url).await?));
    }
    let client = Client::resolve(redis::Client::open(url)?, mode).await?;
    client.commands(Duration::from_secs(1)).await
}

/// The id of the newest entry of `stream` (`0-0` when it is empty).
pub async fn last_id(conn: &mut (impl redis::aio::ConnectionLike + Send), stream: &str) -> String {
    must("XREVRANGE", sagaflow::streams::last_id(conn, stream)).await
}

/// The entries of `stream` after `after`, with their values as text.
pub async fn entries_after(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    after: &str,
) -> Vec<crate::common::Fields> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg(format!("({after}")).arg("+");
    let reply: redis::Value = must("XRANGE", cmd.query_async(conn)).await;
    decode_range_reply(stream, &reply)
        .iter()
        .map(|e| lossy(&e.fields))
        .collect()
}

/// A number in `0..n` from the random bits of a UUID4.
pub fn random_below(n: usize) -> usize {
    let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
    (high % n as u64) as usize
}
