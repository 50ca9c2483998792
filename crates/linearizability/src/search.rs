//! Wing and Gong's search for a linearization, with Lowe's memoisation.
//!
//! The history becomes a list of call and return entries in real-time order.
//! The search walks it, tentatively linearizing each operation whose call it
//! meets (if the model allows the operation's output in the current state) and
//! removing the operation's two entries from the list; meeting a return entry
//! means the operation it ends should already have been linearized, so the
//! search backtracks. Lowe's improvement remembers every (set of linearized
//! operations, state) pair already explored, which turns the exponential
//! search into one that is fast on realistic histories.
//!
//! An operation with an unknown outcome gets a return entry after every other
//! entry and accepts any output (Porcupine's treatment): it may be linearized
//! at any point after its call, including at the very end, where it affects
//! nobody; that is exactly "it may or may not have taken effect".

use std::collections::HashSet;

use crate::history::Operation;
use crate::model::Model;

const NONE: usize = usize::MAX;

/// A set of operation indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn clear(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// The entries of a history as a doubly linked list that supports removing an
/// operation and restoring it in LIFO order (Knuth's dancing links).
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation it belongs to.
    operation: Vec<usize>,
    /// For a call node: its return node; `NONE` for return nodes.
    return_of: Vec<usize>,
}

impl Entries {
    /// Node 0 is the head; nodes 1.. are the entries in real-time order.
    fn new<I, O>(operations: &[&Operation<I, O>]) -> Self {
        // (time, is_return, operation): calls sort before returns at equal times,
        // which treats such operations as concurrent (the permissive reading).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(operations.len() * 2);
        for (index, op) in operations.iter().enumerate() {
            events.push((op.invoked, false, index));
            events.push((op.returned(), true, index));
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut entries = Self {
            next: (1..=nodes)
                .map(|n| if n == nodes { NONE } else { n })
                .collect(),
            prev: (0..nodes)
                .map(|n| if n == 0 { NONE } else { n - 1 })
                .collect(),
            operation: vec![NONE; nodes],
            return_of: vec![NONE; nodes],
        };
        let mut call_node = vec![NONE; operations.len()];
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let node = position + 1;
            entries.operation[node] = op;
            if is_return {
                entries.return_of[call_node[op]] = node;
            } else {
                call_node[op] = node;
            }
        }
        entries
    }

    fn is_call(&self, node: usize) -> bool {
        self.return_of[node] != NONE
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NONE {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NONE {
            self.prev[next] = node;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.return_of[call]);
    }

    /// Puts back the most recently lifted operation.
    fn unlift(&mut self, call: usize) {
        self.relink(self.return_of[call]);
        self.relink(call);
    }
}

/// Whether `operations` (of one object) have a linearization under `model`.
pub fn is_linearizable<M: Model>(
    model: &M,
    operations: &[&Operation<M::Input, M::Output>],
) -> bool {
    search(model, operations, usize::MAX).unwrap_or(false)
}

/// Like [`is_linearizable`], but gives up (`None`) after exploring `budget` states.
pub fn search<M: Model>(
    model: &M,
    operations: &[&Operation<M::Input, M::Output>],
    budget: usize,
) -> Option<bool> {
    let mut entries = Entries::new(operations);
    let mut linearized = Bits::new(operations.len());
    let mut explored: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut node = entries.next[0];
    while entries.next[0] != NONE {
        if entries.is_call(node) {
            let index = entries.operation[node];
            let op = operations[index];
            if let Some(after) = model.step(&state, &op.input, op.output()) {
                linearized.set(index);
                if explored.len() >= budget {
                    return None;
                }
                if explored.insert((linearized.clone(), after.clone())) {
                    stack.push((node, std::mem::replace(&mut state, after)));
                    entries.lift(node);
                    node = entries.next[0];
                    continue;
                }
                linearized.clear(index);
            }
            node = entries.next[node];
        } else {
            // A return whose operation is not linearized yet: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Some(false);
            };
            linearized.clear(entries.operation[call]);
            state = before;
            entries.unlift(call);
            node = entries.next[call];
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;
    use crate::model::{Register, RegisterInput};

    type Op = Operation<RegisterInput, Option<Vec<u8>>>;

    fn put(client: u64, value: &str, invoked: u64, at: u64) -> Op {
        let outcome = Outcome::Returned { output: None, at };
        Operation {
            client,
            input: RegisterInput::Put(value.as_bytes().to_vec()),
            invoked,
            outcome,
        }
    }

    fn get(client: u64, seen: Option<&str>, invoked: u64, at: u64) -> Op {
        let outcome = Outcome::Returned {
            output: seen.map(|s| s.as_bytes().to_vec()),
            at,
        };
        Operation {
            client,
            input: RegisterInput::Get,
            invoked,
            outcome,
        }
    }

    fn check(ops: &[Op]) -> bool {
        let refs: Vec<&Op> = ops.iter().collect();
        is_linearizable(&Register, &refs)
    }

    #[test]
    fn sequential_histories_are_checked_against_the_model() {
        assert!(check(&[put(0, "a", 0, 1), get(0, Some("a"), 2, 3)]));
        assert!(!check(&[put(0, "a", 0, 1), get(0, None, 2, 3)]));
        assert!(check(&[get(0, None, 0, 1)]));
        assert!(check(&[]));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        assert!(check(&[put(0, "a", 0, 10), get(1, Some("a"), 1, 2)]));
        assert!(check(&[put(0, "a", 0, 10), get(1, None, 1, 2)]));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        // The write of "b" completed before the read began, yet the read saw "a".
        let ops = [
            put(0, "a", 0, 1),
            put(0, "b", 2, 3),
            get(1, Some("a"), 4, 5),
        ];
        assert!(!check(&ops));
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // The new-old inversion: one read sees "b", a later one sees "a" again.
        let ops = [
            put(0, "a", 0, 1),
            put(1, "b", 2, 20),
            get(2, Some("b"), 3, 4),
            get(3, Some("a"), 5, 6),
        ];
        assert!(!check(&ops));
    }

    #[test]
    fn a_write_with_unknown_outcome_may_or_may_not_have_happened() {
        let unknown = Operation {
            client: 0,
            input: RegisterInput::Put(b"x".to_vec()),
            invoked: 0,
            outcome: Outcome::Unknown,
        };
        assert!(
            check(&[unknown.clone(), get(1, Some("x"), 5, 6)]),
            "it happened"
        );
        assert!(
            check(&[unknown.clone(), get(1, None, 5, 6)]),
            "it did not (yet)"
        );
        // But once seen, it cannot be unseen.
        assert!(!check(&[
            unknown,
            get(1, Some("x"), 5, 6),
            get(1, None, 7, 8)
        ]));
    }

    #[test]
    fn a_value_nobody_wrote_is_caught() {
        assert!(!check(&[put(0, "a", 0, 1), get(1, Some("z"), 2, 3)]));
    }
}
