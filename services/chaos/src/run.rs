//! One chaos run: start a local cluster, run the workload and the nemesis
//! together, heal, wait for recovery, read the end state, check, and report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kvorum_launcher::{ClusterSpec, LocalCluster, ProcessKind};
use kvorum_metad_client::{MetadAddresses, MetadClient};
use kvorum_protocol::cluster::NodeState;
use kvorum_protocol::storage::{CausalReadResponse, ReplicaKey};
use kvorum_protocol::{CausalState, ClusterView, Key, KeyspaceName, NodeId, PartitionId};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use crate::check;
use crate::config::Backend;
use crate::config::ChaosConfig;
use crate::firewall::Firewall;
use crate::history::{FaultRecord, Op, OpKind, Status};
use crate::nemesis::{DockerNemesis, FaultKind, K8sNemesis, Nemesis, ProcessNemesis};
use crate::report::{self, Report};
use crate::scenario::{self, Step};
use crate::workload::{Workload, millis};

const STRONG: &str = "chaos_strong";
const EVENTUAL: &str = "chaos_eventual";
const REPLICATION_FACTOR: usize = 3;
/// How long every strong key together gets for its final read.
const FINAL_READS: Duration = Duration::from_secs(60);
/// How long the eventual keys get to converge once the faults healed.
const CONVERGENCE: Duration = Duration::from_secs(60);

/// How long the metadata replicas get to agree at the end.
const METAD_CONVERGENCE: Duration = Duration::from_secs(60);

/// Runs the whole scenario and writes the report; returns it.
pub async fn run(config: &ChaosConfig) -> anyhow::Result<Report> {
    let seed = config.seed.unwrap_or_else(rand::random);
    tracing::info!(seed, "chaos run starting; replay with --seed {seed}");
    let steps = match &config.scenario {
        Some(path) => scenario::load(path)?,
        None => scenario::periodic(
            &config.faults,
            Duration::from_secs(config.quiet_start_s),
            Duration::from_secs(config.fault_interval_s),
            Duration::from_secs(config.fault_hold_s),
            Duration::from_secs(config.duration_s),
        ),
    };
    std::fs::create_dir_all(&config.out)?;
    let (router, mut nemesis) = match config.backend {
        Backend::Process => start_local(config).await?,
        Backend::Docker => {
            let project = config.compose_project.clone().unwrap_or_default();
            let mut compose = vec![
                "docker-compose".to_owned(),
                "--project-name".to_owned(),
                project.clone(),
            ];
            for file in &config.compose_files {
                compose.push("--file".to_owned());
                compose.push(file.display().to_string());
            }
            let clocks = match &config.clock_dir {
                Some(dir) => Some(kvorum_launcher::FakeClocks::new(&config.libfaketime, dir)?),
                None => None,
            };
            (
                first_router(config),
                Nemesis::Docker(DockerNemesis {
                    compose,
                    network: format!("{project}_default"),
                    storage: (1..=config.storage_nodes)
                        .map(|i| format!("storage-{i}"))
                        .collect(),
                    metad: (1..=DOCKER_METAD_REPLICAS)
                        .map(|i| (i, format!("metad-{i}")))
                        .collect(),
                    routers: (1..=config.router.len())
                        .map(|i| match i {
                            1 => "router".to_owned(),
                            i => format!("router-{i}"),
                        })
                        .collect(),
                    others: vec![
                        (ProcessKind::Detector, "detector".to_owned()),
                        (ProcessKind::Recovery, "recovery".to_owned()),
                    ],
                    clocks,
                    metad_catch_ups_ms: Vec::new(),
                    cuts: 0,
                }),
            )
        }
        Backend::K8s => (
            first_router(config),
            Nemesis::K8s(K8sNemesis {
                namespace: config.namespace.clone(),
                force: config.force_delete,
                storage_pods: (0..config.storage_nodes)
                    .map(|i| format!("kvorum-storage-{i}"))
                    .collect(),
            }),
        ),
    };
    if let Nemesis::Docker(docker) = &nemesis {
        docker.check_clocks().await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    create_keyspace(&http, &router, STRONG, r#"{"mode":"strong"}"#).await?;
    create_keyspace(
        &http,
        &router,
        EVENTUAL,
        r#"{"mode":"eventual","conflict":"siblings","write_consistency":"one"}"#,
    )
    .await?;

    let routers = match &nemesis {
        Nemesis::Process(local) => local.cluster.router_urls(),
        _ => config.router.clone(),
    };
    let workload = Workload {
        routers,
        clients: config.clients,
        strong: (STRONG.to_owned(), config.strong_keys as usize),
        eventual: (EVENTUAL.to_owned(), config.eventual_keys as usize),
        eventual_share: config.eventual_share,
        retired_share: config.retired_share,
        rate: config.rate,
        duration: Duration::from_secs(config.duration_s),
        seed,
        request_timeout: Duration::from_secs(5),
        large_share: config.large_value_share,
        max_value_bytes: usize::try_from(config.max_value_bytes)?,
    };
    let clock = Instant::now();
    let (done, finished) = watch::channel(false);
    let clients = tokio::spawn(async move {
        let ops = workload.run(clock).await;
        let _ = done.send(true);
        ops
    });
    let faults = inject(&mut nemesis, &router, &steps, seed, clock, finished).await;
    let mut ops = clients.await??;
    let duration_seconds = clock.elapsed().as_secs_f64();
    let last_heal = Instant::now();

    let recovered =
        wait_recovery(&http, &router, Duration::from_secs(config.recovery_bound_s)).await;
    let recovery_seconds = recovered.then(|| last_heal.elapsed().as_secs_f64());
    // Every strong key the clients used: the shared ones and the retired ones.
    let strong_keys: Vec<String> = (0..config.strong_keys)
        .map(|k| format!("k{k}"))
        .chain(
            ops.iter()
                .filter(|op| op.keyspace == STRONG)
                .map(|op| op.key.clone()),
        )
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (strong_finals, final_reads) = final_strong_reads(
        &http,
        &router,
        &strong_keys,
        clock,
        config.clients,
        FINAL_READS,
    )
    .await;
    ops.extend(final_reads);
    // A key whose end state is unknown cannot be checked for lost writes: it fails the run.
    let unread: Vec<String> = strong_keys
        .iter()
        .filter(|&key| !strong_finals.contains_key(&(STRONG.to_owned(), key.clone())))
        .map(|key| format!("{STRONG}/{key}"))
        .collect();
    let (eventual_finals, unconverged) = converge(&http, &router, config, CONVERGENCE).await?;

    let metad = match &nemesis {
        Nemesis::Process(local) => {
            let addresses: Vec<String> = local
                .cluster
                .metad()
                .addresses()
                .values()
                .map(ToString::to_string)
                .collect();
            let mut end = metad_end(&http, &addresses, duration_seconds, METAD_CONVERGENCE).await;
            end.catch_up_ms.clone_from(&local.metad_catch_ups_ms);
            Some(end)
        }
        Nemesis::Docker(docker) => {
            let addresses: Vec<String> = docker.metad_addresses().await.into_values().collect();
            let mut end = metad_end(&http, &addresses, duration_seconds, METAD_CONVERGENCE).await;
            end.catch_up_ms.clone_from(&docker.metad_catch_ups_ms);
            Some(end)
        }
        Nemesis::K8s(_) => None,
    };
    let (anomalies, undecided) = check::linearizability(&ops, &[STRONG.to_owned()]);
    let mut lost = check::lost_strong_writes(&ops, &strong_finals);
    lost.extend(check::lost_eventual_writes(&ops, &eventual_finals));
    let first_fault = faults.first().map_or(f64::INFINITY, |f| f.start_ms);
    let ok_before = check::successes_before(&ops, first_fault);
    let invalid_reason = (ok_before < config.min_ok_before_fault).then(|| {
        format!(
            "only {ok_before} operations succeeded before the first fault; {} are needed",
            config.min_ok_before_fault
        )
    });
    let count = |status| ops.iter().filter(|o| o.status == status).count();
    let mut report = Report {
        valid: invalid_reason.is_none(),
        invalid_reason,
        passed: false,
        seed,
        backend: config.backend.name().to_owned(),
        operations: ops.len(),
        succeeded: count(Status::Ok),
        failed: count(Status::Fail),
        unknown: count(Status::Unknown),
        acknowledged_writes: ops.iter().filter(|o| o.is_acknowledged_write()).count(),
        faults: faults.len(),
        kills: faults.iter().filter(|f| f.kill).count(),
        lost_writes: lost.len(),
        linearizability_anomalies: anomalies.len(),
        undecided_keys: undecided.len(),
        unconverged_keys: unconverged.len(),
        unread_keys: unread.len(),
        rf_restored: recovered,
        recovery_seconds,
        duration_seconds,
        fault_kinds: faults
            .iter()
            .map(|f| f.kind.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        impact: check::impact_by_kind(&ops, &faults, duration_seconds * 1000.0),
        fault_log: faults,
        anomalies,
        lost: lost.into_iter().take(100).collect(),
        unconverged: unconverged.into_iter().take(100).collect(),
        unread,
        metad,
        strong_tombstones_collected: None,
    };
    report.passed = report.valid
        && report.lost_writes == 0
        && report.linearizability_anomalies == 0
        && report.undecided_keys == 0
        && report.unconverged_keys == 0
        && report.unread_keys == 0
        && report.rf_restored
        && report.metad.as_ref().is_none_or(|m| m.converged)
        && report.fault_log.iter().all(|f| f.end_ms.is_some());
    if let Nemesis::Process(local) = &nemesis {
        let nodes: Vec<String> = local
            .cluster
            .storage_nodes()
            .into_iter()
            .map(|(_, address)| address.to_string())
            .collect();
        let collected = strong_tombstones_collected(&http, &nodes).await;
        report.strong_tombstones_collected = Some(collected);
        // A run long enough for several graces that retired keys yet
        // collected nothing shows collection stalled under the faults.
        if config.retired_share > 0.0 && config.duration_s >= COLLECTION_EXPECTED_AFTER_S {
            if collected == 0 {
                tracing::error!(
                    "no strong tombstone was collected in a {} s run: collection stalled",
                    config.duration_s
                );
            }
            report.passed &= collected > 0;
        }
    }
    write_outputs(&config.out, &report, &ops, &config.trace_url)?;
    if let Nemesis::Process(local) = nemesis {
        local.cluster.stop().await?;
    }
    Ok(report)
}

/// The storage nodes' tombstone grace in a local chaos cluster.
const TOMBSTONE_GRACE_MS: &str = "15000";

/// A local run at least this long (several graces) must collect some strong tombstones.
const COLLECTION_EXPECTED_AFTER_S: u64 = 120;

/// The strong tombstones the storage nodes collected, summed from their
/// metrics (a node restarted during the run counts from its restart).
async fn strong_tombstones_collected(http: &reqwest::Client, nodes: &[String]) -> u64 {
    let mut total = 0;
    for address in nodes {
        let Ok(response) = http.get(format!("http://{address}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        total += metric_value(&text, "kvorum_strong_tombstones_collected_total");
    }
    total
}

/// A counter's value in a Prometheus text exposition (0 when absent).
pub fn metric_value(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .filter(|(metric, _)| *metric == name || metric.starts_with(&format!("{name}{{")))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// The metadata replicas of `deploy/docker-compose.yml`, `metad-1` to `metad-3`.
const DOCKER_METAD_REPLICAS: u64 = 3;

/// The first of the routers the docker and k8s backends were given (validated to be one at least).
fn first_router(config: &ChaosConfig) -> String {
    config.router.first().cloned().unwrap_or_default()
}

/// Starts the local cluster of the process backend; returns its router and the nemesis over it.
async fn start_local(config: &ChaosConfig) -> anyhow::Result<(String, Nemesis)> {
    let data = config.out.join("cluster");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let mut spec = ClusterSpec::for_tests(&data);
    spec.recovery = 2;
    spec.detectors = usize::try_from(config.detectors)?;
    spec.routers = usize::try_from(config.routers)?;
    // Addresses of their own, so that firewall rules can tell processes apart.
    spec.own_addresses = true;
    if config.faults.iter().any(|f| f.is_clock()) {
        spec.fake_clocks = Some(config.libfaketime.clone());
    }
    spec.log_filter = "info".to_owned();
    if let Some(bin_dir) = &config.bin_dir {
        spec.bin_dir = bin_dir.clone();
    } else if let Some(dir) = std::env::current_exe()?.parent() {
        spec.bin_dir = dir.to_owned();
    }
    // Each process names its own service, so OTEL_SERVICE_NAME is not passed on.
    for (name, value) in std::env::vars()
        .filter(|(name, _)| name.starts_with("OTEL_") && name != "OTEL_SERVICE_NAME")
    {
        spec.env.insert(name, value);
    }
    // Anti-entropy often, so eventual keys converge soon after the faults heal,
    // and a short tombstone grace (longer than the routers' 10 s request
    // timeout, as it must be), so that tombstones of both kinds are
    // collected while the faults go on.
    spec.env
        .insert("KVORUM_ANTI_ENTROPY_INTERVAL_MS".into(), "2000".into());
    spec.env.insert(
        "KVORUM_TOMBSTONE_GRACE_MS".into(),
        TOMBSTONE_GRACE_MS.into(),
    );
    if let Some(bug) = config.inject_bug {
        spec.env.insert(bug.router_env().into(), "true".into());
    }
    let firewall = if config.faults.iter().any(|f| f.is_network()) {
        Some(Firewall::open().await?)
    } else {
        None
    };
    let cluster = LocalCluster::start(spec).await?;
    let router = cluster.router_url();
    let metad = MetadClient::new(
        kvorum_http_client::ClientConfig::new("chaos"),
        MetadAddresses(
            cluster
                .metad()
                .addresses()
                .values()
                .map(ToString::to_string)
                .collect(),
        ),
    )
    .map_err(anyhow::Error::msg)?;
    let storage: Vec<NodeId> = cluster.storage_nodes().iter().map(|(id, _)| *id).collect();
    Ok((
        router,
        Nemesis::Process(Box::new(ProcessNemesis {
            cluster,
            metad,
            storage,
            firewall,
            metad_catch_ups_ms: Vec::new(),
        })),
    ))
}

async fn create_keyspace(
    http: &reqwest::Client,
    router: &str,
    name: &str,
    spec: &str,
) -> anyhow::Result<()> {
    call_router(
        http.put(format!("{router}/v1/keyspaces/{name}"))
            .body(spec.to_owned()),
        &format!("creating keyspace {name}"),
    )
    .await
}

/// Sends an administrative request to the router, failing with its answer
/// unless it succeeds.
pub(crate) async fn call_router(
    request: reqwest::RequestBuilder,
    what: &str,
) -> anyhow::Result<()> {
    let answer = request.send().await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "{what}: {} {}",
        answer.status(),
        answer.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Follows the schedule until it ends or the workload finishes, then heals what is still broken.
async fn inject(
    nemesis: &mut Nemesis,
    router: &str,
    steps: &[Step],
    seed: u64,
    clock: Instant,
    mut finished: watch::Receiver<bool>,
) -> Vec<FaultRecord> {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    let mut records = Vec::new();
    for step in steps {
        let due = tokio::time::Instant::from_std(clock + step.at);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            _ = finished.wait_for(|done| *done) => break,
        }
        let start_ms = millis(clock);
        let (target, heal) = match nemesis.inject(step.fault, &mut rng, router).await {
            Ok(hit) => hit,
            Err(error) => {
                tracing::warn!(fault = step.fault.name(), %error, "fault could not be injected");
                continue;
            }
        };
        tracing::info!(fault = step.fault.name(), %target, "fault injected");
        let mut record = FaultRecord {
            kind: step.fault.name().to_owned(),
            target,
            start_ms,
            end_ms: None,
            kill: step.fault.is_kill(),
        };
        tokio::time::sleep(step.hold).await;
        match nemesis.heal(heal).await {
            Ok(()) => record.end_ms = Some(millis(clock)),
            Err(error) => {
                tracing::warn!(fault = step.fault.name(), %error, "fault could not be healed")
            }
        }
        records.push(record);
    }
    records
}

/// Polls the cluster view until every storage node is up, no move is under way
/// and every partition has its full replica set of up nodes.
pub(crate) async fn wait_recovery(http: &reqwest::Client, router: &str, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Ok(answer) = http.get(format!("{router}/v1/cluster")).send().await
            && let Ok(view) = answer.json::<ClusterView>().await
        {
            let up = |id: &NodeId| {
                view.nodes
                    .iter()
                    .any(|n| n.id == *id && n.state == NodeState::Up)
            };
            let storage_up = view
                .nodes
                .iter()
                .filter(|n| n.role == kvorum_protocol::cluster::NodeRole::Storage)
                .all(|n| n.state == NodeState::Up);
            let whole = view.partitions.iter().all(|p| {
                p.pending.is_empty()
                    && p.replicas.len() == REPLICATION_FACTOR
                    && p.replicas.iter().all(up)
            });
            if storage_up && whole && view.moves.is_empty() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Reads every strong key at ALL once the faults healed; the reads join the history.
pub(crate) async fn final_strong_reads(
    http: &reqwest::Client,
    router: &str,
    keys: &[String],
    clock: Instant,
    client: u64,
    within: Duration,
) -> (BTreeMap<(String, String), Option<String>>, Vec<Op>) {
    let mut finals = BTreeMap::new();
    let mut ops = Vec::new();
    // One deadline for all keys: a cluster that cannot answer them all in
    // time fails the run (the keys left unread) rather than stalling it.
    let deadline = Instant::now() + within;
    for key in keys {
        while Instant::now() < deadline {
            let invoke_ms = millis(clock);
            let Ok(answer) = http
                .get(format!(
                    "{router}/v1/kv/{key}?keyspace={STRONG}&consistency=all"
                ))
                .send()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let status = answer.status();
            let body = answer.bytes().await.unwrap_or_default();
            let found = status == reqwest::StatusCode::OK;
            if !found && status != reqwest::StatusCode::NOT_FOUND {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let value = found.then(|| crate::workload::decode_value(&body));
            finals.insert((STRONG.to_owned(), key.clone()), value.clone());
            ops.push(Op {
                client,
                keyspace: STRONG.to_owned(),
                key: key.clone(),
                kind: OpKind::Read,
                value: None,
                observed: value.map(|v| vec![v]),
                found,
                invoke_ms,
                complete_ms: millis(clock),
                status: Status::Ok,
                error: None,
                trace_id: None,
                supersedes: Vec::new(),
            });
            break;
        }
    }
    (finals, ops)
}

/// Waits until every replica of every eventual key holds the same state; returns
/// each key's final values and the keys that never converged.
pub(crate) async fn converge(
    http: &reqwest::Client,
    router: &str,
    config: &ChaosConfig,
    within: Duration,
) -> anyhow::Result<(BTreeMap<(String, String), Vec<String>>, Vec<String>)> {
    let keyspace = KeyspaceName::parse(EVENTUAL)?;
    let deadline = Instant::now() + within;
    loop {
        let view: ClusterView = http
            .get(format!("{router}/v1/cluster"))
            .send()
            .await?
            .json()
            .await?;
        let count = u32::try_from(view.partitions.len())?;
        let mut finals = BTreeMap::new();
        let mut unconverged = Vec::new();
        let last_round = Instant::now() >= deadline;
        for k in 0..config.eventual_keys {
            let key = Key::parse(&format!("k{k}"))?;
            let partition = kvorum_placement::partition_for(&keyspace, &key, count);
            let assignment = &view.partitions[partition.0 as usize];
            let mut states: Vec<CausalState> = Vec::new();
            for replica in &assignment.replicas {
                let Some(node) = view.nodes.iter().find(|n| n.id == *replica) else {
                    continue;
                };
                let address = config.reachable(&node.address);
                match read_replica(http, &address, partition, assignment.epoch, &keyspace, &key)
                    .await
                {
                    Ok(state) => states.push(state),
                    Err(error) if last_round => {
                        tracing::warn!(key = key.as_str(), node = %replica, %address, %error, "cannot read a replica")
                    }
                    Err(_) => {}
                }
            }
            let agreed = states.len() == assignment.replicas.len()
                && states.windows(2).all(|w| w[0] == w[1]);
            if agreed {
                let values = states[0]
                    .siblings()
                    .iter()
                    .filter_map(|s| s.value.as_ref())
                    .map(|v| crate::workload::decode_value(v))
                    .collect();
                finals.insert((EVENTUAL.to_owned(), key.as_str().to_owned()), values);
            } else {
                if last_round {
                    tracing::warn!(
                        key = key.as_str(),
                        replicas_read = states.len(),
                        "replicas disagree"
                    );
                }
                unconverged.push(format!("{EVENTUAL}/{}", key.as_str()));
            }
        }
        if unconverged.is_empty() || last_round {
            return Ok((finals, unconverged));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_replica(
    http: &reqwest::Client,
    address: &str,
    partition: PartitionId,
    epoch: kvorum_protocol::Epoch,
    keyspace: &KeyspaceName,
    key: &Key,
) -> anyhow::Result<CausalState> {
    let answer: CausalReadResponse = http
        .post(format!("http://{address}/internal/v1/causal/read"))
        .json(&ReplicaKey {
            partition,
            epoch,
            keyspace: keyspace.clone(),
            key: key.clone(),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(answer.state)
}

fn write_outputs(out: &Path, report: &Report, ops: &[Op], trace_url: &str) -> anyhow::Result<()> {
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(
        out.join("report.html"),
        report::html(report, ops, trace_url),
    )?;
    let mut history = String::new();
    for op in ops {
        history.push_str(&serde_json::to_string(op)?);
        history.push('\n');
    }
    std::fs::write(out.join("history.jsonl"), history)?;
    Ok(())
}

/// The faults a kind list names, for the summary.
pub fn describe_faults(kinds: &[FaultKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;

/// Polls the metadata replicas until, in one round of status calls, every
/// one is a member at the same decided slot with the same state digest, or
/// `bound` passes; with the group's figures either way.
pub(crate) async fn metad_end(
    http: &reqwest::Client,
    addresses: &[String],
    duration_seconds: f64,
    bound: Duration,
) -> report::MetadEnd {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let calls = addresses.iter().map(|address| async move {
            let answer = http
                .get(format!("http://{address}/v1/status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            answer
                .json::<kvorum_protocol::metadata::MetadStatus>()
                .await
                .ok()
        });
        let statuses: Vec<_> = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        let states: std::collections::BTreeSet<(u64, u64)> = statuses
            .iter()
            .map(|s| (s.decided_upto, s.state_digest))
            .collect();
        let members = statuses.iter().filter(|s| s.member).count();
        let converged =
            statuses.len() == addresses.len() && members == statuses.len() && states.len() == 1;
        let timed_out = tokio::time::Instant::now() >= deadline;
        if converged || timed_out {
            let decided_upto = statuses.iter().map(|s| s.decided_upto).max().unwrap_or(0);
            return report::MetadEnd {
                catch_up_ms: Vec::new(),
                converged,
                replicas: statuses.len(),
                members,
                decided_upto,
                entries_per_second: decided_upto as f64 / duration_seconds.max(1.0),
                ballot_round: statuses.iter().map(|s| s.ballot_round).max().unwrap_or(0),
                snapshot_bytes: statuses.iter().map(|s| s.snapshot_bytes).max().unwrap_or(0),
                disagreement: (!converged).then(|| {
                    statuses
                        .iter()
                        .map(|s| {
                            format!(
                                "metad {}: member {}, decided {}, digest {:x}",
                                s.id, s.member, s.decided_upto, s.state_digest
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
