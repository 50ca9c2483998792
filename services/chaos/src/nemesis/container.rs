//! A Docker container's process, address, data directory and network
//! namespace, and the network faults made inside that namespace.
//!
//! Rules and traffic shaping go into the container's own namespace (entered
//! with `nsenter`), which Docker created for the run's project: nothing on the
//! host's interfaces changes, and a container that restarts comes back with a
//! clean namespace. The filters match only the addresses of the project's
//! containers.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use super::command;
use crate::firewall::nft_script_in;

/// One running container as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its main process, on the host.
    pub pid: u32,
    /// Its address on the project's network.
    pub ip: IpAddr,
}

/// A container's namespace that holds one fault's rules or shaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// The container.
    pub container: String,
    /// Its process when the fault was made: if it changed, the container
    /// restarted and its namespace holds nothing of the fault any more.
    pub pid: u32,
    /// The nftables table (empty for shaping).
    pub table: String,
}

/// The running container `id`: its process and its address on `network`.
pub async fn inspect(id: &str, network: &str) -> anyhow::Result<Container> {
    let (_, container) = inspect_all(&[id.to_owned()], network)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("container {id} is not running"))?;
    Ok(container)
}

/// Those of containers `ids` that run, in one call, each with its Compose service.
pub async fn inspect_all(
    ids: &[String],
    network: &str,
) -> anyhow::Result<Vec<(String, Container)>> {
    let format = format!(
        "{{{{.Id}}}} {{{{index .Config.Labels \"com.docker.compose.service\"}}}} {{{{.State.Pid}}}} {{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"
    );
    let mut args = vec!["inspect".to_owned(), "--format".to_owned(), format];
    args.extend(ids.iter().cloned());
    let out = command("docker", &args).await?;
    let parsed: anyhow::Result<Vec<_>> = out
        .lines()
        .map(|line| parse_inspect(line, network))
        .collect();
    Ok(parsed?.into_iter().flatten().collect())
}

/// One line of [`inspect_all`]'s output (id, service, pid, address); `None`
/// for a container that does not run.
fn parse_inspect(line: &str, network: &str) -> anyhow::Result<Option<(String, Container)>> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [id, service, pid, ip] = fields[..] else {
        anyhow::bail!("docker inspect said {line:?}");
    };
    let pid: u32 = pid.parse()?;
    if pid == 0 {
        return Ok(None);
    }
    let ip = ip
        .parse()
        .map_err(|e| anyhow::anyhow!("container {service} has no address on {network}: {e}"))?;
    Ok(Some((
        service.to_owned(),
        Container {
            id: id.to_owned(),
            pid,
            ip,
        },
    )))
}

/// Where the volume mounted at `/data` in container `id` lives on the host.
pub async fn data_dir(id: &str) -> anyhow::Result<PathBuf> {
    let out = command(
        "docker",
        &[
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Source}}{{end}}{{end}}",
            id,
        ]
        .map(str::to_owned),
    )
    .await?;
    anyhow::ensure!(!out.is_empty(), "container {id} mounts nothing at /data");
    Ok(PathBuf::from(out))
}

/// Deletes everything under `dir` but the entries named in `keep`.
pub fn wipe(dir: &std::path::Path, keep: &[&str]) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The nft script that drops, in one container's namespace, what arrives
/// from `from` (each packet with probability `loss_percent`, or all).
pub fn drop_from(table: &str, from: &[IpAddr], loss_percent: Option<u8>) -> String {
    let mut script = format!(
        "add table inet {table}\nadd chain inet {table} input {{ type filter hook input priority -10 ; policy accept ; }}\n"
    );
    let chance = loss_percent.map_or(String::new(), |p| format!(" numgen random mod 100 < {p}"));
    let sources: Vec<String> = from.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        script,
        "add rule inet {table} input ip saddr {{ {} }}{chance} drop",
        sources.join(", ")
    );
    script
}

/// Applies `script` in `container`'s namespace.
pub async fn filter(container: &Container, table: &str, script: &str) -> anyhow::Result<Filtered> {
    nft_script_in(Some(container.pid), script).await?;
    Ok(Filtered {
        container: container.id.clone(),
        pid: container.pid,
        table: table.to_owned(),
    })
}

/// Removes one fault's table, unless the container restarted since (then it is gone already).
pub async fn unfilter(filtered: &Filtered, network: &str) -> anyhow::Result<()> {
    if !same_process(filtered, network).await {
        return Ok(());
    }
    nft_script_in(
        Some(filtered.pid),
        &format!("delete table inet {}\n", filtered.table),
    )
    .await
}

/// The shaping a slow link gets: netem's delay where the kernel has netem,
/// else a token bucket that holds the link to 1 Mbit/s.
const SHAPES: [&[&str]; 2] = [
    &["netem", "delay", "150ms", "50ms"],
    &["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "1s"],
];

/// Slows what `container` sends; returns what it applied.
pub async fn shape(container: &Container) -> anyhow::Result<(Filtered, String)> {
    let mut refusals = Vec::new();
    for shape in SHAPES {
        let mut args = in_namespace(container.pid, "tc");
        args.extend(
            ["qdisc", "replace", "dev", "eth0", "root"]
                .iter()
                .chain(shape)
                .map(|a| (*a).to_owned()),
        );
        match command("nsenter", &args).await {
            Ok(_) => {
                let filtered = Filtered {
                    container: container.id.clone(),
                    pid: container.pid,
                    table: String::new(),
                };
                return Ok((filtered, shape.join(" ")));
            }
            Err(error) => refusals.push(format!("{}: {error}", shape[0])),
        }
    }
    anyhow::bail!("the kernel shapes no traffic: {}", refusals.join("; "))
}

/// Takes the shaping off, unless the container restarted since.
pub async fn unshape(filtered: &Filtered, network: &str) -> anyhow::Result<()> {
    if !same_process(filtered, network).await {
        return Ok(());
    }
    let mut args = in_namespace(filtered.pid, "tc");
    args.extend(["qdisc", "del", "dev", "eth0", "root"].map(str::to_owned));
    command("nsenter", &args).await.map(|_| ())
}

fn in_namespace(pid: u32, program: &str) -> Vec<String> {
    vec![
        "--target".to_owned(),
        pid.to_string(),
        "--net".to_owned(),
        program.to_owned(),
    ]
}

async fn same_process(filtered: &Filtered, network: &str) -> bool {
    match inspect(&filtered.container, network).await {
        Ok(now) => now.pid == filtered.pid,
        Err(error) => {
            tracing::info!(container = filtered.container, %error, "the container is gone; nothing to undo");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_lines_name_the_service_and_leave_out_a_stopped_container() {
        let (service, container) = parse_inspect("abc storage-2 4242 172.18.0.5", "n")
            .expect("line")
            .expect("running");
        assert_eq!(service, "storage-2");
        assert_eq!(container.pid, 4242);
        assert_eq!(container.ip.to_string(), "172.18.0.5");
        assert_eq!(
            parse_inspect("abc storage-2 0 ", "n").expect("stopped"),
            None
        );
        assert!(
            parse_inspect("abc storage-2 12 ", "n").is_err(),
            "no address"
        );
        assert!(parse_inspect("abc", "n").is_err(), "garbled");
    }

    #[test]
    fn a_cut_drops_only_what_comes_from_the_named_containers() {
        let from: Vec<IpAddr> = vec![
            "172.18.0.3".parse().expect("ip"),
            "172.18.0.4".parse().expect("ip"),
        ];
        let script = drop_from("kvorum_chaos_fault2", &from, None);
        assert!(script.contains("hook input"), "{script}");
        assert!(
            script.contains("ip saddr { 172.18.0.3, 172.18.0.4 } drop"),
            "{script}"
        );
        assert_eq!(script.lines().count(), 3, "{script}");
        let lossy = drop_from("t", &from[..1], Some(30));
        assert!(
            lossy.contains("ip saddr { 172.18.0.3 } numgen random mod 100 < 30 drop"),
            "{lossy}"
        );
    }

    #[test]
    fn a_wipe_keeps_only_what_it_is_told_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("checkpoints/1")).expect("dir");
        std::fs::create_dir_all(dir.path().join("partitions")).expect("dir");
        std::fs::write(dir.path().join("node.redb"), b"x").expect("file");
        wipe(dir.path(), &["checkpoints"]).expect("wipe");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["checkpoints"]);
        assert!(dir.path().join("checkpoints/1").is_dir());
        wipe(dir.path(), &[]).expect("wipe all");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }
}
