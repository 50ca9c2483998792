//! Concurrent clients on a strong keyspace while a replica is killed and restarted:
//! the recorded history must be linearizable (the project's checker decides).
//!
//! The run is seeded and prints its seed; `KVORUM_TEST_SEED=<seed>` replays the
//! same choices of operations (the interleaving itself is up to the machine).

// Seeds and counterexamples go to stderr, which the test harness captures and shows on failure.
#![allow(clippy::print_stderr)]

use kvorum_cluster_tests::TestCluster;
use kvorum_cluster_tests::history::{Workload, ensure_linearizable};
use kvorum_linearizability::model::RegisterInput;

const CLIENTS: u64 = 8;
const OPERATIONS_PER_CLIENT: usize = 40;
const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];

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

    let workload = Workload {
        keys: KEYS.iter().map(|k| (*k).to_owned()).collect(),
        clients: CLIENTS,
        seed,
        operations_per_client: OPERATIONS_PER_CLIENT,
    };
    let running = workload.start(&cluster.client);
    let total = CLIENTS as usize * OPERATIONS_PER_CLIENT;
    running.wait_for(total / 3).await?;
    cluster.cluster.kill_storage(victim).await?;
    running.wait_for(2 * total / 3).await?;
    cluster.cluster.restart_storage(victim).await?;
    let history = running.finish().await?;
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

    ensure_linearizable(&history, seed)?;
    Ok(())
}
