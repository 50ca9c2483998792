//! Faults on a Docker Compose cluster.

use rand::Rng;
use rand::rngs::StdRng;

use super::{FaultKind, Heal, command, leader_from_router};

/// Faults on a Docker Compose cluster, through `docker-compose` and `docker`.
#[derive(Debug)]
pub struct DockerNemesis {
    /// `docker-compose` and its project and file flags.
    pub compose: Vec<String>,
    /// The project's network, where partitions cut containers off.
    pub network: String,
    /// Storage services, `storage-1` ...
    pub storage: Vec<String>,
}

impl DockerNemesis {
    async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<String> = self.compose[1..].to_vec();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        command(&self.compose[0], &all).await
    }

    pub(super) async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        router: &str,
    ) -> anyhow::Result<(String, Heal)> {
        let service = self.storage[rng.random_range(0..self.storage.len())].clone();
        match kind {
            FaultKind::KillStorage => {
                self.compose(&["kill", &service]).await?;
                Ok((service.clone(), Heal::ComposeStart(service)))
            }
            FaultKind::TermStorage => {
                self.compose(&["stop", "--timeout", "10", &service]).await?;
                Ok((service.clone(), Heal::ComposeStart(service)))
            }
            FaultKind::PauseStorage => {
                self.compose(&["pause", &service]).await?;
                Ok((service.clone(), Heal::ComposeUnpause(service)))
            }
            FaultKind::PartitionStorage => {
                let container = self.compose(&["ps", "-q", &service]).await?;
                command(
                    "docker",
                    &[
                        "network",
                        "disconnect",
                        "--force",
                        &self.network,
                        &container,
                    ]
                    .map(str::to_owned),
                )
                .await?;
                Ok((
                    format!("{service} (partitioned)"),
                    Heal::Reconnect {
                        container,
                        network: self.network.clone(),
                        service,
                    },
                ))
            }
            FaultKind::KillMetadLeader => {
                let service = format!("metad-{}", leader_from_router(router).await?);
                self.compose(&["kill", &service]).await?;
                Ok((format!("{service} (leader)"), Heal::ComposeStart(service)))
            }
            FaultKind::KillRecovery => {
                self.compose(&["kill", "recovery"]).await?;
                Ok((
                    "recovery".to_owned(),
                    Heal::ComposeStart("recovery".to_owned()),
                ))
            }
            FaultKind::KillTwoStorage => {
                let mut others: Vec<&String> =
                    self.storage.iter().filter(|s| **s != service).collect();
                anyhow::ensure!(
                    !others.is_empty(),
                    "kill-two-storage needs two storage nodes"
                );
                let second = others
                    .swap_remove(rng.random_range(0..others.len()))
                    .clone();
                self.compose(&["kill", &service, &second]).await?;
                Ok((
                    format!("{service} and {second}"),
                    Heal::All(vec![
                        Heal::ComposeStart(service),
                        Heal::ComposeStart(second),
                    ]),
                ))
            }
            FaultKind::KillStorageAndMetadLeader => {
                let leader = format!("metad-{}", leader_from_router(router).await?);
                self.compose(&["kill", &service, &leader]).await?;
                Ok((
                    format!("{service} and {leader} (leader)"),
                    Heal::All(vec![
                        Heal::ComposeStart(leader),
                        Heal::ComposeStart(service),
                    ]),
                ))
            }
            // Which faults a backend offers is said once, in ChaosConfig::validate.
            other => {
                anyhow::bail!("{} needs the process backend", other.name())
            }
        }
    }

    pub(super) async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::All(heals) => {
                for heal in heals {
                    Box::pin(self.heal(heal)).await?;
                }
            }
            Heal::ComposeStart(service) => {
                self.compose(&["start", &service]).await?;
            }
            Heal::ComposeUnpause(service) => {
                self.compose(&["unpause", &service]).await?;
            }
            Heal::Reconnect {
                container,
                network,
                service,
            } => {
                command(
                    "docker",
                    &[
                        "network", "connect", "--alias", &service, &network, &container,
                    ]
                    .map(str::to_owned),
                )
                .await?;
            }
            other => anyhow::bail!("{other:?} does not heal a Docker fault"),
        }
        Ok(())
    }
}
