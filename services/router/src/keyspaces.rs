//! The keyspaces a router serves, as the metadata service holds them, and which
//! consistency levels each accepts.

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
    /// The keyspaces of one metadata version.
    pub fn new(by_name: BTreeMap<String, KeyspaceConfig>) -> Self {
        Self { by_name }
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
        let default = KeyspaceConfig::default_keyspace(3);
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
    fn keyspaces_are_found_by_name() {
        let default = KeyspaceConfig::default_keyspace(3);
        let keyspaces = Keyspaces::new(BTreeMap::from([("default".to_owned(), default)]));
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
