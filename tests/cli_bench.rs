//! `sagaflow bench` runs end to end and reports, as JSON, figures that add
//! up. (The figures themselves are for people: no test judges them.)

use serde_json::Value;
use std::process::Command;

#[test]
fn a_small_benchmark_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args([
            "bench",
            "--sagas",
            "40",
            "--concurrency",
            "8",
            "--json",
            "--no-retention-wait",
        ])
        .output()
        .expect("sagaflow bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["sagas"], 40);
    assert!(report["sagas_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    let latency = &report["latency_ms"];
    assert!(
        latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap(),
        "{report}"
    );
    assert_eq!(report["steps"].as_array().unwrap().len(), 4, "{report}");
    assert!(
        report["redis_commands_per_saga"].as_f64().unwrap() >= 8.0,
        "{report}"
    );
    let cpu = &report["cpu_ms_per_saga"];
    for process in ["redis", "daemon", "handlers", "load_generator"] {
        assert!(cpu[process].as_f64().unwrap() >= 0.0, "{report}");
    }
    assert!(
        report["daemon_peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["redis_memory_mib"]["peak"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
