//! What the recovery controller reports: moves in flight and recent recoveries.

use serde::{Deserialize, Serialize};

use crate::cluster::{FinishedRecovery, PartitionMove};

/// The lease the active recovery controller holds; its holder is the controller's address.
pub const RECOVERY_LEASE: &str = "recovery-controller";

/// `GET /v1/moves` on a recovery controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Whether this controller holds the lease and so acts.
    pub active: bool,
    /// Moves under way.
    pub moves: Vec<PartitionMove>,
    /// Moves that ended since this controller started, newest last (at most 100).
    pub finished: Vec<FinishedRecovery>,
}
