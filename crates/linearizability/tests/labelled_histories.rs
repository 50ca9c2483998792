//! The checker's verdicts on the six labelled histories (Porcupine's test data).

// Seeds and counterexamples go to stderr, which the test harness captures and shows on failure.
#![allow(clippy::print_stderr)]

use std::time::Instant;

use kvorum_linearizability::check_per_key;
use kvorum_linearizability::edn::{AppendStore, parse};

fn verdict(file: &str) -> bool {
    let path = format!("{}/tests/histories/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let history = parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let started = Instant::now();
    let verdict = check_per_key(&AppendStore, &history);
    eprintln!(
        "{file}: {} operations, {} keys, checked in {:?}",
        history.len(),
        verdict.keys,
        started.elapsed()
    );
    if let Some(counterexample) = &verdict.counterexample {
        eprintln!(
            "{file}: key {:?} fails; smallest piece:",
            counterexample.key
        );
        for op in &counterexample.operations {
            eprintln!("  {op:?}");
        }
    }
    verdict.is_linearizable()
}

#[test]
fn one_client_histories() {
    assert!(verdict("c01-ok.txt"));
    assert!(!verdict("c01-bad.txt"));
}

#[test]
fn ten_client_histories() {
    assert!(verdict("c10-ok.txt"));
    assert!(!verdict("c10-bad.txt"));
}

#[test]
fn fifty_client_histories() {
    assert!(verdict("c50-ok.txt"));
    assert!(!verdict("c50-bad.txt"));
}
