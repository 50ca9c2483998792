//! Property tests of the version-vector and causal-state laws and of the conflict strategies.
//!
//! States come from simulated histories: three replicas take writes (with the
//! context of some replica's state, none, or an empty one) and exchange states
//! in random order, as replicas, hints and anti-entropy do. proptest prints the
//! failing case and its seed, and replays it from `proptest-regressions/`.

use kvorum_causality::{
    CausalState, ConflictStrategy, Dot, HybridClock, Resolution, VersionVector, resolve,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Replica `at` coordinates a write whose context comes from `context`.
    Write {
        at: usize,
        context: Context,
        value: Option<u8>,
    },
    /// Replica `to` joins replica `from`'s state.
    Sync { from: usize, to: usize },
}

#[derive(Debug, Clone)]
enum Context {
    /// Whatever the coordinating replica holds.
    Local,
    /// Nothing: a blind write that supersedes nothing.
    Empty,
    /// What replica `n` held (a client that read from it).
    ReadFrom(usize),
}

const REPLICAS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    let context = prop_oneof![
        Just(Context::Local),
        Just(Context::Empty),
        (0..REPLICAS).prop_map(Context::ReadFrom)
    ];
    prop_oneof![
        (0..REPLICAS, context, proptest::option::of(any::<u8>()))
            .prop_map(|(at, context, value)| Step::Write { at, context, value }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Runs a history and returns every state any replica held along the way.
fn run(steps: &[Step]) -> (Vec<CausalState>, [CausalState; REPLICAS]) {
    let mut replicas: [CausalState; REPLICAS] = Default::default();
    let mut clocks = [HybridClock::new(); REPLICAS];
    let mut seen = vec![CausalState::empty()];
    for (time, step) in steps.iter().enumerate() {
        match step {
            Step::Write { at, context, value } => {
                let context = match context {
                    Context::Local => None,
                    Context::Empty => Some(VersionVector::new()),
                    Context::ReadFrom(n) => Some(replicas[*n].context().clone()),
                };
                // Replica clocks disagree by up to 2 ms.
                let timestamp = clocks[*at].tick(time as u64 + *at as u64 * 2);
                let (next, _) = replicas[*at].write(
                    *at as u64 + 1,
                    context.as_ref(),
                    value.map(|v| vec![v]),
                    timestamp,
                );
                replicas[*at] = next;
                seen.push(replicas[*at].clone());
            }
            Step::Sync { from, to } => {
                replicas[*to] = replicas[*to].join(&replicas[*from]);
                clocks[*to].observe(replicas[*to].max_timestamp());
                seen.push(replicas[*to].clone());
            }
        }
    }
    (seen, replicas)
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..40)
}

fn pick(states: &[CausalState], i: prop::sample::Index) -> &CausalState {
    &states[i.index(states.len())]
}

fn vector() -> impl Strategy<Value = VersionVector> {
    proptest::collection::vec((1..4u64, 0..4u64), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(actor, counter)| Dot { actor, counter })
            .collect()
    })
}

proptest! {
    #[test]
    fn join_is_commutative_associative_and_idempotent(
        steps in history(),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
        c in any::<prop::sample::Index>(),
    ) {
        let (states, _) = run(&steps);
        let (a, b, c) = (pick(&states, a), pick(&states, b), pick(&states, c));
        prop_assert_eq!(a.join(b), b.join(a));
        prop_assert_eq!(a.join(b).join(c), a.join(&b.join(c)));
        prop_assert_eq!(a.join(a), a.clone());
        prop_assert!(a.join(b).includes(a) && a.join(b).includes(b));
    }

    #[test]
    fn vector_merge_is_commutative_associative_and_idempotent(
        a in vector(), b in vector(), c in vector(),
    ) {
        prop_assert_eq!(a.merged(&b), b.merged(&a));
        prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        prop_assert_eq!(a.merged(&a), a.clone());
        prop_assert!(a.merged(&b).descends(&a) && a.merged(&b).descends(&b));
    }

    #[test]
    fn dominance_is_a_partial_order(a in vector(), b in vector(), c in vector()) {
        prop_assert!(a.descends(&a));
        if a.descends(&b) && b.descends(&a) {
            prop_assert_eq!(&a, &b);
        }
        if a.descends(&b) && b.descends(&c) {
            prop_assert!(a.descends(&c));
        }
        prop_assert_eq!(a.concurrent(&b), !a.descends(&b) && !b.descends(&a));
    }

    #[test]
    fn replicas_that_exchange_everything_converge(steps in history()) {
        let (_, replicas) = run(&steps);
        let all = replicas.iter().fold(CausalState::empty(), |acc, s| acc.join(s));
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let joined = order.iter().fold(CausalState::empty(), |acc, &i| acc.join(&replicas[i]));
            prop_assert_eq!(&joined, &all);
        }
        // Nothing a write superseded comes back, and every live sibling is in the context.
        for sibling in all.siblings() {
            prop_assert!(all.context().contains(sibling.dot));
        }
    }

    #[test]
    fn every_strategy_answers_the_same_whatever_the_order_of_replies(
        steps in history(),
        strategy in prop_oneof![
            Just(ConflictStrategy::Lww),
            Just(ConflictStrategy::Merge),
            Just(ConflictStrategy::Siblings),
        ],
    ) {
        let (_, replicas) = run(&steps);
        let forward = replicas.iter().fold(CausalState::empty(), |acc, s| acc.join(s));
        let backward = replicas.iter().rev().fold(CausalState::empty(), |acc, s| acc.join(s));
        let answer = |r: Resolution<'_>| match r {
            Resolution::Missing => None,
            Resolution::Value(v) => Some(vec![Some(v)]),
            Resolution::Siblings(s) => Some(s.iter().map(|s| s.value.clone()).collect()),
        };
        prop_assert_eq!(answer(resolve(&forward, strategy)), answer(resolve(&backward, strategy)));
    }

    #[test]
    fn a_write_with_a_read_context_leaves_no_sibling_it_read(
        steps in history(),
        reader in 0..REPLICAS,
        writer in 0..REPLICAS,
    ) {
        let (_, replicas) = run(&steps);
        let read = &replicas[reader];
        let (written, dot) = replicas[writer].write(writer as u64 + 1, Some(read.context()), Some(vec![0]), u64::MAX);
        for sibling in written.siblings() {
            prop_assert!(sibling.dot == dot || !read.context().contains(sibling.dot));
        }
        prop_assert!(written.context().descends(read.context()));
    }
}
