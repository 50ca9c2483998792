//! Network faults between local processes, as nftables rules in a table of
//! this run's own.
//!
//! Every process of a chaos cluster listens on a loopback address of its own
//! and calls out from it, so a packet's addresses and ports say which two
//! processes it travels between. A fault is a base chain on the input hook
//! (packets are dropped on arrival, so the sender sees a black hole, not a
//! refusal) whose rules match only the cluster's addresses *and* its
//! listening ports; healing deletes the chain. The table is deleted when the
//! firewall is dropped (also on an error, a panic or Ctrl-C), and a run
//! deletes the tables of earlier runs that died without cleaning up.

use std::fmt::Write as _;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

/// The prefix of every table a chaos run creates.
const TABLE_PREFIX: &str = "kvorum_chaos_";

/// A directed link whose packets are dropped: everything `from` sends to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The sending process's listening address.
    pub from: SocketAddr,
    /// The receiving process's listening address.
    pub to: SocketAddr,
}

/// This run's nftables table.
#[derive(Debug)]
pub struct Firewall {
    table: String,
    faults: u64,
}

impl Firewall {
    /// Creates this run's table, after deleting those of runs that are gone.
    pub async fn open() -> anyhow::Result<Self> {
        let tables = nft_output(&["list", "tables"]).await.map_err(|error| {
            anyhow::anyhow!(
                "network faults need nftables (apt-get install nftables) and CAP_NET_ADMIN: {error}"
            )
        })?;
        // A table is named after the process that made it (a chaos run, or a
        // test that drives the firewall itself); only a dead owner's is stale.
        for stale in stale_tables(&tables, |pid| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        }) {
            tracing::warn!(
                table = stale,
                "deleting the firewall table of a chaos run that is gone"
            );
            nft_script(&format!("delete table inet {stale}\n")).await?;
        }
        let table = format!("{TABLE_PREFIX}{}", std::process::id());
        nft_script(&format!("add table inet {table}\n")).await?;
        Ok(Self { table, faults: 0 })
    }

    /// Drops the packets of `links` (each with probability `loss_percent`, or
    /// all of them); returns the name to [`Self::restore`] them by.
    pub async fn drop_links(
        &mut self,
        links: &[Link],
        loss_percent: Option<u8>,
    ) -> anyhow::Result<String> {
        self.faults += 1;
        let chain = format!("fault{}", self.faults);
        nft_script(&rules(&self.table, &chain, links, loss_percent)).await?;
        Ok(chain)
    }

    /// Lets the links of one fault through again.
    pub async fn restore(&mut self, chain: &str) -> anyhow::Result<()> {
        nft_script(&format!(
            "flush chain inet {0} {chain}\ndelete chain inet {0} {chain}\n",
            self.table
        ))
        .await
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        // Blocking, because a drop cannot await; it runs once per run.
        match std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output()
        {
            Ok(output) if output.status.success() => {
                tracing::info!(table = self.table, "firewall rules removed");
            }
            Ok(output) => tracing::error!(
                table = self.table,
                error = %String::from_utf8_lossy(&output.stderr).trim(),
                "cannot remove the firewall table; delete it with: nft delete table inet {}",
                self.table
            ),
            Err(error) => tracing::error!(table = self.table, %error, "cannot run nft"),
        }
    }
}

/// The nft script of one fault: a base chain on the input hook and one rule
/// per direction of traffic of each link, so that both the requests `from`
/// makes to `to` and its answers to `to`'s requests are lost.
fn rules(table: &str, chain: &str, links: &[Link], loss_percent: Option<u8>) -> String {
    let mut script = format!(
        "add chain inet {table} {chain} {{ type filter hook input priority -10 ; policy accept ; }}\n"
    );
    let chance = loss_percent.map_or(String::new(), |p| format!(" numgen random mod 100 < {p}"));
    for Link { from, to } in links {
        let (from_ip, to_ip) = (from.ip(), to.ip());
        let _ = writeln!(
            script,
            "add rule inet {table} {chain} ip saddr {from_ip} ip daddr {to_ip} tcp dport {}{chance} drop",
            to.port()
        );
        let _ = writeln!(
            script,
            "add rule inet {table} {chain} ip saddr {from_ip} tcp sport {} ip daddr {to_ip}{chance} drop",
            from.port()
        );
    }
    script
}

/// The tables in `nft list tables` output that earlier chaos runs left behind:
/// ours by name, and of a process that `alive` says is gone.
fn stale_tables(listing: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("table inet "))
        .filter_map(|name| {
            let pid: u32 = name.strip_prefix(TABLE_PREFIX)?.parse().ok()?;
            (!alive(pid)).then(|| name.to_owned())
        })
        .collect()
}

async fn nft_output(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("nft")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "nft {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn nft_script(script: &str) -> anyhow::Result<()> {
    nft_script_in(None, script).await
}

/// Runs an nft script in this process's network namespace, or in that of
/// process `pid` (a container's, through `nsenter`).
pub(crate) async fn nft_script_in(pid: Option<u32>, script: &str) -> anyhow::Result<()> {
    let mut command = match pid {
        None => tokio::process::Command::new("nft"),
        Some(pid) => {
            let mut command = tokio::process::Command::new("nsenter");
            command.args(["--target", &pid.to_string(), "--net", "nft"]);
            command
        }
    };
    let mut child = command
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    anyhow::ensure!(
        output.status.success(),
        "nft refused the rules: {}\n{script}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_only_the_links_addresses_and_ports() {
        let link = Link {
            from: "127.5.6.1:7001".parse().expect("address"),
            to: "127.5.6.2:9001".parse().expect("address"),
        };
        let script = rules("kvorum_chaos_7", "fault1", &[link], None);
        assert!(script.contains("hook input"), "{script}");
        assert!(
            script.contains("ip saddr 127.5.6.1 ip daddr 127.5.6.2 tcp dport 9001 drop"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 127.5.6.1 tcp sport 7001 ip daddr 127.5.6.2 drop"),
            "{script}"
        );
        assert_eq!(script.lines().count(), 3, "{script}");
        let lossy = rules("t", "c", &[link], Some(30));
        assert!(lossy.contains("numgen random mod 100 < 30 drop"), "{lossy}");
    }

    #[test]
    fn only_tables_of_runs_that_are_gone_are_stale() {
        let listing = "table ip nat\ntable inet kvorum_chaos_10\ntable inet kvorum_chaos_11\ntable inet other_12\n";
        assert_eq!(stale_tables(listing, |pid| pid == 11), ["kvorum_chaos_10"]);
    }
}
