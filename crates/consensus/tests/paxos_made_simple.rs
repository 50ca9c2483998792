//! Deterministic scenarios named after the sections of Lamport's "Paxos Made Simple".

use std::collections::{BTreeMap, VecDeque};

use kvorum_consensus::{
    Accepted, Ballot, Config, DurableState, Entry, Envelope, Member, Message, NodeId, Persist,
    Replica, Slot,
};

/// A founding member in its first life, as the tests name replicas.
fn member(id: NodeId) -> Member {
    Member {
        id,
        incarnation: 0,
        address: format!("replica-{id}"),
    }
}

fn config(id: NodeId, members: &[NodeId]) -> Config {
    // Replica 1 times out first, so it is the one that stands for election.
    let election = if id == 1 { (2, 2) } else { (50, 60) };
    Config {
        id,
        incarnation: 0,
        members: members.iter().copied().map(member).collect(),
        election_ticks: election,
        heartbeat_ticks: 1,
        max_message_bytes: 1 << 20,
        seed: id,
        pre_vote: true,
    }
}

/// A lossless, in-order network that runs the group until nothing is in flight.
struct Group {
    replicas: BTreeMap<NodeId, Replica>,
    applied: BTreeMap<NodeId, Vec<(Slot, Entry)>>,
    queue: VecDeque<Envelope>,
}

impl Group {
    fn new(states: Vec<(NodeId, DurableState)>) -> Self {
        let members: Vec<NodeId> = states.iter().map(|(id, _)| *id).collect();
        Self::with_members(states, &members)
    }

    /// A group of `members` of which only `states` are running (messages to the others are lost).
    fn with_members(states: Vec<(NodeId, DurableState)>, members: &[NodeId]) -> Self {
        let applied = states.iter().map(|(id, _)| (*id, Vec::new())).collect();
        let replicas = states
            .into_iter()
            .map(|(id, durable)| (id, Replica::new(config(id, members), durable)))
            .collect();
        Self {
            replicas,
            applied,
            queue: VecDeque::new(),
        }
    }

    fn collect(&mut self, id: NodeId) {
        let ready = self.replicas.get_mut(&id).expect("member").take_ready();
        self.queue.extend(ready.messages);
        self.applied
            .get_mut(&id)
            .expect("member")
            .extend(ready.decided);
    }

    fn settle(&mut self) {
        let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
        for id in &ids {
            self.collect(*id);
        }
        while let Some(envelope) = self.queue.pop_front() {
            let to = envelope.to;
            if let Some(replica) = self.replicas.get_mut(&to) {
                replica.step(envelope);
                self.collect(to);
            }
        }
    }

    fn tick_all(&mut self, times: usize) {
        for _ in 0..times {
            let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
            for id in ids {
                self.replicas.get_mut(&id).expect("member").tick();
            }
            self.settle();
        }
    }
}

fn accepted(round: u64, node: NodeId, value: &str) -> Accepted {
    Accepted {
        ballot: Ballot { round, node },
        entry: Entry::Command(value.as_bytes().to_vec()),
    }
}

fn command(value: &str) -> Entry {
    Entry::Command(value.as_bytes().to_vec())
}

#[test]
fn section_2_2_a_lone_replica_is_its_own_majority() {
    let mut group = Group::new(vec![(1, DurableState::default())]);
    group.tick_all(3);
    let replica = group.replicas.get_mut(&1).expect("member");
    assert!(replica.is_leader());
    assert_eq!(replica.propose(b"x".to_vec()), Ok(0));
    group.settle();
    assert_eq!(group.applied[&1], vec![(0, command("x"))]);
}

#[test]
fn section_3_a_new_leader_re_proposes_the_highest_ballot_value_and_fills_gaps_with_noops() {
    // Replica 1 accepted "old" from an earlier leader; replica 3 accepted "newer"
    // in a later ballot, and "later" two slots on. Replica 2 is down, so replica 1's
    // majority must include replica 3, and the value of the highest ballot wins.
    let mut one = DurableState::default();
    one.accepted.insert(0, accepted(1, 2, "old"));
    one.promised = Ballot { round: 1, node: 2 };
    let mut three = DurableState::default();
    three.accepted.insert(0, accepted(2, 3, "newer"));
    three.accepted.insert(2, accepted(2, 3, "later"));
    three.promised = Ballot { round: 2, node: 3 };
    let mut group = Group::with_members(vec![(1, one), (3, three)], &[1, 2, 3]);
    // Replica 1's first ballot is refused by replica 3; the next outbids it.
    group.tick_all(10);
    assert!(group.replicas[&1].is_leader(), "replica 1 should lead");
    let expected = vec![
        (0, command("newer")),
        (1, Entry::Noop),
        (2, command("later")),
    ];
    for id in [1, 3] {
        assert_eq!(group.applied[&id], expected, "replica {id}");
    }
    // New commands go after the re-proposed ones.
    assert_eq!(
        group
            .replicas
            .get_mut(&1)
            .expect("leader")
            .propose(b"next".to_vec()),
        Ok(3)
    );
}

#[test]
fn section_2_3_a_promise_is_persisted_in_the_same_ready_that_sends_it() {
    let mut replica = Replica::new(config(2, &[1, 2, 3]), DurableState::default());
    let ballot = Ballot { round: 7, node: 1 };
    replica.step(Envelope {
        from: 1,
        from_incarnation: 0,
        to: 2,
        to_incarnation: 0,
        message: Message::Prepare {
            ballot,
            first_slot: 0,
        },
    });
    let ready = replica.take_ready();
    assert_eq!(ready.persist, vec![Persist::Promised(ballot)]);
    assert!(matches!(
        ready.messages[..],
        [Envelope {
            to: 1,
            message: Message::Promise { .. },
            ..
        }]
    ));

    // A lower ballot is refused, and nothing needs persisting.
    let stale = Ballot { round: 6, node: 3 };
    replica.step(Envelope {
        from: 3,
        from_incarnation: 0,
        to: 2,
        to_incarnation: 0,
        message: Message::Prepare {
            ballot: stale,
            first_slot: 0,
        },
    });
    let ready = replica.take_ready();
    assert!(ready.persist.is_empty());
    assert!(
        matches!(ready.messages[..], [Envelope { to: 3, message: Message::Reject { promised, .. }, .. }] if promised == ballot)
    );
}

#[test]
fn a_follower_that_is_not_the_leader_redirects_proposals() {
    let mut group = Group::new(vec![
        (1, DurableState::default()),
        (2, DurableState::default()),
        (3, DurableState::default()),
    ]);
    group.tick_all(5);
    let follower = group.replicas.get_mut(&2).expect("member");
    assert_eq!(
        follower.propose(b"x".to_vec()).map_err(|e| e.leader),
        Err(Some(1))
    );
}

#[test]
fn check_quorum_a_leader_that_hears_no_majority_steps_down() {
    let mut group = Group::new(vec![
        (1, DurableState::default()),
        (2, DurableState::default()),
        (3, DurableState::default()),
    ]);
    group.tick_all(5);
    assert!(group.replicas[&1].is_leader());
    // Followers that answer keep it leading, for many election timeouts.
    group.tick_all(200);
    assert!(
        group.replicas[&1].is_leader(),
        "acked heartbeats keep it leading"
    );
    // Cut off from both followers (they are gone), it steps down within twice
    // the longest election timeout plus a check.
    group.replicas.remove(&2);
    group.replicas.remove(&3);
    let mut ticks = 0;
    while group.replicas[&1].is_leader() {
        group.tick_all(1);
        ticks += 1;
        assert!(ticks <= 62, "still leading after {ticks} ticks alone");
    }
    let leader = group.replicas.get_mut(&1).expect("member");
    assert_eq!(
        leader.propose(b"x".to_vec()).map_err(|e| e.leader),
        Err(None),
        "no longer leading, it knows no leader to send clients to"
    );
}
