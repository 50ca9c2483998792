//! A lossless, in-order network of replicas for deterministic scenarios.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kvorum_consensus::{Config, DurableState, Envelope, Member, NodeId, Replica};

/// A founding member in its first life, as the tests name replicas.
pub fn member(id: NodeId) -> Member {
    Member {
        id,
        incarnation: 0,
        address: format!("replica-{id}"),
    }
}

/// A replica's settings in a group of founding `members` (all in life 0).
pub fn config(id: NodeId, incarnation: u64, members: &[NodeId], pre_vote: bool) -> Config {
    Config {
        id,
        incarnation,
        members: members.iter().copied().map(member).collect(),
        election_ticks: (10, 20),
        heartbeat_ticks: 3,
        max_message_bytes: 1 << 20,
        seed: id * 7919 + incarnation,
        pre_vote,
    }
}

/// A lossless, in-order network whose messages to or from `isolated` (or
/// to a replica that does not run) are lost.
pub struct Group {
    pub replicas: BTreeMap<NodeId, Replica>,
    pub queue: VecDeque<Envelope>,
    pub isolated: BTreeSet<NodeId>,
    /// Every change of which replica leads (or that none does), in order.
    pub leadership: Vec<Option<NodeId>>,
}

impl Group {
    pub fn new(size: u64, pre_vote: bool) -> Self {
        let members: Vec<NodeId> = (1..=size).collect();
        let replicas = members
            .iter()
            .map(|id| {
                let config = config(*id, 0, &members, pre_vote);
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

    pub fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .filter(|(_, r)| r.is_leader())
            .map(|(id, _)| *id)
            .max()
    }

    pub fn settle(&mut self) {
        let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
        for id in ids {
            let ready = self.replicas.get_mut(&id).expect("member").take_ready();
            self.queue.extend(ready.messages);
        }
        while let Some(envelope) = self.queue.pop_front() {
            if self.isolated.contains(&envelope.from) || self.isolated.contains(&envelope.to) {
                continue;
            }
            // A replica that does not run loses what is sent to it.
            let Some(replica) = self.replicas.get_mut(&envelope.to) else {
                continue;
            };
            replica.step(envelope);
            let ready = replica.take_ready();
            self.queue.extend(ready.messages);
        }
        let leader = self.leader();
        if self.leadership.last() != Some(&leader) {
            self.leadership.push(leader);
        }
    }

    pub fn tick_all(&mut self, times: usize) {
        for _ in 0..times {
            let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
            for id in ids {
                self.replicas.get_mut(&id).expect("member").tick();
            }
            self.settle();
        }
    }
}
