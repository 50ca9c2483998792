//! Seeded random histories of a register: generated linearizable by construction,
//! then broken with one stale read or one lost write, which the checker must catch.
//!
//! Each run prints its seed; `KVORUM_TEST_SEED=<seed>` replays one run.

// Seeds and counterexamples go to stderr, which the test harness captures and shows on failure.
#![allow(clippy::print_stderr)]

use kvorum_linearizability::history::{Operation, Outcome};
use kvorum_linearizability::model::{Register, RegisterInput};
use kvorum_linearizability::{Verdict, check_per_key};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Op = Operation<RegisterInput, Option<Vec<u8>>>;

/// One generated operation and the instant it took effect.
#[derive(Debug, Clone)]
struct Generated {
    op: Op,
    effect_at: u64,
}

/// Clients issue operations back to back; each takes effect at a random instant
/// inside its interval, and reads return the register's value at that instant.
fn linearizable_history(rng: &mut StdRng) -> Vec<Generated> {
    let clients = rng.random_range(2..8u64);
    let mut generated = Vec::new();
    let mut next_value = 0u32;
    for client in 0..clients {
        let mut now = rng.random_range(0..50u64);
        for _ in 0..rng.random_range(5..30) {
            // Times are multiples of the client count plus the client's index: all distinct.
            let invoked = now * clients + client;
            let effect = (now + rng.random_range(1..20)) * clients + client;
            let returned = (effect / clients + rng.random_range(1..20)) * clients + client;
            let input = match rng.random_range(0..10) {
                0..=3 => RegisterInput::Get,
                4 => RegisterInput::Delete,
                _ => {
                    next_value += 1;
                    RegisterInput::Put(format!("{client}-{next_value}").into_bytes())
                }
            };
            let outcome = Outcome::Returned {
                output: None,
                at: returned,
            };
            generated.push(Generated {
                op: Operation {
                    client,
                    input,
                    invoked,
                    outcome,
                },
                effect_at: effect,
            });
            now = returned / clients + rng.random_range(1..10);
        }
    }
    generated.sort_by_key(|g| g.effect_at);
    let mut register: Option<Vec<u8>> = None;
    for g in &mut generated {
        match &g.op.input {
            RegisterInput::Put(value) => register = Some(value.clone()),
            RegisterInput::Delete => register = None,
            RegisterInput::Get => {
                g.op.outcome = Outcome::Returned {
                    output: register.clone(),
                    at: g.op.returned(),
                }
            }
        }
    }
    generated
}

fn verdict(history: &[Generated]) -> Verdict<&'static str, RegisterInput, Option<Vec<u8>>> {
    let keyed: Vec<_> = history.iter().map(|g| ("k", g.op.clone())).collect();
    check_per_key(&Register, &keyed)
}

fn set_output(op: &mut Op, output: Option<Vec<u8>>) {
    let at = op.returned();
    op.outcome = Outcome::Returned { output, at };
}

/// A read that returns a value overwritten before it began: W1 done, then W2 done, then R reads W1's value.
fn inject_stale_read(history: &mut [Generated], rng: &mut StdRng) -> bool {
    let puts: Vec<usize> = (0..history.len())
        .filter(|&i| matches!(history[i].op.input, RegisterInput::Put(_)))
        .collect();
    let mut candidates = Vec::new();
    for (r, read) in history
        .iter()
        .enumerate()
        .filter(|(_, g)| g.op.input == RegisterInput::Get)
    {
        for &w1 in &puts {
            for &w2 in &puts {
                let (first, second) = (&history[w1].op, &history[w2].op);
                if first.returned() < second.invoked && second.returned() < read.op.invoked {
                    candidates.push((r, w1));
                }
            }
        }
    }
    if candidates.is_empty() {
        return false;
    }
    let (read, stale) = candidates[rng.random_range(0..candidates.len())];
    let RegisterInput::Put(value) = history[stale].op.input.clone() else {
        return false;
    };
    set_output(&mut history[read].op, Some(value));
    true
}

/// A completed write whose effect vanishes: reads that took effect after it (and
/// before the next write) return the value from before it, and at least one of
/// them began after the write had returned.
fn inject_lost_write(history: &mut [Generated], rng: &mut StdRng) -> bool {
    // `history` is sorted by effect instant.
    let writes: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].op.input != RegisterInput::Get)
        .collect();
    let mut candidates = Vec::new();
    for (n, &w) in writes.iter().enumerate() {
        let end = writes.get(n + 1).copied().unwrap_or(history.len());
        let reads: Vec<usize> = (w + 1..end).collect();
        // The value the lost write hid must come from one write that finished before
        // the lost one began: otherwise that write could be ordered after it, and the
        // reads would be legitimate.
        let Some(&previous) = writes[..n].last() else {
            continue;
        };
        let RegisterInput::Put(before) = history[previous].op.input.clone() else {
            continue;
        };
        if history[previous].op.returned() >= history[w].op.invoked {
            continue;
        }
        let before = Some(before);
        let written = match &history[w].op.input {
            RegisterInput::Put(value) => Some(value.clone()),
            _ => None,
        };
        let definitely_after = reads
            .iter()
            .any(|&r| history[r].op.invoked > history[w].op.returned());
        let next_write_invoked = writes
            .get(n + 1)
            .map_or(u64::MAX, |&x| history[x].op.invoked);
        let unambiguous = reads.iter().any(|&r| {
            history[r].op.invoked > history[w].op.returned()
                && history[r].op.returned() < next_write_invoked
        });
        if definitely_after && unambiguous && before != written {
            candidates.push((w, reads, before));
        }
    }
    if candidates.is_empty() {
        return false;
    }
    let (_, reads, before) = candidates.swap_remove(rng.random_range(0..candidates.len()));
    for r in reads {
        set_output(&mut history[r].op, before.clone());
    }
    true
}

/// Runs one seed; says which anomalies could be injected into its history.
fn run(seed: u64) -> (bool, bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let history = linearizable_history(&mut rng);
    assert!(
        verdict(&history).is_linearizable(),
        "seed {seed}: a history linearizable by construction was rejected"
    );

    let mut stale = history.clone();
    let stale_injected = inject_stale_read(&mut stale, &mut rng);
    if stale_injected {
        let verdict = verdict(&stale);
        assert!(
            !verdict.is_linearizable(),
            "seed {seed}: an injected stale read was accepted"
        );
        assert!(
            verdict
                .counterexample
                .is_some_and(|c| !c.operations.is_empty())
        );
    }
    let mut lost = history.clone();
    let lost_injected = inject_lost_write(&mut lost, &mut rng);
    if lost_injected {
        assert!(
            !verdict(&lost).is_linearizable(),
            "seed {seed}: an injected lost write was accepted"
        );
    }
    (stale_injected, lost_injected)
}

#[test]
fn generated_histories_are_accepted_and_injected_anomalies_caught() {
    if let Some(seed) = std::env::var("KVORUM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("replaying seed {seed}");
        run(seed);
        return;
    }
    let base: u64 = rand::random();
    eprintln!("base seed {base} (each failing run names its own seed)");
    let runs = 200;
    let (mut stale, mut lost) = (0, 0);
    for offset in 0..runs {
        let (s, l) = run(base.wrapping_add(offset));
        stale += usize::from(s);
        lost += usize::from(l);
    }
    eprintln!("{runs} histories; stale reads injected into {stale}, lost writes into {lost}");
    // The generator must give the injections room, or this test would prove little.
    assert!(
        stale > runs as usize / 2 && lost > runs as usize / 2,
        "too few injections: {stale} stale, {lost} lost"
    );
}
