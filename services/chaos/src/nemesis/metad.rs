//! Metadata replicas seen from outside, on any backend: their status, the
//! `metad replace` that takes a wiped replica back, and the wait until a
//! restarted or replaced replica has caught up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a restarted or replaced replica may take to catch up.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);

/// A metadata replica's own status, if it answers.
pub(super) async fn status(address: &str) -> Option<kvorum_protocol::metadata::MetadStatus> {
    let response = reqwest::Client::new()
        .get(format!("http://{address}/v1/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// The most any replica but `id` has decided (`addresses` by replica id).
pub(super) async fn peers_decided(addresses: &BTreeMap<u64, String>, id: u64) -> u64 {
    let mut most = 0;
    for (other, address) in addresses {
        if *other != id
            && let Some(status) = status(address).await
        {
            most = most.max(status.decided_upto);
        }
    }
    most
}

/// Waits until the replica at `address` is a member that decided `target`;
/// returns how long that took from `started`, in milliseconds.
pub(super) async fn wait_caught_up(
    address: &str,
    id: u64,
    target: u64,
    started: Instant,
) -> anyhow::Result<f64> {
    let deadline = started + CATCH_UP_BOUND;
    loop {
        if let Some(status) = status(address).await
            && status.member
            && status.decided_upto >= target
        {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(metad = id, catch_up_ms = ms, "metad replica caught up");
            return Ok(ms);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "metad {id} did not catch up to slot {target} within {} s",
            CATCH_UP_BOUND.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks the metadata group to take back replica `id` in its new life
/// (through any replica; a follower sends it on to the leader), until one
/// takes it; [`wait_caught_up`] then waits for the replica.
pub(super) async fn replace(addresses: &BTreeMap<u64, String>, id: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = tokio::time::Instant::now() + CATCH_UP_BOUND;
    loop {
        for address in addresses.values() {
            let url = format!("http://{address}/v1/members/{id}/replace");
            match http.post(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    tracing::debug!(status = %response.status(), %url, "replace not taken yet");
                }
                Err(error) => tracing::debug!(%error, %url, "replace not taken yet"),
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no metad replica took the replacement of {id} within {} s",
            CATCH_UP_BOUND.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
