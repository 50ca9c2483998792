//! The store's tests: durability, keep-if-higher, exports, digests, purges and hints.

use kvorum_protocol::causal::VersionVector;

use super::*;

fn ks() -> KeyspaceName {
    KeyspaceName::default_keyspace()
}

fn key(text: &str) -> Key {
    Key::parse(text).expect("valid key")
}

fn record(counter: u64, value: &str) -> Record {
    Record {
        version: Version { counter, writer: 1 },
        value: Some(value.as_bytes().to_vec()),
    }
}

fn commit(partition: u32, k: &str, record: Record) -> WriteOp {
    WriteOp::Commit {
        partition: PartitionId(partition),
        epoch: Some(Epoch(1)),
        keyspace: ks(),
        key: key(k),
        record,
    }
}

#[test]
fn a_replica_keeps_only_higher_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let outcomes = store
        .apply(&[
            commit(0, "k", record(2, "two")),
            commit(0, "k", record(1, "one")),
            commit(0, "k", record(2, "again")),
        ])
        .expect("apply");
    let current = Version {
        counter: 2,
        writer: 1,
    };
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Committed {
                applied: true,
                current
            },
            WriteOutcome::Committed {
                applied: false,
                current
            },
            WriteOutcome::Committed {
                applied: false,
                current
            },
        ]
    );
    assert_eq!(
        store.read(PartitionId(0), &ks(), &key("k")).expect("read"),
        Some(record(2, "two"))
    );
    assert_eq!(
        store
            .version(PartitionId(0), &ks(), &key("k"))
            .expect("version"),
        Some(current)
    );
    assert_eq!(
        store
            .read(PartitionId(0), &ks(), &key("other"))
            .expect("read"),
        None
    );
}

#[test]
fn data_and_epochs_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), NodeId(4)).expect("open");
        let mut op = commit(3, "durable", record(1, "yes"));
        if let WriteOp::Commit { epoch, .. } = &mut op {
            *epoch = Some(Epoch(7));
        }
        store.apply(&[op]).expect("apply");
    }
    let store = Store::open(dir.path(), NodeId(4)).expect("reopen");
    assert_eq!(
        store
            .read(PartitionId(3), &ks(), &key("durable"))
            .expect("read"),
        Some(record(1, "yes"))
    );
    assert_eq!(
        store.partition_epochs().expect("epochs"),
        vec![(PartitionId(3), Epoch(7))]
    );
}

#[test]
fn an_unassigned_partition_is_dropped_with_its_hints_unless_a_newer_epoch_came_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    store
        .apply(&[
            commit(1, "a", record(1, "a1")),
            commit(2, "b", record(1, "b2")),
            WriteOp::StoreHints {
                partition: PartitionId(1),
                keyspace: ks(),
                key: key("a"),
                targets: vec![NodeId(3)],
            },
            WriteOp::StoreHints {
                partition: PartitionId(2),
                keyspace: ks(),
                key: key("b"),
                targets: vec![NodeId(3)],
            },
        ])
        .expect("apply");
    assert_eq!(
        store.partitions_held(4).expect("held"),
        [PartitionId(1), PartitionId(2)]
    );
    let outcomes = store
        .apply(&[WriteOp::DropUnassigned {
            partition: PartitionId(1),
            epoch: Epoch(2),
        }])
        .expect("drop");
    assert_eq!(outcomes, vec![WriteOutcome::Dropped(1)]);
    assert_eq!(store.partitions_held(4).expect("held"), [PartitionId(2)]);
    assert_eq!(
        store.hint_count().expect("hints"),
        1,
        "partition 2's hint stays"
    );
    assert_eq!(
        store.partition_epochs().expect("epochs"),
        vec![(PartitionId(1), Epoch(2)), (PartitionId(2), Epoch(1))],
        "the drop fences older requests"
    );
    // A move brought partition 2 back at epoch 5 and fenced it: an older
    // decision to drop it changes nothing.
    store
        .apply(&[WriteOp::RaiseEpoch {
            partition: PartitionId(2),
            epoch: Epoch(5),
        }])
        .expect("fence");
    let outcomes = store
        .apply(&[WriteOp::DropUnassigned {
            partition: PartitionId(2),
            epoch: Epoch(4),
        }])
        .expect("drop");
    assert_eq!(outcomes, vec![WriteOutcome::Dropped(0)]);
    assert_eq!(store.partitions_held(4).expect("held"), [PartitionId(2)]);
}

#[test]
fn a_data_directory_refuses_another_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), NodeId(1)).expect("open"));
    let error = Store::open(dir.path(), NodeId(2)).expect_err("wrong node");
    assert!(matches!(error, StoreError::WrongNode { .. }), "{error}");
}

#[test]
fn partitions_export_and_drop_as_units() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    store
        .apply(&[
            commit(1, "a", record(1, "a1")),
            commit(1, "b/c", record(1, "b1")),
            commit(2, "a", record(1, "a2")),
            commit(0, "z", record(1, "z0")),
        ])
        .expect("apply");
    let export = store.export_partition(PartitionId(1)).expect("export");
    let keys: Vec<_> = export
        .records
        .iter()
        .map(|r| r.key.as_str().to_owned())
        .collect();
    assert_eq!(keys, ["a", "b/c"]);

    // Importing into another node reproduces the partition exactly.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Store::open(other_dir.path(), NodeId(2)).expect("open");
    let ops: Vec<_> = export
        .records
        .iter()
        .map(|r| WriteOp::import(PartitionId(1), r.clone()))
        .collect();
    other.apply(&ops).expect("import");
    assert_eq!(
        other.export_partition(PartitionId(1)).expect("export"),
        export
    );

    let outcomes = store
        .apply(&[WriteOp::DropPartition(PartitionId(1))])
        .expect("drop");
    assert_eq!(outcomes, vec![WriteOutcome::Dropped(2)]);
    assert!(
        store
            .export_partition(PartitionId(1))
            .expect("export")
            .records
            .is_empty()
    );
    assert_eq!(
        store
            .export_partition(PartitionId(2))
            .expect("export")
            .records
            .len(),
        1
    );
    assert_eq!(
        store
            .export_partition(PartitionId(0))
            .expect("export")
            .records
            .len(),
        1
    );
}

#[test]
fn the_last_possible_partition_is_a_partition_like_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    store
        .apply(&[
            commit(u32::MAX, "k", record(1, "v")),
            commit(u32::MAX - 1, "k", record(1, "v")),
        ])
        .expect("apply");
    assert_eq!(
        store
            .export_partition(PartitionId(u32::MAX))
            .expect("export")
            .records
            .len(),
        1
    );
    let outcomes = store
        .apply(&[WriteOp::DropPartition(PartitionId(u32::MAX))])
        .expect("drop");
    assert_eq!(outcomes, vec![WriteOutcome::Dropped(1)]);
    assert_eq!(
        store
            .export_partition(PartitionId(u32::MAX - 1))
            .expect("export")
            .records
            .len(),
        1
    );
}

#[test]
fn commits_from_an_older_epoch_are_fenced_inside_the_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let at = |epoch: Option<u64>, counter: u64| WriteOp::Commit {
        partition: PartitionId(0),
        epoch: epoch.map(Epoch),
        keyspace: ks(),
        key: key("k"),
        record: record(counter, "v"),
    };
    let outcomes = store
        .apply(&[at(Some(3), 1), at(Some(2), 5), at(None, 6)])
        .expect("apply");
    assert_eq!(outcomes[1], WriteOutcome::Fenced { current: Epoch(3) });
    // An unrouted transfer (import) is not fenced.
    assert!(matches!(
        outcomes[2],
        WriteOutcome::Committed { applied: true, .. }
    ));
    assert_eq!(
        store.partition_epochs().expect("epochs"),
        vec![(PartitionId(0), Epoch(3))]
    );
}

fn eventual() -> KeyspaceName {
    KeyspaceName::parse("carts").expect("name")
}

fn causal_write(k: &str, value: Option<&str>, context: Option<VersionVector>) -> WriteOp {
    WriteOp::CausalWrite {
        partition: PartitionId(2),
        epoch: Epoch(1),
        keyspace: eventual(),
        key: key(k),
        context,
        value: value.map(|v| v.as_bytes().to_vec()),
        hint_for: vec![NodeId(9)],
    }
}

fn merged_state(outcome: &WriteOutcome) -> CausalState {
    match outcome {
        WriteOutcome::Merged { state, .. } => state.clone(),
        other => panic!("expected a merge outcome, got {other:?}"),
    }
}

#[test]
fn a_key_takes_no_more_siblings_than_the_bound_but_a_resolving_write_always() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    // Blind writes that supersede nothing: each adds a sibling.
    let blind = |value: &str| causal_write("k", Some(value), Some(VersionVector::default()));
    let mut last = CausalState::default();
    for i in 0..MAX_KEY_SIBLINGS {
        last = merged_state(&store.apply(&[blind(&format!("v{i}"))]).expect("write")[0]);
    }
    assert_eq!(last.siblings().len(), MAX_KEY_SIBLINGS);
    let refused = store.apply(&[blind("one too many")]).expect("apply");
    assert_eq!(
        refused,
        vec![WriteOutcome::KeyLimit(KeyLimit::Siblings(
            MAX_KEY_SIBLINGS + 1
        ))]
    );
    let held = store
        .read_causal(PartitionId(2), &eventual(), &key("k"))
        .expect("read")
        .expect("held");
    assert_eq!(held, last, "a refused write changes nothing");
    // A write with the context of what was read resolves every sibling.
    let resolved = merged_state(
        &store
            .apply(&[causal_write(
                "k",
                Some("merged"),
                Some(held.context().clone()),
            )])
            .expect("write")[0],
    );
    assert_eq!(resolved.siblings().len(), 1);
}

#[test]
fn a_context_naming_dots_this_node_never_issued_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let written = merged_state(
        &store
            .apply(&[causal_write("k", Some("a"), None)])
            .expect("write")[0],
    );
    let mut forged = written.context().clone();
    forged.add(kvorum_protocol::causal::Dot {
        actor: 1,
        counter: 1 << 50,
    });
    let refused = store
        .apply(&[causal_write("k", Some("b"), Some(forged))])
        .expect("apply");
    assert_eq!(
        refused,
        vec![WriteOutcome::KeyLimit(KeyLimit::ContextAhead(1 << 50, 1))]
    );
    assert_eq!(store.dot_counter().expect("read"), 1, "nothing was issued");
    // The context it really gave out is taken.
    let taken = store
        .apply(&[causal_write(
            "k",
            Some("b"),
            Some(written.context().clone()),
        )])
        .expect("apply");
    assert_eq!(merged_state(&taken[0]).siblings()[0].dot.counter, 2);
}

#[test]
fn a_new_incarnation_issues_dots_from_its_own_range_and_remembers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let first = merged_state(
        &store
            .apply(&[causal_write("k", Some("a"), None)])
            .expect("write")[0],
    );
    assert_eq!(first.siblings()[0].dot.counter, 1);
    assert_eq!(store.incarnation().expect("read"), 0);
    // Incarnation 2: a dot the lost incarnations could have issued is never issued again.
    store
        .apply(&[WriteOp::Incarnation {
            catching_up: true,
            incarnation: Some(2),
        }])
        .expect("record");
    assert!(store.catching_up().expect("read"));
    assert_eq!(store.incarnation().expect("read"), 2);
    assert_eq!(store.dot_counter().expect("read"), 2 << 40);
    let next = merged_state(
        &store
            .apply(&[causal_write("j", Some("b"), None)])
            .expect("write")[0],
    );
    assert_eq!(next.siblings()[0].dot.counter, (2 << 40) + 1);
    // Clearing the flag keeps the incarnation and never lowers the counter.
    store
        .apply(&[WriteOp::Incarnation {
            catching_up: false,
            incarnation: Some(2),
        }])
        .expect("record");
    assert!(!store.catching_up().expect("read"));
    assert_eq!(store.dot_counter().expect("read"), (2 << 40) + 1);
}

#[test]
fn coordinated_writes_take_the_nodes_dots_and_merges_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(3)).expect("open");
    let first = merged_state(
        &store
            .apply(&[causal_write("k", Some("a"), None)])
            .expect("write")[0],
    );
    assert_eq!(first.siblings()[0].dot.actor, 3);
    // A blind write with an empty context keeps the first as a sibling.
    let both = merged_state(
        &store
            .apply(&[causal_write("k", Some("b"), Some(VersionVector::new()))])
            .expect("write")[0],
    );
    assert_eq!(both.siblings().len(), 2);
    assert_eq!(
        store
            .read_causal(PartitionId(2), &eventual(), &key("k"))
            .expect("read"),
        Some(both.clone())
    );
    // A state from another replica joins in; merging it again changes nothing.
    let (theirs, _) = CausalState::empty().write(5, None, Some(b"c".to_vec()), 1);
    let merge = WriteOp::Merge {
        partition: PartitionId(2),
        epoch: Some(Epoch(1)),
        keyspace: eventual(),
        key: key("k"),
        state: theirs.clone(),
    };
    let outcomes = store.apply(&[merge.clone(), merge]).expect("merge");
    assert!(outcomes[0].changed() && !outcomes[1].changed());
    assert_eq!(merged_state(&outcomes[1]), both.join(&theirs));
    // A write with the joined context resolves all three.
    let resolved = merged_state(
        &store
            .apply(&[causal_write(
                "k",
                Some("d"),
                Some(both.join(&theirs).context().clone()),
            )])
            .expect("write")[0],
    );
    assert_eq!(resolved.siblings().len(), 1);
    // Coordinated timestamps stay above what the node has seen.
    assert!(resolved.max_timestamp() > both.max_timestamp());
}

#[test]
fn hints_are_durable_and_cleared_only_while_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        store
            .apply(&[causal_write("k", Some("a"), None)])
            .expect("write");
    }
    let store = Store::open(dir.path(), NodeId(1)).expect("reopen");
    assert_eq!(store.hint_targets().expect("targets"), vec![NodeId(9)]);
    let hints = store.hints_for(NodeId(9), 10).expect("hints");
    assert_eq!(hints.len(), 1);
    assert_eq!((hints[0].target, hints[0].key.as_str()), (NodeId(9), "k"));
    // A newer hint for the same key replaces it: clearing the old one is a no-op.
    store
        .apply(&[WriteOp::StoreHints {
            partition: PartitionId(2),
            keyspace: eventual(),
            key: key("k"),
            targets: vec![NodeId(9)],
        }])
        .expect("hint");
    let outcomes = store
        .apply(&[WriteOp::ClearHint(hints[0].clone())])
        .expect("clear");
    assert_eq!(outcomes, vec![WriteOutcome::Removed(false)]);
    let newer = store.hints_for(NodeId(9), 10).expect("hints");
    store
        .apply(&[WriteOp::ClearHint(newer[0].clone())])
        .expect("clear");
    assert_eq!(store.hint_count().expect("count"), 0);
}

#[test]
fn digests_match_exactly_when_records_match_and_buckets_name_the_difference() {
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Store::open(a_dir.path(), NodeId(1)).expect("open");
    let b = Store::open(b_dir.path(), NodeId(2)).expect("open");
    for i in 0..50 {
        let op = commit(2, &format!("k{i}"), record(1, "v"));
        a.apply(std::slice::from_ref(&op)).expect("a");
        b.apply(&[op]).expect("b");
    }
    assert_eq!(
        a.digest(PartitionId(2)).expect("digest"),
        b.digest(PartitionId(2)).expect("digest")
    );
    b.apply(&[commit(2, "k7", record(2, "newer"))]).expect("b");
    let (da, db) = (
        a.digest(PartitionId(2)).expect("digest"),
        b.digest(PartitionId(2)).expect("digest"),
    );
    let differing: Vec<u32> = (0..da.len())
        .filter(|&i| da[i] != db[i])
        .map(|i| i as u32)
        .collect();
    assert_eq!(differing, vec![digest_bucket(ks().as_str(), "k7") as u32]);
    let exchanged = b
        .export_buckets(PartitionId(2), &differing, None, usize::MAX)
        .expect("bucket")
        .records;
    assert!(exchanged.iter().any(|r| r.key.as_str() == "k7"));
    let ops: Vec<_> = exchanged
        .into_iter()
        .map(|r| WriteOp::import(PartitionId(2), r))
        .collect();
    a.apply(&ops).expect("repair");
    assert_eq!(
        a.digest(PartitionId(2)).expect("digest"),
        b.digest(PartitionId(2)).expect("digest")
    );
}

#[test]
fn a_purge_removes_only_the_exact_lone_tombstone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let live = merged_state(
        &store
            .apply(&[causal_write("k", Some("a"), None)])
            .expect("write")[0],
    );
    let purge = |state: &CausalState| WriteOp::Purge {
        partition: PartitionId(2),
        keyspace: eventual(),
        key: key("k"),
        state: state.clone(),
    };
    assert_eq!(
        store.apply(&[purge(&live)]).expect("purge"),
        vec![WriteOutcome::Removed(false)]
    );
    let tomb = merged_state(
        &store
            .apply(&[causal_write("k", None, None)])
            .expect("delete")[0],
    );
    assert!(tomb.is_deleted());
    assert_eq!(store.deleted_keys(PartitionId(2)).expect("scan").len(), 1);
    assert_eq!(
        store.apply(&[purge(&tomb)]).expect("purge"),
        vec![WriteOutcome::Removed(true)]
    );
    assert_eq!(
        store
            .read_causal(PartitionId(2), &eventual(), &key("k"))
            .expect("read"),
        None
    );
}

fn tombstone(counter: u64) -> Record {
    Record {
        version: Version { counter, writer: 1 },
        value: None,
    }
}

fn v(counter: u64) -> Version {
    Version { counter, writer: 1 }
}

#[test]
fn a_collected_tombstone_keeps_every_older_value_out_and_new_writes_go_above_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let p = PartitionId(0);
    store
        .apply(&[
            commit(0, "gone", record(3, "old")),
            commit(0, "gone", tombstone(4)),
            commit(0, "kept", record(2, "live")),
        ])
        .expect("writes");
    // A seal above the floor is refused: writes prepared before the floor
    // rose could still be on their way with versions below it.
    let seal = |counter| WriteOp::SealStrong {
        partition: p,
        watermark: v(counter),
    };
    assert!(matches!(
        store.apply(&[seal(4)]).expect("seal")[..],
        [WriteOutcome::Floors { sealed: false, .. }]
    ));
    store
        .apply(&[WriteOp::RaiseStrongFloor {
            partition: p,
            floor: v(4),
        }])
        .expect("raise");
    // Prepares of every key now answer at least the floor.
    assert_eq!(
        store
            .prepare_version(p, &ks(), &key("new"))
            .expect("prepare"),
        Some(v(4))
    );
    assert_eq!(
        store
            .prepare_version(p, &ks(), &key("kept"))
            .expect("prepare"),
        Some(v(4))
    );
    assert!(matches!(
        store.apply(&[seal(4)]).expect("seal")[..],
        [WriteOutcome::Floors { sealed: true, .. }]
    ));
    let purge = WriteOp::PurgeStrongTombstone {
        partition: p,
        keyspace: ks(),
        key: key("gone"),
        version: v(4),
    };
    assert_eq!(
        store.apply(&[purge]).expect("purge"),
        vec![WriteOutcome::Removed(true)]
    );
    assert_eq!(store.read(p, &ks(), &key("gone")).expect("read"), None);
    // The value the tombstone deleted, arriving late (a paused router's
    // commit, an old replica's anti-entropy), is refused.
    assert_eq!(
        store
            .apply(&[commit(0, "gone", record(3, "old"))])
            .expect("late"),
        vec![WriteOutcome::BelowWatermark { watermark: v(4) }]
    );
    assert_eq!(store.read(p, &ks(), &key("gone")).expect("read"), None);
    // A late tombstone changes nothing; a write above the watermark lands.
    assert!(matches!(
        store
            .apply(&[commit(0, "gone", tombstone(2))])
            .expect("late")[..],
        [WriteOutcome::Committed { applied: false, .. }]
    ));
    assert!(matches!(
        store
            .apply(&[commit(0, "gone", record(5, "new"))])
            .expect("new")[..],
        [WriteOutcome::Committed { applied: true, .. }]
    ));
    // A key that kept its value is untouched, and other partitions have no watermark.
    assert_eq!(
        store.read(p, &ks(), &key("kept")).expect("read"),
        Some(record(2, "live"))
    );
    assert!(matches!(
        store
            .apply(&[commit(1, "gone", record(3, "old"))])
            .expect("other")[..],
        [WriteOutcome::Committed { applied: true, .. }]
    ));
}

#[test]
fn strong_floors_survive_a_reopen_travel_with_the_first_export_page_and_go_with_the_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = PartitionId(0);
    {
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        store
            .apply(&[
                commit(0, "a", record(1, "x")),
                commit(0, "b", record(1, "y")),
                WriteOp::RaiseStrongFloor {
                    partition: p,
                    floor: v(7),
                },
                WriteOp::SealStrong {
                    partition: p,
                    watermark: v(7),
                },
            ])
            .expect("writes");
    }
    let store = Store::open(dir.path(), NodeId(1)).expect("reopen");
    let floors = StrongFloors {
        floor: Some(v(7)),
        watermark: Some(v(7)),
    };
    assert_eq!(store.strong_floors(p).expect("floors"), floors);
    let first = store.export_page(p, None, 1, usize::MAX).expect("page");
    assert!(first.next.is_some());
    assert_eq!(first.strong_floors, Some(floors));
    // A watermark sealed while the pages are read (over a record that reached
    // this node after its page went out, say) is not what the export
    // vouches for: the floors are the first page's, read in its snapshot.
    store
        .apply(&[
            WriteOp::RaiseStrongFloor {
                partition: p,
                floor: v(9),
            },
            WriteOp::SealStrong {
                partition: p,
                watermark: v(9),
            },
        ])
        .expect("a later seal");
    let cursor = first.next.clone().expect("cursor");
    let last = store
        .export_page(p, Some((&cursor.keyspace, &cursor.key)), 1, usize::MAX)
        .expect("page");
    assert_eq!(last.next, None);
    let later = last.strong_floors.expect("every page carries them");
    assert_eq!(
        later.watermark,
        Some(v(9)),
        "read in the last page's snapshot"
    );
    assert!(
        later.keeps(&floors),
        "a watermark that rose keeps the first's promise"
    );
    // A copy made into a new replica: records first, then the floors.
    let other = tempfile::tempdir().expect("tempdir");
    let copy = Store::open(other.path(), NodeId(2)).expect("open");
    let mut ops: Vec<WriteOp> = first
        .records
        .into_iter()
        .chain(last.records)
        .map(|r| WriteOp::import(p, r))
        .collect();
    ops.push(WriteOp::AdoptStrongFloors {
        partition: p,
        floors,
    });
    let outcomes = copy.apply(&ops).expect("import");
    assert!(
        outcomes[..2].iter().all(WriteOutcome::changed),
        "{outcomes:?}"
    );
    assert_eq!(copy.strong_floors(p).expect("floors"), floors);
    // A checkpoint holds them too.
    let checkpoint = dir.path().join("copy.redb");
    store.copy_to(&checkpoint).expect("copy");
    drop(store);
    std::fs::rename(&checkpoint, dir.path().join(DATABASE_FILE)).expect("restore");
    let restored = Store::open(dir.path(), NodeId(1)).expect("open");
    assert_eq!(
        restored.strong_floors(p).expect("floors"),
        StrongFloors {
            floor: Some(v(9)),
            watermark: Some(v(9)),
        }
    );
    // Dropping the partition forgets them: whoever takes it again adopts its
    // source's, and an export read across the drop shows it.
    let before_drop = restored
        .export_page(p, None, 1, usize::MAX)
        .expect("page")
        .strong_floors
        .expect("floors");
    restored.apply(&[WriteOp::DropPartition(p)]).expect("drop");
    assert_eq!(
        restored.strong_floors(p).expect("floors"),
        StrongFloors::default()
    );
    let after_drop = restored
        .export_page(p, Some((&cursor.keyspace, &cursor.key)), 1, usize::MAX)
        .expect("page");
    assert!(after_drop.records.is_empty());
    assert!(
        !after_drop
            .strong_floors
            .expect("floors")
            .keeps(&before_drop),
        "pages read after a drop must not vouch for the first page's watermark"
    );
}

#[test]
fn the_strong_digest_counts_strong_records_at_or_below_its_bound_per_keyspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let p = PartitionId(0);
    let other = KeyspaceName::parse("other").expect("keyspace");
    store
        .apply(&[
            commit(0, "a", record(2, "x")),
            commit(0, "b", tombstone(3)),
            commit(0, "c", record(9, "z")),
            WriteOp::Commit {
                partition: p,
                epoch: Some(Epoch(1)),
                keyspace: other.clone(),
                key: key("a"),
                record: record(1, "o"),
            },
        ])
        .expect("writes");
    let summary = |upto, ignore| store.strong_digest(p, v(upto), ignore).expect("digest");
    let below = summary(3, None);
    let default = below[ks().as_str()];
    assert_eq!((default.records, default.tombstones), (2, 1));
    assert_eq!(below[other.as_str()].records, 1);
    let all = summary(9, None)[ks().as_str()];
    assert_eq!((all.records, all.tombstones), (3, 1));
    assert_ne!(default.digest, all.digest);
    // Tombstones every replica has sealed may be gone here and not there: left out.
    let sealed = summary(3, Some(v(3)))[ks().as_str()];
    assert_eq!((sealed.records, sealed.tombstones), (1, 0));
    // A newer write above the bound leaves the summary below it alone.
    store
        .apply(&[commit(0, "d", record(10, "w"))])
        .expect("write");
    assert_eq!(summary(3, None), below);
    assert_eq!(
        store
            .strong_tombstones(p, v(9))
            .expect("tombstones")
            .into_iter()
            .map(|(_, k, version)| (k.as_str().to_owned(), version))
            .collect::<Vec<_>>(),
        vec![("b".to_owned(), v(3))]
    );
    assert_eq!(store.strong_tombstone_count().expect("count"), 1);
}

#[test]
fn a_catch_up_finds_the_values_whose_keys_its_source_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), NodeId(1)).expect("open");
    let p = PartitionId(0);
    store
        .apply(&[
            commit(0, "collected", record(3, "old")),
            commit(0, "kept", record(2, "live")),
            commit(0, "newer", record(12, "new")),
        ])
        .expect("writes");
    let present = std::collections::BTreeSet::from([(ks(), key("kept"))]);
    let stale = store
        .strong_values_missing_from(p, v(10), &present)
        .expect("stale");
    // "newer" is above the source's watermark: written since, not collected.
    assert_eq!(stale, vec![(ks(), key("collected"), v(3))]);
    let drop = |version, below| WriteOp::DropStaleStrongValue {
        partition: p,
        keyspace: ks(),
        key: key("collected"),
        version: v(version),
        below: v(below),
    };
    // Only the exact value, and only at or below the source's watermark.
    assert_eq!(
        store.apply(&[drop(4, 10), drop(3, 2)]).expect("drop"),
        vec![WriteOutcome::Removed(false), WriteOutcome::Removed(false)]
    );
    assert_eq!(
        store.apply(&[drop(3, 10)]).expect("drop"),
        vec![WriteOutcome::Removed(true)]
    );
    assert_eq!(store.read(p, &ks(), &key("collected")).expect("read"), None);
    assert_eq!(
        store.read(p, &ks(), &key("kept")).expect("read"),
        Some(record(2, "live"))
    );
}
