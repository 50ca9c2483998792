//! Pre-vote (Ongaro's thesis, 9.6): a replica cut off from the group for many
//! election timeouts rejoins without deposing a healthy leader, because it
//! never raised its ballot while it could not reach a majority. Without
//! pre-vote the same scenario deposes the leader, which shows the test can fail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kvorum_consensus::{Config, DurableState, Envelope, NodeId, Replica};

/// A lossless, in-order network whose messages to or from `isolated` are lost.
struct Group {
    replicas: BTreeMap<NodeId, Replica>,
    queue: VecDeque<Envelope>,
    isolated: BTreeSet<NodeId>,
    /// Every change of which replica leads (or that none does), in order.
    leadership: Vec<Option<NodeId>>,
}

impl Group {
    fn new(size: u64, pre_vote: bool) -> Self {
        let members: Vec<NodeId> = (1..=size).collect();
        let replicas = members
            .iter()
            .map(|id| {
                let config = Config {
                    id: *id,
                    members: members.clone(),
                    election_ticks: (10, 20),
                    heartbeat_ticks: 3,
                    max_message_bytes: 1 << 20,
                    seed: *id * 7919,
                    pre_vote,
                };
                (*id, Replica::new(config, DurableState::default()))
            })
            .collect();
        Self {
            replicas,
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            leadership: Vec::new(),
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .filter(|(_, r)| r.is_leader())
            .map(|(id, _)| *id)
            .max()
    }

    fn settle(&mut self) {
        let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
        for id in ids {
            let ready = self.replicas.get_mut(&id).expect("member").take_ready();
            self.queue.extend(ready.messages);
        }
        while let Some(envelope) = self.queue.pop_front() {
            if self.isolated.contains(&envelope.from) || self.isolated.contains(&envelope.to) {
                continue;
            }
            let to = envelope.to;
            let replica = self.replicas.get_mut(&to).expect("member");
            replica.step(envelope);
            let ready = replica.take_ready();
            self.queue.extend(ready.messages);
        }
        let leader = self.leader();
        if self.leadership.last() != Some(&leader) {
            self.leadership.push(leader);
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

    /// Elects a leader, cuts one follower off for `ticks`, heals and lets the
    /// group run: returns the leader before, the leader after, and how many
    /// times leadership changed after the first election.
    fn isolate_a_follower(&mut self, ticks: usize) -> (NodeId, Option<NodeId>, usize) {
        self.tick_all(200);
        let before = self.leader().expect("a leader within 200 ticks");
        let changes_before = self.leadership.len();
        let follower = *self
            .replicas
            .keys()
            .find(|id| **id != before)
            .expect("a follower");
        self.isolated.insert(follower);
        self.tick_all(ticks);
        self.isolated.clear();
        self.tick_all(200);
        let changes = self.leadership.len() - changes_before;
        assert!(
            self.replicas[&follower].leader() == self.leader(),
            "the returned replica follows the leader"
        );
        (before, self.leader(), changes)
    }
}

#[test]
fn a_replica_back_from_isolation_rejoins_without_an_election() {
    for size in [3, 5] {
        let mut group = Group::new(size, true);
        let (before, after, changes) = group.isolate_a_follower(400);
        assert_eq!(
            after,
            Some(before),
            "{size} replicas: the leader was deposed"
        );
        assert_eq!(changes, 0, "{size} replicas: leadership changed");
    }
}

#[test]
fn without_pre_vote_the_returning_replica_deposes_the_leader() {
    let mut group = Group::new(3, false);
    let (before, after, changes) = group.isolate_a_follower(400);
    assert!(
        changes > 0 || after != Some(before),
        "the returning replica's higher ballot should have forced an election"
    );
}

#[test]
fn a_group_whose_leader_died_still_elects_one_with_pre_vote() {
    let mut group = Group::new(3, true);
    group.tick_all(200);
    let first = group.leader().expect("a first leader");
    group.isolated.insert(first);
    group.tick_all(200);
    let next = group
        .replicas
        .iter()
        .filter(|(id, r)| **id != first && r.is_leader())
        .count();
    assert_eq!(next, 1, "the two others elect one of them");
}
