//! One replica replacement by state transfer, following the replica-set change
//! invariant: the new replica ends with the per-key maximum over a read quorum
//! of the old set plus every write made since the copy began, and only then
//! does the set change.
//!
//! 1. Announce: the partition's assignment gains the pending replacement at the
//!    next epoch. Routers that see it send every write to the joining node too
//!    and count it among the acknowledgements required.
//! 2. Fence: every reachable replica of the old set, and the joining node,
//!    records the new epoch through its writer, so no write routed by the old
//!    map lands after this point; at least a quorum of the old set must fence.
//! 3. Copy: each fenced old replica's records stream to the joining node in
//!    chunks (keep-if-higher imports, so the result is the per-key maximum),
//!    rate-limited, each chunk retried from the last cursor on failure.
//! 4. Switch: the joining node takes the leaving one's place at the next epoch.
//!
//! A move that cannot finish is aborted: the pending replacement is dropped at
//! the next epoch and the old set stands.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvorum_http_client::{HttpClient, Idempotency};
use kvorum_metad_client::{MetadClient, MetadClientError};
use kvorum_protocol::cluster::{FinishedRecovery, PartitionAssignment, PartitionMove};
use kvorum_protocol::consistency::quorum;
use kvorum_protocol::metadata::{MetadataOp, MetadataState};
use kvorum_protocol::storage::{
    ExportQuery, FenceRequest, FenceResponse, ImportResponse, PartitionExport,
};
use kvorum_protocol::{Epoch, NodeId};

use crate::plan::PlannedMove;

/// How often one chunk is tried before the move is given up.
const CHUNK_ATTEMPTS: u32 = 5;

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The metadata service refused or did not answer.
    #[error("metadata service: {0}")]
    Metad(#[from] MetadClientError),
    /// A resumed move found its replacement no longer pending: an earlier run ended it.
    #[error("partition {0}: the replacement is no longer pending")]
    AlreadyEnded(kvorum_protocol::PartitionId),
    /// The partition changed under the move.
    #[error("partition {0} changed under the move; it will be planned again")]
    Changed(kvorum_protocol::PartitionId),
    /// Too few old replicas could be fenced to copy from a read quorum (of every keyspace's prefix).
    #[error(
        "only {fenced} old replicas could be fenced: not a read quorum of every keyspace's replicas (a quorum of the set is {needed})"
    )]
    TooFewSources {
        /// Replicas fenced.
        fenced: usize,
        /// A quorum of the old set.
        needed: usize,
    },
    /// A storage node did not do its part.
    #[error("node {node}: {message}")]
    Node {
        /// The node.
        node: NodeId,
        /// What failed.
        message: String,
    },
}

/// What a move shares with the controller's report.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Mutex<PartitionMove>>);

impl Progress {
    /// The progress of `planned`, starting now.
    pub fn new(planned: &PlannedMove) -> (Self, Instant) {
        let progress = PartitionMove {
            partition: planned.partition,
            from: Some(planned.replacement.leaving),
            to: planned.replacement.joining,
            strategy: planned.strategy,
            bytes_copied: 0,
            records_copied: 0,
            rate_bytes_per_sec: 0,
            elapsed_ms: 0,
        };
        (Self(Arc::new(Mutex::new(progress))), Instant::now())
    }

    /// The move as it stands.
    pub fn snapshot(&self, started: Instant) -> PartitionMove {
        let mut progress = self.lock().clone();
        progress.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        progress
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionMove> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a move needs to do its work.
#[derive(Debug, Clone)]
pub struct Mover {
    /// The metadata service.
    pub metad: MetadClient,
    /// The storage nodes' internal API.
    pub storage: HttpClient,
    /// Records per chunk.
    pub chunk_records: usize,
    /// Copy rate limit, bytes per second.
    pub bytes_per_sec: u64,
    /// The controller's lease: only its holder aborts a move.
    pub lease: kvorum_metad_client::Lease,
}

impl Mover {
    /// Carries out `planned` to the end, or aborts it; says how it ended
    /// (nothing, for a resumed move an earlier run had already ended).
    pub async fn run(
        &self,
        planned: PlannedMove,
        progress: Progress,
        started: Instant,
    ) -> Option<FinishedRecovery> {
        let result = self.transfer(&planned, &progress).await;
        let completed = match &result {
            Ok(()) => true,
            Err(MoveError::AlreadyEnded(_)) => return None,
            Err(error) => {
                tracing::warn!(partition = %planned.partition, %error, "move failed; aborting it");
                // Only the lease holder aborts: a controller that lost it leaves
                // the move to the one that has it.
                if !self.lease.is_held() {
                    tracing::info!(partition = %planned.partition, "lease lost; not aborting");
                } else if let Err(error) = self.abort(&planned).await {
                    tracing::warn!(partition = %planned.partition, %error, "cannot abort the move yet; a later pass will");
                }
                false
            }
        };
        let done = progress.snapshot(started);
        Some(FinishedRecovery {
            partition: planned.partition,
            from: Some(planned.replacement.leaving),
            to: planned.replacement.joining,
            strategy: planned.strategy,
            duration_ms: done.elapsed_ms,
            bytes_copied: done.bytes_copied,
            completed,
        })
    }

    async fn transfer(&self, planned: &PlannedMove, progress: &Progress) -> Result<(), MoveError> {
        let state = self.metad.state().await?;
        let announced = self.announce(&state, planned).await?;
        let epoch = announced.epoch;
        let address = |node: NodeId| state.nodes.get(&node).map(|n| n.address.clone());
        // 2. Fence.
        let joining = planned.replacement.joining;
        let joining_address = address(joining).ok_or(MoveError::Changed(planned.partition))?;
        self.fence(&joining_address, planned, epoch)
            .await
            .map_err(|message| MoveError::Node {
                node: joining,
                message,
            })?;
        let mut sources = Vec::new();
        for node in &announced.replicas {
            let Some(source) = address(*node) else {
                continue;
            };
            // Every reachable old replica is fenced; a catching-up incarnation is
            // no source (it may lack acknowledged writes, and refuses exports).
            let counts = state.nodes.get(node).is_some_and(|n| !n.catching_up);
            match self.fence(&source, planned, epoch).await {
                Ok(()) if counts => sources.push((*node, source)),
                Ok(()) => tracing::info!(%node, "old replica fenced but catching up: not a source"),
                Err(message) => tracing::info!(%node, %message, "old replica not fenced (down?)"),
            }
        }
        let rfs = crate::plan::replication_factors(&state, announced.replicas.len());
        let fenced: Vec<NodeId> = sources.iter().map(|(node, _)| *node).collect();
        if !crate::plan::covers_every_prefix(&announced.replicas, |n| fenced.contains(n), &rfs) {
            return Err(MoveError::TooFewSources {
                fenced: sources.len(),
                needed: quorum(announced.replicas.len()),
            });
        }
        // 3. Copy.
        let copy_started = Instant::now();
        for (node, source) in &sources {
            self.copy(
                *node,
                source,
                joining,
                &joining_address,
                planned,
                progress,
                copy_started,
            )
            .await?;
        }
        // 4. Switch.
        let mut switched = announced.clone();
        for replica in &mut switched.replicas {
            if *replica == planned.replacement.leaving {
                *replica = joining;
            }
        }
        switched.pending.clear();
        switched.epoch = Epoch(epoch.0 + 1);
        self.metad
            .submit_as_holder(
                MetadataOp::SetAssignment {
                    assignment: switched,
                },
                &self.lease,
            )
            .await?;
        tracing::info!(partition = %planned.partition, leaving = %planned.replacement.leaving, %joining, "replica replaced");
        Ok(())
    }

    /// Adds the pending replacement at the next epoch (or finds it already there, when resuming).
    async fn announce(
        &self,
        state: &MetadataState,
        planned: &PlannedMove,
    ) -> Result<PartitionAssignment, MoveError> {
        let current = state
            .partition_map
            .as_ref()
            .and_then(|m| m.partitions.get(planned.partition.0 as usize))
            .cloned()
            .ok_or(MoveError::Changed(planned.partition))?;
        if current.pending == [planned.replacement] {
            return Ok(current);
        }
        // Resuming from a (possibly stale) copy of the map: the fresh state says
        // the move already switched or was aborted.
        if planned.resume {
            return Err(MoveError::AlreadyEnded(planned.partition));
        }
        if !current.pending.is_empty() || !current.replicas.contains(&planned.replacement.leaving) {
            return Err(MoveError::Changed(planned.partition));
        }
        let mut announced = current;
        announced.pending = vec![planned.replacement];
        announced.epoch = Epoch(announced.epoch.0 + 1);
        self.metad
            .submit_as_holder(
                MetadataOp::SetAssignment {
                    assignment: announced.clone(),
                },
                &self.lease,
            )
            .await?;
        Ok(announced)
    }

    async fn fence(
        &self,
        address: &str,
        planned: &PlannedMove,
        epoch: Epoch,
    ) -> Result<(), String> {
        let path = format!("/internal/v1/partitions/{}/fence", planned.partition);
        self.storage
            .post_json::<_, FenceResponse>(
                address,
                &path,
                &FenceRequest { epoch },
                Idempotency::Idempotent,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &self,
        source: NodeId,
        source_address: &str,
        joining: NodeId,
        joining_address: &str,
        planned: &PlannedMove,
        progress: &Progress,
        copy_started: Instant,
    ) -> Result<(), MoveError> {
        let path = format!("/internal/v1/partitions/{}", planned.partition);
        let mut query = ExportQuery {
            limit: Some(self.chunk_records),
            max_bytes: Some(kvorum_protocol::storage::MAX_PAGE_BYTES),
            ..ExportQuery::default()
        };
        let mut floors = kvorum_protocol::storage::ExportFloors::default();
        loop {
            let encoded = serde_urlencoded::to_string(&query).map_err(|e| MoveError::Node {
                node: source,
                message: format!("cannot encode the cursor: {e}"),
            })?;
            let page_path = format!("{path}?{encoded}");
            let page: PartitionExport = retry(|| self.storage.get_json(source_address, &page_path))
                .await
                .map_err(|message| MoveError::Node {
                    node: source,
                    message,
                })?;
            let bytes: u64 = page
                .records
                .iter()
                .map(|r| {
                    (r.key.as_str().len() + r.keyspace.as_str().len() + r.record.value_bytes() + 24)
                        as u64
                })
                .sum();
            let records = page.records.len() as u64;
            let next = page.next.clone();
            // The source's floors as of the first page go with the last one:
            // the joiner adopts them once it holds every record they vouch
            // for, and a watermark adopted earlier would refuse older records.
            floors
                .observe(page.strong_floors)
                .map_err(|e| MoveError::Node {
                    node: source,
                    message: e.to_owned(),
                })?;
            let import = PartitionExport {
                next: None,
                strong_floors: if next.is_none() {
                    floors.at_start()
                } else {
                    None
                },
                ..page
            };
            retry(|| {
                self.storage.put_json::<_, ImportResponse>(
                    joining_address,
                    &path,
                    &import,
                    Idempotency::Idempotent,
                )
            })
            .await
            .map_err(|message| MoveError::Node {
                node: joining,
                message,
            })?;
            let copied = {
                let mut shared = progress.lock();
                shared.bytes_copied += bytes;
                shared.records_copied += records;
                let seconds = copy_started.elapsed().as_secs_f64().max(0.001);
                shared.rate_bytes_per_sec = (shared.bytes_copied as f64 / seconds) as u64;
                shared.bytes_copied
            };
            metrics::counter!("kvorum_recovery_bytes_copied_total").increment(bytes);
            // Rate limit: never ahead of bytes_per_sec since the copy began.
            let due = Duration::from_secs_f64(copied as f64 / self.bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(copy_started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            match next {
                Some(cursor) => {
                    query.after_keyspace = Some(cursor.keyspace);
                    query.after_key = Some(cursor.key);
                }
                None => return Ok(()),
            }
        }
    }

    /// Drops the pending replacement at the next epoch, leaving the old set in place.
    async fn abort(&self, planned: &PlannedMove) -> Result<(), MoveError> {
        let state = self.metad.state().await?;
        let Some(current) = state
            .partition_map
            .as_ref()
            .and_then(|m| m.partitions.get(planned.partition.0 as usize))
        else {
            return Ok(());
        };
        if current.pending != [planned.replacement] {
            return Ok(());
        }
        let mut restored = current.clone();
        restored.pending.clear();
        restored.epoch = Epoch(restored.epoch.0 + 1);
        self.metad
            .submit_as_holder(
                MetadataOp::SetAssignment {
                    assignment: restored,
                },
                &self.lease,
            )
            .await?;
        Ok(())
    }
}

/// Tries a chunk call up to [`CHUNK_ATTEMPTS`] times with a growing pause: a
/// failed chunk resumes from the same cursor, not from the beginning.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kvorum_http_client::CallError>>,
{
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt < CHUNK_ATTEMPTS => {
                tracing::debug!(%error, attempt, "chunk failed; retrying from the same cursor");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_the_query_string() {
        let query = ExportQuery {
            after_keyspace: kvorum_protocol::KeyspaceName::parse("default").ok(),
            after_key: kvorum_protocol::Key::parse("a b/ç&=+").ok(),
            limit: Some(10),
            max_bytes: Some(1 << 20),
        };
        let encoded = serde_urlencoded::to_string(&query).expect("encodes");
        let decoded: ExportQuery = serde_urlencoded::from_str(&encoded).expect("decodes");
        assert_eq!(decoded, query);
    }
}
