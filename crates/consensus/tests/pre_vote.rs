//! Pre-vote (Ongaro's thesis, 9.6): a replica cut off from the group for many
//! election timeouts rejoins without deposing a healthy leader, because it
//! never raised its ballot while it could not reach a majority. Without
//! pre-vote the same scenario deposes the leader, which shows the test can fail.

mod support;

use kvorum_consensus::NodeId;
use support::Group;

/// Elects a leader, cuts one follower off for `ticks`, heals and lets the
/// group run: returns the leader before, the leader after, and how many
/// times leadership changed after the first election.
fn isolate_a_follower(group: &mut Group, ticks: usize) -> (NodeId, Option<NodeId>, usize) {
    group.tick_all(200);
    let before = group.leader().expect("a leader within 200 ticks");
    let changes_before = group.leadership.len();
    let follower = *group
        .replicas
        .keys()
        .find(|id| **id != before)
        .expect("a follower");
    group.isolated.insert(follower);
    group.tick_all(ticks);
    group.isolated.clear();
    group.tick_all(200);
    let changes = group.leadership.len() - changes_before;
    assert!(
        group.replicas[&follower].leader() == group.leader(),
        "the returned replica follows the leader"
    );
    (before, group.leader(), changes)
}

#[test]
fn a_replica_back_from_isolation_rejoins_without_an_election() {
    for size in [3, 5] {
        let mut group = Group::new(size, true);
        let (before, after, changes) = isolate_a_follower(&mut group, 400);
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
    let (before, after, changes) = isolate_a_follower(&mut group, 400);
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
