//! The report: JSON for machines, and an HTML page with a timeline for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::check::{Anomaly, FaultImpact, LostWrite};
use crate::history::{FaultRecord, Op, OpKind};
use crate::plots;

/// What a chaos run found; written to `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Whether the run means anything: enough traffic succeeded before the first fault.
    pub valid: bool,
    /// Why it is not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Whether it passed: valid, and every check clean.
    pub passed: bool,
    /// The seed that chose operations and faults.
    pub seed: u64,
    /// The backend faults came from.
    pub backend: String,
    /// Operations recorded.
    pub operations: usize,
    /// Operations that succeeded.
    pub succeeded: usize,
    /// Operations that failed (and took effect nowhere).
    pub failed: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    /// Writes and deletes the cluster acknowledged.
    pub acknowledged_writes: usize,
    /// Faults injected.
    pub faults: usize,
    /// Of which process kills.
    pub kills: usize,
    /// Acknowledged writes the end state contradicts.
    pub lost_writes: usize,
    /// Strong keys whose history is not linearizable.
    pub linearizability_anomalies: usize,
    /// Strong keys the checker could not decide within its budget.
    pub undecided_keys: usize,
    /// Eventual keys whose replicas still disagree after the faults healed.
    pub unconverged_keys: usize,
    /// Strong keys whose final read never succeeded, so their end state is unchecked.
    pub unread_keys: usize,
    /// Whether every partition was back to its replication factor, all replicas up, within the bound.
    pub rf_restored: bool,
    /// Seconds from the last heal until the replication factor was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_seconds: Option<f64>,
    /// Length of the workload, in seconds.
    pub duration_seconds: f64,
    /// Every fault.
    pub fault_log: Vec<FaultRecord>,
    /// The linearizability counterexamples.
    pub anomalies: Vec<Anomaly>,
    /// The lost writes (the first hundred).
    pub lost: Vec<LostWrite>,
    /// The unconverged keys (the first hundred).
    pub unconverged: Vec<String>,
    /// The strong keys never read at the end.
    pub unread: Vec<String>,
    /// Fault kinds injected.
    pub fault_kinds: usize,
    /// Per fault kind, how the operations in flight during its faults ended.
    pub impact: Vec<FaultImpact>,
    /// The metadata group at the end (local processes only): every replica a
    /// member, following one leader, with one state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metad: Option<MetadEnd>,
    /// Strong tombstones the storage nodes collected during the run, from
    /// their metrics (local processes only; a restarted node counts from its restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strong_tombstones_collected: Option<u64>,
}

/// The metadata group as a run left it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetadEnd {
    /// Whether every replica answered as a member, with the same decided
    /// slot and state digest, within the bound.
    pub converged: bool,
    /// Replicas that answered.
    pub replicas: usize,
    /// Of which members.
    pub members: usize,
    /// The leader's first undecided slot: entries decided over the run.
    pub decided_upto: u64,
    /// Entries decided per second of the run.
    pub entries_per_second: f64,
    /// The highest ballot round any replica saw: about the number of elections.
    pub ballot_round: u64,
    /// The largest snapshot, in bytes.
    pub snapshot_bytes: u64,
    /// What the replicas said when they did not converge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
    /// For each metad replica restarted or replaced, milliseconds from its
    /// start until it had decided what its peers had decided when it started.
    #[serde(default)]
    pub catch_up_ms: Vec<f64>,
}

impl Report {
    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let verdict = match (self.valid, self.passed) {
            (false, _) => "INVALID",
            (true, true) => "PASSED",
            (true, false) => "FAILED",
        };
        let mut text = format!(
            "chaos run {verdict} (seed {}, {} backend, {:.0} s)\n  operations {} (ok {}, failed {}, unknown {}), acknowledged writes {}\n  faults {} of {} kinds (kills {}), lost writes {}, linearizability anomalies {}, undecided keys {}, unconverged keys {}, unread keys {}, RF restored {}{}\n",
            self.seed,
            self.backend,
            self.duration_seconds,
            self.operations,
            self.succeeded,
            self.failed,
            self.unknown,
            self.acknowledged_writes,
            self.faults,
            self.fault_kinds,
            self.kills,
            self.lost_writes,
            self.linearizability_anomalies,
            self.undecided_keys,
            self.unconverged_keys,
            self.unread_keys,
            self.rf_restored,
            self.recovery_seconds
                .map(|s| format!(" in {s:.1} s"))
                .unwrap_or_default(),
        );
        if let Some(reason) = &self.invalid_reason {
            let _ = writeln!(text, "  invalid: {reason}");
        }
        if let Some(metad) = &self.metad {
            let _ = writeln!(
                text,
                "  metad: {} of {} replicas members, converged {}, {} entries ({:.1}/s), ballot round {}, snapshot {} bytes, slowest catch-up {:.0} ms of {}{}",
                metad.members,
                metad.replicas,
                metad.converged,
                metad.decided_upto,
                metad.entries_per_second,
                metad.ballot_round,
                metad.snapshot_bytes,
                metad.catch_up_ms.iter().copied().fold(0.0, f64::max),
                metad.catch_up_ms.len(),
                metad
                    .disagreement
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default(),
            );
        }
        if let Some(collected) = self.strong_tombstones_collected {
            let _ = writeln!(text, "  strong tombstones collected: {collected}");
        }
        for impact in &self.impact {
            let _ = writeln!(
                text,
                "  during {} ({}x): {} operations, {} failed, {} unknown",
                impact.kind, impact.faults, impact.operations, impact.failed, impact.unknown
            );
        }
        if !self.unread.is_empty() {
            let _ = writeln!(text, "  never read at the end: {}", self.unread.join(", "));
        }
        for anomaly in &self.anomalies {
            let _ = writeln!(
                text,
                "  not linearizable: {}/{}",
                anomaly.keyspace, anomaly.key
            );
            for line in &anomaly.operations {
                let _ = writeln!(text, "    {line}");
            }
        }
        for lost in self.lost.iter().take(5) {
            let _ = writeln!(
                text,
                "  lost: {}/{} {:?}: {}",
                lost.keyspace, lost.key, lost.value, lost.reason
            );
        }
        text
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page: the summary, charts of latency, throughput,
/// faults and every client's operations, and every anomaly with links to its
/// traces (`trace_url` with `{trace_id}`).
pub fn html(report: &Report, ops: &[Op], trace_url: &str) -> String {
    let link = |trace: &str| escape(&trace_url.replace("{trace_id}", trace));
    let flagged: Vec<&str> = report
        .anomalies
        .iter()
        .flat_map(|a| a.trace_ids.iter().map(String::as_str))
        .chain(report.lost.iter().filter_map(|l| l.trace_id.as_deref()))
        .collect();
    let faults = &report.fault_log;
    let charts = [
        plots::throughput(ops, faults),
        plots::latency(ops, faults, OpKind::Write),
        plots::latency(ops, faults, OpKind::Read),
        plots::latency(ops, faults, OpKind::Delete),
        plots::faults(ops, faults),
        plots::timeline(ops, faults, &flagged),
    ];
    let mut svg = String::new();
    for chart in charts {
        match chart {
            Ok(chart) => {
                svg.push_str("<div>");
                svg.push_str(&chart);
                svg.push_str("</div>");
            }
            Err(error) => {
                let _ = write!(
                    svg,
                    "<p>chart not drawn: {}</p>",
                    escape(&error.to_string())
                );
            }
        }
    }

    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Kvorum chaos run</title><style>body{{font-family:sans-serif;margin:20px}}td,th{{padding:2px 10px;text-align:left}}pre{{background:#f6f6f6;padding:8px}}</style></head><body><h1>Kvorum chaos run</h1><pre>{}</pre>",
        escape(&report.summary())
    );
    page.push_str("<h2>What happened</h2><p>Green: ok, red: failed, orange: outcome unknown; yellow bands: faults (one row per kind in the fault chart); in the client timeline, purple rings mark operations of an anomaly or a lost write, whose traces are linked below.</p>");
    page.push_str(&svg);
    page.push_str("<h2>Anomalies</h2>");
    if report.anomalies.is_empty() && report.lost.is_empty() {
        page.push_str("<p>None.</p>");
    }
    for anomaly in &report.anomalies {
        let _ = write!(
            page,
            "<h3>{}/{} is not linearizable</h3><pre>{}</pre><p>traces: ",
            escape(&anomaly.keyspace),
            escape(&anomaly.key),
            escape(&anomaly.operations.join("\n"))
        );
        for trace in &anomaly.trace_ids {
            let _ = write!(page, "<a href=\"{}\">{}</a> ", link(trace), escape(trace));
        }
        page.push_str("</p>");
    }
    if !report.lost.is_empty() {
        page.push_str("<table><tr><th>key</th><th>value</th><th>why</th><th>trace</th></tr>");
        for lost in &report.lost {
            let trace = lost
                .trace_id
                .as_deref()
                .map(|t| format!("<a href=\"{}\">{}</a>", link(t), escape(t)))
                .unwrap_or_default();
            let _ = write!(
                page,
                "<tr><td>{}/{}</td><td>{}</td><td>{}</td><td>{trace}</td></tr>",
                escape(&lost.keyspace),
                escape(&lost.key),
                escape(&format!("{:?}", lost.value)),
                escape(&lost.reason)
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Operations during each kind of fault</h2><table><tr><th>fault</th><th>times</th><th>operations</th><th>failed</th><th>unknown</th></tr>");
    for impact in &report.impact {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&impact.kind),
            impact.faults,
            impact.operations,
            impact.failed,
            impact.unknown
        );
    }
    page.push_str("</table>");
    page.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>target</th><th>from (ms)</th><th>to (ms)</th></tr>");
    for fault in &report.fault_log {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
            escape(&fault.kind),
            escape(&fault.target),
            fault.start_ms,
            fault
                .end_ms
                .map(|e| format!("{e:.0}"))
                .unwrap_or_else(|| "not healed".to_owned())
        );
    }
    page.push_str("</table></body></html>\n");
    page
}
