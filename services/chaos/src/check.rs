//! The checkers, free of I/O: linearizability of strong keys, acknowledged writes
//! that disappeared, and whether the run had enough traffic to mean anything.

use std::collections::{BTreeMap, BTreeSet};

use kvorum_linearizability::check_per_key;
use kvorum_linearizability::history::{Operation, Outcome};
use kvorum_linearizability::model::{Register, RegisterInput};
use serde::{Deserialize, Serialize};

use crate::history::{FaultRecord, Op, OpKind, Status};

/// A strong key whose history is not linearizable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The keyspace.
    pub keyspace: String,
    /// The key.
    pub key: String,
    /// The smallest piece of its history that cannot be linearized, one operation per line.
    pub operations: Vec<String>,
    /// The traces of those operations, where the router recorded one.
    pub trace_ids: Vec<String>,
}

/// An acknowledged write that the end state does not hold, and cannot have been overwritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The keyspace.
    pub keyspace: String,
    /// The key.
    pub key: String,
    /// The value written (`None` for a delete).
    pub value: Option<String>,
    /// When it was acknowledged.
    pub complete_ms: f64,
    /// Why it counts as lost.
    pub reason: String,
    /// Its trace, when recorded.
    pub trace_id: Option<String>,
}

/// One strong operation as the checker sees it, keyed by (keyspace, key).
type RegisterOp = ((String, String), Operation<RegisterInput, Option<Vec<u8>>>);

fn nanos(ms: f64) -> u64 {
    (ms.max(0.0) * 1e6) as u64
}

/// The operation as the linearizability checker sees it, or `None` when it
/// certainly had no effect (a failed write, a failed read).
fn as_register(index: usize, op: &Op) -> Option<Operation<RegisterInput, Option<Vec<u8>>>> {
    let input = match op.kind {
        OpKind::Read => RegisterInput::Get,
        OpKind::Delete => RegisterInput::Delete,
        OpKind::Write => RegisterInput::Put(op.value.clone()?.into_bytes()),
    };
    let outcome = match (op.status, op.kind) {
        (Status::Fail, _) => return None,
        (Status::Unknown, OpKind::Read) => return None,
        (Status::Unknown, _) => Outcome::Unknown,
        (Status::Ok, OpKind::Read) => Outcome::Returned {
            output: if op.found {
                op.observed
                    .as_ref()
                    .and_then(|values| values.first())
                    .map(|v| v.clone().into_bytes())
            } else {
                None
            },
            at: nanos(op.complete_ms),
        },
        (Status::Ok, _) => Outcome::Returned {
            output: None,
            at: nanos(op.complete_ms),
        },
    };
    Some(Operation {
        // The index, so a counterexample leads back to the recorded operation.
        client: index as u64,
        input,
        invoked: nanos(op.invoke_ms),
        outcome,
    })
}

/// One recorded operation as a line a person can read.
pub fn describe(op: &Op) -> String {
    let what = match op.kind {
        OpKind::Write => format!("put {:?}", op.value.as_deref().unwrap_or_default()),
        OpKind::Delete => "delete".to_owned(),
        OpKind::Read => "get".to_owned(),
    };
    let seen = match (op.kind, op.status, op.found) {
        (OpKind::Read, Status::Ok, true) => {
            format!(" -> {:?}", op.observed.clone().unwrap_or_default())
        }
        (OpKind::Read, Status::Ok, false) => " -> not found".to_owned(),
        _ => String::new(),
    };
    let end = match op.status {
        Status::Ok => format!("{:.1} ms", op.complete_ms),
        Status::Fail => format!("{:.1} ms, failed", op.complete_ms),
        Status::Unknown => "outcome unknown".to_owned(),
    };
    format!(
        "client {} {what}{seen} [{:.1} ms .. {end}]",
        op.client, op.invoke_ms
    )
}

/// Checks every key of the strong keyspaces' history; returns the anomalies
/// (at most one counterexample, the checker's smallest piece) and the keys left undecided.
pub fn linearizability(ops: &[Op], strong: &[String]) -> (Vec<Anomaly>, Vec<String>) {
    let history: Vec<RegisterOp> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| strong.contains(&op.keyspace))
        .filter_map(|(i, op)| {
            as_register(i, op).map(|r| ((op.keyspace.clone(), op.key.clone()), r))
        })
        .collect();
    let verdict = check_per_key(&Register, &history);
    let mut anomalies = Vec::new();
    for failed in &verdict.failed_keys {
        // The checker cuts down one failing key; each other one is checked
        // alone so that it gets its own smallest piece too.
        let piece = match verdict.counterexample.as_ref().filter(|c| &c.key == failed) {
            Some(piece) => Some(piece.clone()),
            None => {
                let alone: Vec<RegisterOp> = history
                    .iter()
                    .filter(|(k, _)| k == failed)
                    .cloned()
                    .collect();
                check_per_key(&Register, &alone).counterexample
            }
        };
        let recorded: Vec<&Op> = piece
            .map(|c| {
                c.operations
                    .iter()
                    .filter_map(|o| ops.get(o.client as usize))
                    .collect()
            })
            .unwrap_or_default();
        let (keyspace, key) = failed;
        anomalies.push(Anomaly {
            keyspace: keyspace.clone(),
            key: key.clone(),
            operations: recorded.iter().map(|op| describe(op)).collect(),
            trace_ids: recorded
                .iter()
                .filter_map(|op| op.trace_id.clone())
                .collect(),
        });
    }
    let undecided = verdict
        .undecided_keys
        .iter()
        .map(|(keyspace, key)| format!("{keyspace}/{key}"))
        .collect();
    (anomalies, undecided)
}

/// Acknowledged strong writes the final state contradicts.
///
/// `finals` maps (keyspace, key) to the value a read at ALL found after every
/// fault healed (`None`: not found). The write that produced it is X; an
/// acknowledged write W is lost when X completed before W was invoked (X cannot
/// have overwritten W), and, for a final "not found", when every delete
/// completed before W was invoked.
pub fn lost_strong_writes(
    ops: &[Op],
    finals: &BTreeMap<(String, String), Option<String>>,
) -> Vec<LostWrite> {
    let mut lost = Vec::new();
    for ((keyspace, key), last) in finals {
        let on_key: Vec<&Op> = ops
            .iter()
            .filter(|op| &op.keyspace == keyspace && &op.key == key && op.kind != OpKind::Read)
            .collect();
        let ended = |op: &Op| match op.status {
            Status::Ok => op.complete_ms,
            _ => f64::INFINITY,
        };
        // The latest moment the operation behind the final state can have taken effect.
        let explained_until = match last {
            Some(value) => on_key
                .iter()
                .filter(|op| {
                    op.kind == OpKind::Write
                        && op.status != Status::Fail
                        && op.value.as_ref() == Some(value)
                })
                .map(|op| ended(op))
                .fold(None, |acc: Option<f64>, t| {
                    Some(acc.map_or(t, |a| a.max(t)))
                }),
            None => Some(
                on_key
                    .iter()
                    .filter(|op| op.kind == OpKind::Delete && op.status != Status::Fail)
                    .map(|op| ended(op))
                    .fold(f64::NEG_INFINITY, f64::max),
            ),
        };
        let Some(explained_until) = explained_until else {
            lost.push(LostWrite {
                keyspace: keyspace.clone(),
                key: key.clone(),
                value: last.clone(),
                complete_ms: 0.0,
                reason: "the final value was never written by any client".to_owned(),
                trace_id: None,
            });
            continue;
        };
        for op in on_key.iter().filter(|op| op.is_acknowledged_write()) {
            let same = op.kind == OpKind::Write && op.value == *last;
            if !same
                && op.invoke_ms > explained_until
                && !(op.kind == OpKind::Delete && last.is_none())
            {
                lost.push(LostWrite {
                    keyspace: keyspace.clone(),
                    key: key.clone(),
                    value: op.value.clone(),
                    complete_ms: op.complete_ms,
                    reason: format!(
                        "acknowledged at {:.1} ms, but the final state {} comes from an operation that ended by {:.1} ms, before this one began",
                        op.complete_ms,
                        last.as_deref().map_or("(not found)".to_owned(), |v| format!("{v:?}")),
                        explained_until
                    ),
                    trace_id: op.trace_id.clone(),
                });
            }
        }
    }
    lost
}

/// Acknowledged eventual writes missing from the final siblings of their key.
///
/// The eventual workload writes unique values into a `siblings` keyspace,
/// blindly or with the context of a read just before (resolving the siblings
/// that read saw, as a real client would). A value may leave the final
/// siblings only because a write that may have landed (acknowledged, or of
/// unknown outcome) superseded it; every other acknowledged value must still
/// be there once the replicas have converged.
pub fn lost_eventual_writes(
    ops: &[Op],
    finals: &BTreeMap<(String, String), Vec<String>>,
) -> Vec<LostWrite> {
    let superseded: BTreeSet<(&str, &str, &str)> = ops
        .iter()
        .filter(|op| op.kind == OpKind::Write && op.status != Status::Fail)
        .flat_map(|op| {
            op.supersedes
                .iter()
                .map(|v| (op.keyspace.as_str(), op.key.as_str(), v.as_str()))
        })
        .collect();
    ops.iter()
        .filter(|op| op.kind == OpKind::Write && op.status == Status::Ok)
        .filter_map(|op| {
            let present = finals.get(&(op.keyspace.clone(), op.key.clone()))?;
            let value = op.value.clone()?;
            let accounted = present.contains(&value)
                || superseded.contains(&(op.keyspace.as_str(), op.key.as_str(), value.as_str()));
            (!accounted).then(|| LostWrite {
                keyspace: op.keyspace.clone(),
                key: op.key.clone(),
                value: Some(value),
                complete_ms: op.complete_ms,
                reason: "acknowledged, but not among the key's final siblings".to_owned(),
                trace_id: op.trace_id.clone(),
            })
        })
        .collect()
}

/// How operations fared while the faults of one kind were in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultImpact {
    /// The fault kind.
    pub kind: String,
    /// Faults of that kind.
    pub faults: usize,
    /// Operations in flight at some moment while one of them was in force.
    pub operations: usize,
    /// Of those, the ones that failed.
    pub failed: usize,
    /// Of those, the ones whose outcome is unknown.
    pub unknown: usize,
}

/// Per fault kind, in the order kinds first occur: the operations whose span
/// overlaps one of its faults (a fault never healed lasts until `end_ms`).
pub fn impact_by_kind(ops: &[Op], faults: &[FaultRecord], end_ms: f64) -> Vec<FaultImpact> {
    let mut kinds: Vec<&str> = Vec::new();
    for fault in faults {
        if !kinds.contains(&fault.kind.as_str()) {
            kinds.push(&fault.kind);
        }
    }
    kinds
        .into_iter()
        .map(|kind| {
            let windows: Vec<(f64, f64)> = faults
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| (f.start_ms, f.end_ms.unwrap_or(end_ms)))
                .collect();
            let during: Vec<&Op> = ops
                .iter()
                .filter(|op| {
                    windows
                        .iter()
                        .any(|(start, stop)| op.invoke_ms <= *stop && op.complete_ms >= *start)
                })
                .collect();
            FaultImpact {
                kind: kind.to_owned(),
                faults: windows.len(),
                operations: during.len(),
                failed: during.iter().filter(|o| o.status == Status::Fail).count(),
                unknown: during
                    .iter()
                    .filter(|o| o.status == Status::Unknown)
                    .count(),
            }
        })
        .collect()
}

/// Successful operations completed before `until_ms`.
pub fn successes_before(ops: &[Op], until_ms: f64) -> usize {
    ops.iter()
        .filter(|op| op.status == Status::Ok && op.complete_ms < until_ms)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, kind: OpKind, value: Option<&str>, at: (f64, f64), status: Status) -> Op {
        Op {
            client,
            keyspace: "s".into(),
            key: "k".into(),
            kind,
            value: value.filter(|_| kind == OpKind::Write).map(Into::into),
            observed: value
                .filter(|_| kind == OpKind::Read)
                .map(|v| vec![v.to_owned()]),
            found: kind == OpKind::Read && value.is_some(),
            invoke_ms: at.0,
            complete_ms: at.1,
            status,
            error: None,
            trace_id: Some(format!("t{client}")),
            supersedes: Vec::new(),
        }
    }

    fn strong() -> Vec<String> {
        vec!["s".to_owned()]
    }

    #[test]
    fn a_linearizable_history_passes_and_a_stale_read_is_an_anomaly_with_its_traces() {
        let good = vec![
            op(1, OpKind::Write, Some("a"), (0.0, 1.0), Status::Ok),
            op(2, OpKind::Read, Some("a"), (2.0, 3.0), Status::Ok),
            op(1, OpKind::Write, Some("b"), (4.0, 5.0), Status::Unknown),
            op(2, OpKind::Read, Some("a"), (6.0, 7.0), Status::Ok),
        ];
        assert!(linearizability(&good, &strong()).0.is_empty());
        let mut stale = good.clone();
        stale[2].status = Status::Ok;
        let (anomalies, _) = linearizability(&stale, &strong());
        assert_eq!(anomalies.len(), 1);
        assert!(
            anomalies[0].trace_ids.contains(&"t2".to_owned()),
            "{anomalies:?}"
        );
        assert!(
            anomalies[0]
                .operations
                .iter()
                .any(|l| l.contains("put \"b\""))
        );
    }

    #[test]
    fn an_acknowledged_write_missing_at_the_end_is_lost_unless_something_later_explains_it() {
        let ops = vec![
            op(1, OpKind::Write, Some("a"), (0.0, 1.0), Status::Ok),
            op(2, OpKind::Write, Some("b"), (2.0, 3.0), Status::Ok),
            op(3, OpKind::Write, Some("c"), (2.5, 9.0), Status::Unknown),
        ];
        let finals = |v: Option<&str>| {
            BTreeMap::from([(("s".to_owned(), "k".to_owned()), v.map(Into::into))])
        };
        assert!(lost_strong_writes(&ops, &finals(Some("b"))).is_empty());
        // "c" may have landed after "b": nothing lost.
        assert!(lost_strong_writes(&ops, &finals(Some("c"))).is_empty());
        // "a" ended before "b" began: "b" was lost.
        let lost = lost_strong_writes(&ops, &finals(Some("a")));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].value.as_deref(), Some("b"));
        // Not found with no delete at all: both acknowledged writes are lost.
        assert_eq!(lost_strong_writes(&ops, &finals(None)).len(), 2);
        // A value nobody wrote is reported too.
        assert_eq!(lost_strong_writes(&ops, &finals(Some("zz"))).len(), 1);
        let mut with_delete = ops.clone();
        with_delete.push(op(4, OpKind::Delete, None, (3.5, 4.0), Status::Ok));
        assert!(lost_strong_writes(&with_delete, &finals(None)).is_empty());
    }

    #[test]
    fn eventual_writes_must_all_be_among_the_final_siblings() {
        let mut ops = vec![
            op(1, OpKind::Write, Some("a"), (0.0, 1.0), Status::Ok),
            op(2, OpKind::Write, Some("b"), (0.0, 1.0), Status::Ok),
            op(3, OpKind::Write, Some("c"), (0.0, 1.0), Status::Unknown),
        ];
        for o in &mut ops {
            o.keyspace = "e".into();
        }
        let finals = BTreeMap::from([(("e".to_owned(), "k".to_owned()), vec!["a".to_owned()])]);
        let lost = lost_eventual_writes(&ops, &finals);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].value.as_deref(), Some("b"));
    }

    #[test]
    fn an_eventual_write_may_leave_only_when_a_write_that_may_have_landed_superseded_it() {
        let resolving = |value: &str, status: Status| {
            let mut o = op(2, OpKind::Write, Some(value), (2.0, 3.0), status);
            o.supersedes = vec!["a".to_owned()];
            o
        };
        let blind = op(1, OpKind::Write, Some("a"), (0.0, 1.0), Status::Ok);
        let finals = |values: &[&str]| {
            BTreeMap::from([(
                ("s".to_owned(), "k".to_owned()),
                values.iter().map(|v| (*v).to_owned()).collect(),
            )])
        };
        // Resolved by an acknowledged write, or one that may have landed: not lost.
        let ops = vec![blind.clone(), resolving("b", Status::Ok)];
        assert!(lost_eventual_writes(&ops, &finals(&["b"])).is_empty());
        let ops = vec![blind.clone(), resolving("b", Status::Unknown)];
        assert!(lost_eventual_writes(&ops, &finals(&[])).is_empty());
        // The resolving write failed for certain: "a" had to stay.
        let ops = vec![blind.clone(), resolving("b", Status::Fail)];
        let lost = lost_eventual_writes(&ops, &finals(&[]));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].value.as_deref(), Some("a"));
        // The acknowledged resolving write must itself be there.
        let ops = vec![blind, resolving("b", Status::Ok)];
        let lost = lost_eventual_writes(&ops, &finals(&["a"]));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].value.as_deref(), Some("b"));
    }

    #[test]
    fn only_successes_before_the_first_fault_count_towards_validity() {
        let ops = vec![
            op(1, OpKind::Write, Some("a"), (0.0, 1.0), Status::Ok),
            op(1, OpKind::Write, Some("b"), (1.0, 2.0), Status::Fail),
            op(1, OpKind::Write, Some("c"), (5.0, 6.0), Status::Ok),
        ];
        assert_eq!(successes_before(&ops, 5.5), 1);
    }

    #[test]
    fn operations_count_under_every_fault_kind_they_overlap() {
        let fault = |kind: &str, start_ms, end_ms| FaultRecord {
            kind: kind.into(),
            target: "x".into(),
            start_ms,
            end_ms,
            kill: false,
        };
        let faults = [
            fault("partition-halves", 10.0, Some(20.0)),
            fault("kill-storage", 30.0, Some(40.0)),
            fault("partition-halves", 50.0, None),
        ];
        let ops = vec![
            op(1, OpKind::Write, Some("a"), (0.0, 5.0), Status::Ok),
            op(1, OpKind::Write, Some("b"), (8.0, 12.0), Status::Unknown),
            op(2, OpKind::Read, None, (15.0, 35.0), Status::Fail),
            op(2, OpKind::Read, None, (41.0, 45.0), Status::Ok),
            op(3, OpKind::Write, Some("c"), (60.0, 61.0), Status::Ok),
        ];
        let impact = impact_by_kind(&ops, &faults, 100.0);
        assert_eq!(
            impact,
            [
                FaultImpact {
                    kind: "partition-halves".into(),
                    faults: 2,
                    operations: 3,
                    failed: 1,
                    unknown: 1,
                },
                FaultImpact {
                    kind: "kill-storage".into(),
                    faults: 1,
                    operations: 1,
                    failed: 1,
                    unknown: 0,
                },
            ]
        );
    }
}
