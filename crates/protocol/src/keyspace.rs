//! Keyspace settings: mode, replication factor, conflict strategy and default levels.

use serde::{Deserialize, Serialize};

use crate::consistency::ConsistencyLevel;
use crate::key::KeyspaceName;

/// How a keyspace trades availability for consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyspaceMode {
    /// Linearizable reads and writes while a quorum of a key's replicas is reachable.
    Strong,
    /// Writable while one replica is reachable; replicas converge.
    Eventual,
}

/// How an eventual keyspace resolves concurrent versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictStrategy {
    /// Highest hybrid-logical-clock timestamp wins.
    Lww,
    /// A deterministic merge of the values.
    Merge,
    /// Every concurrent value goes back to the client.
    Siblings,
}

/// A keyspace and its settings, as the metadata service will store them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceConfig {
    /// The keyspace's name.
    pub name: KeyspaceName,
    /// Strong or eventual.
    pub mode: KeyspaceMode,
    /// How many replicas hold each key.
    pub replication_factor: usize,
    /// How concurrent versions are resolved (eventual keyspaces).
    pub conflict: ConflictStrategy,
    /// The level a read uses when the request names none.
    pub read_consistency: ConsistencyLevel,
    /// The level a write uses when the request names none.
    pub write_consistency: ConsistencyLevel,
}

impl KeyspaceConfig {
    /// The `default` keyspace every cluster starts with: strong, RF 3, QUORUM reads and writes.
    pub fn default_keyspace() -> Self {
        Self {
            name: KeyspaceName::default_keyspace(),
            mode: KeyspaceMode::Strong,
            replication_factor: 3,
            conflict: ConflictStrategy::Lww,
            read_consistency: ConsistencyLevel::Quorum,
            write_consistency: ConsistencyLevel::Quorum,
        }
    }
}
