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

pub use kvorum_causality::ConflictStrategy;

/// A keyspace and its settings, as the metadata service stores them.
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

/// The body of `PUT /v1/keyspaces/{name}`: every field but `mode` may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSpec {
    /// Strong or eventual.
    pub mode: KeyspaceMode,
    /// Replicas per key; defaults to the cluster's replication factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<usize>,
    /// Conflict strategy; defaults to `lww`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictStrategy>,
    /// Default read level; defaults to `quorum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_consistency: Option<ConsistencyLevel>,
    /// Default write level; defaults to `quorum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_consistency: Option<ConsistencyLevel>,
}

/// Why a keyspace's settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeyspace {
    /// A replication factor the cluster's replica sets cannot hold.
    #[error(
        "replication_factor must be between 1 and the cluster's {cluster} (each partition has {cluster} replicas), not {asked}"
    )]
    ReplicationFactor {
        /// What was asked for.
        asked: usize,
        /// The cluster's replication factor.
        cluster: usize,
    },
    /// A conflict strategy on a strong keyspace, which has no concurrent versions to resolve.
    #[error(
        "conflict {0:?} applies only to eventual keyspaces: a strong keyspace orders every write by version, so leave conflict out or use lww"
    )]
    ConflictOnStrong(ConflictStrategy),
    /// A strong keyspace writing at ONE.
    #[error(
        "write_consistency one is not allowed in a strong keyspace: a quorum read could miss a write only one replica holds; use quorum or all"
    )]
    StrongWriteAtOne,
}

impl KeyspaceConfig {
    /// The `default` keyspace every cluster starts with: strong, QUORUM reads and writes.
    pub fn default_keyspace(replication_factor: usize) -> Self {
        Self {
            name: KeyspaceName::default_keyspace(),
            mode: KeyspaceMode::Strong,
            replication_factor,
            conflict: ConflictStrategy::Lww,
            read_consistency: ConsistencyLevel::Quorum,
            write_consistency: ConsistencyLevel::Quorum,
        }
    }

    /// The keyspace `spec` describes, with defaults filled in and every rule checked.
    pub fn from_spec(
        name: KeyspaceName,
        spec: &KeyspaceSpec,
        cluster_replication_factor: usize,
    ) -> Result<Self, InvalidKeyspace> {
        let config = Self {
            name,
            mode: spec.mode,
            replication_factor: spec
                .replication_factor
                .unwrap_or(cluster_replication_factor),
            conflict: spec.conflict.unwrap_or(ConflictStrategy::Lww),
            read_consistency: spec.read_consistency.unwrap_or(ConsistencyLevel::Quorum),
            write_consistency: spec.write_consistency.unwrap_or(ConsistencyLevel::Quorum),
        };
        config.validate(cluster_replication_factor)?;
        Ok(config)
    }

    /// Checks the settings against each other and against the cluster's replication factor.
    pub fn validate(&self, cluster_replication_factor: usize) -> Result<(), InvalidKeyspace> {
        if self.replication_factor == 0 || self.replication_factor > cluster_replication_factor {
            return Err(InvalidKeyspace::ReplicationFactor {
                asked: self.replication_factor,
                cluster: cluster_replication_factor,
            });
        }
        match self.mode {
            KeyspaceMode::Strong => {
                if self.conflict != ConflictStrategy::Lww {
                    return Err(InvalidKeyspace::ConflictOnStrong(self.conflict));
                }
                if self.write_consistency == ConsistencyLevel::One {
                    return Err(InvalidKeyspace::StrongWriteAtOne);
                }
                Ok(())
            }
            // Any strategy and any levels: an eventual keyspace is writable at ONE by design.
            KeyspaceMode::Eventual => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> KeyspaceSpec {
        serde_json::from_str(json).expect("spec parses")
    }

    fn name() -> KeyspaceName {
        KeyspaceName::parse("orders").expect("name")
    }

    #[test]
    fn a_spec_with_only_a_mode_gets_the_documented_defaults() {
        let config =
            KeyspaceConfig::from_spec(name(), &spec(r#"{"mode":"strong"}"#), 3).expect("valid");
        assert_eq!(
            config,
            KeyspaceConfig {
                name: name(),
                mode: KeyspaceMode::Strong,
                replication_factor: 3,
                conflict: ConflictStrategy::Lww,
                read_consistency: ConsistencyLevel::Quorum,
                write_consistency: ConsistencyLevel::Quorum,
            }
        );
    }

    #[test]
    fn each_invalid_combination_is_refused_with_its_reason() {
        let cases = [
            (
                r#"{"mode":"strong","replication_factor":0}"#,
                "between 1 and the cluster's 3",
            ),
            (r#"{"mode":"strong","replication_factor":5}"#, "not 5"),
            (
                r#"{"mode":"strong","conflict":"siblings"}"#,
                "only to eventual keyspaces",
            ),
            (
                r#"{"mode":"strong","conflict":"merge"}"#,
                "only to eventual keyspaces",
            ),
            (
                r#"{"mode":"strong","write_consistency":"one"}"#,
                "not allowed in a strong keyspace",
            ),
            (
                r#"{"mode":"eventual","replication_factor":4}"#,
                "between 1 and the cluster's 3",
            ),
        ];
        for (json, reason) in cases {
            let error = KeyspaceConfig::from_spec(name(), &spec(json), 3)
                .expect_err(json)
                .to_string();
            assert!(error.contains(reason), "{json}: {error}");
        }
    }

    #[test]
    fn eventual_keyspaces_take_any_strategy_and_any_levels() {
        for conflict in ["lww", "merge", "siblings"] {
            let json = format!(
                r#"{{"mode":"eventual","conflict":"{conflict}","read_consistency":"one","write_consistency":"one"}}"#
            );
            let config = KeyspaceConfig::from_spec(name(), &spec(&json), 3).expect(&json);
            assert_eq!(config.mode, KeyspaceMode::Eventual);
            assert_eq!(config.write_consistency, ConsistencyLevel::One);
        }
    }

    #[test]
    fn a_spec_needs_a_mode_and_no_unknown_fields() {
        assert!(serde_json::from_str::<KeyspaceSpec>("{}").is_err());
        assert!(serde_json::from_str::<KeyspaceSpec>(r#"{"mode":"strong","rf":3}"#).is_err());
        assert!(serde_json::from_str::<KeyspaceSpec>(r#"{"mode":"fast"}"#).is_err());
    }

    #[test]
    fn strong_keyspaces_may_read_at_one_and_use_fewer_replicas_than_the_cluster() {
        let config = KeyspaceConfig::from_spec(
            name(),
            &spec(r#"{"mode":"strong","replication_factor":1,"read_consistency":"one","write_consistency":"all"}"#),
            3,
        )
        .expect("valid");
        assert_eq!(config.replication_factor, 1);
    }
}
