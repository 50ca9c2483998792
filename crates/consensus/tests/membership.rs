//! Membership changes through the log, and replicas that lost their disk:
//! deterministic scenarios on a lossless network (the seeded simulation runs
//! the same under faults).

mod support;

use kvorum_consensus::{DurableState, Member, MembershipRefused, NodeId, Replica};
use support::{Group, config, member};

/// A group of three with a leader, and the leader's id.
fn settled_group() -> (Group, NodeId) {
    let mut group = Group::new(3, true);
    group.tick_all(200);
    let leader = group.leader().expect("a leader within 200 ticks");
    (group, leader)
}

fn propose(group: &mut Group, leader: NodeId, command: &str) {
    group
        .replicas
        .get_mut(&leader)
        .expect("leader")
        .propose(command.as_bytes().to_vec())
        .expect("the leader takes proposals");
    group.settle();
}

fn change(
    group: &mut Group,
    leader: NodeId,
    members: Vec<Member>,
) -> Result<u64, MembershipRefused> {
    let result = group
        .replicas
        .get_mut(&leader)
        .expect("leader")
        .propose_members(members);
    group.settle();
    result
}

fn others(group: &Group, but: NodeId) -> Vec<NodeId> {
    group
        .replicas
        .keys()
        .copied()
        .filter(|id| *id != but)
        .collect()
}

#[test]
fn a_replica_that_lost_its_disk_does_not_vote_until_it_is_replaced_through_the_log() {
    let (mut group, leader) = settled_group();
    propose(&mut group, leader, "before the loss");
    let [wiped, bystander] = others(&group, leader)[..] else {
        panic!("three replicas")
    };
    // The replica comes back with an empty store, in a new life.
    group.replicas.insert(
        wiped,
        Replica::new(config(wiped, 7, &[1, 2, 3], true), DurableState::default()),
    );
    group.tick_all(100);
    let fresh = &group.replicas[&wiped];
    assert!(!fresh.is_member(), "the new life is not a member");
    assert_eq!(fresh.decided_upto(), 0, "it accepted and learned nothing");
    assert_eq!(
        fresh.highest_ballot().round,
        0,
        "it heard nothing meant for its former life"
    );
    assert_eq!(group.leader(), Some(leader), "the leader kept leading");

    // With the third replica cut off, the leader and the empty replica are no
    // majority: the empty replica's acknowledgements do not count.
    group.isolated.insert(bystander);
    let decided = group.replicas[&leader].decided_upto();
    propose(&mut group, leader, "needs a majority");
    group.tick_all(30);
    assert_eq!(
        group.replicas[&leader].decided_upto(),
        decided,
        "a command was decided by the leader and a replica that forgot its promises"
    );
    group.isolated.clear();
    group.tick_all(50);
    let leader = group.leader().expect("a leader once healed");

    // Replaced through the log, the new life catches up and votes.
    let mut members: Vec<Member> = group.replicas[&leader].members().to_vec();
    for m in &mut members {
        if m.id == wiped {
            m.incarnation = 7;
        }
    }
    change(&mut group, leader, members).expect("the replacement is proposed");
    group.tick_all(100);
    let leader = group.leader().expect("a leader after the change");
    assert!(
        group.replicas[&wiped].is_member(),
        "the new life is a member"
    );
    assert_eq!(
        group.replicas[&wiped].decided_upto(),
        group.replicas[&leader].decided_upto(),
        "the replaced replica caught up"
    );
    let bystander = others(&group, leader)
        .into_iter()
        .find(|id| *id != wiped)
        .expect("a third replica");
    group.isolated.insert(bystander);
    let decided = group.replicas[&leader].decided_upto();
    propose(&mut group, leader, "decided with the new life");
    group.tick_all(10);
    assert!(
        group.replicas[&leader].decided_upto() > decided,
        "the leader and the replaced replica are a majority"
    );
}

#[test]
fn membership_changes_are_made_by_the_leader_one_replica_at_a_time() {
    let (mut group, leader) = settled_group();
    let follower = others(&group, leader)[0];
    let founding: Vec<Member> = [1, 2, 3].into_iter().map(member).collect();
    let with = |extra: &[NodeId]| -> Vec<Member> {
        founding
            .iter()
            .cloned()
            .chain(extra.iter().copied().map(member))
            .collect()
    };
    assert!(matches!(
        change(&mut group, follower, with(&[4])),
        Err(MembershipRefused::NotLeader(_))
    ));
    assert_eq!(
        change(&mut group, leader, Vec::new()),
        Err(MembershipRefused::Empty)
    );
    assert_eq!(
        change(&mut group, leader, with(&[4, 5])),
        Err(MembershipRefused::NotOneChange),
        "two replicas added at once"
    );
    assert_eq!(
        change(&mut group, leader, founding[..1].to_vec()),
        Err(MembershipRefused::NotOneChange),
        "two replicas removed at once"
    );

    // A change proposed and not yet decided holds the next one back.
    let slot = group
        .replicas
        .get_mut(&leader)
        .expect("leader")
        .propose_members(with(&[4]))
        .expect("one replica added");
    assert_eq!(
        group
            .replicas
            .get_mut(&leader)
            .expect("leader")
            .propose_members(with(&[4, 5])),
        Err(MembershipRefused::Pending(slot))
    );
    group.settle();
    group.tick_all(100);

    // A removed life never comes back; it would have to rejoin empty.
    let leader = group.leader().expect("a leader");
    let without_follower: Vec<Member> = with(&[4])
        .into_iter()
        .filter(|m| m.id != follower)
        .collect();
    change(&mut group, leader, without_follower).expect("one replica removed");
    group.tick_all(100);
    let leader = group.leader().expect("a leader");
    assert_eq!(
        change(&mut group, leader, with(&[4])),
        Err(MembershipRefused::Retired(follower))
    );
}

#[test]
fn a_leader_that_removes_itself_stands_down_and_the_others_carry_on() {
    let (mut group, leader) = settled_group();
    let rest: Vec<Member> = group.replicas[&leader]
        .members()
        .iter()
        .filter(|m| m.id != leader)
        .cloned()
        .collect();
    change(&mut group, leader, rest).expect("the leader removes itself");
    group.tick_all(200);
    let old = &group.replicas[&leader];
    assert!(
        !old.is_member() && !old.is_leader(),
        "the old leader stood down"
    );
    let new = group.leader().expect("the remaining two elect a leader");
    assert_ne!(new, leader);
    let decided = group.replicas[&new].decided_upto();
    propose(&mut group, new, "after the change");
    group.tick_all(10);
    assert!(group.replicas[&new].decided_upto() > decided);
    assert_eq!(
        group.replicas[&leader].decided_upto(),
        decided,
        "the removed replica hears no more of the log"
    );
}

#[test]
fn a_leader_declares_slots_decided_only_in_slot_order() {
    use kvorum_consensus::{Message, Persist};
    let (mut group, leader) = settled_group();
    let follower = others(&group, leader)[0];
    let first = group.replicas[&leader].decided_upto();
    // Two proposals in two batches; only the second reaches the follower.
    let replica = group.replicas.get_mut(&leader).expect("leader");
    replica.propose(b"first".to_vec()).expect("leads");
    let _lost = replica.take_ready();
    replica.propose(b"second".to_vec()).expect("leads");
    let second_batch: Vec<_> = replica
        .take_ready()
        .messages
        .into_iter()
        .filter(|e| e.to == follower)
        .collect();
    let follower_replica = group.replicas.get_mut(&follower).expect("follower");
    for envelope in second_batch {
        follower_replica.step(envelope);
    }
    let answers: Vec<_> = follower_replica
        .take_ready()
        .messages
        .into_iter()
        .filter(|e| e.to == leader && matches!(e.message, Message::Accepted { .. }))
        .collect();
    assert!(!answers.is_empty(), "the follower accepted the second slot");
    let replica = group.replicas.get_mut(&leader).expect("leader");
    for envelope in answers {
        replica.step(envelope);
    }
    // A majority accepted the second slot, but the first is undecided: the
    // membership that governs the second is not known yet.
    let ready = replica.take_ready();
    assert!(
        !ready
            .persist
            .iter()
            .any(|p| matches!(p, Persist::Decided(..))),
        "a slot was declared decided past an undecided one: {:?}",
        ready.persist
    );
    assert!(
        !ready
            .messages
            .iter()
            .any(|e| matches!(e.message, Message::Decided { .. })),
        "a decision past an undecided slot was sent"
    );
    // Once the first slot is decided, both are, in order.
    group.tick_all(10);
    assert!(group.replicas[&leader].decided_upto() >= first + 2);
}
