//! The answer of `/healthz` and `/readyz` on every service.

use serde::{Deserialize, Serialize};

/// A health or readiness answer: `{"status":"ok"}` or `{"status":"ready"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` for liveness, `ready` for readiness.
    pub status: String,
}
