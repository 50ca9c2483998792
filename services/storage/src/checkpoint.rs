//! Consistent checkpoints of the node's database, kept in a directory of their
//! own with a retention count, and restoring a lost data directory from the latest.
//!
//! A checkpoint is a new redb file written from one read transaction (so it is
//! one consistent state, taken while writes go on), fsync'd under a temporary
//! name and then renamed into place, so a half-written file is never mistaken
//! for a checkpoint.

use std::path::{Path, PathBuf};

use kvorum_protocol::storage::CheckpointInfo;

use crate::store::{Store, StoreError};

const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".redb";

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint directory could not be read or written.
    #[error("checkpoint directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database copy failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No checkpoint of that name.
    #[error("no checkpoint named {0:?}")]
    NotFound(String),
}

/// The checkpoints of one node.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    retention: usize,
}

impl Checkpoints {
    /// Checkpoints in `dir`, keeping the newest `retention`.
    pub fn new(dir: PathBuf, retention: usize) -> Self {
        Self {
            dir,
            retention: retention.max(1),
        }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Every checkpoint, oldest first.
    pub fn list(&self) -> Result<Vec<CheckpointInfo>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.io()(error)),
        };
        let mut checkpoints = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(created_ms) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_suffix(SUFFIX))
                .and_then(|ms| ms.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map_err(self.io())?.len();
            checkpoints.push(CheckpointInfo {
                name,
                created_ms,
                bytes,
            });
        }
        checkpoints.sort_by_key(|c| c.created_ms);
        Ok(checkpoints)
    }

    /// The path of checkpoint `name`, if it exists.
    pub fn path(&self, name: &str) -> Result<PathBuf, CheckpointError> {
        let known = self.list()?.into_iter().any(|c| c.name == name);
        if known {
            Ok(self.dir.join(name))
        } else {
            Err(CheckpointError::NotFound(name.chars().take(128).collect()))
        }
    }

    /// Takes a checkpoint of `store` now, then drops the oldest beyond the retention.
    pub fn take(&self, store: &Store) -> Result<CheckpointInfo, CheckpointError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io())?;
        // Names are the creation time; two checkpoints within one millisecond
        // (or a clock that stepped back) still get distinct, increasing names.
        let now_ms = kvorum_protocol::wall_clock_ms();
        let created_ms = self
            .list()?
            .last()
            .map_or(now_ms, |newest| now_ms.max(newest.created_ms + 1));
        let name = format!("{PREFIX}{created_ms}{SUFFIX}");
        let temporary = self.dir.join(format!(".{name}.partial"));
        let _ = std::fs::remove_file(&temporary);
        store.copy_to(&temporary)?;
        let path = self.dir.join(&name);
        std::fs::rename(&temporary, &path).map_err(self.io())?;
        // The rename is durable only once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(self.io())?;
        let bytes = std::fs::metadata(&path).map_err(self.io())?.len();
        let all = self.list()?;
        for old in &all[..all.len().saturating_sub(self.retention)] {
            std::fs::remove_file(self.dir.join(&old.name)).map_err(self.io())?;
        }
        Ok(CheckpointInfo {
            name,
            created_ms,
            bytes,
        })
    }

    /// If `data_file` is missing, puts a copy of the newest checkpoint in its
    /// place and returns that checkpoint's name; the data directory was lost.
    pub fn restore_if_lost(&self, data_file: &Path) -> Result<Option<String>, CheckpointError> {
        if data_file.exists() {
            return Ok(None);
        }
        let Some(latest) = self.list()?.pop() else {
            return Ok(None);
        };
        let parent = data_file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(self.io())?;
        let temporary = data_file.with_extension("restoring");
        std::fs::copy(self.dir.join(&latest.name), &temporary).map_err(self.io())?;
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(self.io())?;
        std::fs::rename(&temporary, data_file).map_err(self.io())?;
        // The rename is durable only once the directory is: a crash right after
        // it must not leave a node that believes it restored what is not there.
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(self.io())?;
        Ok(Some(latest.name))
    }
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::{Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version};

    use super::*;
    use crate::store::WriteOp;

    fn commit(key: &str, counter: u64) -> WriteOp {
        WriteOp::Commit {
            partition: PartitionId(1),
            epoch: Some(Epoch(1)),
            keyspace: KeyspaceName::default_keyspace(),
            key: Key::parse(key).expect("key"),
            record: Record {
                version: Version { counter, writer: 1 },
                value: Some(key.as_bytes().to_vec()),
            },
        }
    }

    #[test]
    fn a_lost_data_directory_comes_back_as_of_the_newest_checkpoint() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        let checkpoints = Checkpoints::new(root.path().join("checkpoints"), 2);
        let store = Store::open(&data, NodeId(1)).expect("open");
        store.apply(&[commit("a", 1)]).expect("commit");
        checkpoints.take(&store).expect("first");
        store.apply(&[commit("b", 1)]).expect("commit");
        let second = checkpoints.take(&store).expect("second");
        store
            .apply(&[commit("c", 1)])
            .expect("commit after the checkpoint");
        // Taken within the same millisecond or not, it gets a newer name.
        checkpoints.take(&store).expect("third");
        let kept = checkpoints.list().expect("list");
        assert_eq!(kept.len(), 2, "retention drops the oldest");
        assert_eq!(kept[0].name, second.name);
        drop(store);

        std::fs::remove_dir_all(&data).expect("lose the data");
        let file = data.join("kvorum.redb");
        let restored = checkpoints.restore_if_lost(&file).expect("restore");
        assert!(restored.is_some());
        let store = Store::open(&data, NodeId(1)).expect("reopen");
        let keys: Vec<String> = store
            .export_partition(PartitionId(1))
            .expect("export")
            .records
            .iter()
            .map(|r| r.key.to_string())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(
            checkpoints.restore_if_lost(&file).expect("present"),
            None,
            "a data directory that is there is never overwritten"
        );
        assert!(matches!(
            checkpoints.path("checkpoint-1.redb"),
            Err(CheckpointError::NotFound(_))
        ));
    }
}
