//! The body of a `300 Multiple Choices` read: the concurrent siblings of a key and their context.

use serde::{Deserialize, Serialize};
use serde_with::{base64::Base64, serde_as};

use crate::causal::{HybridClock, Sibling};

/// One concurrent version of a key, as a client sees it.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingView {
    /// The value (base64), or `null` for a concurrent delete.
    #[serde_as(as = "Option<Base64>")]
    pub value: Option<Vec<u8>>,
    /// The value as text, when it is UTF-8 (a convenience for people reading the JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Whether this sibling is a delete.
    pub deleted: bool,
    /// When its coordinating replica stamped it, in Unix milliseconds (hybrid clock).
    pub timestamp_ms: u64,
}

impl From<&Sibling> for SiblingView {
    fn from(sibling: &Sibling) -> Self {
        Self {
            text: sibling
                .value
                .as_ref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned),
            value: sibling.value.clone(),
            deleted: sibling.is_tombstone(),
            timestamp_ms: HybridClock::wall_ms(sibling.timestamp),
        }
    }
}

/// `GET /v1/kv/{key}` on a `siblings` keyspace with concurrent versions: answered with 300.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingsResponse {
    /// Every concurrent version, oldest timestamp first.
    pub siblings: Vec<SiblingView>,
    /// The causal context: send it back in `X-Kvorum-Context` with the write that resolves them.
    pub context: String,
}
