//! The firewall cuts exactly the links it is told to, on real sockets, and
//! leaves no rule behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kvorum_chaos::firewall::{Firewall, Link};
use tokio::net::{TcpListener, TcpSocket};

/// Connects from `from`'s address to `to`; whether it got through within a second.
async fn reaches(from: IpAddr, to: SocketAddr) -> bool {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the source");
    matches!(
        tokio::time::timeout(Duration::from_secs(1), socket.connect(to)).await,
        Ok(Ok(_))
    )
}

async fn tables() -> String {
    let output = tokio::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .await
        .expect("nft runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_cut_link_black_holes_one_pair_and_heals() {
    let subnet = [
        127,
        rand::random_range(1..=254),
        rand::random_range(0..=255),
    ];
    let host = |n| IpAddr::V4(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], n));
    let server = TcpListener::bind(SocketAddr::new(host(2), 0))
        .await
        .expect("listen");
    let address = server.local_addr().expect("address");
    let accepting = tokio::spawn(async move {
        while let Ok((connection, _)) = server.accept().await {
            drop(connection);
        }
    });
    let client = SocketAddr::new(host(1), 40_000);

    let mut firewall = Firewall::open().await.expect("nftables is usable here");
    let table = format!("kvorum_chaos_{}", std::process::id());
    assert!(tables().await.contains(&table));
    assert!(reaches(host(1), address).await, "connected before the cut");
    let chain = firewall
        .drop_links(
            &[Link {
                from: client,
                to: address,
            }],
            None,
        )
        .await
        .expect("cut");
    assert!(
        !reaches(host(1), address).await,
        "the cut link is black-holed"
    );
    assert!(
        reaches(host(3), address).await,
        "another source still gets through"
    );
    firewall.restore(&chain).await.expect("restore");
    assert!(reaches(host(1), address).await, "healed");
    drop(firewall);
    assert!(!tables().await.contains(&table), "the table is gone");
    accepting.abort();
}
