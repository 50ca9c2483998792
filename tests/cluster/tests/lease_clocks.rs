//! Leases under stepped clocks: two failure detectors run under libfaketime,
//! and neither a standby whose wall clock jumps ahead nor a holder whose clock
//! falls behind moves the lease. metad compares lease expiries on the clock of
//! the replica that proposes the request, never on the requester's.

use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_launcher::{ClusterSpec, DEFAULT_LIBFAKETIME};
use kvorum_metad_client::MetadClient;
use kvorum_protocol::detector::DETECTOR_LEASE;
use kvorum_protocol::metadata::Lease;

async fn lease(metad: &MetadClient) -> anyhow::Result<Option<Lease>> {
    Ok(metad.state().await?.leases.get(DETECTOR_LEASE).cloned())
}

/// Watches the lease for `window` (longer than the lease itself): it must
/// stay with `holder` at `epoch` and keep being renewed.
async fn stays(metad: &MetadClient, held: &Lease, window: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + window;
    let mut last_expiry = held.expires_at_ms;
    while Instant::now() < until {
        let now = lease(metad)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the lease vanished"))?;
        anyhow::ensure!(
            now.holder == held.holder && now.epoch == held.epoch,
            "the lease moved from {held:?} to {now:?}"
        );
        last_expiry = last_expiry.max(now.expires_at_ms);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::ensure!(
        last_expiry > held.expires_at_ms,
        "the holder stopped renewing: still {held:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepped_clocks_of_lease_holders_do_not_move_the_lease() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        detectors: 2,
        fake_clocks: Some(DEFAULT_LIBFAKETIME.into()),
        ..ClusterSpec::for_tests(dir.path())
    };
    let cluster = TestCluster::start_spec_in(dir, spec).await?;
    let metad = cluster.metad_client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        if let Some(held) = lease(&metad).await? {
            break held;
        }
        anyhow::ensure!(Instant::now() < deadline, "no detector took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let addresses = cluster.cluster.detector_addresses();
    let holder = addresses
        .iter()
        .position(|a| a.to_string() == held.holder)
        .ok_or_else(|| anyhow::anyhow!("{held:?} names no detector of {addresses:?}"))?;
    let standby = 1 - holder;
    let clocks = cluster
        .cluster
        .clocks()
        .ok_or_else(|| anyhow::anyhow!("the cluster has no fake clocks"))?;
    let name = |index: usize| format!("detector-{}", index + 1);

    // A standby two minutes ahead sees the lease as long lapsed.
    clocks.set_offset(&name(standby), 120.0)?;
    stays(&metad, &held, Duration::from_secs(8)).await?;
    clocks.set_offset(&name(standby), 0.0)?;

    // A holder two minutes behind asks for expiries long past.
    clocks.set_offset(&name(holder), -120.0)?;
    stays(&metad, &held, Duration::from_secs(8)).await?;
    clocks.set_offset(&name(holder), 0.0)?;
    Ok(())
}
