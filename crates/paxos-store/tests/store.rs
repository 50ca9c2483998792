//! The store gives back exactly what applying the same changes in memory gives,
//! across reopening, for seeded random sequences of changes.

// Seeds go to stderr, which the test harness captures and shows on failure.
#![allow(clippy::print_stderr)]

use kvorum_consensus::{DurableState, Persist};
use kvorum_paxos_store::PaxosStore;
use kvorum_protocol::paxos::{Accepted, Ballot, Entry, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_change(rng: &mut StdRng) -> Persist {
    let ballot = Ballot {
        round: rng.random_range(0..20),
        node: rng.random_range(1..4),
    };
    let slot = rng.random_range(0..40);
    let entry = if rng.random_bool(0.2) {
        Entry::Noop
    } else {
        Entry::Command(vec![rng.random(); rng.random_range(0..8)])
    };
    match rng.random_range(0..10) {
        0..=1 => Persist::Promised(ballot),
        2..=5 => Persist::Accepted(slot, Accepted { ballot, entry }),
        6..=8 => Persist::Decided(slot, entry),
        _ => Persist::Snapshot(Snapshot {
            upto: slot,
            data: vec![rng.random(); 4],
            members: None,
            retired: Vec::new(),
        }),
    }
}

#[test]
fn reopened_state_equals_the_state_applied_in_memory() {
    let seed: u64 = std::env::var("KVORUM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("paxos.redb");
    let mut expected = DurableState::default();
    for round in 0..30 {
        let store = PaxosStore::open(&path).expect("open");
        assert_eq!(
            store.load().expect("load"),
            expected,
            "seed {seed}: round {round} reopened a different state"
        );
        for _ in 0..rng.random_range(1..6) {
            let batch: Vec<Persist> = (0..rng.random_range(1..8))
                .map(|_| random_change(&mut rng))
                .collect();
            store.persist(&batch).expect("persist");
            for change in &batch {
                expected.apply(change);
            }
        }
    }
}

#[test]
fn a_snapshot_drops_the_log_below_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PaxosStore::open(&dir.path().join("paxos.redb")).expect("open");
    let ballot = Ballot { round: 1, node: 1 };
    let changes: Vec<Persist> = (0..10)
        .flat_map(|slot| {
            [
                Persist::Accepted(
                    slot,
                    Accepted {
                        ballot,
                        entry: Entry::Noop,
                    },
                ),
                Persist::Decided(slot, Entry::Noop),
            ]
        })
        .chain([Persist::Snapshot(Snapshot {
            upto: 6,
            data: b"state".to_vec(),
            members: None,
            retired: Vec::new(),
        })])
        .collect();
    store.persist(&changes).expect("persist");
    let state = store.load().expect("load");
    assert_eq!(
        state.accepted.keys().copied().collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    assert_eq!(
        state.decided.keys().copied().collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    assert_eq!(state.compacted_upto(), 6);
}

#[test]
fn the_identity_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("paxos.redb");
    let identity = kvorum_protocol::paxos::ReplicaIdentity {
        id: 2,
        incarnation: 77,
        cluster: Some(9),
        founding: None,
        candidate: None,
    };
    {
        let store = PaxosStore::open(&path).expect("opens");
        assert_eq!(store.identity().expect("reads"), None);
        store.set_identity(&identity).expect("writes");
    }
    let store = PaxosStore::open(&path).expect("reopens");
    assert_eq!(store.identity().expect("reads"), Some(identity));
}
