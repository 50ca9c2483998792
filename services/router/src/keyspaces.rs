//! The keyspaces a router serves, and which consistency levels each accepts.
//!
//! Until the metadata service stores keyspaces, the only one is `default`:
//! strong, with the cluster's replication factor and QUORUM reads and writes.

use std::collections::BTreeMap;

use kvorum_protocol::{ConsistencyLevel, KeyspaceConfig, KeyspaceMode, KeyspaceName};

/// Whether a request reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// GET.
    Read,
    /// PUT or DELETE.
    Write,
}

/// Why a request's keyspace or level was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyspaceError {
    /// No keyspace of that name.
    #[error("no keyspace named {0:?}; GET /v1/keyspaces lists them")]
    NotFound(String),
    /// A level the keyspace does not accept for this operation.
    #[error(
        "consistency {level} is accepted only for reads in strong keyspace {keyspace:?}; use quorum or all"
    )]
    LevelNotAllowed {
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The level asked for.
        level: ConsistencyLevel,
    },
}

/// The keyspaces known to this router.
#[derive(Debug, Clone)]
pub struct Keyspaces {
    by_name: BTreeMap<String, KeyspaceConfig>,
}

impl Keyspaces {
    /// The bootstrap set: the `default` keyspace at the cluster's replication factor.
    pub fn bootstrap(replication_factor: usize) -> Self {
        let mut default = KeyspaceConfig::default_keyspace();
        default.replication_factor = replication_factor;
        Self {
            by_name: BTreeMap::from([(default.name.to_string(), default)]),
        }
    }

    /// The keyspace named `name`.
    pub fn get(&self, name: &str) -> Result<&KeyspaceConfig, KeyspaceError> {
        self.by_name
            .get(name)
            .ok_or_else(|| KeyspaceError::NotFound(name.chars().take(64).collect()))
    }

    /// Every keyspace, by name.
    pub fn list(&self) -> Vec<KeyspaceConfig> {
        self.by_name.values().cloned().collect()
    }
}

/// The level a request runs at: the one it asked for, or the keyspace's default.
pub fn effective_level(
    keyspace: &KeyspaceConfig,
    requested: Option<ConsistencyLevel>,
    operation: Operation,
) -> Result<ConsistencyLevel, KeyspaceError> {
    let level = requested.unwrap_or(match operation {
        Operation::Read => keyspace.read_consistency,
        Operation::Write => keyspace.write_consistency,
    });
    // A strong write acknowledged by one replica could be lost or unseen by a
    // quorum read, which would break linearizability.
    if keyspace.mode == KeyspaceMode::Strong
        && operation == Operation::Write
        && level == ConsistencyLevel::One
    {
        return Err(KeyspaceError::LevelNotAllowed {
            keyspace: keyspace.name.clone(),
            level,
        });
    }
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_keyspaces_take_one_for_reads_only() {
        let default = KeyspaceConfig::default_keyspace();
        let table = [
            (None, Operation::Read, Ok(ConsistencyLevel::Quorum)),
            (None, Operation::Write, Ok(ConsistencyLevel::Quorum)),
            (
                Some(ConsistencyLevel::One),
                Operation::Read,
                Ok(ConsistencyLevel::One),
            ),
            (
                Some(ConsistencyLevel::All),
                Operation::Write,
                Ok(ConsistencyLevel::All),
            ),
            (
                Some(ConsistencyLevel::One),
                Operation::Write,
                Err(KeyspaceError::LevelNotAllowed {
                    keyspace: default.name.clone(),
                    level: ConsistencyLevel::One,
                }),
            ),
        ];
        for (requested, operation, expected) in table {
            assert_eq!(
                effective_level(&default, requested, operation),
                expected,
                "{requested:?} {operation:?}"
            );
        }
    }

    #[test]
    fn only_the_default_keyspace_exists_at_bootstrap() {
        let keyspaces = Keyspaces::bootstrap(3);
        assert_eq!(
            keyspaces.get("default").map(|k| k.replication_factor),
            Ok(3)
        );
        assert_eq!(
            keyspaces.get("other"),
            Err(KeyspaceError::NotFound("other".into()))
        );
        assert_eq!(keyspaces.list().len(), 1);
    }
}
