//! Anti-entropy: replicas of a partition compare hashed key ranges and exchange what differs,
//! and tombstones every replica holds are collected.
//!
//! Each round, for every partition it replicates, a node fetches each peer's
//! digest (64 buckets of keys, each the XOR of its keys' hashes over their
//! stored bytes) and compares it with its own; for a bucket that differs, the
//! two exchange that bucket's records both ways and each imports the other's
//! (join for causal states, keep-if-higher for strong records). Identical
//! replicas cost one digest each way. The rate is bounded: after moving
//! records the task pauses so that it never exceeds its keys-per-second budget.
//!
//! Tombstone collection runs on the partition's first replica, only when no
//! move is under way: a deleted state that every replica holds identically,
//! and has held for the grace period, is purged on every replica, each of
//! which also requires its oldest checkpoint to hold it (so no restore brings
//! the deleted value back). A purge removes a key only where its state is still
//! exactly that tombstone, so a write that raced the collection survives.

use std::sync::Arc;
use std::time::Duration;

use kvorum_http_client::{HttpClient, Idempotency};
use kvorum_metad_client::Follower;
use kvorum_protocol::cluster::PartitionAssignment;
use kvorum_protocol::metadata::MetadataState;
use kvorum_protocol::storage::{
    Batch, BucketQuery, CausalReadResponse, ImportResponse, ItemOutcome, MAX_PAGE_BYTES,
    PartitionDigest, PartitionExport, PurgeItem, PurgeRequest, PurgeResponse, ReplicaKey,
};
use kvorum_protocol::{NodeId, PartitionId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{Store, WriteOp};
use crate::writer::Writer;

/// Digest buckets exchanged per call.
const BUCKETS_PER_CALL: usize = 8;

/// Tombstones examined per partition and round.
const PURGE_BATCH: usize = 256;

/// How anti-entropy runs.
#[derive(Debug, Clone, Copy)]
pub struct AntiEntropyConfig {
    /// Time between two rounds.
    pub interval: Duration,
    /// At most this many records exchanged per second.
    pub keys_per_second: u64,
    /// Tombstones younger than this are never collected.
    pub tombstone_grace: Duration,
}

/// What a node needs to run anti-entropy.
#[derive(Debug, Clone)]
pub struct AntiEntropy {
    /// This node.
    pub node: NodeId,
    /// Its database.
    pub store: Arc<Store>,
    /// Its writer.
    pub writer: Writer,
    /// The metadata it follows.
    pub follower: Follower,
    /// The client for peers.
    pub peers: HttpClient,
    /// Timing and rate.
    pub config: AntiEntropyConfig,
    /// This node's incarnation: nothing is exchanged until it counts.
    pub incarnation: crate::incarnation::Incarnation,
    /// The strong collections this node drives, by partition.
    pub strong: crate::strong_collection::Collections,
}

impl AntiEntropy {
    /// Runs rounds until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(state) = self.follower.current() else {
                continue;
            };
            let span = tracing::info_span!("anti_entropy_round", repaired = tracing::field::Empty);
            let repaired = tokio::select! {
                () = shutdown.cancelled() => return,
                repaired = self.round(&state).instrument(span.clone()) => repaired,
            };
            span.record("repaired", repaired);
            metrics::counter!("kvorum_anti_entropy_rounds_total").increment(1);
        }
    }

    /// One pass over every partition this node replicates; returns the records repaired.
    async fn round(&self, state: &MetadataState) -> u64 {
        let Some(map) = state.partition_map.as_ref() else {
            return 0;
        };
        // A catching-up incarnation neither exchanges nor collects: its own
        // catch-up brings it what it lacks, and it may not vouch for a tombstone.
        if !self.incarnation.counts() || state.nodes.get(&self.node).is_some_and(|n| n.catching_up)
        {
            return 0;
        }
        let mut repaired = 0;
        for assignment in map
            .partitions
            .iter()
            .filter(|a| a.replicas.contains(&self.node))
        {
            // One local digest serves every peer, until an exchange changes this replica.
            let mut local = None;
            for peer in assignment.replicas.iter().filter(|p| **p != self.node) {
                let Some(address) = up_address(state, *peer) else {
                    continue;
                };
                match self.exchange(assignment.id, address, &mut local).await {
                    Ok(moved) => repaired += moved,
                    Err(error) => {
                        tracing::debug!(partition = %assignment.id, %peer, %error, "anti-entropy exchange failed")
                    }
                }
            }
            if assignment.replicas.first() == Some(&self.node) && assignment.pending.is_empty() {
                if let Err(error) = self.collect_tombstones(state, assignment).await {
                    tracing::debug!(partition = %assignment.id, %error, "tombstone collection deferred");
                }
                let replicas: Option<Vec<(NodeId, String)>> = assignment
                    .replicas
                    .iter()
                    .map(|id| up_address(state, *id).map(|a| (*id, a.to_owned())))
                    .collect();
                let outcome = match replicas {
                    Some(replicas) => self.collect_strong(assignment, replicas).await,
                    None => Err("a replica is not up".to_owned()),
                };
                if let Err(error) = outcome {
                    tracing::debug!(partition = %assignment.id, %error, "strong tombstone collection deferred");
                }
            }
        }
        let store = self.store.clone();
        if let Ok(Ok(held)) =
            tokio::task::spawn_blocking(move || store.strong_tombstone_count()).await
        {
            metrics::gauge!("kvorum_strong_tombstones").set(held as f64);
        }
        repaired
    }

    /// Compares digests with one peer and exchanges the buckets that differ; returns records changed.
    /// `local` caches this replica's digest of the partition; it is cleared when
    /// the exchange changed what this replica holds.
    async fn exchange(
        &self,
        partition: PartitionId,
        address: &str,
        local: &mut Option<Vec<u64>>,
    ) -> Result<u64, String> {
        let digest = match local.take() {
            Some(digest) => digest,
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.digest(partition))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
        };
        let remote: PartitionDigest = self
            .peers
            .get_json(
                address,
                &format!("/internal/v1/partitions/{partition}/digest"),
            )
            .await
            .map_err(|e| e.to_string())?;
        let differing: Vec<u32> = (0..digest.len())
            .filter(|&i| remote.buckets.get(i) != Some(&digest[i]))
            .map(|i| i as u32)
            .collect();
        let mut repaired = 0;
        let mut changed_here = false;
        // A few buckets per call, so that no call carries a whole partition.
        for buckets in differing.chunks(BUCKETS_PER_CALL) {
            let (here, there, moved) = self.exchange_buckets(partition, address, buckets).await?;
            repaired += here + there;
            changed_here |= here > 0;
            // Bound the rate: what was moved must not exceed the per-second budget.
            let pause =
                Duration::from_secs_f64(moved as f64 / self.config.keys_per_second.max(1) as f64);
            tokio::time::sleep(pause).await;
        }
        if repaired > 0 {
            metrics::counter!("kvorum_anti_entropy_repairs_total").increment(repaired);
            tracing::info!(%partition, peer = %address, repaired, "anti-entropy repaired divergent records");
        }
        if !changed_here {
            *local = Some(digest);
        }
        Ok(repaired)
    }

    /// Exchanges the records of some buckets both ways, in pages of at most
    /// [`MAX_PAGE_BYTES`]; returns the records changed here, those changed on
    /// the peer, and the records moved.
    async fn exchange_buckets(
        &self,
        partition: PartitionId,
        address: &str,
        buckets: &[u32],
    ) -> Result<(u64, u64, u64), String> {
        let (mut here, mut there, mut moved) = (0, 0, 0);
        // Theirs into ours.
        let mut after = None;
        loop {
            let page: PartitionExport = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/buckets"),
                    &BucketQuery {
                        buckets: buckets.to_vec(),
                        after: after.take(),
                        max_bytes: Some(MAX_PAGE_BYTES),
                    },
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            moved += page.records.len() as u64;
            let ops: Vec<WriteOp> = page
                .records
                .into_iter()
                .map(|r| WriteOp::import(partition, r))
                .collect();
            here += self
                .writer
                .submit(ops)
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .filter(|o| o.changed())
                .count() as u64;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        // Ours into theirs.
        let mut after: Option<kvorum_protocol::storage::ExportCursor> = None;
        loop {
            let (store, wanted) = (self.store.clone(), buckets.to_vec());
            let from = after.take();
            let page = tokio::task::spawn_blocking(move || {
                store.export_buckets(
                    partition,
                    &wanted,
                    from.as_ref().map(|c| (&c.keyspace, &c.key)),
                    MAX_PAGE_BYTES,
                )
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            moved += page.records.len() as u64;
            let next = page.next.clone();
            let answer: ImportResponse = self
                .peers
                .put_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}"),
                    &PartitionExport { next: None, ..page },
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            there += answer.applied as u64;
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok((here, there, moved))
    }

    /// Purges the partition's old tombstones that every replica holds identically.
    async fn collect_tombstones(
        &self,
        state: &MetadataState,
        assignment: &PartitionAssignment,
    ) -> Result<(), String> {
        let partition = assignment.id;
        let addresses: Vec<&str> = assignment
            .replicas
            .iter()
            .map(|id| up_address(state, *id))
            .collect::<Option<_>>()
            .ok_or("a replica is not up")?;
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || store.deleted_keys(partition))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let grace = self.config.tombstone_grace.as_millis() as u64;
        // Held here for the grace period; the other replicas are asked below.
        let mut candidates: Vec<PurgeItem> = found
            .into_iter()
            .filter(|(_, _, _, held_for)| *held_for >= grace)
            .take(PURGE_BATCH)
            .map(|(keyspace, key, state, _)| PurgeItem {
                keyspace,
                key,
                state,
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        for (id, address) in assignment.replicas.iter().zip(&addresses) {
            if *id == self.node {
                continue;
            }
            let keys = candidates
                .iter()
                .map(|c| ReplicaKey {
                    partition,
                    epoch: assignment.epoch,
                    keyspace: c.keyspace.clone(),
                    key: c.key.clone(),
                })
                .collect();
            let answer: Batch<ItemOutcome<CausalReadResponse>> = self
                .peers
                .post_json(
                    address,
                    "/internal/v1/causal/read/batch",
                    &Batch { items: keys },
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut answers = answer.items.into_iter();
            // Each replica must itself have held exactly this tombstone for the
            // grace, by its own clock: one that got it late may have sent its
            // older state somewhere just before.
            candidates.retain(|c| {
                matches!(answers.next(), Some(ItemOutcome::Ok(r))
                    if r.state == c.state && r.deleted_for_ms.is_some_and(|held| held >= grace))
            });
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let request = PurgeRequest { items: candidates };
        let mut purged = 0;
        for address in &addresses {
            let answer: PurgeResponse = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/purge"),
                    &request,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            purged += answer.purged;
        }
        tracing::info!(%partition, candidates = request.items.len(), purged, "collected tombstones every replica held");
        Ok(())
    }
}

/// The address of a node that counts: not held down, not a catching-up incarnation.
fn up_address(state: &MetadataState, node: NodeId) -> Option<&str> {
    state
        .nodes
        .get(&node)
        .filter(|n| n.counts())
        .map(|n| n.address.as_str())
}
