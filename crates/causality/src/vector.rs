//! Version vectors, dots, and the context token that carries a vector to clients and back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One event: the `counter`-th write coordinated by replica `actor` for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The storage node that coordinated the write.
    pub actor: u64,
    /// That node's write count for the key, from 1.
    pub counter: u64,
}

/// For each actor, how many of its writes to a key have been seen.
///
/// A vector stands for the set of dots `(actor, 1..=counter)`: the writes an
/// actor coordinates for one key are numbered consecutively by that actor, and
/// it only ever sends states that include all its earlier ones, so what a
/// replica has seen of one actor is always a prefix.
///
/// In JSON it is a list of `[actor, counter]` pairs: a map would need string
/// keys, which do not survive serde's buffering of untagged enums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<(u64, u64)>", from = "Vec<(u64, u64)>")]
pub struct VersionVector(BTreeMap<u64, u64>);

impl From<VersionVector> for Vec<(u64, u64)> {
    fn from(vector: VersionVector) -> Self {
        vector.entries().collect()
    }
}

impl From<Vec<(u64, u64)>> for VersionVector {
    fn from(pairs: Vec<(u64, u64)>) -> Self {
        pairs
            .into_iter()
            .map(|(actor, counter)| Dot { actor, counter })
            .collect()
    }
}

impl VersionVector {
    /// The vector that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of `actor`'s writes have been seen.
    pub fn get(&self, actor: u64) -> u64 {
        self.0.get(&actor).copied().unwrap_or(0)
    }

    /// Whether the event `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.actor)
    }

    /// Records `dot` (and, by the prefix property, every earlier dot of its actor).
    pub fn add(&mut self, dot: Dot) {
        if dot.counter > self.get(dot.actor) {
            self.0.insert(dot.actor, dot.counter);
        }
    }

    /// Pointwise maximum: everything either vector has seen.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&actor, &counter) in &other.0 {
            self.add(Dot { actor, counter });
        }
    }

    /// The pointwise maximum of two vectors.
    pub fn merged(&self, other: &VersionVector) -> VersionVector {
        let mut out = self.clone();
        out.merge(other);
        out
    }

    /// Whether this vector has seen everything `other` has (`self ≥ other`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .0
            .iter()
            .all(|(&actor, &counter)| self.get(actor) >= counter)
    }

    /// Whether neither vector has seen everything the other has.
    pub fn concurrent(&self, other: &VersionVector) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// Whether the vector has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|&c| c == 0)
    }

    /// The `(actor, counter)` pairs with a counter above zero, by actor.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&a, &c)| (a, c)).filter(|&(_, c)| c > 0)
    }

    /// The text form carried in `X-Kvorum-Context`: `c1.` then `actor:counter` pairs.
    pub fn to_token(&self) -> String {
        self.to_string()
    }
}

impl FromIterator<Dot> for VersionVector {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut vector = VersionVector::new();
        for dot in iter {
            vector.add(dot);
        }
        vector
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TOKEN_PREFIX)?;
        for (i, (actor, counter)) in self.entries().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{actor:x}:{counter:x}")?;
        }
        Ok(())
    }
}

const TOKEN_PREFIX: &str = "c1.";
/// More actors than any cluster's history could hold: a longer token is not one Kvorum issued.
pub const MAX_TOKEN_ACTORS: usize = 256;
/// The largest counter a token may carry: far above any a node issues, far below overflow.
pub const MAX_COUNTER: u64 = 1 << 53;

/// A context token that is not one Kvorum issued for an eventual keyspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed causal context {0:?}: send back the X-Kvorum-Context value of a read of this eventual keyspace unchanged"
)]
pub struct ContextTokenError(pub String);

impl FromStr for VersionVector {
    type Err = ContextTokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ContextTokenError(text.chars().take(64).collect());
        let body = text.strip_prefix(TOKEN_PREFIX).ok_or_else(error)?;
        let mut vector = VersionVector::new();
        if body.is_empty() {
            return Ok(vector);
        }
        let hex = |part: &str| {
            (!part.is_empty() && part.len() <= 16)
                .then(|| u64::from_str_radix(part, 16).ok())
                .flatten()
        };
        for (i, pair) in body.split(',').enumerate() {
            let (actor, counter) = pair.split_once(':').ok_or_else(error)?;
            let (actor, counter) = (
                hex(actor).ok_or_else(error)?,
                hex(counter).ok_or_else(error)?,
            );
            if i >= MAX_TOKEN_ACTORS
                || counter == 0
                || counter > MAX_COUNTER
                || vector.get(actor) != 0
            {
                return Err(error());
            }
            vector.add(Dot { actor, counter });
        }
        Ok(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs
            .iter()
            .map(|&(actor, counter)| Dot { actor, counter })
            .collect()
    }

    #[test]
    fn a_vector_contains_every_dot_up_to_its_counter() {
        let v = vv(&[(1, 3), (2, 1)]);
        assert!(v.contains(Dot {
            actor: 1,
            counter: 1
        }));
        assert!(v.contains(Dot {
            actor: 1,
            counter: 3
        }));
        assert!(!v.contains(Dot {
            actor: 1,
            counter: 4
        }));
        assert!(!v.contains(Dot {
            actor: 3,
            counter: 1
        }));
    }

    #[test]
    fn descent_and_concurrency() {
        let a = vv(&[(1, 2), (2, 1)]);
        let b = vv(&[(1, 1)]);
        let c = vv(&[(2, 2)]);
        assert!(a.descends(&b) && !b.descends(&a));
        assert!(a.concurrent(&c));
        assert!(a.descends(&VersionVector::new()));
        assert_eq!(a.merged(&c), vv(&[(1, 2), (2, 2)]));
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        for v in [
            VersionVector::new(),
            vv(&[(1, 2)]),
            vv(&[(7, 0xff), (u64::MAX, MAX_COUNTER)]),
        ] {
            assert_eq!(v.to_token().parse::<VersionVector>(), Ok(v));
        }
        assert_eq!(vv(&[(1, 2), (10, 3)]).to_token(), "c1.1:2,a:3");
        for bad in [
            "",
            "c1",
            "v1.1.1",
            "c1.1",
            "c1.1:",
            "c1.:1",
            "c1.1:0",
            "c1.1:2,1:3",
            "c1.1:2,",
            "c1.x:1",
            "c1.11111111111111111:1",
            "c1.1:ffffffffffffffff",
        ] {
            assert!(bad.parse::<VersionVector>().is_err(), "{bad}");
        }
    }
}
