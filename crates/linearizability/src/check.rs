//! Checking a whole history: split per key, search each, and cut a failure down to a small piece.

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::history::{KeyedHistory, Operation, Outcome};
use crate::model::Model;
use crate::model::ModelOperation;
use crate::search::search;

/// The smallest piece of one key's history found not to be linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counterexample<K, I, O> {
    /// The key.
    pub key: K,
    /// Its operations, in invocation order; operations that had not returned by
    /// the end of the piece are marked unknown.
    pub operations: Vec<Operation<I, O>>,
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<K, I, O> {
    /// Keys checked.
    pub keys: usize,
    /// Keys whose history is not linearizable.
    pub failed_keys: Vec<K>,
    /// Keys left undecided because another key had already failed and theirs
    /// needed a long search (a verdict needs only one failure).
    pub undecided_keys: Vec<K>,
    /// A small non-linearizable piece of the first failing key's history.
    pub counterexample: Option<Counterexample<K, I, O>>,
}

impl<K, I, O> Verdict<K, I, O> {
    /// Whether every key's history is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.failed_keys.is_empty() && self.undecided_keys.is_empty()
    }
}

/// States explored per key in the first round; each round multiplies it by four.
const FIRST_BUDGET: usize = 10_000;
/// Once some key has failed, undecided keys are not searched beyond this.
const BUDGET_AFTER_A_FAILURE: usize = 160_000;
/// States one probe of the counterexample search may explore.
const SHRINK_BUDGET: usize = 200_000;

/// Checks a history of independent keys: each key's operations separately
/// (linearizability is compositional, Herlihy and Wing 1990, so the whole is
/// linearizable exactly when every key is).
///
/// Keys are searched in rounds with a growing budget of explored states, so a
/// key that fails quickly is found even when another needs a long search (a
/// failing search must exhaust its space, and some do so only slowly).
pub fn check_per_key<M, K>(
    model: &M,
    history: &KeyedHistory<K, M::Input, M::Output>,
) -> Verdict<K, M::Input, M::Output>
where
    M: Model,
    M::Input: Clone + PartialEq,
    M::Output: Clone + PartialEq,
    K: Ord + Clone + Debug,
{
    let mut by_key: BTreeMap<&K, Vec<&ModelOperation<M>>> = BTreeMap::new();
    for (key, op) in history {
        by_key.entry(key).or_default().push(op);
    }
    let keys = by_key.len();
    let mut undecided: Vec<(&K, Vec<&ModelOperation<M>>)> = by_key.into_iter().collect();
    let mut failed = Vec::new();
    let mut budget = FIRST_BUDGET;
    while !undecided.is_empty() && (failed.is_empty() || budget <= BUDGET_AFTER_A_FAILURE) {
        let mut still = Vec::new();
        for (key, operations) in undecided {
            match search(model, &operations, budget) {
                Some(true) => {}
                Some(false) => failed.push((key, operations)),
                None => still.push((key, operations)),
            }
        }
        undecided = still;
        budget = budget.saturating_mul(4);
    }
    let counterexample = failed.first().map(|(key, operations)| Counterexample {
        key: (*key).clone(),
        operations: smallest_failing_piece(model, operations),
    });
    Verdict {
        keys,
        failed_keys: failed.into_iter().map(|(key, _)| key.clone()).collect(),
        undecided_keys: undecided.into_iter().map(|(key, _)| key.clone()).collect(),
        counterexample,
    }
}

/// The operations of the history up to time `until`: later invocations are
/// dropped, and operations that had not returned by then become unknown.
fn prefix<I: Clone, O: Clone>(operations: &[&Operation<I, O>], until: u64) -> Vec<Operation<I, O>> {
    operations
        .iter()
        .filter(|op| op.invoked <= until)
        .map(|op| {
            let mut op = (*op).clone();
            if op.returned() > until {
                op.outcome = Outcome::Unknown;
            }
            op
        })
        .collect()
}

/// Whether a piece is linearizable, for shrinking: a search that runs out of
/// budget counts as linearizable, so only pieces proven to fail are kept.
fn linearizable<M: Model>(model: &M, operations: &[Operation<M::Input, M::Output>]) -> bool {
    let refs: Vec<_> = operations.iter().collect();
    search(model, &refs, SHRINK_BUDGET) != Some(false)
}

/// The largest piece [`shrink`] works on; beyond it, only the prefix cut applies.
const SHRINK_LIMIT: usize = 256;

/// Cuts a non-linearizable history down: first to the shortest failing prefix
/// in time (binary search: a prefix with pending operations left unknown is
/// only more permissive, so failures are monotone in the prefix), then, if it
/// is small enough, by dropping what the failure does not need.
fn smallest_failing_piece<M>(
    model: &M,
    operations: &[&Operation<M::Input, M::Output>],
) -> Vec<Operation<M::Input, M::Output>>
where
    M: Model,
    M::Input: Clone + PartialEq,
    M::Output: Clone + PartialEq,
{
    let mut times: Vec<u64> = operations
        .iter()
        .flat_map(|op| [op.invoked, op.returned()])
        .collect();
    times.sort_unstable();
    times.dedup();
    let (mut passing, mut failing) = (0usize, times.len() - 1);
    while failing - passing > 1 {
        let middle = passing + (failing - passing) / 2;
        if linearizable(model, &prefix(operations, times[middle])) {
            passing = middle;
        } else {
            failing = middle;
        }
    }
    let mut piece = prefix(operations, times[failing]);
    if linearizable(model, &piece) {
        // The monotonicity argument failed to hold; fall back to the whole history.
        piece = operations.iter().map(|op| (*op).clone()).collect();
    }
    if piece.len() <= SHRINK_LIMIT {
        piece = shrink(model, piece);
    }
    piece.sort_by_key(|op| op.invoked);
    piece
}

/// Drops every operation the failure does not need, one at a time.
///
/// Reads are dropped outright. A write that no remaining read observed is
/// dropped too; a write that some read observed is only made unknown (dropping
/// it would leave that read unexplained, a different and misleading failure).
/// Both moves only make the piece more permissive, so each kept result still
/// fails for the original reason.
fn shrink<M>(
    model: &M,
    mut piece: Vec<Operation<M::Input, M::Output>>,
) -> Vec<Operation<M::Input, M::Output>>
where
    M: Model,
    M::Input: Clone + PartialEq,
    M::Output: Clone + PartialEq,
{
    // Dropping a read can free a write it observed, so repeat until nothing changes.
    loop {
        let before = piece.clone();
        piece = shrink_pass(model, piece);
        if piece == before {
            return piece;
        }
    }
}

fn shrink_pass<M>(
    model: &M,
    mut piece: Vec<Operation<M::Input, M::Output>>,
) -> Vec<Operation<M::Input, M::Output>>
where
    M: Model,
    M::Input: Clone + PartialEq,
    M::Output: Clone + PartialEq,
{
    // Reads first: each one dropped can leave a write unobserved, and an
    // unobserved write can be dropped rather than made unknown (many unknown
    // writes would make the search itself exponential).
    let mut index = 0;
    while index < piece.len() {
        if model.is_read_only(&piece[index].input) {
            let mut candidate = piece.clone();
            candidate.remove(index);
            if !linearizable(model, &candidate) {
                piece = candidate;
                continue;
            }
        }
        index += 1;
    }
    let mut index = 0;
    while index < piece.len() {
        let op = &piece[index];
        if model.is_read_only(&op.input) {
            index += 1;
            continue;
        }
        let observed = piece.iter().any(|other| {
            model.is_read_only(&other.input)
                && other
                    .output()
                    .is_some_and(|seen| model.observes(&other.input, seen, &op.input))
        });
        let mut candidate = piece.clone();
        if !observed {
            candidate.remove(index);
            if !linearizable(model, &candidate) {
                piece = candidate;
                continue;
            }
        } else if !matches!(candidate[index].outcome, Outcome::Unknown) {
            candidate[index].outcome = Outcome::Unknown;
            if !linearizable(model, &candidate) {
                piece = candidate;
            }
        }
        index += 1;
    }
    piece
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Register, RegisterInput};

    type Op = Operation<RegisterInput, Option<Vec<u8>>>;

    fn put(value: &str, invoked: u64, at: u64) -> Op {
        Operation {
            client: 0,
            input: RegisterInput::Put(value.as_bytes().to_vec()),
            invoked,
            outcome: Outcome::Returned { output: None, at },
        }
    }

    fn get(seen: Option<&str>, invoked: u64, at: u64) -> Op {
        let output = seen.map(|s| s.as_bytes().to_vec());
        Operation {
            client: 1,
            input: RegisterInput::Get,
            invoked,
            outcome: Outcome::Returned { output, at },
        }
    }

    #[test]
    fn keys_are_checked_independently_and_the_failing_one_is_named() {
        let history = vec![
            ("a", put("1", 0, 1)),
            ("b", put("1", 0, 1)),
            ("a", get(Some("1"), 2, 3)),
            ("b", get(Some("2"), 2, 3)),
        ];
        let verdict = check_per_key(&Register, &history);
        assert_eq!(verdict.keys, 2);
        assert_eq!(verdict.failed_keys, vec!["b"]);
        assert!(!verdict.is_linearizable());
    }

    #[test]
    fn the_counterexample_keeps_only_what_the_failure_needs() {
        let mut history = Vec::new();
        // Fifty fine operations, then a stale read, then fifty more.
        for i in 0..50 {
            history.push(("k", put(&i.to_string(), i * 10, i * 10 + 1)));
            history.push(("k", get(Some(&i.to_string()), i * 10 + 2, i * 10 + 3)));
        }
        history.push(("k", get(Some("3"), 600, 601)));
        for i in 70..120 {
            history.push(("k", put(&i.to_string(), i * 10, i * 10 + 1)));
        }
        let verdict = check_per_key(&Register, &history);
        let counterexample = verdict.counterexample.expect("a counterexample");
        // The stale read, the write it saw, and the completed write it missed.
        let ops = &counterexample.operations;
        assert_eq!(ops.len(), 3, "{ops:#?}");
        assert_eq!(ops[0], put("3", 30, 31));
        assert_eq!(ops[1].input, RegisterInput::Put(b"49".to_vec()));
        assert_eq!(ops[2], get(Some("3"), 600, 601));
    }
}
