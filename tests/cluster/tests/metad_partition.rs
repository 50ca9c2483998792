//! A metadata replica cut off by a real network partition (nftables rules on
//! loopback addresses of its own) for many election timeouts rejoins without
//! an election: pre-vote keeps it from raising its ballot while it cannot
//! reach a majority, so the leader it returns to is not deposed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kvorum_chaos::firewall::{Firewall, Link};
use kvorum_launcher::{MetadGroup, default_bin_dir, free_port_on};
use kvorum_protocol::metadata::MetadStatus;

async fn status(http: &reqwest::Client, address: SocketAddr) -> Option<MetadStatus> {
    http.get(format!("http://{address}/v1/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Polls every replica until `done` holds for the statuses of all of them.
async fn until(
    http: &reqwest::Client,
    addresses: &BTreeMap<u64, SocketAddr>,
    what: &str,
    done: impl Fn(&BTreeMap<u64, MetadStatus>) -> bool,
) -> anyhow::Result<BTreeMap<u64, MetadStatus>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = BTreeMap::new();
        for (id, address) in addresses {
            if let Some(s) = status(http, *address).await {
                statuses.insert(*id, s);
            }
        }
        if statuses.len() == addresses.len() && done(&statuses) {
            return Ok(statuses);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not {what} within 30 s: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_rejoins_without_an_election() -> anyhow::Result<()> {
    let subnet = [
        127,
        rand::random_range(1..=254),
        rand::random_range(0..=255),
    ];
    let addresses: BTreeMap<u64, SocketAddr> = (1..=3)
        .map(|id| {
            let ip = IpAddr::V4(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], id as u8));
            Ok((id, SocketAddr::new(ip, free_port_on(ip)?)))
        })
        .collect::<anyhow::Result<_>>()?;
    let dir = tempfile::tempdir()?;
    let _group = MetadGroup::start_at(
        dir.path(),
        addresses.clone(),
        None,
        &default_bin_dir(),
        "info",
        &BTreeMap::new(),
        None,
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let settled = until(&http, &addresses, "led by one replica", |s| {
        let leaders: Vec<u64> = s.values().filter_map(|s| s.leader).collect();
        leaders.len() == 3 && leaders.iter().all(|l| *l == leaders[0])
    })
    .await?;
    let leader = settled.values().find_map(|s| s.leader).expect("a leader");
    let round = settled[&leader].ballot_round;
    let cut_off = *addresses
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");

    let mut firewall = Firewall::open().await?;
    let links: Vec<Link> = addresses
        .iter()
        .filter(|(id, _)| **id != cut_off)
        .flat_map(|(_, other)| {
            [
                Link {
                    from: addresses[&cut_off],
                    to: *other,
                },
                Link {
                    from: *other,
                    to: addresses[&cut_off],
                },
            ]
        })
        .collect();
    let chain = firewall.drop_links(&links, None).await?;
    // The cut-off replica notices it hears no leader; its election timer has
    // fired by then, and keeps firing while the partition lasts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if status(&http, addresses[&cut_off])
            .await
            .is_some_and(|s| !s.hears_leader)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cut-off replica still hears a leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The partition lasts many election timeouts (ticks of 50 ms, timeouts of
    // 10 to 20 ticks): this is the fault's length, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let isolated = status(&http, addresses[&cut_off])
        .await
        .ok_or_else(|| anyhow::anyhow!("the cut-off replica does not answer"))?;
    assert_eq!(
        isolated.ballot_round, round,
        "the cut-off replica raised its ballot: {isolated:?}"
    );
    firewall.restore(&chain).await?;

    let after = until(&http, &addresses, "back to one leader heard by all", |s| {
        s.values()
            .all(|s| s.leader == Some(leader) && s.hears_leader)
    })
    .await?;
    for (id, s) in &after {
        assert_eq!(
            s.ballot_round, round,
            "replica {id} saw an election after the partition healed: {s:?}"
        );
    }
    Ok(())
}
