//! A key's causal state in an eventual keyspace: its concurrent siblings and its context.
//!
//! Every write gets a dot from the replica that coordinates it and supersedes
//! exactly the siblings whose dots are in the context it carries. A state is
//! the set of siblings nobody has superseded yet, plus the version vector of
//! every dot the state has seen (live or superseded). Two states join by
//! keeping a sibling when the other side holds it too or has never seen its
//! dot, and taking the pointwise maximum of the contexts; the join is
//! commutative, associative and idempotent, so replicas that exchange states in
//! any order converge.

use serde::{Deserialize, Serialize};
use serde_with::{base64::Base64, serde_as};

use crate::vector::{Dot, VersionVector};

/// One version of a key: a value or a tombstone, with its dot and timestamp.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that made it.
    pub dot: Dot,
    /// Its hybrid-logical-clock timestamp, which orders concurrent siblings for `lww`.
    pub timestamp: u64,
    /// The value (base64 in JSON), or `None` for a delete's tombstone.
    #[serde_as(as = "Option<Base64>")]
    pub value: Option<Vec<u8>>,
}

impl Sibling {
    /// Whether this sibling records a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The order `lww` resolves by: timestamp, then dot, so ties break the same everywhere.
    pub fn lww_key(&self) -> (u64, Dot) {
        (self.timestamp, self.dot)
    }
}

/// Why a causal state received from the network was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    /// A sibling's dot is outside the state's context.
    #[error("sibling dot {actor}:{counter} is not covered by the state's context")]
    DotOutsideContext {
        /// The dot's actor.
        actor: u64,
        /// The dot's counter.
        counter: u64,
    },
    /// Two siblings share a dot.
    #[error("two siblings share the dot {actor}:{counter}")]
    DuplicateDot {
        /// The dot's actor.
        actor: u64,
        /// The dot's counter.
        counter: u64,
    },
    /// A dot with counter zero, which no write produces.
    #[error("a sibling dot has counter 0")]
    ZeroCounter,
}

/// The wire form, checked by [`CausalState::try_from`] before it becomes a state.
#[derive(Deserialize)]
struct UncheckedState {
    siblings: Vec<Sibling>,
    context: VersionVector,
}

/// A key's siblings (ordered by dot) and the context of everything it has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "UncheckedState")]
pub struct CausalState {
    siblings: Vec<Sibling>,
    context: VersionVector,
}

impl TryFrom<UncheckedState> for CausalState {
    type Error = InvalidState;

    fn try_from(raw: UncheckedState) -> Result<Self, Self::Error> {
        Self::new(raw.siblings, raw.context)
    }
}

impl CausalState {
    /// A state from parts, checked: dots unique, non-zero and inside the context.
    pub fn new(mut siblings: Vec<Sibling>, context: VersionVector) -> Result<Self, InvalidState> {
        siblings.sort_by_key(|s| s.dot);
        for (i, sibling) in siblings.iter().enumerate() {
            let Dot { actor, counter } = sibling.dot;
            if counter == 0 {
                return Err(InvalidState::ZeroCounter);
            }
            if !context.contains(sibling.dot) {
                return Err(InvalidState::DotOutsideContext { actor, counter });
            }
            if i > 0 && siblings[i - 1].dot == sibling.dot {
                return Err(InvalidState::DuplicateDot { actor, counter });
            }
        }
        Ok(Self { siblings, context })
    }

    /// The state of a key nobody has written.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The live siblings, ordered by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Every dot this state has seen.
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// Whether the state has seen no write at all.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.context.is_empty()
    }

    /// Whether every version the key has is a delete's tombstone (a candidate for collection).
    pub fn is_deleted(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// The highest sibling timestamp, for the replica's hybrid clock to observe.
    pub fn max_timestamp(&self) -> u64 {
        self.siblings.iter().map(|s| s.timestamp).max().unwrap_or(0)
    }

    /// Applies a write coordinated by `actor`: a new sibling that supersedes the
    /// siblings whose dots are in `context` (or, when `None`, every sibling this
    /// state holds). Returns the new state and the write's dot.
    pub fn write(
        &self,
        actor: u64,
        context: Option<&VersionVector>,
        value: Option<Vec<u8>>,
        timestamp: u64,
    ) -> (CausalState, Dot) {
        self.write_above(actor, 0, context, value, timestamp)
    }

    /// [`Self::write`] with a dot counter above `floor` as well: a replica passes
    /// the highest counter it ever issued for any key, so a key whose state it
    /// no longer holds (collected, or dropped with its partition) never gets a
    /// dot that an old context elsewhere already covers.
    pub fn write_above(
        &self,
        actor: u64,
        floor: u64,
        context: Option<&VersionVector>,
        value: Option<Vec<u8>>,
        timestamp: u64,
    ) -> (CausalState, Dot) {
        let context = context.unwrap_or(&self.context);
        let mut seen = self.context.merged(context);
        let dot = Dot {
            actor,
            counter: seen.get(actor).max(floor).saturating_add(1),
        };
        seen.add(dot);
        let mut siblings: Vec<Sibling> = self
            .siblings
            .iter()
            .filter(|s| !context.contains(s.dot))
            .cloned()
            .collect();
        siblings.push(Sibling {
            dot,
            timestamp,
            value,
        });
        siblings.sort_by_key(|s| s.dot);
        (
            CausalState {
                siblings,
                context: seen,
            },
            dot,
        )
    }

    /// Everything both states know: siblings neither side has superseded, and both contexts.
    pub fn join(&self, other: &CausalState) -> CausalState {
        let mut siblings = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (mut a, mut b) = (
            self.siblings.iter().peekable(),
            other.siblings.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.dot == y.dot => {
                    // One dot names one write; should two ever differ (a replica
                    // restored from an old copy reusing a counter), keep the same
                    // one everywhere.
                    let keep = if (x.timestamp, &x.value) >= (y.timestamp, &y.value) {
                        x
                    } else {
                        y
                    };
                    let keep = (*keep).clone();
                    a.next();
                    b.next();
                    Some(keep)
                }
                (Some(x), Some(y)) if x.dot < y.dot => {
                    let x = (*x).clone();
                    a.next();
                    (!other.context.contains(x.dot)).then_some(x)
                }
                (Some(_), Some(y)) => {
                    let y = (*y).clone();
                    b.next();
                    (!self.context.contains(y.dot)).then_some(y)
                }
                (Some(x), None) => {
                    let x = (*x).clone();
                    a.next();
                    (!other.context.contains(x.dot)).then_some(x)
                }
                (None, Some(y)) => {
                    let y = (*y).clone();
                    b.next();
                    (!self.context.contains(y.dot)).then_some(y)
                }
                (None, None) => break,
            };
            siblings.extend(next);
        }
        CausalState {
            siblings,
            context: self.context.merged(&other.context),
        }
    }

    /// Whether this state already holds everything `other` holds (joining it changes nothing).
    pub fn includes(&self, other: &CausalState) -> bool {
        &self.join(other) == self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(state: &CausalState) -> Vec<Option<&[u8]>> {
        state
            .siblings()
            .iter()
            .map(|s| s.value.as_deref())
            .collect()
    }

    #[test]
    fn a_write_with_the_read_context_supersedes_exactly_what_was_read() {
        let (a, _) = CausalState::empty().write(1, None, Some(b"a".to_vec()), 10);
        // Two writers read `a` and write concurrently on different replicas.
        let (b, _) = a.write(1, Some(a.context()), Some(b"b".to_vec()), 11);
        let (c, _) = a.write(2, Some(a.context()), Some(b"c".to_vec()), 12);
        let both = b.join(&c);
        assert_eq!(value(&both), vec![Some(&b"b"[..]), Some(&b"c"[..])]);
        // A write carrying the joined context resolves both.
        let (d, dot) = both.write(2, Some(both.context()), Some(b"d".to_vec()), 13);
        assert_eq!(value(&d), vec![Some(&b"d"[..])]);
        assert_eq!(
            dot,
            Dot {
                actor: 2,
                counter: 2
            }
        );
        // A replica still holding `b` alone learns that `d` supersedes it.
        assert_eq!(b.join(&d), d);
        assert!(d.includes(&b) && !b.includes(&d));
    }

    #[test]
    fn a_write_without_context_supersedes_what_the_replica_holds_and_one_with_an_empty_context_nothing()
     {
        let (a, _) = CausalState::empty().write(1, None, Some(b"a".to_vec()), 1);
        let (blind, _) = a.write(1, None, Some(b"b".to_vec()), 2);
        assert_eq!(value(&blind), vec![Some(&b"b"[..])]);
        let (sibling, _) = a.write(1, Some(&VersionVector::new()), Some(b"b".to_vec()), 2);
        assert_eq!(value(&sibling), vec![Some(&b"a"[..]), Some(&b"b"[..])]);
    }

    #[test]
    fn a_delete_is_a_tombstone_that_wins_over_what_it_saw_but_not_over_a_concurrent_write() {
        let (a, _) = CausalState::empty().write(1, None, Some(b"a".to_vec()), 1);
        let (deleted, _) = a.write(1, Some(a.context()), None, 2);
        assert!(deleted.is_deleted());
        let (concurrent, _) = a.write(2, Some(a.context()), Some(b"x".to_vec()), 3);
        let joined = deleted.join(&concurrent);
        assert_eq!(value(&joined), vec![None, Some(&b"x"[..])]);
        assert!(!joined.is_deleted());
    }

    #[test]
    fn a_floor_keeps_a_new_dot_clear_of_every_old_context() {
        // The key's state was collected on this replica, but a tombstone elsewhere saw dot 1:5.
        let (fresh, dot) = CausalState::empty().write_above(1, 5, None, Some(b"new".to_vec()), 1);
        assert_eq!(
            dot,
            Dot {
                actor: 1,
                counter: 6
            }
        );
        let old: VersionVector = [Dot {
            actor: 1,
            counter: 5,
        }]
        .into_iter()
        .collect();
        let tombstone = CausalState::new(Vec::new(), old).expect("valid");
        assert_eq!(tombstone.join(&fresh).siblings().len(), 1);
    }

    #[test]
    fn malformed_states_are_refused() {
        let sibling = |actor, counter| Sibling {
            dot: Dot { actor, counter },
            timestamp: 0,
            value: None,
        };
        let context: VersionVector = [Dot {
            actor: 1,
            counter: 2,
        }]
        .into_iter()
        .collect();
        assert!(CausalState::new(vec![sibling(1, 2)], context.clone()).is_ok());
        assert_eq!(
            CausalState::new(vec![sibling(1, 3)], context.clone()),
            Err(InvalidState::DotOutsideContext {
                actor: 1,
                counter: 3
            })
        );
        assert_eq!(
            CausalState::new(vec![sibling(1, 1), sibling(1, 1)], context.clone()),
            Err(InvalidState::DuplicateDot {
                actor: 1,
                counter: 1
            })
        );
        assert_eq!(
            CausalState::new(vec![sibling(1, 0)], context),
            Err(InvalidState::ZeroCounter)
        );
        let json = r#"{"siblings":[{"dot":{"actor":1,"counter":5},"timestamp":0,"value":null}],"context":[[1,2]]}"#;
        assert!(serde_json::from_str::<CausalState>(json).is_err());
    }

    #[test]
    fn states_round_trip_through_json() {
        let (a, _) = CausalState::empty().write(3, None, Some(b"hello".to_vec()), 7);
        let json = serde_json::to_string(&a).expect("serialize");
        assert_eq!(
            json,
            r#"{"siblings":[{"dot":{"actor":3,"counter":1},"timestamp":7,"value":"aGVsbG8="}],"context":[[3,1]]}"#
        );
        assert_eq!(
            serde_json::from_str::<CausalState>(&json).expect("parse"),
            a
        );
    }
}
