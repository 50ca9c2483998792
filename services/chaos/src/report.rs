//! The report: JSON for machines, and an HTML page with a timeline for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::check::{Anomaly, LostWrite};
use crate::history::{FaultRecord, Op, OpKind, Status};

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
            "chaos run {verdict} (seed {}, {} backend, {:.0} s)\n  operations {} (ok {}, failed {}, unknown {}), acknowledged writes {}\n  faults {} (kills {}), lost writes {}, linearizability anomalies {}, undecided keys {}, unconverged keys {}, RF restored {}{}\n",
            self.seed,
            self.backend,
            self.duration_seconds,
            self.operations,
            self.succeeded,
            self.failed,
            self.unknown,
            self.acknowledged_writes,
            self.faults,
            self.kills,
            self.lost_writes,
            self.linearizability_anomalies,
            self.undecided_keys,
            self.unconverged_keys,
            self.rf_restored,
            self.recovery_seconds
                .map(|s| format!(" in {s:.1} s"))
                .unwrap_or_default(),
        );
        if let Some(reason) = &self.invalid_reason {
            let _ = writeln!(text, "  invalid: {reason}");
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

/// A self-contained HTML page: the summary, a timeline of operations, errors and
/// faults, and every anomaly with links to its traces (`trace_url` with `{trace_id}`).
pub fn html(report: &Report, ops: &[Op], trace_url: &str) -> String {
    const WIDTH: f64 = 1400.0;
    const LANE: f64 = 14.0;
    const TOP: f64 = 30.0;
    let end = ops
        .iter()
        .map(|o| o.complete_ms)
        .chain(report.fault_log.iter().filter_map(|f| f.end_ms))
        .fold(1.0, f64::max);
    let clients = ops.iter().map(|o| o.client).max().map_or(1, |c| c + 1);
    let height = TOP + clients as f64 * LANE + 30.0;
    let x = |ms: f64| 60.0 + ms / end * (WIDTH - 80.0);
    let link = |trace: &str| escape(&trace_url.replace("{trace_id}", trace));
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="10">"#
    );
    for fault in &report.fault_log {
        let (start, stop) = (x(fault.start_ms), x(fault.end_ms.unwrap_or(end)));
        let _ = write!(
            svg,
            r##"<rect x="{start:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#f4b400" fill-opacity="0.18"><title>{kind} {target}: {a:.0}–{b:.0} ms</title></rect><text x="{start:.1}" y="12" fill="#8a6d00">{kind}</text><text x="{start:.1}" y="24" fill="#8a6d00">{target}</text>"##,
            y = TOP - 4.0,
            w = (stop - start).max(1.0),
            h = clients as f64 * LANE + 4.0,
            kind = escape(&fault.kind),
            target = escape(&fault.target),
            a = fault.start_ms,
            b = fault.end_ms.unwrap_or(end),
        );
    }
    for client in 0..clients {
        let _ = write!(
            svg,
            r##"<text x="4" y="{y:.1}" fill="#555">client {client}</text>"##,
            y = TOP + client as f64 * LANE + 9.0
        );
    }
    let flagged: Vec<&str> = report
        .anomalies
        .iter()
        .flat_map(|a| a.trace_ids.iter().map(String::as_str))
        .chain(report.lost.iter().filter_map(|l| l.trace_id.as_deref()))
        .collect();
    for op in ops {
        let colour = match op.status {
            Status::Ok => "#2e7d32",
            Status::Fail => "#c62828",
            Status::Unknown => "#ef6c00",
        };
        let y = TOP + op.client as f64 * LANE + 6.0;
        let (a, b) = (
            x(op.invoke_ms),
            x(op.complete_ms).max(x(op.invoke_ms) + 1.0),
        );
        let what = match op.kind {
            OpKind::Read => "get",
            OpKind::Write => "put",
            OpKind::Delete => "delete",
        };
        let title = escape(&format!(
            "{what} {}/{} {:?} {:?} {:.1}–{:.1} ms {}",
            op.keyspace,
            op.key,
            op.status,
            op.value.as_deref().unwrap_or_default(),
            op.invoke_ms,
            op.complete_ms,
            op.error.as_deref().unwrap_or_default()
        ));
        let line = format!(
            r#"<line x1="{a:.1}" x2="{b:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="{w}"><title>{title}</title></line>"#,
            w = if op.status == Status::Ok { 2 } else { 5 },
        );
        match op.trace_id.as_deref().filter(|t| flagged.contains(t)) {
            Some(trace) => {
                let _ = write!(
                    svg,
                    r##"<a href="{}"><circle cx="{a:.1}" cy="{y:.1}" r="5" fill="none" stroke="#6a1b9a" stroke-width="2"/>{line}</a>"##,
                    link(trace)
                );
            }
            None => svg.push_str(&line),
        }
    }
    let _ = write!(
        svg,
        r##"<text x="60" y="{y:.1}" fill="#555">0 ms</text><text x="{e:.1}" y="{y:.1}" fill="#555" text-anchor="end">{end:.0} ms</text></svg>"##,
        y = height - 8.0,
        e = WIDTH - 20.0,
    );

    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Kvorum chaos run</title><style>body{{font-family:sans-serif;margin:20px}}td,th{{padding:2px 10px;text-align:left}}pre{{background:#f6f6f6;padding:8px}}</style></head><body><h1>Kvorum chaos run</h1><pre>{}</pre>",
        escape(&report.summary())
    );
    page.push_str("<h2>Timeline</h2><p>One lane per client; green: ok, red: failed, orange: outcome unknown (thick); yellow bands: faults; purple rings: operations in an anomaly or a lost write (click for the trace). Hover for details.</p>");
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
