//! The recorded history: every operation a chaos client invoked, and how it ended.

use serde::{Deserialize, Serialize};

/// What an operation asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// GET.
    Read,
    /// PUT of a unique value.
    Write,
    /// DELETE.
    Delete,
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It succeeded.
    Ok,
    /// It failed and certainly took effect nowhere (or was a read).
    Fail,
    /// No answer, or an error saying the outcome is unknown: a write may have landed.
    Unknown,
}

/// One operation, from invocation to completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The client (one at a time per client).
    pub client: u64,
    /// The keyspace.
    pub keyspace: String,
    /// The key.
    pub key: String,
    /// What was asked.
    pub kind: OpKind,
    /// The value written, for writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What a successful read saw: `None` for not found, else the values (several for siblings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Vec<String>>,
    /// Whether a successful read found the key.
    #[serde(default)]
    pub found: bool,
    /// When it was invoked, in milliseconds since the run began.
    pub invoke_ms: f64,
    /// When its answer (or its failure) arrived.
    pub complete_ms: f64,
    /// How it ended.
    pub status: Status,
    /// The error, when it failed or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The trace the router recorded it under (`x-kvorum-trace-id`), when spans are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// For an eventual write sent with the context of the client's read just
    /// before it: the values that read saw, which this write supersedes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<String>,
}

impl Op {
    /// Whether this is a write or delete the cluster acknowledged.
    pub fn is_acknowledged_write(&self) -> bool {
        self.status == Status::Ok && matches!(self.kind, OpKind::Write | OpKind::Delete)
    }
}

/// One fault the nemesis injected, and when it was healed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What was done (`kill-storage`, `pause-storage`, ...).
    pub kind: String,
    /// To what (`storage 3`, `metad 2 (leader)`, a container or pod name).
    pub target: String,
    /// When it began, in milliseconds since the run began.
    pub start_ms: f64,
    /// When it was healed (`None` if healing failed).
    #[serde(default)]
    pub end_ms: Option<f64>,
    /// Whether it was a process kill (SIGKILL, SIGTERM or a pod deletion).
    pub kill: bool,
}
