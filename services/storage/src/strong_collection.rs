//! Collecting a partition's strong tombstones, driven by its first replica
//! in each anti-entropy round (ARCHITECTURE.md, "Collecting strong
//! tombstones"): raise every replica's floor to the newest tombstone; once
//! the grace has passed (no write prepared before the raise can still
//! commit), check that every replica holds the same strong records at or
//! below the floor; seal the watermark there on every replica; only then
//! purge. A step that fails is retried next round; a change of replicas
//! starts over.

use std::collections::{BTreeSet, HashMap};
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
    /// The highest watermark among them when they took it (`None` if none
    /// had one): a replica may lack any tombstone at or below its own
    /// watermark (purged, or never received), so the comparison leaves out
    /// every tombstone at or below the highest; values are always compared.
    ignore_tombstones_upto: Option<Version>,
    /// Every replica has sealed the floor as its watermark: only their purges
    /// are left, retried each round until all have answered (comparing again
    /// would find the replicas that purged and those that did not disagree).
    sealed: bool,
}

/// What a partition's collector does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Raise the floor (again): nothing in progress, or the replicas changed.
    Raise,
    /// The grace has not passed yet.
    Wait,
    /// Compare the replicas, and seal and purge if they agree.
    SealAndPurge(Raised),
    /// Every replica sealed; ask each to purge.
    Purge(Raised),
}

/// The step after `pending` for `replicas`, whose grace runs from when the floor went up everywhere.
pub fn next_step(
    pending: Option<&Raised>,
    replicas: &[(NodeId, String)],
    grace: std::time::Duration,
) -> Step {
    match pending {
        None => Step::Raise,
        Some(raised) if raised.replicas != replicas => Step::Raise,
        Some(raised) if raised.sealed => Step::Purge(raised.clone()),
        Some(raised) if raised.at.elapsed() >= grace => Step::SealAndPurge(raised.clone()),
        Some(_) => Step::Wait,
    }
}

/// Each partition's collection in progress.
pub type Collections = Arc<Mutex<HashMap<PartitionId, Raised>>>;

/// The highest version any strong record can carry: every tombstone is at or below it.
const EVERY_VERSION: Version = Version {
    counter: Version::MAX_COUNTER,
    writer: u64::MAX,
};

/// Whether every replica has its floor at `floor` at least and every replica
/// summarises its records at or below the floor the same, for every keyspace.
/// A keyspace with an RF below the set's is written to its first RF replicas
/// only, but anti-entropy exchanges whole partitions, so the others hold its
/// records too; they are compared as well, because a sealed watermark tells
/// every replica, and every node that later catches up from it, that it holds
/// every record at or below it.
pub fn replicas_agree(floor: Version, digests: &[StrongDigestResponse]) -> bool {
    if digests.is_empty()
        || digests
            .iter()
            .any(|d| d.floors.floor.is_none_or(|f| f < floor))
    {
        return false;
    }
    let keyspaces: BTreeSet<&String> = digests.iter().flat_map(|d| d.keyspaces.keys()).collect();
    keyspaces.into_iter().all(|keyspace| {
        let summary =
            |d: &StrongDigestResponse| d.keyspaces.get(keyspace).copied().unwrap_or_default();
        let first = summary(&digests[0]);
        digests.iter().all(|d| summary(d) == first)
    })
}

/// The tombstones a comparison leaves out, given the floors every replica
/// answered when the floor went up: those at or below the highest watermark.
/// A replica may lack any tombstone at or below its own watermark (purged,
/// or never received), while one whose watermark is lower still holds it;
/// values are always compared.
pub fn tombstones_left_out(answered: &[StrongFloors]) -> Option<Version> {
    answered.iter().filter_map(|f| f.watermark).max()
}

impl AntiEntropy {
    /// One step of the partition's collection; `replicas` are every
    /// replica's address.
    pub(crate) async fn collect_strong(
        &self,
        assignment: &PartitionAssignment,
        replicas: Vec<(NodeId, String)>,
    ) -> Result<(), String> {
        let partition = assignment.id;
        let step = {
            let collections = self.strong.lock().unwrap_or_else(|p| p.into_inner());
            next_step(
                collections.get(&partition),
                &replicas,
                self.config.tombstone_grace,
            )
        };
        match step {
            Step::Raise => {
                self.forget(partition);
                self.raise(partition, replicas).await
            }
            Step::Wait => Ok(()),
            Step::SealAndPurge(raised) => self.seal_and_purge(partition, raised).await,
            Step::Purge(raised) => self.purge_sealed(partition, &raised).await,
        }
    }

    /// Drops the partition's collection in progress: the next round starts over.
    fn forget(&self, partition: PartitionId) {
        self.strong
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
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
        // Tombstones at or below this replica's own watermark (a checkpoint
        // held them back, or a purge elsewhere failed) go through the whole
        // collection like new ones: purging them here at once, before every
        // replica sealed, would leave a replica that has not sealed holding
        // one this replica lacks and can never take back.
        let floor = floors.floor.map_or(newest, |f| f.max(newest));
        let mut answered = Vec::new();
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
            answered.push(taken);
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
                    ignore_tombstones_upto: tombstones_left_out(&answered),
                    sealed: false,
                },
            );
        Ok(())
    }

    /// Steps three and four, once the grace has passed.
    async fn seal_and_purge(&self, partition: PartitionId, raised: Raised) -> Result<(), String> {
        let mut digests = Vec::new();
        let request = StrongDigestRequest {
            upto: raised.floor,
            ignore_tombstones_upto: raised.ignore_tombstones_upto,
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
        if !replicas_agree(raised.floor, &digests) {
            // Anti-entropy and read repair bring them together; then the next
            // round seals. A replica whose floor went back (a restored disk)
            // takes it again when the collection starts over.
            if digests
                .iter()
                .any(|d| d.floors.floor.is_none_or(|f| f < raised.floor))
            {
                self.forget(partition);
            }
            return Err(
                "the replicas do not hold the same records at or below the floor yet".into(),
            );
        }
        // Every replica first: one that purged while another could still take
        // an old value would let that value back.
        for (_, address) in &raised.replicas {
            let sealed: Result<StrongFloors, _> = self
                .peers
                .post_json(
                    address,
                    &format!("/internal/v1/partitions/{partition}/strong/seal"),
                    &SealRequest {
                        watermark: raised.floor,
                    },
                    Idempotency::Idempotent,
                )
                .await;
            if let Err(error) = sealed {
                // Refused (a floor that went back) or unanswered: start over,
                // which is safe whatever some replicas sealed, since floors
                // and watermarks only rise.
                self.forget(partition);
                return Err(error.to_string());
            }
        }
        let sealed = Raised {
            sealed: true,
            ..raised
        };
        self.strong
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, sealed.clone());
        self.purge_sealed(partition, &sealed).await
    }

    /// Step four's purge on every replica, once all have sealed; retried by
    /// later rounds until every replica has answered.
    async fn purge_sealed(&self, partition: PartitionId, sealed: &Raised) -> Result<(), String> {
        let purged = self.purge_everywhere(partition, &sealed.replicas).await?;
        self.forget(partition);
        tracing::info!(%partition, watermark = %sealed.floor, purged, "collected strong tombstones every replica held");
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
        let agree = |digests: &[StrongDigestResponse]| replicas_agree(floor, digests);
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
        // A keyspace of RF 2 is written to the first two replicas, but a
        // sealed watermark vouches for every replica: the third must hold
        // its records too (anti-entropy brings them) before the seal.
        assert!(!agree(&[
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7)], Some(9)),
        ]));
        assert!(agree(&[
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7), ("small", 3)], Some(9)),
            summary(&[("default", 7), ("small", 3)], Some(9)),
        ]));
        assert!(!replicas_agree(floor, &[]));
    }

    #[test]
    fn a_replica_that_purged_ahead_of_an_unsealed_one_still_agrees_with_it() {
        use kvorum_protocol::{Key, KeyspaceName, Record};

        use crate::store::{Store, WriteOp};

        let v = |counter| Version { counter, writer: 0 };
        let p = PartitionId(0);
        let commit = |k: &str, counter, value: Option<&str>| WriteOp::Commit {
            partition: p,
            epoch: None,
            keyspace: KeyspaceName::default_keyspace(),
            key: Key::parse(k).expect("key"),
            record: Record {
                version: v(counter),
                value: value.map(|x| x.as_bytes().to_vec()),
            },
        };
        let floors = |floor, watermark| StrongFloors {
            floor: Some(v(floor)),
            watermark: Some(v(watermark)),
        };
        // Both hold the live value; the tombstone of `t` (8) was sealed and
        // purged on the first, while the second sealed only up to 5.
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let purged = Store::open(a.path(), NodeId(1)).expect("open");
        let unsealed = Store::open(b.path(), NodeId(2)).expect("open");
        purged
            .apply(&[commit("live", 2, Some("x"))])
            .expect("writes");
        unsealed
            .apply(&[commit("live", 2, Some("x")), commit("t", 8, None)])
            .expect("writes");
        let answered = [floors(9, 9), floors(9, 5)];
        let digest = |store: &Store, ignore, floors| StrongDigestResponse {
            keyspaces: store.strong_digest(p, v(9), ignore).expect("digest"),
            floors,
        };
        let left_out = tombstones_left_out(&answered);
        assert_eq!(left_out, Some(v(9)));
        assert!(replicas_agree(
            v(9),
            &[
                digest(&purged, left_out, answered[0]),
                digest(&unsealed, left_out, answered[1]),
            ]
        ));
        // Leaving out only what every replica sealed, as a first version did,
        // they disagree for ever: the first can never take the tombstone back.
        let lowest = answered.iter().filter_map(|f| f.watermark).min();
        assert!(!replicas_agree(
            v(9),
            &[
                digest(&purged, lowest, answered[0]),
                digest(&unsealed, lowest, answered[1]),
            ]
        ));
        // A value is never left out: one that missed the delete disagrees.
        unsealed
            .apply(&[commit("gone", 3, Some("old"))])
            .expect("write");
        assert!(!replicas_agree(
            v(9),
            &[
                digest(&purged, left_out, answered[0]),
                digest(&unsealed, left_out, answered[1]),
            ]
        ));
    }

    fn raised(replicas: &[(NodeId, String)], sealed: bool) -> Raised {
        Raised {
            floor: Version {
                counter: 9,
                writer: 0,
            },
            at: Instant::now(),
            replicas: replicas.to_vec(),
            ignore_tombstones_upto: None,
            sealed,
        }
    }

    #[test]
    fn a_collection_raises_waits_the_grace_seals_and_then_only_retries_its_purges() {
        let replicas: Vec<(NodeId, String)> = (1..=3)
            .map(|n| (NodeId(n), format!("127.0.0.1:{n}")))
            .collect();
        let grace = std::time::Duration::from_secs(3600);
        assert_eq!(next_step(None, &replicas, grace), Step::Raise);
        let waiting = raised(&replicas, false);
        assert_eq!(next_step(Some(&waiting), &replicas, grace), Step::Wait);
        assert_eq!(
            next_step(Some(&waiting), &replicas, std::time::Duration::ZERO),
            Step::SealAndPurge(waiting.clone())
        );
        // Once every replica sealed, a purge that failed part-way is retried
        // without comparing again: the replicas that purged and those that
        // did not yet would disagree for ever.
        let sealed = raised(&replicas, true);
        assert_eq!(
            next_step(Some(&sealed), &replicas, grace),
            Step::Purge(sealed.clone())
        );
        // A change of replicas starts over, whatever the stage.
        let moved: Vec<(NodeId, String)> = replicas
            .iter()
            .take(2)
            .cloned()
            .chain([(NodeId(4), "127.0.0.1:4".to_owned())])
            .collect();
        assert_eq!(next_step(Some(&waiting), &moved, grace), Step::Raise);
        assert_eq!(next_step(Some(&sealed), &moved, grace), Step::Raise);
    }
}
