//! `sagaflow bench`: runs the reference mission under load on this machine
//! and reports what it costs. It starts a private `redis-server` (unless
//! given one), the daemon and the simulated handlers as separate processes
//! (so their CPU is not hidden in the load generator's), starts sagas, and
//! reads Redis's own statistics before and after.

mod load;
mod otlp_sink;
mod redis_info;
mod stats;

use super::output::outln;
use super::REFERENCE_MISSION;
use crate::config::RedisUrl;
use crate::connection::{self, RedisMode};
use crate::local_redis::{ClusterOptions, LocalCluster, LocalRedis};
use clap::Args;
use load::Load;
use otlp_sink::OtlpSink;
use redis_info::{RedisInfo, Servers};
use stats::{CpuPerSaga, Percentiles, RedisMemory, Report, StepOverhead};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sagaflow bench --sagas 5000 --concurrency 200\n  sagaflow bench --duration 60s --concurrency 400\n  sagaflow bench --concurrency 1 --sagas 2000      # latency, one saga at a time\n  sagaflow bench --rate 1000 --duration 30s        # latency at a fixed arrival rate\n  sagaflow bench --durable --json\n  sagaflow bench --cluster 3                        # against 3 local cluster masters"
)]
pub struct BenchArgs {
    /// Use this Redis instead of a private redis-server (its data is kept).
    #[arg(long, conflicts_with = "cluster")]
    redis_url: Option<RedisUrl>,
    /// Run against a private Redis Cluster of this many masters (no
    /// replicas, 1 to 16) instead of one redis-server; the report adds the
    /// commands per saga on each master.
    #[arg(long, value_name = "MASTERS", value_parser = clap::value_parser!(u16).range(1..=16))]
    cluster: Option<u16>,
    /// With --cluster: one replica per master, and the daemon run with
    /// `wait_replicas: 1` (each transition and relay waits for it), to
    /// measure what failover safety costs.
    #[arg(long, requires = "cluster")]
    replicas: bool,
    /// Sagas to run (ignored with --duration).
    #[arg(long, default_value_t = 2000)]
    sagas: usize,
    /// Keep starting sagas for this long (e.g. 60s) instead of a fixed number.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Sagas in flight at most.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Start this many sagas per second instead of refilling as they end.
    #[arg(long)]
    rate: Option<f64>,
    /// Simulated work per handler command, in ms.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Robots per mission (1 to 64, as the simulated handlers allocate at
    /// most that many): each explores in a branch of its own (the mission's
    /// fan-out), at most 4 at once; the report adds branches/s.
    #[arg(long, default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=crate::handler::mission::MAX_ROBOTS as i64))]
    robots: u16,
    /// Redis with `appendonly yes` and `appendfsync everysec`.
    #[arg(long)]
    durable: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Do not wait for the retention to pass to measure the memory left.
    #[arg(long)]
    no_retention_wait: bool,
    /// Export spans over OTLP (HTTP/protobuf, batched, every span sampled)
    /// to a sink in this process that counts them, to measure what tracing
    /// costs. Without it, nothing is exported.
    #[arg(long)]
    otlp: bool,
}

/// Retention given to the benchmark's daemon, so that the memory left
/// after retention can be measured in the run.
const RETENTION: Duration = Duration::from_secs(5);

pub async fn run(args: BenchArgs) -> ExitCode {
    let _telemetry = super::logging::init("warn", &Default::default(), "sagaflow-bench", false);
    match bench(args).await {
        Ok((report, json)) => {
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report serializes")
                );
            } else {
                outln!("{}", report.table().trim_end_matches('\n'));
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("sagaflow bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Process(Child);

impl Process {
    /// `sagaflow <args>` on the Redis at `redis_url`, given in the
    /// environment: any user of the host can read a process's arguments,
    /// only its owner its environment.
    fn spawn(args: &[&str], redis_url: &str, otlp: Option<&str>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut command = Command::new(exe);
        command.env("SAGAFLOW_REDIS_URL", redis_url);
        command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        command.env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        if let Some(endpoint) = otlp {
            command
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env("OTEL_TRACES_SAMPLER", "always_on")
                // Room for a few seconds of spans at full speed.
                .env("OTEL_BSP_MAX_QUEUE_SIZE", "65536");
        }
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map(Process)
            .map_err(|e| format!("cannot start `sagaflow {}`: {e}", args[0]))
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.0.id().to_string())
    }

    /// Peak resident memory (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// CPU time used so far by process `pid` (or `self`), all its threads, user
/// and system, from `/proc/<pid>/stat`; 0 where that cannot be read.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of them.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / USER_HZ
}

/// The unit of `/proc/<pid>/stat` times: 100 on Linux, whatever the kernel's
/// own tick rate.
const USER_HZ: f64 = 100.0;

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(args: BenchArgs) -> Result<(Report, bool), String> {
    let durable_args = ["--appendonly", "yes", "--appendfsync", "everysec"];
    let durable: &[&str] = if args.durable { &durable_args } else { &[] };
    let mut _redis = None;
    let mut _cluster = None;
    let (url, servers) = match (&args.redis_url, args.cluster) {
        (Some(url), _) => (url.expose().to_owned(), vec![url.expose().to_owned()]),
        (None, Some(masters)) => {
            let options = ClusterOptions {
                masters: usize::from(masters),
                replicas: args.replicas,
                extra: durable.iter().map(|s| s.to_string()).collect(),
                ..ClusterOptions::default()
            };
            let cluster = LocalCluster::start(&options).map_err(|e| e.to_string())?;
            let seeds = cluster.seeds();
            _cluster = Some(cluster);
            (seeds[0].clone(), seeds)
        }
        (None, None) => {
            let redis = LocalRedis::start(durable)?;
            let url = redis.url.clone();
            _redis = Some(redis);
            (url.clone(), vec![url])
        }
    };
    let redis = crate::config::client(&url).map_err(|e| e.to_string())?;
    let client = connection::Client::resolve(redis, RedisMode::Auto)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let mut conn = client
        .commands(Duration::from_secs(5))
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let mut servers = Servers::connect(&servers).await?;

    let sagas_dir = std::env::temp_dir().join(format!("sagaflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&sagas_dir).map_err(|e| e.to_string())?;
    std::fs::write(sagas_dir.join("mission_start.yaml"), REFERENCE_MISSION)
        .map_err(|e| e.to_string())?;
    let sink = match args.otlp {
        true => Some(OtlpSink::start().await?),
        false => None,
    };
    let otlp = sink.as_ref().map(|s| s.endpoint.as_str());
    let retention = format!("{}s", RETENTION.as_secs());
    let max_in_flight = (args.concurrency * 2).max(100).to_string();
    let wait_replicas = if args.replicas { "1" } else { "0" };
    let daemon = Process::spawn(
        &[
            "run",
            "--wait-replicas",
            wait_replicas,
            "--sagas",
            sagas_dir.to_str().ok_or("a temp dir that is not UTF-8")?,
            "--retention",
            &retention,
            "--reply-retention",
            &retention,
            "--idempotency-retention",
            &retention,
            "--stream-retention",
            &retention,
            "--max-in-flight",
            &max_in_flight,
            "--http-addr",
            "none",
        ],
        &url,
        otlp,
    )?;
    let work = args.work_ms.to_string();
    // Enough handler slots for every saga in flight: the handlers must not
    // be what the benchmark measures.
    let slots = args.concurrency.max(1024).to_string();
    let handlers = Process::spawn(
        &[
            "handlers",
            "--work-ms",
            &work,
            "--max-in-flight",
            &slots,
            "--record-ttl",
            &retention,
        ],
        &url,
        otlp,
    )?;
    wait_until_ready(&mut conn).await?;

    let before_each = servers.read().await.map_err(|e| e.to_string())?;
    let before = RedisInfo::sum(
        &before_each
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>(),
    );
    let peak = Arc::new(AtomicU64::new(before.used_memory));
    let sampler = tokio::spawn(sample_peak_memory(
        Servers::connect(&args_servers(&url, _cluster.as_ref())).await?,
        peak.clone(),
    ));
    let load = Load {
        sagas: args.sagas,
        duration: args.duration,
        concurrency: args.concurrency.max(1),
        rate: args.rate,
        trigger: "mission:start".into(),
        events: "saga:events".into(),
        work_ms: args.work_ms,
        robots: args.robots.into(),
    };
    let cpu_before = [daemon.cpu_secs(), handlers.cpu_secs(), cpu_secs("self")];
    let measured = load::run(&client, &load).await?;
    let cpu_after = [daemon.cpu_secs(), handlers.cpu_secs(), cpu_secs("self")];
    let spans = match &sink {
        Some(sink) => Some(settled_count(sink).await),
        None => None,
    };
    let after_each = servers.read().await.map_err(|e| e.to_string())?;
    let after = RedisInfo::sum(
        &after_each
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>(),
    );
    sampler.abort();
    let peak_memory = peak.load(Ordering::Relaxed).max(after.used_memory);
    let daemon_rss = daemon.peak_rss_mib();
    if !measured.failures.is_empty() {
        return Err(format!(
            "not reported: {} of {} sagas did not complete: {}",
            measured.failures.len(),
            measured.ended.max(measured.failures.len()),
            measured
                .failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let retained = if args.no_retention_wait {
        None
    } else {
        tokio::time::sleep(retention_wait()?).await;
        Some(servers.total().await.map_err(|e| e.to_string())?)
    };
    drop(daemon);
    let _ = std::fs::remove_dir_all(&sagas_dir);

    let n = measured.ended.max(1) as f64;
    let calls = after.calls_since(&before);
    let total_calls: u64 = calls.iter().map(|(_, c)| c).sum();
    let mut steps: Vec<StepOverhead> = measured
        .step_ms
        .into_iter()
        .map(|(step, mut ms)| StepOverhead {
            step,
            overhead_ms: Percentiles::of(&mut ms),
        })
        .collect();
    let order = [
        "allocate_resources",
        "plan_route",
        "perform_exploration",
        "integrate_maps",
    ];
    steps.sort_by_key(|s| {
        order
            .iter()
            .position(|o| *o == s.step)
            .unwrap_or(order.len())
    });
    let mut latencies = measured.latencies_ms;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let report = Report {
        mode: {
            let mode = match (args.rate, args.duration) {
                (Some(rate), _) => format!("open loop, {rate} starts/s"),
                (None, Some(d)) => format!("closed loop for {}", humantime::format_duration(d)),
                (None, None) => "closed loop".into(),
            };
            match (args.cluster, args.replicas) {
                (Some(n), true) => {
                    format!(
                        "{mode}, Redis Cluster of {n} masters with a replica each, wait_replicas 1"
                    )
                }
                (Some(n), false) => format!("{mode}, Redis Cluster of {n} masters"),
                (None, _) => mode,
            }
        },
        durable: args.durable,
        sagas: measured.ended,
        concurrency: load.concurrency,
        handler_work_ms: args.work_ms,
        elapsed_secs: measured.elapsed.as_secs_f64(),
        sagas_per_sec: measured.ended as f64 / measured.elapsed.as_secs_f64(),
        robots: args.robots.into(),
        branches_per_saga: measured.branches as f64 / n,
        branches_per_sec: measured.branches as f64 / measured.elapsed.as_secs_f64(),
        latency_ms: Percentiles::of(&mut latencies),
        steps,
        redis_commands_per_saga: total_calls as f64 / n,
        redis_servers: servers.len(),
        redis_commands_per_saga_by_server: before_each
            .iter()
            .zip(&after_each)
            .map(|((label, b), (_, a))| {
                let calls: u64 = a.calls_since(b).iter().map(|(_, c)| c).sum();
                (label.clone(), calls as f64 / n)
            })
            .collect(),
        redis_commands_by_name: calls
            .iter()
            .map(|(name, c)| (name.clone(), *c as f64 / n))
            .collect(),
        cpu_ms_per_saga: {
            let per_saga = |i: usize| (cpu_after[i] - cpu_before[i]) * 1000.0 / n;
            CpuPerSaga {
                redis: (after.cpu_secs - before.cpu_secs) * 1000.0 / n,
                daemon: per_saga(0),
                handlers: per_saga(1),
                load_generator: per_saga(2),
            }
        },
        daemon_peak_rss_mib: daemon_rss,
        spans_per_saga: spans.map(|s| s as f64 / n),
        redis_memory_mib: RedisMemory {
            before: mib(before.used_memory),
            peak: mib(peak_memory),
            after: mib(after.used_memory),
            after_retention: retained.map(|r| mib(r.used_memory)),
        },
    };
    Ok((report, args.json))
}

/// The spans the sink received, once the last batches are in: the count
/// has not moved for a second (a few seconds at most).
async fn settled_count(sink: &OtlpSink) -> u64 {
    let mut last = sink.spans();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sink.spans();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Waits until the daemon holds its lease and the handlers' groups exist.
async fn wait_until_ready(conn: &mut connection::Conn) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let leases: u64 = redis::cmd("ZCARD")
            .arg(crate::store::keys::Keys::new("saga:").leases())
            .query_async(conn)
            .await
            .unwrap_or(0);
        let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("mapping:commands")
            .query_async(conn)
            .await;
        if leases > 0 && groups.is_ok_and(|g| !g.is_empty()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("the daemon or the handlers did not start within 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The servers whose memory is sampled: the one Redis, or the cluster's
/// masters.
fn args_servers(url: &str, cluster: Option<&LocalCluster>) -> Vec<String> {
    cluster.map_or_else(|| vec![url.to_owned()], LocalCluster::seeds)
}

/// Keeps `peak` at the largest `used_memory` seen (all servers together),
/// reading every 200 ms.
async fn sample_peak_memory(mut servers: Servers, peak: Arc<AtomicU64>) {
    loop {
        if let Ok(info) = servers.total().await {
            peak.fetch_max(info.used_memory, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long after a run everything it left should be gone: the longest any
/// stream keeps an entry, and then two trims.
fn retention_wait() -> Result<Duration, String> {
    let catalog = crate::definition::catalog_from_str(
        std::path::Path::new("mission_start.yaml"),
        REFERENCE_MISSION,
    )
    .map_err(|e| e.to_string())?;
    let longest = catalog
        .command_streams()
        .into_iter()
        .map(|(_, timeout)| crate::engine::command_stream_keep(RETENTION, timeout))
        .max()
        .unwrap_or(RETENTION);
    Ok(longest + Duration::from_secs(4))
}
