//! Conflict strategies: what a read answers when a key has concurrent siblings.
//!
//! Every strategy works on the joined state, whose siblings are ordered by dot,
//! and orders them itself where order matters, so the answer is the same
//! whatever order the replicas replied in.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{CausalState, Sibling};

/// How an eventual keyspace resolves concurrent versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictStrategy {
    /// Highest hybrid-logical-clock timestamp wins (ties by dot).
    Lww,
    /// A deterministic merge of the values.
    Merge,
    /// Every concurrent value goes back to the client.
    Siblings,
}

/// What a read of a key answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// No live value: never written, or deleted.
    Missing,
    /// One value.
    Value(Vec<u8>),
    /// Concurrent siblings for the client to resolve (`siblings` only), ordered by timestamp then dot.
    Siblings(Vec<&'a Sibling>),
}

/// Resolves a joined state by `strategy`.
pub fn resolve(state: &CausalState, strategy: ConflictStrategy) -> Resolution<'_> {
    let mut ordered: Vec<&Sibling> = state.siblings().iter().collect();
    ordered.sort_by_key(|s| s.lww_key());
    let live: Vec<&Sibling> = ordered
        .iter()
        .copied()
        .filter(|s| !s.is_tombstone())
        .collect();
    match strategy {
        ConflictStrategy::Lww => match ordered.last() {
            Some(Sibling {
                value: Some(value), ..
            }) => Resolution::Value(value.clone()),
            _ => Resolution::Missing,
        },
        ConflictStrategy::Merge => match live.as_slice() {
            [] => Resolution::Missing,
            [only] => Resolution::Value(only.value.clone().unwrap_or_default()),
            many => Resolution::Value(merge_values(many)),
        },
        ConflictStrategy::Siblings => {
            // Siblings with equal contents are one choice for the client (a
            // retried write can land twice): keep the latest of each.
            let mut distinct: Vec<&Sibling> = Vec::with_capacity(ordered.len());
            for sibling in ordered.iter().rev() {
                if !distinct.iter().any(|d| d.value == sibling.value) {
                    distinct.push(sibling);
                }
            }
            distinct.reverse();
            match (live.as_slice(), distinct.as_slice()) {
                ([], _) => Resolution::Missing,
                (_, [only]) => Resolution::Value(only.value.clone().unwrap_or_default()),
                _ => Resolution::Siblings(distinct),
            }
        }
    }
}

/// The `merge` strategy over live siblings in `lww` order.
///
/// When every value is a JSON object, the objects are merged key by key
/// (recursively; arrays by union; any other clash goes to the later sibling).
/// When every value is a JSON array, the result is the union of their
/// elements, sorted by their JSON text. Anything else (opaque bytes, mixed
/// kinds) falls back to the latest sibling, as `lww` would.
fn merge_values(ordered: &[&Sibling]) -> Vec<u8> {
    let parsed: Option<Vec<Value>> = ordered
        .iter()
        .map(|s| serde_json::from_slice(s.value.as_deref().unwrap_or_default()).ok())
        .collect();
    let latest = || {
        ordered
            .last()
            .and_then(|s| s.value.clone())
            .unwrap_or_default()
    };
    let Some(values) = parsed else {
        return latest();
    };
    let all_objects = values.iter().all(Value::is_object);
    let all_arrays = values.iter().all(Value::is_array);
    if !all_objects && !all_arrays {
        return latest();
    }
    let merged = values.into_iter().reduce(merge_json).unwrap_or(Value::Null);
    serde_json::to_vec(&merged).unwrap_or_else(|_| latest())
}

/// Merges `later` into `earlier`: objects key by key, arrays by union, else `later` wins.
fn merge_json(earlier: Value, later: Value) -> Value {
    match (earlier, later) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (key, value) in b {
                let merged = match a.remove(&key) {
                    Some(old) => merge_json(old, value),
                    None => value,
                };
                a.insert(key, merged);
            }
            Value::Object(a)
        }
        (Value::Array(a), Value::Array(b)) => {
            let mut union: Vec<(String, Value)> =
                a.into_iter().chain(b).map(|v| (v.to_string(), v)).collect();
            union.sort_by(|x, y| x.0.cmp(&y.0));
            union.dedup_by(|x, y| x.0 == y.0);
            Value::Array(union.into_iter().map(|(_, v)| v).collect())
        }
        (_, later) => later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two concurrent writes `first` (earlier timestamp) and `second` on a fresh key.
    fn conflict(first: Option<&[u8]>, second: Option<&[u8]>) -> CausalState {
        let (a, _) = CausalState::empty().write(1, None, first.map(<[u8]>::to_vec), 10);
        let (b, _) = CausalState::empty().write(2, None, second.map(<[u8]>::to_vec), 20);
        a.join(&b)
    }

    #[test]
    fn lww_takes_the_latest_timestamp_and_a_latest_delete_hides_the_key() {
        assert_eq!(
            resolve(&conflict(Some(b"old"), Some(b"new")), ConflictStrategy::Lww),
            Resolution::Value(b"new".to_vec())
        );
        assert_eq!(
            resolve(&conflict(Some(b"old"), None), ConflictStrategy::Lww),
            Resolution::Missing
        );
        assert_eq!(
            resolve(&CausalState::empty(), ConflictStrategy::Lww),
            Resolution::Missing
        );
    }

    #[test]
    fn merge_unions_json_objects_and_arrays_and_falls_back_to_the_latest() {
        let objects = conflict(
            Some(br#"{"a":1,"tags":["x"],"n":{"p":1}}"#),
            Some(br#"{"b":2,"tags":["y","x"],"n":{"q":2},"a":3}"#),
        );
        assert_eq!(
            resolve(&objects, ConflictStrategy::Merge),
            Resolution::Value(br#"{"a":3,"b":2,"n":{"p":1,"q":2},"tags":["x","y"]}"#.to_vec())
        );
        assert_eq!(
            resolve(
                &conflict(Some(b"[3,1]"), Some(b"[2,1]")),
                ConflictStrategy::Merge
            ),
            Resolution::Value(b"[1,2,3]".to_vec())
        );
        assert_eq!(
            resolve(
                &conflict(Some(b"plain"), Some(b"text")),
                ConflictStrategy::Merge
            ),
            Resolution::Value(b"text".to_vec())
        );
        // A delete concurrent with a write: the write's value survives the merge.
        assert_eq!(
            resolve(&conflict(Some(b"kept"), None), ConflictStrategy::Merge),
            Resolution::Value(b"kept".to_vec())
        );
    }

    #[test]
    fn siblings_returns_every_concurrent_version_until_one_write_resolves_them() {
        let state = conflict(Some(b"a"), Some(b"b"));
        let Resolution::Siblings(siblings) = resolve(&state, ConflictStrategy::Siblings) else {
            panic!("expected siblings");
        };
        assert_eq!(siblings.len(), 2);
        let (resolved, _) = state.write(1, Some(state.context()), Some(b"c".to_vec()), 30);
        assert_eq!(
            resolve(&resolved, ConflictStrategy::Siblings),
            Resolution::Value(b"c".to_vec())
        );
        // The same value twice (a write that landed on two coordinators) is one value.
        assert_eq!(
            resolve(
                &conflict(Some(b"same"), Some(b"same")),
                ConflictStrategy::Siblings
            ),
            Resolution::Value(b"same".to_vec())
        );
        // A delete concurrent with a write is a conflict too; two deletes are not.
        assert!(matches!(
            resolve(&conflict(Some(b"a"), None), ConflictStrategy::Siblings),
            Resolution::Siblings(s) if s.len() == 2
        ));
        assert_eq!(
            resolve(&conflict(None, None), ConflictStrategy::Siblings),
            Resolution::Missing
        );
    }
}
