//! Concurrent clients on a strong keyspace while a replica is killed and restarted:
//! the recorded history must be linearizable (the project's checker decides).
//!
//! The run is seeded and prints its seed; `KVORUM_TEST_SEED=<seed>` replays the
//! same choices of operations (the interleaving itself is up to the machine).

// Seeds and counterexamples go to stderr, which the test harness captures and shows on failure.
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvorum_cluster_tests::{Answer, Client, TestCluster};
use kvorum_linearizability::check_per_key;
use kvorum_linearizability::history::{Operation, Outcome};
use kvorum_linearizability::model::{Register, RegisterInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::sync::Notify;

const CLIENTS: u64 = 8;
const OPERATIONS_PER_CLIENT: usize = 40;
const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];

type Recorded = (String, Operation<RegisterInput, Option<Vec<u8>>>);

/// What an answer means for the history: an outcome, or `None` when the operation
/// certainly did not take effect (it is then left out).
fn outcome(
    input: &RegisterInput,
    answer: &anyhow::Result<Answer>,
    at: u64,
) -> Option<Outcome<Option<Vec<u8>>>> {
    let Ok(answer) = answer else {
        // No answer at all: a write may have landed; a read changed nothing.
        return (*input != RegisterInput::Get).then_some(Outcome::Unknown);
    };
    match (input, answer.status) {
        (RegisterInput::Get, StatusCode::OK) => Some(Outcome::Returned {
            output: Some(answer.body.clone()),
            at,
        }),
        (RegisterInput::Get, StatusCode::NOT_FOUND) => Some(Outcome::Returned { output: None, at }),
        (RegisterInput::Get, _) => None,
        (_, StatusCode::NO_CONTENT) => Some(Outcome::Returned { output: None, at }),
        (_, _) if answer.json()["error"]["outcome_unknown"] == false => None,
        (_, _) => Some(Outcome::Unknown),
    }
}

async fn client_run(
    client: Client,
    id: u64,
    seed: u64,
    clock: Instant,
    done: Arc<AtomicUsize>,
    progress: Arc<Notify>,
) -> Vec<Recorded> {
    let mut rng = StdRng::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut history = Vec::new();
    for n in 0..OPERATIONS_PER_CLIENT {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let input = match rng.random_range(0..10) {
            0..=4 => RegisterInput::Get,
            5 => RegisterInput::Delete,
            _ => RegisterInput::Put(format!("{id}-{n}").into_bytes()),
        };
        let invoked = clock.elapsed().as_nanos() as u64;
        let answer = match &input {
            RegisterInput::Get => client.get(key).await,
            RegisterInput::Delete => client.delete(key).await,
            RegisterInput::Put(value) => client.put(key, value).await,
        };
        let at = clock.elapsed().as_nanos() as u64;
        if let Some(outcome) = outcome(&input, &answer, at) {
            history.push((
                key.to_owned(),
                Operation {
                    client: id,
                    input,
                    invoked,
                    outcome,
                },
            ));
        }
        done.fetch_add(1, Ordering::SeqCst);
        progress.notify_waiters();
    }
    history
}

/// One operation as a line a person can read: who, what, when (ms), and what it saw.
fn describe(op: &Operation<RegisterInput, Option<Vec<u8>>>) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let what = match &op.input {
        RegisterInput::Put(value) => format!("put {:?}", text(value)),
        RegisterInput::Delete => "delete".to_owned(),
        RegisterInput::Get => "get".to_owned(),
    };
    let millis = |nanos: u64| nanos as f64 / 1e6;
    match &op.outcome {
        Outcome::Returned { output, at } => {
            let seen = match (&op.input, output) {
                (RegisterInput::Get, Some(value)) => format!(" -> {:?}", text(value)),
                (RegisterInput::Get, None) => " -> not found".to_owned(),
                _ => String::new(),
            };
            format!(
                "client {} {what}{seen} [{:.1} ms .. {:.1} ms]",
                op.client,
                millis(op.invoked),
                millis(*at)
            )
        }
        Outcome::Unknown => format!(
            "client {} {what} [{:.1} ms .. outcome unknown]",
            op.client,
            millis(op.invoked)
        ),
    }
}

/// Waits until `done` reaches `target` operations, or fails after a deadline.
async fn wait_for(done: &AtomicUsize, progress: &Notify, target: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the clients stalled at {} operations",
            done.load(Ordering::SeqCst)
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), progress.notified()).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_histories_stay_linearizable_while_a_replica_dies_and_returns() -> anyhow::Result<()>
{
    let seed = std::env::var("KVORUM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed}");
    let mut cluster = TestCluster::start().await?;
    // The victim is a replica of the first key, so the fault is on the workload's path.
    let probe = cluster.client.get(KEYS[0]).await?;
    let victim = probe.nodes("x-kvorum-replicas-asked")[0];

    let clock = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_run(
                cluster.client.clone(),
                id,
                seed,
                clock,
                done.clone(),
                progress.clone(),
            ))
        })
        .collect();

    let total = CLIENTS as usize * OPERATIONS_PER_CLIENT;
    wait_for(&done, &progress, total / 3).await?;
    cluster.cluster.kill_storage(victim).await?;
    wait_for(&done, &progress, 2 * total / 3).await?;
    cluster.cluster.restart_storage(victim).await?;

    let mut history = Vec::new();
    for client in clients {
        history.extend(client.await?);
    }
    let writes = history
        .iter()
        .filter(|(_, op)| op.input != RegisterInput::Get)
        .count();
    eprintln!(
        "{} operations recorded ({writes} writes) of {total} issued",
        history.len()
    );
    anyhow::ensure!(
        history.len() > total / 2,
        "too few operations succeeded to judge: {}",
        history.len()
    );

    let verdict = check_per_key(&Register, &history);
    if let Some(counterexample) = &verdict.counterexample {
        eprintln!("not linearizable on key {}:", counterexample.key);
        for op in &counterexample.operations {
            eprintln!("  {}", describe(op));
        }
    }
    assert!(
        verdict.is_linearizable(),
        "seed {seed}: failed keys {:?}, undecided {:?}",
        verdict.failed_keys,
        verdict.undecided_keys
    );
    Ok(())
}
