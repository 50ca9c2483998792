//! The chaos tool catches a store that acknowledges writes before a quorum has
//! them, and one that answers reads from one replica: a router started with
//! one of its deliberate test-only bugs must fail the run, with the anomalies
//! in the report. And runs with the real protocol, under disk wipes and under
//! network partitions, must pass.

// The report's summary goes to stderr, which the harness shows on failure.
#![allow(clippy::print_stderr)]

use kvorum_launcher::default_bin_dir;

/// Runs `kvorum-chaos` with `args` into a fresh directory: whether it passed,
/// its stderr, its report, and the directory (kept alive for the report's files).
async fn chaos_run(
    args: &[&str],
) -> anyhow::Result<(bool, String, serde_json::Value, tempfile::TempDir)> {
    let out = tempfile::tempdir()?;
    let run = tokio::process::Command::new(default_bin_dir().join("kvorum-chaos"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .kill_on_drop(true)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let written = std::fs::read(out.path().join("report.json"))
        .map_err(|e| anyhow::anyhow!("no report ({e}); the run said:\n{stderr}"))?;
    let report: serde_json::Value = serde_json::from_slice(&written)?;
    eprintln!("{report:#}");
    Ok((run.status.success(), stderr, report, out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_catches_writes_acknowledged_before_a_quorum() -> anyhow::Result<()> {
    let (passed, stderr, report, out) = chaos_run(&[
        "--duration-s",
        "20",
        "--quiet-start-s",
        "6",
        "--seed",
        "11",
        "--inject-bug",
    ])
    .await?;
    assert!(!passed, "the run passed with the bug on:\n{stderr}");
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["passed"], false);
    let found = report["linearizability_anomalies"].as_u64().unwrap_or(0)
        + report["lost_writes"].as_u64().unwrap_or(0);
    assert!(found > 0, "no anomaly found: {report}");
    // Every anomaly names its operations and links them to traces.
    for anomaly in report["anomalies"].as_array().into_iter().flatten() {
        assert!(!anomaly["operations"].as_array().is_some_and(Vec::is_empty));
        assert!(
            !anomaly["trace_ids"].as_array().is_some_and(Vec::is_empty),
            "{anomaly}"
        );
    }
    let html = std::fs::read_to_string(out.path().join("report.html"))?;
    assert!(
        html.contains("<svg") && html.contains("/trace/"),
        "the timeline links traces"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_that_wipes_disks_under_traffic_loses_nothing() -> anyhow::Result<()> {
    // Disks lost with and without their checkpoints while clients read, write
    // and delete: every history must stay linearizable, no acknowledged write
    // lost, every eventual key converged, RF restored.
    let (passed, stderr, report, _out) = chaos_run(&[
        "--duration-s",
        "30",
        "--quiet-start-s",
        "6",
        "--fault-interval-s",
        "5",
        "--faults",
        "wipe-storage,wipe-storage-all,kill-storage",
        "--seed",
        "23",
    ])
    .await?;
    assert!(passed, "the run failed:\n{stderr}");
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["lost_writes"], 0, "{report}");
    assert_eq!(report["linearizability_anomalies"], 0, "{report}");
    let wipes = report["fault_log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("wipe-storage"))
        })
        .count();
    assert!(wipes >= 2, "too few disk wipes: {report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_catches_reads_answered_by_one_replica_under_a_partition() -> anyhow::Result<()>
{
    // Only network faults: a replica cut off from the writes answers reads
    // with what it had, and a router that takes one reply passes that on.
    let (passed, stderr, report, _out) = chaos_run(&[
        "--duration-s",
        "25",
        "--quiet-start-s",
        "6",
        "--fault-interval-s",
        "5",
        "--fault-hold-s",
        "4",
        "--faults",
        "partition-storage,partition-halves",
        "--seed",
        "7",
        "--inject-bug",
        "read-first-reply",
    ])
    .await?;
    assert!(!passed, "the run passed with the bug on:\n{stderr}");
    assert_eq!(report["valid"], true, "{report}");
    assert!(
        report["linearizability_anomalies"].as_u64().unwrap_or(0) > 0,
        "no stale read found: {report}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_under_partitions_clock_jumps_and_double_failures_passes() -> anyhow::Result<()>
{
    let (passed, stderr, report, _out) = chaos_run(&[
        "--duration-s",
        "40",
        "--quiet-start-s",
        "6",
        "--fault-interval-s",
        "4",
        "--fault-hold-s",
        "2",
        "--faults",
        "partition-halves,clock-forward,kill-two-storage,partition-one-way,pause-router,partition-bridge,clock-back,lossy-links",
        "--seed",
        "31",
    ])
    .await?;
    assert!(passed, "the run failed:\n{stderr}");
    assert_eq!(report["passed"], true, "{report}");
    assert!(report["fault_kinds"].as_u64().unwrap_or(0) >= 6, "{report}");
    // Faults this strong must cost something, and the report says what, per kind.
    let impact = report["impact"].as_array().cloned().unwrap_or_default();
    assert!(
        impact
            .iter()
            .any(|i| i["failed"].as_u64().unwrap_or(0) + i["unknown"].as_u64().unwrap_or(0) > 0),
        "no operation failed under the faults: {report}"
    );
    Ok(())
}
