//! What `INFO` says about Redis's work and memory, and the differences that
//! make the benchmark's per-saga figures.

use std::collections::BTreeMap;

/// One reading of `INFO commandstats`, `INFO cpu` and `INFO memory`.
#[derive(Clone, Debug, Default)]
pub struct RedisInfo {
    /// Calls per command name.
    pub calls: BTreeMap<String, u64>,
    /// CPU seconds used by Redis (user + system).
    pub cpu_secs: f64,
    pub used_memory: u64,
}

impl RedisInfo {
    /// The sum of several servers' readings: a cluster's masters.
    pub fn sum(readings: &[RedisInfo]) -> Self {
        let mut total = RedisInfo::default();
        for r in readings {
            for (name, n) in &r.calls {
                *total.calls.entry(name.clone()).or_default() += n;
            }
            total.cpu_secs += r.cpu_secs;
            total.used_memory += r.used_memory;
        }
        total
    }

    pub async fn read(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<Self> {
        let text: String = redis::cmd("INFO")
            .arg("everything")
            .query_async(conn)
            .await?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut info = RedisInfo::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("cmdstat_") {
                let Some((name, stats)) = rest.split_once(':') else {
                    continue;
                };
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                info.calls.insert(name.to_owned(), calls);
            } else if let Some((key, value)) = line.split_once(':') {
                match key {
                    "used_cpu_sys" | "used_cpu_user" => {
                        info.cpu_secs += value.parse::<f64>().unwrap_or(0.0)
                    }
                    "used_memory" => info.used_memory = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        info
    }

    /// Calls made between `before` and `self`, by command, largest first;
    /// the `INFO` calls of the benchmark itself are left out.
    pub fn calls_since(&self, before: &RedisInfo) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .calls
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, n)| {
                (
                    name.clone(),
                    n - before.calls.get(name).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// The servers the benchmark reads `INFO` from: the one Redis, or each
/// master of a cluster.
pub struct Servers {
    nodes: Vec<(String, redis::aio::MultiplexedConnection)>,
}

impl Servers {
    /// Connects to each of `urls`.
    pub async fn connect(urls: &[String]) -> Result<Self, String> {
        let mut nodes = Vec::new();
        for url in urls {
            let client = crate::config::client(url).map_err(|e| e.to_string())?;
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("cannot reach Redis: {e}"))?;
            let label = url
                .rsplit(['/', '@'])
                .find(|s| !s.is_empty())
                .unwrap_or(url);
            nodes.push((label.to_owned(), conn));
        }
        Ok(Self { nodes })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Each server's reading, labelled by its address.
    pub async fn read(&mut self) -> redis::RedisResult<Vec<(String, RedisInfo)>> {
        let mut out = Vec::new();
        for (label, conn) in &mut self.nodes {
            out.push((label.clone(), RedisInfo::read(conn).await?));
        }
        Ok(out)
    }

    /// The servers' readings added up.
    pub async fn total(&mut self) -> redis::RedisResult<RedisInfo> {
        let each: Vec<RedisInfo> = self.read().await?.into_iter().map(|(_, r)| r).collect();
        Ok(RedisInfo::sum(&each))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calls_cpu_and_memory() {
        let before = RedisInfo::parse("cmdstat_xadd:calls=10,usec=5,usec_per_call=0.5\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\nused_memory:1000\r\n");
        let after = RedisInfo::parse("cmdstat_xadd:calls=25,usec=9\r\ncmdstat_info:calls=7,usec=1\r\ncmdstat_evalsha:calls=4,usec=1\r\nused_cpu_sys:2.0\r\nused_cpu_user:2.5\r\nused_memory:3000\r\n");
        assert_eq!(before.cpu_secs, 3.5);
        assert_eq!(after.used_memory, 3000);
        assert_eq!(
            after.calls_since(&before),
            [("xadd".to_owned(), 15), ("evalsha".to_owned(), 4)]
        );
    }
}
