//! Plain-text tables for people.

use std::collections::BTreeMap;
use std::fmt::Write;

use kvorum_protocol::storage::CheckpointInfo;
use kvorum_protocol::{ClusterView, KeyspaceConfig, NodeId};

/// Left-aligned columns, two spaces apart.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A node's checkpoints, oldest first.
pub fn checkpoints(checkpoints: &[CheckpointInfo]) -> String {
    let rows: Vec<Vec<String>> = checkpoints
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.created_ms.to_string(),
                c.bytes.to_string(),
            ]
        })
        .collect();
    render(&["CHECKPOINT", "CREATED_MS", "BYTES"], &rows)
}

/// The keyspaces table.
pub fn keyspaces(keyspaces: &[KeyspaceConfig]) -> String {
    let rows: Vec<Vec<String>> = keyspaces
        .iter()
        .map(|k| {
            vec![
                k.name.to_string(),
                format!("{:?}", k.mode).to_lowercase(),
                k.replication_factor.to_string(),
                format!("{:?}", k.conflict).to_lowercase(),
                k.read_consistency.to_string(),
                k.write_consistency.to_string(),
            ]
        })
        .collect();
    render(
        &["KEYSPACE", "MODE", "RF", "CONFLICT", "READ", "WRITE"],
        &rows,
    )
}

/// The cluster status: the metadata leader, then one row per node with its load.
pub fn cluster(view: &ClusterView) -> String {
    let mut replicas: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for partition in &view.partitions {
        for (rank, node) in partition.replicas.iter().enumerate() {
            *replicas.entry(*node).or_default() += 1;
            if rank == 0 {
                *leads.entry(*node).or_default() += 1;
            }
        }
    }
    let leader = view
        .metad
        .leader
        .map_or_else(|| "none".to_owned(), |l| l.to_string());
    let metad: Vec<String> = view
        .metad
        .replicas
        .iter()
        .map(|r| format!("{}={}", r.id, r.address))
        .collect();
    let mut out = format!(
        "metadata leader: {leader}   replicas: {}   partitions: {}   moves under way: {}\n\n",
        if metad.is_empty() {
            "unreachable".to_owned()
        } else {
            metad.join(" ")
        },
        view.partitions.len(),
        view.moves.len()
    );
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                format!("{:?}", n.role).to_lowercase(),
                // A catching-up incarnation counts for nothing whatever its health.
                if n.catching_up {
                    format!("{:?},catching-up", n.state).to_lowercase()
                } else {
                    format!("{:?}", n.state).to_lowercase()
                },
                n.phi.map_or_else(|| "-".to_owned(), |p| format!("{p:.1}")),
                replicas.get(&n.id).copied().unwrap_or(0).to_string(),
                leads.get(&n.id).copied().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            "NODE", "ADDRESS", "ROLE", "STATE", "PHI", "REPLICAS", "FIRST",
        ],
        &rows,
    ));
    let node = |n: Option<NodeId>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let strategy = |s: &kvorum_protocol::cluster::RecoveryStrategy| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    if !view.moves.is_empty() {
        let rows: Vec<Vec<String>> = view
            .moves
            .iter()
            .map(|m| {
                vec![
                    m.partition.to_string(),
                    node(m.from),
                    m.to.to_string(),
                    strategy(&m.strategy),
                    m.bytes_copied.to_string(),
                    m.rate_bytes_per_sec.to_string(),
                    format!("{:.1}", m.elapsed_ms as f64 / 1000.0),
                ]
            })
            .collect();
        out.push_str("\nmoves under way:\n");
        out.push_str(&render(
            &[
                "PARTITION",
                "FROM",
                "TO",
                "STRATEGY",
                "BYTES",
                "BYTES/S",
                "SECONDS",
            ],
            &rows,
        ));
    }
    if !view.recoveries.is_empty() {
        let rows: Vec<Vec<String>> = view
            .recoveries
            .iter()
            .rev()
            .take(10)
            .map(|r| {
                vec![
                    r.partition.to_string(),
                    node(r.from),
                    r.to.to_string(),
                    strategy(&r.strategy),
                    r.bytes_copied.to_string(),
                    r.duration_ms.to_string(),
                    if r.completed { "done" } else { "aborted" }.to_owned(),
                ]
            })
            .collect();
        out.push_str("\nrecent recoveries (newest first):\n");
        out.push_str(&render(
            &[
                "PARTITION",
                "FROM",
                "TO",
                "STRATEGY",
                "BYTES",
                "MS",
                "OUTCOME",
            ],
            &rows,
        ));
    }
    out
}

/// The metadata group's members, the leader marked.
pub fn metad_members(view: &kvorum_protocol::metadata::MembersView) -> String {
    let rows: Vec<Vec<String>> = view
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                format!("{:016x}", m.incarnation),
                m.address.clone(),
                if view.leader == Some(m.id) {
                    "leader"
                } else {
                    ""
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut out = render(&["ID", "LIFE", "ADDRESS", "ROLE"], &rows);
    if let Some(slot) = view.pending_change {
        let _ = writeln!(out, "a membership change at slot {slot} is not decided yet");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let table = render(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(table, "A          LONGER\nwide cell  x\ny          z\n");
    }
}
