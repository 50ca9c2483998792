//! Collecting a partition's strong tombstones, driven by its first replica
//! in each anti-entropy round (ARCHITECTURE.md, "Collecting strong
//! tombstones"): raise every replica's floor to the newest tombstone; once
//! the grace has passed (no write prepared before the raise can still
//! commit), check that every replica holds the same strong records at or
//! below the floor; seal the watermark there on every replica; only then
//! purge. A step that fails is retried next round; a change of replicas
//! starts over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvorum_http_client::Idempotency;
use kvorum_protocol::cluster::PartitionAssignment;
use kvorum_protocol::storage::{
    RaiseFloorRequest, SealRequest, StrongDigestRequest, StrongDigestResponse, StrongFloors,
    StrongPurgeResponse,
};
use kvorum_protocol::{NodeId, PartitionId, Version};

use crate::anti_entropy::AntiEntropy;

/// A floor raised on every replica, waiting for its grace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    /// The floor, and the watermark it becomes.
    floor: Version,
    /// When every replica had taken it, by this node's monotonic clock.
    at: Instant,
    /// The replicas (and their addresses) that took it.
    replicas: Vec<(NodeId, String)>,
    /// The lowest watermark among them when they took it (`None` if one had
    /// none): tombstones at or below it may be purged on some replicas and
    /// not yet on others, so the comparison leaves them out.
    sealed_everywhere: Option<Version>,
}

/// Each partition's collection in progress.
pub type Collections = Arc<Mutex<HashMap<PartitionId, Raised>>>;

/// The highest version any strong record can carry: every tombstone is at or below it.
const EVERY_VERSION: Version = Version {
    counter: Version::MAX_COUNTER,
    writer: u64::MAX,
};

/// Whether every replica has its floor at `floor` at least and, for each
/// keyspace, the replicas that hold it (the first `rf` of the set; every
/// replica for a keyspace `rfs` does not name) summarise their records at
/// or below the floor the same. `digests` are in the set's order.
pub fn replicas_agree(
    floor: Version,
    digests: &[StrongDigestResponse],
    rfs: &BTreeMap<String, usize>,
) -> bool {
    if digests.is_empty()
        || digests
            .iter()
            .any(|d| d.floors.floor.is_none_or(|f| f < floor))
    {
        return false;
    }
    let keyspaces: BTreeSet<&String> = digests.iter().flat_map(|d| d.keyspaces.keys()).collect();
    keyspaces.into_iter().all(|keyspace| {
        let holders = rfs
            .get(keyspace)
            .copied()
            .unwrap_or(digests.len())
            .min(digests.len());
        let summary =
            |d: &StrongDigestResponse| d.keyspaces.get(keyspace).copied().unwrap_or_default();
        let first = summary(&digests[0]);
        digests[..holders].iter().all(|d| summary(d) == first)
    })
}

impl AntiEntropy {
    /// One step of the partition's collection; `replicas` are every
    /// replica's address, `rfs` each keyspace's replication factor.
    pub(crate) async fn collect_strong(
        &self,
        assignment: &PartitionAssignment,
        replicas: Vec<(NodeId, String)>,
        rfs: &BTreeMap<String, usize>,
    ) -> Result<(), String> {
        let partition = assignment.id;
        let pending = {
            let mut collections = self.strong.lock().unwrap_or_else(|p| p.into_inner());
            match collections.get(&partition) {
                Some(raised) if raised.replicas != replicas => {
                    collections.remove(&partition);
                    None
                }
                other => other.cloned(),
            }
        };
        match pending {
            None => self.raise(partition, replicas).await,
            Some(raised) if raised.at.elapsed() >= self.config.tombstone_grace => {
                self.seal_and_purge(partition, &raised, rfs).await
            }
            Some(_) => Ok(()),
        }
    }

    /// Step one: the floor goes up to the newest strong tombstone here.
    async fn raise(
        &self,
        partition: PartitionId,
        replicas: Vec<(NodeId, String)>,
    ) -> Result<(), String> {
        let store = self.store.clone();
        let (newest, floors) = tokio::task::spawn_blocking(move || {
            let newest = store
                .strong_tombstones(partition, EVERY_VERSION)?
                .into_iter()
                .map(|(_, _, version)| version)
                .max();
            Ok::<_, crate::store::StoreError>((newest, store.strong_floors(partition)?))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let Some(newest) = newest else {
            return Ok(());
        };
        if floors.watermark.is_some_and(|w| newest <= w) {
            // Sealed already: only tombstones a checkpoint held back are left.
            return self.purge_everywhere(partition, &replicas).await.map(drop);
        }
        let floor = floors.floor.map_or(newest, |f| f.max(newest));
        let mut sealed_everywhere = Some(EVERY_VERSION);
        for (_, address) in &replicas {
            let taken: StrongFloors = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/strong/floor"),
                    &RaiseFloorRequest { floor },
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            sealed_everywhere = sealed_everywhere.min(taken.watermark);
        }
        tracing::debug!(%partition, %floor, "strong floor raised on every replica");
        self.strong
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                partition,
                Raised {
                    floor,
                    at: Instant::now(),
                    replicas,
                    sealed_everywhere,
                },
            );
        Ok(())
    }

    /// Steps three and four, once the grace has passed.
    async fn seal_and_purge(
        &self,
        partition: PartitionId,
        raised: &Raised,
        rfs: &BTreeMap<String, usize>,
    ) -> Result<(), String> {
        let mut digests = Vec::new();
        let request = StrongDigestRequest {
            upto: raised.floor,
            ignore_tombstones_upto: raised.sealed_everywhere,
        };
        for (_, address) in &raised.replicas {
            let digest: StrongDigestResponse = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/strong/digest"),
                    &request,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            digests.push(digest);
        }
        if !replicas_agree(raised.floor, &digests, rfs) {
            // Anti-entropy and read repair bring them together; then the next round seals.
            return Err(
                "the replicas do not hold the same records at or below the floor yet".into(),
            );
        }
        // Every replica first: one that purged while another could still take
        // an old value would let that value back.
        for (_, address) in &raised.replicas {
            let _: StrongFloors = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/strong/seal"),
                    &SealRequest {
                        watermark: raised.floor,
                    },
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        let purged = self.purge_everywhere(partition, &raised.replicas).await?;
        self.strong
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
        tracing::info!(%partition, watermark = %raised.floor, purged, "collected strong tombstones every replica held");
        Ok(())
    }

    /// Asks every replica to purge what its watermark lets it; returns how many went.
    async fn purge_everywhere(
        &self,
        partition: PartitionId,
        replicas: &[(NodeId, String)],
    ) -> Result<u64, String> {
        let mut purged = 0;
        for (_, address) in replicas {
            let answer: StrongPurgeResponse = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/strong/purge"),
                    &(),
                    Idempotency::Idempotent,
                )
                .await
                .map_err(|e| e.to_string())?;
            purged += answer.purged;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::storage::KeyspaceDigest;

    use super::*;

    fn summary(keyspaces: &[(&str, u64)], floor: Option<u64>) -> StrongDigestResponse {
        StrongDigestResponse {
            keyspaces: keyspaces
                .iter()
                .map(|(name, digest)| {
                    (
                        (*name).to_owned(),
                        KeyspaceDigest {
                            digest: *digest,
                            records: 4,
                            tombstones: 2,
                        },
                    )
                })
                .collect(),
            floors: StrongFloors {
                floor: floor.map(|counter| Version { counter, writer: 0 }),
                watermark: None,
            },
        }
    }

    #[test]
    fn a_collection_seals_only_when_every_holder_has_the_same_below_its_raised_floor() {
        let floor = Version {
            counter: 9,
            writer: 0,
        };
        let rfs = BTreeMap::from([("default".to_owned(), 3), ("small".to_owned(), 2)]);
        let agree = |digests: &[StrongDigestResponse]| replicas_agree(floor, digests, &rfs);
        assert!(agree(&[
            summary(&[("default", 7)], Some(9)),
            summary(&[("default", 7)], Some(12)),
            summary(&[("default", 7)], Some(9)),
        ]));
        assert!(!agree(&[
            summary(&[("default", 7)], Some(9)),
            summary(&[("default", 8)], Some(9)),
            summary(&[("default", 7)], Some(9)),
        ]));
        assert!(
            !agree(&[
                summary(&[("default", 7)], Some(9)),
                summary(&[("default", 7)], Some(8)),
                summary(&[("default", 7)], Some(9)),
            ]),
            "a replica whose floor fell back (a restored disk) must take it again"
        );
        assert!(!agree(&[
            summary(&[("default", 7)], Some(9)),
            summary(&[], None),
            summary(&[("default", 7)], Some(9)),
        ]));
        // A keyspace of RF 2 lives on the first two replicas only: the third
        // holding none of it is no disagreement, the second lacking it is.
        assert!(agree(&[
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7)], Some(9)),
        ]));
        assert!(!agree(&[
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7)], Some(9)),
            summary(&[("default", 7)], Some(9)),
        ]));
        // A keyspace no one knows the RF of is compared on every replica.
        assert!(!agree(&[
            summary(&[("gone", 1)], Some(9)),
            summary(&[("gone", 1)], Some(9)),
            summary(&[], Some(9)),
        ]));
        assert!(!replicas_agree(floor, &[], &rfs));
    }
}
