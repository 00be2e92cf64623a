//! Percentiles and the report the benchmark prints.

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (ms).
    pub fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        Self {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: samples[samples.len() - 1],
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StepOverhead {
    pub step: String,
    /// From `step_started` to `step_completed`, less the handlers' simulated work.
    pub overhead_ms: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub durable: bool,
    pub sagas: usize,
    pub concurrency: usize,
    pub handler_work_ms: u64,
    pub elapsed_secs: f64,
    pub sagas_per_sec: f64,
    /// Robots per mission, each exploring in a branch of the fan-out.
    pub robots: usize,
    pub branches_per_saga: f64,
    /// Branches of fan-outs completed per second.
    pub branches_per_sec: f64,
    pub latency_ms: Percentiles,
    pub steps: Vec<StepOverhead>,
    pub redis_commands_per_saga: f64,
    /// The Redis servers measured: 1, or a cluster's masters.
    pub redis_servers: usize,
    /// Commands per saga on each server (`host:port`).
    pub redis_commands_per_saga_by_server: Vec<(String, f64)>,
    pub redis_commands_by_name: Vec<(String, f64)>,
    pub cpu_ms_per_saga: CpuPerSaga,
    pub daemon_peak_rss_mib: f64,
    /// With `--otlp`: spans exported per saga, by the daemon and the
    /// handlers together (9 for the reference mission: the saga, its 4
    /// attempts and the 4 handled commands).
    pub spans_per_saga: Option<f64>,
    pub redis_memory_mib: RedisMemory,
}

/// CPU time per saga, by process, in ms: what bounds the throughput when
/// they all share the machine's cores.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuPerSaga {
    pub redis: f64,
    pub daemon: f64,
    pub handlers: f64,
    pub load_generator: f64,
}

impl CpuPerSaga {
    pub fn total(&self) -> f64 {
        self.redis + self.daemon + self.handlers + self.load_generator
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisMemory {
    pub before: f64,
    pub peak: f64,
    pub after: f64,
    pub after_retention: Option<f64>,
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<42} {v}\n"));
        line(
            "mode",
            format!(
                "{}{}",
                self.mode,
                if self.durable {
                    ", appendonly everysec"
                } else {
                    ""
                }
            ),
        );
        line("sagas (all completed)", self.sagas.to_string());
        line("in flight at most", self.concurrency.to_string());
        line(
            "handler work per step",
            format!("{} ms", self.handler_work_ms),
        );
        line("elapsed", format!("{:.2} s", self.elapsed_secs));
        line("throughput", format!("{:.0} sagas/s", self.sagas_per_sec));
        line(
            "fan-out",
            format!(
                "{} robots per mission, {:.1} branches per saga, {:.0} branches/s",
                self.robots, self.branches_per_saga, self.branches_per_sec
            ),
        );
        let l = &self.latency_ms;
        line(
            "start to saga_completed (ms)",
            format!(
                "p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
                l.p50, l.p95, l.p99, l.max
            ),
        );
        for s in &self.steps {
            let o = &s.overhead_ms;
            line(
                &format!("  step {} overhead (ms)", s.step),
                format!("mean {:.2}  p99 {:.2}", o.mean, o.p99),
            );
        }
        line(
            "Redis commands per saga",
            format!("{:.1}", self.redis_commands_per_saga),
        );
        let top: Vec<String> = self
            .redis_commands_by_name
            .iter()
            .map(|(name, n)| format!("{name} {n:.1}"))
            .collect();
        line("  by command", top.join(", "));
        if self.redis_servers > 1 {
            let by_server: Vec<String> = self
                .redis_commands_per_saga_by_server
                .iter()
                .map(|(server, n)| format!("{server} {n:.1}"))
                .collect();
            line(
                &format!("  by master ({})", self.redis_servers),
                by_server.join(", "),
            );
        }
        let c = &self.cpu_ms_per_saga;
        line("Redis CPU per saga", format!("{:.3} ms", c.redis));
        line(
            "CPU per saga, all processes (ms)",
            format!(
                "{:.2}: Redis {:.2}, daemon {:.2}, handlers {:.2}, load generator {:.2}",
                c.total(),
                c.redis,
                c.daemon,
                c.handlers,
                c.load_generator
            ),
        );
        if let Some(spans) = self.spans_per_saga {
            line("spans exported per saga (OTLP)", format!("{spans:.2}"));
        }
        line(
            "daemon peak RSS",
            format!("{:.1} MiB", self.daemon_peak_rss_mib),
        );
        let m = &self.redis_memory_mib;
        let retained = m
            .after_retention
            .map_or("not measured".to_owned(), |r| format!("{r:.1}"));
        line(
            "Redis memory (MiB)",
            format!(
                "before {:.1}  peak {:.1}  after {:.1}  after retention {retained}",
                m.before, m.peak, m.after
            ),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        assert_eq!(Percentiles::of(&mut [7.0]).p99, 7.0);
    }
}
