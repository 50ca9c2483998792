//! The kvorumctl binary against a real cluster.

use std::process::Output;

use kvorum_cluster_tests::TestCluster;
use kvorum_launcher::default_bin_dir;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

async fn kvorumctl(
    cluster: &TestCluster,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> anyhow::Result<Output> {
    let mut command = Command::new(default_bin_dir().join("kvorumctl"));
    command
        .arg("--router")
        .arg(cluster.cluster.router_url())
        .args(args)
        .kill_on_drop(true);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default()).await?;
    }
    Ok(child.wait_with_output().await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn kvorumctl_reads_writes_and_describes_the_cluster() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;

    let put = kvorumctl(&cluster, &["--verbose", "put", "users/1", "ada"], None).await?;
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert!(
        text(&put.stderr).contains("x-kvorum-replicas-acked"),
        "the receipt is shown with --verbose"
    );
    let got = kvorumctl(&cluster, &["get", "users/1"], None).await?;
    assert_eq!(
        (got.status.success(), text(&got.stdout)),
        (true, "ada".to_owned())
    );

    let piped = kvorumctl(&cluster, &["put", "blob", "-"], Some(b"from stdin\n")).await?;
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert_eq!(
        kvorumctl(&cluster, &["get", "blob", "--consistency", "all"], None)
            .await?
            .stdout,
        b"from stdin\n"
    );

    assert!(
        kvorumctl(&cluster, &["delete", "users/1"], None)
            .await?
            .status
            .success()
    );
    let gone = kvorumctl(&cluster, &["get", "users/1"], None).await?;
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains("key_not_found"),
        "{}",
        text(&gone.stderr)
    );

    let refused = kvorumctl(&cluster, &["put", "k", "v", "--consistency", "one"], None).await?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("invalid_consistency"),
        "{}",
        text(&refused.stderr)
    );

    let created = kvorumctl(
        &cluster,
        &[
            "keyspace",
            "create",
            "orders",
            "--mode",
            "strong",
            "--replication-factor",
            "1",
            "--read-consistency",
            "one",
        ],
        None,
    )
    .await?;
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(
        text(&created.stdout).contains("orders"),
        "{}",
        text(&created.stdout)
    );
    let eventual = kvorumctl(
        &cluster,
        &[
            "keyspace",
            "create",
            "carts",
            "--mode",
            "eventual",
            "--conflict",
            "siblings",
        ],
        None,
    )
    .await?;
    assert!(eventual.status.success(), "{}", text(&eventual.stderr));
    assert!(
        text(&eventual.stdout).contains("siblings"),
        "{}",
        text(&eventual.stdout)
    );
    let refused = kvorumctl(
        &cluster,
        &[
            "keyspace",
            "create",
            "later",
            "--mode",
            "strong",
            "--conflict",
            "merge",
        ],
        None,
    )
    .await?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("bad_request"),
        "{}",
        text(&refused.stderr)
    );
    let misspelt = kvorumctl(
        &cluster,
        &["keyspace", "create", "x", "--mode", "fast"],
        None,
    )
    .await?;
    assert!(!misspelt.status.success());
    assert!(
        text(&misspelt.stderr).contains("--mode"),
        "{}",
        text(&misspelt.stderr)
    );

    let keyspaces = text(
        &kvorumctl(&cluster, &["keyspace", "list"], None)
            .await?
            .stdout,
    );
    assert!(
        keyspaces.starts_with("KEYSPACE")
            && keyspaces.contains("default")
            && keyspaces.contains("orders")
            && keyspaces.contains("strong"),
        "{keyspaces}"
    );

    let status = text(
        &kvorumctl(&cluster, &["cluster", "status"], None)
            .await?
            .stdout,
    );
    let rows: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 5, "{status}");
    assert!(
        status.starts_with("metadata leader: ")
            && !status.starts_with("metadata leader: none")
            && status.contains("3=127.0.0.1:"),
        "{status}"
    );
    // REPLICAS is the 6th column; over all nodes it adds up to partitions × RF.
    let replicas: usize = rows
        .iter()
        .filter_map(|r| r.split_whitespace().nth(5))
        .filter_map(|c| c.parse::<usize>().ok())
        .sum();
    assert_eq!(replicas, 16 * 3, "{status}");

    // The metadata group's members, found through the router's cluster view.
    let members = kvorumctl(&cluster, &["metad", "members"], None).await?;
    assert!(members.status.success(), "{}", text(&members.stderr));
    let listed = text(&members.stdout);
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert_eq!(
        rows.iter().filter(|r| r.ends_with("leader")).count(),
        1,
        "{listed}"
    );
    // A change that cannot be made is refused with the reason, and changes nothing.
    let refused = kvorumctl(&cluster, &["metad", "replace", "2"], None).await?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("still has its store"),
        "{}",
        text(&refused.stderr)
    );

    // Decommission a node and wait for it to drain.
    let drained = kvorumctl(&cluster, &["node", "decommission", "5", "--wait"], None).await?;
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    let status = text(
        &kvorumctl(&cluster, &["cluster", "status"], None)
            .await?
            .stdout,
    );
    let node5 = status
        .lines()
        .find(|l| l.starts_with("5 "))
        .unwrap_or_default()
        .to_owned();
    assert!(node5.contains("decommissioned"), "{status}");
    assert!(
        status.contains("recent recoveries") && status.contains("rebalance"),
        "the moves off node 5 are listed: {status}"
    );
    let refused = kvorumctl(
        &cluster,
        &["node", "add", "7", "--address", "nowhere"],
        None,
    )
    .await?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("host:port"),
        "{}",
        text(&refused.stderr)
    );
    Ok(())
}
