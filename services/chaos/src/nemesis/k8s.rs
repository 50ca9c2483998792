//! Faults on a Kubernetes deployment.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::{FaultKind, Heal, command, leader_from_router};

/// Faults on a Kubernetes deployment, through `kubectl`: pods are deleted, as a
/// user's chaos test does, and Kubernetes recreates them.
#[derive(Debug)]
pub struct K8sNemesis {
    /// The namespace.
    pub namespace: String,
    /// Delete with `--grace-period=0 --force`.
    pub force: bool,
    /// Storage pods, `kvorum-storage-0` ...
    pub storage_pods: Vec<String>,
}

impl K8sNemesis {
    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["--namespace".to_owned(), self.namespace.clone()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        command("kubectl", &all).await
    }

    async fn delete(&self, target: &str) -> anyhow::Result<()> {
        let mut args = vec!["delete", target, "--wait=false"];
        if self.force {
            args.extend(["--grace-period=0", "--force"]);
        }
        self.kubectl(&args).await.map(drop)
    }

    pub(super) async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        router: &str,
    ) -> anyhow::Result<(String, Heal)> {
        let pod = match kind {
            FaultKind::KillStorage | FaultKind::TermStorage => {
                self.storage_pods[rng.random_range(0..self.storage_pods.len())].clone()
            }
            // StatefulSet ordinals start at 0, metad ids at 1.
            FaultKind::KillMetadLeader => {
                format!(
                    "kvorum-metad-{}",
                    leader_from_router(router).await?.saturating_sub(1)
                )
            }
            FaultKind::KillRecovery => {
                let pods = self
                    .kubectl(&[
                        "get",
                        "pods",
                        "-l",
                        "app.kubernetes.io/name=kvorum-recovery",
                        "-o",
                        "name",
                    ])
                    .await?;
                let pods: Vec<&str> = pods.lines().collect();
                anyhow::ensure!(!pods.is_empty(), "no recovery controller pods");
                pods[rng.random_range(0..pods.len())]
                    .trim_start_matches("pod/")
                    .to_owned()
            }
            // Which faults a backend offers is said once, in ChaosConfig::validate.
            other => {
                anyhow::bail!("{} is not available on Kubernetes", other.name())
            }
        };
        self.delete(&format!("pod/{pod}")).await?;
        Ok((format!("pod {pod}"), Heal::PodReady(pod)))
    }

    pub(super) async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::PodReady(pod) => {
                // A Deployment's replacement has a new name: wait for the whole set instead.
                let target = if pod.starts_with("kvorum-recovery") {
                    "deployment/kvorum-recovery".to_owned()
                } else {
                    format!("pod/{pod}")
                };
                if target.starts_with("deployment") {
                    self.kubectl(&["rollout", "status", &target, "--timeout=180s"])
                        .await?;
                } else {
                    // The recreated pod may not exist yet; wait until it does and is ready.
                    let deadline = std::time::Instant::now() + Duration::from_secs(180);
                    loop {
                        match self
                            .kubectl(&["wait", "--for=condition=Ready", &target, "--timeout=10s"])
                            .await
                        {
                            Ok(_) => break,
                            Err(error) if std::time::Instant::now() >= deadline => {
                                return Err(error);
                            }
                            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                        }
                    }
                }
                Ok(())
            }
            other => anyhow::bail!("{other:?} does not heal a Kubernetes fault"),
        }
    }
}
