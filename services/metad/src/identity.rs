//! Who this replica is and which group it belongs to, settled once before
//! the consensus loop starts.
//!
//! A store is given a random incarnation (its life) when it is created. A
//! replica whose store does not yet know its group asks every peer of
//! `--peers`:
//!
//! - a peer that knows the group answers with it (its id and founding
//!   members): the replica takes it, as a founder if the founding members
//!   name it in this life, and otherwise as a newcomer that waits to be added
//!   or replaced through the log (a replica that lost its disk is one);
//! - once every peer has answered that it knows no group either, the replica
//!   proposes the group the lives it heard make (its `candidate`: the peers in
//!   those lives, and the id every founder computes from them), and founds
//!   it once every peer names that same candidate. The second round is what
//!   keeps a replica that lost its disk mid-founding from splitting the
//!   founders: its new life changes the candidate of whoever hears it, and
//!   nobody founds until they agree again.
//!
//! A replica that lost its disk therefore never votes in its new life before
//! the log says so: its peers know the group and the founding members name
//! its former life. Founding needs every founding replica up once, as etcd's
//! `--initial-cluster-state new` does.

use std::collections::BTreeMap;
use std::time::Duration;

use kvorum_consensus::Member;
use kvorum_http_client::HttpClient;
use kvorum_paxos_store::{PaxosStore, PaxosStoreError};
use kvorum_protocol::paxos::ReplicaIdentity;
use tokio_util::sync::CancellationToken;

/// The group id every founder derives from the founding members.
pub fn cluster_id(founding: &[Member]) -> u64 {
    let mut sorted = founding.to_vec();
    sorted.sort();
    xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(&sorted).expect("members encode"))
}

/// The founding members of a store written before identities existed: every
/// replica of `--peers` in life 0, which every such replica computes alike.
pub fn legacy_founding(peers: &BTreeMap<u64, String>) -> Vec<Member> {
    peers
        .iter()
        .map(|(id, address)| Member {
            id: *id,
            incarnation: 0,
            address: address.clone(),
        })
        .collect()
}

/// The identity a store starts from: the one it holds, or a new life (for an
/// empty store), or life 0 with the founding members of `--peers` (for a
/// store written before identities, which has acceptor state).
pub fn load_or_create(
    store: &PaxosStore,
    id: u64,
    peers: &BTreeMap<u64, String>,
) -> Result<ReplicaIdentity, PaxosStoreError> {
    if let Some(identity) = store.identity()? {
        return Ok(identity);
    }
    let durable = store.load()?;
    let identity = if durable == kvorum_consensus::DurableState::default() {
        ReplicaIdentity {
            id,
            // Never 0, the life of stores written before identities.
            incarnation: rand::random::<u64>().max(1),
            cluster: None,
            founding: None,
            candidate: None,
        }
    } else {
        let founding = legacy_founding(peers);
        ReplicaIdentity {
            id,
            incarnation: 0,
            cluster: Some(cluster_id(&founding)),
            founding: Some(founding),
            candidate: None,
        }
    };
    store.set_identity(&identity)?;
    Ok(identity)
}

/// What one round of asking the peers came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// A peer knows the group: this is it.
    Known(ReplicaIdentity),
    /// Nobody knows one; every peer answered, and these lives make this group.
    Candidate(ReplicaIdentity),
    /// Not every peer answered.
    Incomplete,
}

/// Whether to found `candidate`: every peer names it as its own candidate.
pub fn agreed(candidate: &ReplicaIdentity, answers: &BTreeMap<u64, ReplicaIdentity>) -> bool {
    candidate.cluster.is_some() && answers.values().all(|a| a.candidate == candidate.cluster)
}

/// What one round of asking the peers came to.
pub fn settle_from_answers(
    mine: &ReplicaIdentity,
    peers: &BTreeMap<u64, String>,
    answers: &BTreeMap<u64, ReplicaIdentity>,
) -> Round {
    if let Some(known) = answers
        .values()
        .find(|a| a.cluster.is_some() && a.founding.is_some())
    {
        return Round::Known(ReplicaIdentity {
            cluster: known.cluster,
            founding: known.founding.clone(),
            candidate: None,
            ..mine.clone()
        });
    }
    let others = peers.keys().filter(|id| **id != mine.id);
    let mut founding = Vec::new();
    for id in others {
        let Some(answer) = answers.get(id) else {
            return Round::Incomplete;
        };
        founding.push(Member {
            id: *id,
            incarnation: answer.incarnation,
            address: peers[id].clone(),
        });
    }
    founding.push(Member {
        id: mine.id,
        incarnation: mine.incarnation,
        address: peers[&mine.id].clone(),
    });
    founding.sort();
    Round::Candidate(ReplicaIdentity {
        cluster: Some(cluster_id(&founding)),
        founding: Some(founding),
        candidate: None,
        ..mine.clone()
    })
}

/// Asks the peers until the group is settled, then writes it to the store;
/// `None` if `shutdown` fired first.
pub async fn settle(
    store: &PaxosStore,
    mut mine: ReplicaIdentity,
    peers: &BTreeMap<u64, String>,
    client: &HttpClient,
    retry: Duration,
    shutdown: &CancellationToken,
    published: &std::sync::RwLock<ReplicaIdentity>,
) -> Result<Option<ReplicaIdentity>, PaxosStoreError> {
    let mut asked = 0u64;
    while mine.founding.is_none() {
        let calls =
            peers
                .iter()
                .filter(|(id, _)| **id != mine.id)
                .map(|(id, address)| async move {
                    let answer = client
                        .get_json::<ReplicaIdentity>(address, "/internal/v1/paxos/identity")
                        .await;
                    (*id, answer)
                });
        let mut answers = BTreeMap::new();
        for (id, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(identity) if identity.id == id => {
                    answers.insert(id, identity);
                }
                Ok(identity) => tracing::warn!(
                    expected = id,
                    answered = identity.id,
                    "a peer of --peers answers with another id"
                ),
                Err(error) => tracing::debug!(peer = id, %error, "peer not reachable yet"),
            }
        }
        let settled = match settle_from_answers(&mine, peers, &answers) {
            Round::Known(known) => Some(known),
            Round::Candidate(candidate) if agreed(&candidate, &answers) => Some(candidate),
            Round::Candidate(candidate) => {
                // Named to the peers; founded once they all name it too.
                mine.candidate = candidate.cluster;
                published
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .candidate = candidate.cluster;
                None
            }
            Round::Incomplete => None,
        };
        if let Some(settled) = settled {
            store.set_identity(&settled)?;
            let founder = settled
                .founding
                .iter()
                .flatten()
                .any(|m| m.same_life(mine.id, mine.incarnation));
            tracing::info!(
                cluster = settled.cluster,
                incarnation = settled.incarnation,
                founder,
                "metadata group settled{}",
                if founder {
                    ""
                } else {
                    "; this replica is not a member until `kvorumctl metad add` or `metad replace` makes it one"
                }
            );
            mine = settled;
            break;
        }
        asked += 1;
        if asked % 20 == 1 {
            tracing::info!(
                answered = answers.len(),
                peers = peers.len() - 1,
                "waiting for every peer of --peers to answer before founding the metadata group"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
    // Answered from now on, so the other founders find the group.
    *published.write().unwrap_or_else(|p| p.into_inner()) = mine.clone();
    Ok(Some(mine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<u64, String> {
        (1..=3).map(|id| (id, format!("metad-{id}:9001"))).collect()
    }

    fn unsettled(id: u64, incarnation: u64) -> ReplicaIdentity {
        ReplicaIdentity {
            id,
            incarnation,
            cluster: None,
            founding: None,
            candidate: None,
        }
    }

    fn candidate(round: Round) -> ReplicaIdentity {
        match round {
            Round::Candidate(candidate) => candidate,
            other => panic!("not a candidate: {other:?}"),
        }
    }

    #[test]
    fn founders_agree_once_every_peer_answered_and_not_before() {
        let peers = peers();
        let lives = [(1, 11), (2, 22), (3, 33)];
        let answers = |me: u64| -> BTreeMap<u64, ReplicaIdentity> {
            lives
                .iter()
                .filter(|(id, _)| *id != me)
                .map(|(id, life)| (*id, unsettled(*id, *life)))
                .collect()
        };
        let settled: Vec<ReplicaIdentity> = lives
            .iter()
            .map(|(id, life)| {
                candidate(settle_from_answers(
                    &unsettled(*id, *life),
                    &peers,
                    &answers(*id),
                ))
            })
            .collect();
        for identity in &settled {
            assert_eq!(identity.cluster, settled[0].cluster);
            assert_eq!(identity.founding, settled[0].founding);
            assert!(
                !agreed(identity, &answers(identity.id)),
                "founded before the peers named the candidate"
            );
        }
        // The second round: every peer names the same candidate.
        let named: BTreeMap<u64, ReplicaIdentity> = answers(1)
            .into_iter()
            .map(|(id, mut a)| {
                a.candidate = settled[0].cluster;
                (id, a)
            })
            .collect();
        assert!(agreed(&settled[0], &named));
        let mut partial = answers(1);
        partial.remove(&3);
        assert_eq!(
            settle_from_answers(&unsettled(1, 11), &peers, &partial),
            Round::Incomplete,
            "a candidate without hearing every peer"
        );
    }

    #[test]
    fn a_replica_that_loses_its_disk_while_founding_keeps_the_founders_apart_until_they_agree() {
        let peers = peers();
        // Replica 1 heard 3 in life 33 and names that group; replica 2 heard
        // 3 after its disk was lost, in life 34.
        let one = candidate(settle_from_answers(
            &unsettled(1, 11),
            &peers,
            &BTreeMap::from([(2, unsettled(2, 22)), (3, unsettled(3, 33))]),
        ));
        let two = candidate(settle_from_answers(
            &unsettled(2, 22),
            &peers,
            &BTreeMap::from([(1, unsettled(1, 11)), (3, unsettled(3, 34))]),
        ));
        assert_ne!(one.cluster, two.cluster);
        let naming = |id: u64, life: u64, group: Option<u64>| ReplicaIdentity {
            candidate: group,
            ..unsettled(id, life)
        };
        assert!(
            !agreed(
                &one,
                &BTreeMap::from([(2, naming(2, 22, two.cluster)), (3, naming(3, 34, None))])
            ),
            "replica 1 founded a group replica 2 does not name"
        );
        assert!(!agreed(
            &two,
            &BTreeMap::from([
                (1, naming(1, 11, one.cluster)),
                (3, naming(3, 34, two.cluster))
            ])
        ));
    }

    #[test]
    fn a_replica_that_lost_its_store_joins_the_known_group_outside_its_members() {
        let peers = peers();
        let founding: Vec<Member> = [(1, 11), (2, 22), (3, 33)]
            .into_iter()
            .map(|(id, incarnation)| Member {
                id,
                incarnation,
                address: peers[&id].clone(),
            })
            .collect();
        let known = ReplicaIdentity {
            id: 2,
            incarnation: 22,
            cluster: Some(cluster_id(&founding)),
            founding: Some(founding.clone()),
            candidate: None,
        };
        let answers = BTreeMap::from([(2, known)]);
        let Round::Known(wiped) = settle_from_answers(&unsettled(3, 99), &peers, &answers) else {
            panic!("the known group is taken")
        };
        assert_eq!(wiped.cluster, Some(cluster_id(&founding)));
        assert!(
            !wiped.founding.iter().flatten().any(|m| m.same_life(3, 99)),
            "the new life is not a founder"
        );
    }
}
