//! Concurrent clients that record a history of strong reads, writes and
//! deletes, and the project's checker over it: for the tests that judge
//! linearizability under faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvorum_linearizability::check_per_key;
use kvorum_linearizability::history::{Operation, Outcome};
use kvorum_linearizability::model::{Register, RegisterInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::sync::Notify;

use crate::{Answer, Client};

/// One recorded operation and its key.
pub type Recorded = (String, Operation<RegisterInput, Option<Vec<u8>>>);

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

/// Clients issuing seeded random operations on a few keys, recording each.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The keys (with their query, such as `?keyspace=...`, if any).
    pub keys: Vec<String>,
    /// How many clients run at once.
    pub clients: u64,
    /// Seeds the choice of operations (printed by the caller, replayable).
    pub seed: u64,
    /// Each client stops after this many operations, or when stopped.
    pub operations_per_client: usize,
}

/// A running workload: its clients, a count of operations done, and a stop switch.
#[derive(Debug)]
pub struct Running {
    keys: Vec<String>,
    clock: Instant,
    clients: Vec<tokio::task::JoinHandle<Vec<Recorded>>>,
    done: Arc<AtomicUsize>,
    progress: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Workload {
    /// Starts every client against the router `client` reaches.
    pub fn start(&self, client: &Client) -> Running {
        let clock = Instant::now();
        let done = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..self.clients)
            .map(|id| {
                let (client, workload) = (client.clone(), self.clone());
                let (done, progress, stop) = (done.clone(), progress.clone(), stop.clone());
                tokio::spawn(async move {
                    workload
                        .client_run(client, id, clock, &done, &progress, &stop)
                        .await
                })
            })
            .collect();
        Running {
            keys: self.keys.clone(),
            clock,
            clients,
            done,
            progress,
            stop,
        }
    }

    async fn client_run(
        &self,
        client: Client,
        id: u64,
        clock: Instant,
        done: &AtomicUsize,
        progress: &Notify,
        stop: &AtomicBool,
    ) -> Vec<Recorded> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut history = Vec::new();
        for n in 0..self.operations_per_client {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let key = &self.keys[rng.random_range(0..self.keys.len())];
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
                let key = key.split('?').next().unwrap_or(key).to_owned();
                history.push((
                    key,
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
}

impl Running {
    /// Waits until the clients have made `target` operations in all, or fails after a deadline.
    pub async fn wait_for(&self, target: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done.load(Ordering::SeqCst) < target {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the clients stalled at {} operations",
                self.done.load(Ordering::SeqCst)
            );
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.progress.notified()).await;
        }
        Ok(())
    }

    /// Stops the clients after their current operation and returns the whole history.
    pub async fn stop(self) -> anyhow::Result<Vec<Recorded>> {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }

    /// Stops the clients, then reads every key back at ALL once the cluster has
    /// healed: the final reads join the history, so a lost write, or a deleted
    /// value come back, makes it non-linearizable.
    pub async fn stop_and_read_back(self, client: &Client) -> anyhow::Result<Vec<Recorded>> {
        let (keys, clock) = (self.keys.clone(), self.clock);
        let mut history = self.stop().await?;
        for key in &keys {
            let separator = if key.contains('?') { '&' } else { '?' };
            let invoked = clock.elapsed().as_nanos() as u64;
            let answer = client
                .get(&format!("{key}{separator}consistency=all"))
                .await;
            let at = clock.elapsed().as_nanos() as u64;
            let outcome = outcome(&RegisterInput::Get, &answer, at).ok_or_else(|| {
                anyhow::anyhow!(
                    "the final read of {key} failed: {:?}",
                    answer.map(|a| a.json())
                )
            })?;
            history.push((
                key.split('?').next().unwrap_or(key).to_owned(),
                Operation {
                    client: u64::MAX,
                    input: RegisterInput::Get,
                    invoked,
                    outcome,
                },
            ));
        }
        Ok(history)
    }

    /// Waits for every client to make all its operations and returns the whole history.
    pub async fn finish(self) -> anyhow::Result<Vec<Recorded>> {
        let mut history = Vec::new();
        for client in self.clients {
            history.extend(client.await?);
        }
        Ok(history)
    }
}

/// One operation as a line a person can read: who, what, when (ms), and what it saw.
pub fn describe(op: &Operation<RegisterInput, Option<Vec<u8>>>) -> String {
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

/// Fails unless the history is linearizable per key, printing the smallest
/// counterexample and the seed that replays the operations.
pub fn ensure_linearizable(history: &[Recorded], seed: u64) -> anyhow::Result<()> {
    let verdict = check_per_key(&Register, history);
    if let Some(counterexample) = &verdict.counterexample {
        print_counterexample(&counterexample.key, &counterexample.operations);
    }
    anyhow::ensure!(
        verdict.is_linearizable(),
        "seed {seed}: failed keys {:?}, undecided {:?}",
        verdict.failed_keys,
        verdict.undecided_keys
    );
    Ok(())
}

#[allow(clippy::print_stderr)]
fn print_counterexample(key: &str, operations: &[Operation<RegisterInput, Option<Vec<u8>>>]) {
    eprintln!("not linearizable on key {key}:");
    for op in operations {
        eprintln!("  {}", describe(op));
    }
}
