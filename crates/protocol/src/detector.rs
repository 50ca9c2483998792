//! What the failure detector reports: every monitored process's suspicion level and state.

use serde::{Deserialize, Serialize};

use crate::cluster::NodeState;
use crate::ids::NodeId;

/// The lease the active failure detector holds; its holder is the detector's address.
pub const DETECTOR_LEASE: &str = "failure-detector";

/// One monitored process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspicion {
    /// The storage node's id (none for a metadata replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Where it is heartbeated.
    pub address: String,
    /// Its phi accrual suspicion level now.
    pub phi: f64,
    /// The detector's verdict.
    pub state: NodeState,
    /// Milliseconds since its last heartbeat arrived, if one ever did.
    pub since_heartbeat_ms: Option<u64>,
}

/// `GET /v1/suspicion` on a detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspicionReport {
    /// Whether this detector holds the lease and so reports to the metadata service.
    pub active: bool,
    /// Storage nodes and standbys.
    pub nodes: Vec<Suspicion>,
    /// Metadata replicas.
    pub metad: Vec<Suspicion>,
    /// State changes this detector has seen since it started.
    pub transitions: u64,
}
