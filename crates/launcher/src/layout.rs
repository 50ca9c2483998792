//! The layout file: a local cluster's sizes and addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use kvorum_protocol::ClusterSettings;
use serde::{Deserialize, Serialize};

use crate::{ClusterSpec, LAYOUT_FILE, LaunchError, free_port_on, io};

/// A local cluster's sizes and addresses, pinned in the data directory so that
/// a restart finds every process where the others expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Layout {
    pub(crate) partitions: u32,
    pub(crate) replication_factor: usize,
    pub(crate) router: SocketAddr,
    /// Routers after the first.
    #[serde(default)]
    pub(crate) more_routers: Vec<SocketAddr>,
    pub(crate) metad: BTreeMap<u64, SocketAddr>,
    pub(crate) storage: Vec<SocketAddr>,
    #[serde(default)]
    pub(crate) detectors: Vec<SocketAddr>,
    #[serde(default)]
    pub(crate) recovery: Vec<SocketAddr>,
    /// How many of the last storage entries are standbys.
    #[serde(default)]
    pub(crate) standbys: usize,
    /// Whether each process has a loopback address of its own.
    #[serde(default)]
    pub(crate) own_addresses: bool,
}

impl Layout {
    /// The cluster settings the metadata replicas propose: the map waits for every node.
    pub(crate) fn settings(&self) -> ClusterSettings {
        ClusterSettings {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            bootstrap_nodes: self.storage.len() - self.standbys,
        }
    }

    /// Every router, the first one first.
    pub(crate) fn routers(&self) -> Vec<SocketAddr> {
        std::iter::once(self.router)
            .chain(self.more_routers.iter().copied())
            .collect()
    }

    /// Every address the layout holds.
    fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.routers()
            .into_iter()
            .chain(self.metad.values().copied())
            .chain(self.storage.iter().copied())
            .chain(self.detectors.iter().copied())
            .chain(self.recovery.iter().copied())
    }

    /// Where one more process goes: a free port on 127.0.0.1, or, with
    /// addresses of their own, on the next loopback address after the others.
    pub(crate) fn next_address(&self) -> Result<SocketAddr, LaunchError> {
        let ip = if self.own_addresses {
            let highest = self
                .addresses()
                .filter_map(|a| match a.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                })
                .max()
                .ok_or_else(|| LaunchError::Invalid("the layout holds no address".into()))?;
            let [a, b, c, d] = highest.octets();
            let next = d.checked_add(1).filter(|d| *d < 255).ok_or_else(|| {
                LaunchError::Invalid(format!("no loopback address is left after {highest}"))
            })?;
            IpAddr::V4(Ipv4Addr::new(a, b, c, next))
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        Ok(SocketAddr::new(ip, free_port_on(ip)?))
    }

    fn describe(&self) -> String {
        format!(
            "{} storage nodes from {}, {} metadata replicas from {}, {} detectors, {} routers from {}, RF {}, {} partitions",
            self.storage.len(),
            self.storage
                .first()
                .map_or("?".to_owned(), ToString::to_string),
            self.metad.len(),
            self.metad
                .values()
                .next()
                .map_or("?".to_owned(), ToString::to_string),
            self.detectors.len(),
            1 + self.more_routers.len(),
            self.router,
            self.replication_factor,
            self.partitions
        )
    }
}

/// Hands out the hosts of a new layout: 127.0.0.1 for every process, or one
/// loopback address per process in a /24 of 127.0.0.0/8 picked at random (so
/// that two clusters started at once rarely share one).
struct Hosts {
    subnet: Option<[u8; 3]>,
    next: u8,
}

impl Hosts {
    fn new(own_addresses: bool) -> Self {
        Self {
            subnet: own_addresses.then(|| {
                [
                    127,
                    rand::random_range(1..=254),
                    rand::random_range(0..=255),
                ]
            }),
            next: 1,
        }
    }

    fn next(&mut self) -> Result<IpAddr, LaunchError> {
        let Some([a, b, c]) = self.subnet else {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        };
        if self.next == 255 {
            return Err(LaunchError::Invalid(
                "more than 254 processes need addresses of their own".into(),
            ));
        }
        let ip = Ipv4Addr::new(a, b, c, self.next);
        self.next += 1;
        Ok(IpAddr::V4(ip))
    }
}

/// Writes the layout file, or checks that an existing one matches the spec.
pub(crate) fn prepare_layout(spec: &ClusterSpec) -> Result<Layout, LaunchError> {
    let path = spec.data_dir.join(LAYOUT_FILE);
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        let existing: Layout =
            serde_json::from_str(&text).map_err(|e| LaunchError::ShapeMismatch {
                path: path.clone(),
                dir: spec.data_dir.clone(),
                found: format!("unreadable: {e}"),
            })?;
        let ports_from = |base: u16, addresses: &mut dyn Iterator<Item = &SocketAddr>| {
            base == 0
                || addresses
                    .enumerate()
                    .all(|(i, a)| usize::from(a.port()) == usize::from(base) + i)
        };
        let same_shape = existing.storage.len() == spec.nodes + spec.standbys
            && existing.standbys == spec.standbys
            && existing.detectors.len() == spec.detectors
            && existing.recovery.len() == spec.recovery
            && existing.metad.len() as u64 == spec.metad_replicas
            && 1 + existing.more_routers.len() == spec.routers
            && existing.own_addresses == spec.own_addresses
            && existing.partitions == spec.partitions
            && existing.replication_factor == spec.replication_factor;
        let same_ports = ports_from(spec.storage_base_port, &mut existing.storage.iter())
            && ports_from(spec.metad_base_port, &mut existing.metad.values())
            && ports_from(spec.router_port, &mut std::iter::once(&existing.router))
            && ports_from(spec.detector_base_port, &mut existing.detectors.iter())
            && ports_from(spec.recovery_base_port, &mut existing.recovery.iter());
        if same_shape && same_ports {
            return Ok(existing);
        }
        return Err(LaunchError::ShapeMismatch {
            path,
            dir: spec.data_dir.clone(),
            found: existing.describe(),
        });
    }
    if spec.routers == 0 {
        return Err(LaunchError::Invalid("at least one router is needed".into()));
    }
    let mut hosts = Hosts::new(spec.own_addresses);
    let mut address = |base: u16, index: usize| -> Result<SocketAddr, LaunchError> {
        let ip = hosts.next()?;
        let port = if base == 0 {
            free_port_on(ip)?
        } else {
            base.checked_add(u16::try_from(index).unwrap_or(u16::MAX))
                .ok_or_else(|| {
                    LaunchError::Invalid(format!("port {base} + {index} is above 65535"))
                })?
        };
        Ok(SocketAddr::new(ip, port))
    };
    let metad = (0..spec.metad_replicas)
        .map(|i| Ok((i + 1, address(spec.metad_base_port, i as usize)?)))
        .collect::<Result<_, LaunchError>>()?;
    let storage = (0..spec.nodes + spec.standbys)
        .map(|i| address(spec.storage_base_port, i))
        .collect::<Result<_, LaunchError>>()?;
    let routers = (0..spec.routers)
        .map(|i| address(spec.router_port, i))
        .collect::<Result<Vec<_>, LaunchError>>()?;
    let detectors = (0..spec.detectors)
        .map(|i| address(spec.detector_base_port, i))
        .collect::<Result<_, LaunchError>>()?;
    let recovery = (0..spec.recovery)
        .map(|i| address(spec.recovery_base_port, i))
        .collect::<Result<_, LaunchError>>()?;
    let layout = Layout {
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
        router: routers[0],
        more_routers: routers[1..].to_vec(),
        metad,
        storage,
        standbys: spec.standbys,
        detectors,
        recovery,
        own_addresses: spec.own_addresses,
    };
    layout
        .settings()
        .validate()
        .map_err(|e| LaunchError::Invalid(e.to_string()))?;
    let text =
        serde_json::to_string_pretty(&layout).map_err(|e| LaunchError::Invalid(e.to_string()))?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(dir: &Path, nodes: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            storage_base_port: 17_001,
            metad_base_port: 17_101,
            router_port: 17_200,
            detector_base_port: 17_300,
            recovery_base_port: 17_400,
            ..ClusterSpec::for_tests(dir)
        }
    }

    #[test]
    fn a_data_directory_keeps_its_layout_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = prepare_layout(&spec(dir.path(), 5)).expect("first start");
        let again = prepare_layout(&spec(dir.path(), 5)).expect("restart");
        assert_eq!(first, again);
        assert_eq!(first.storage[4].to_string(), "127.0.0.1:17005");
        assert_eq!(first.metad[&3].to_string(), "127.0.0.1:17103");
        assert_eq!(first.settings().bootstrap_nodes, 5);
        // Free ports are picked once, then kept.
        let free = tempfile::tempdir().expect("tempdir");
        let picked = prepare_layout(&ClusterSpec::for_tests(free.path())).expect("free ports");
        let kept = prepare_layout(&ClusterSpec::for_tests(free.path())).expect("restart");
        assert_eq!(picked, kept);
    }

    #[test]
    fn own_addresses_give_every_process_its_loopback_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ClusterSpec {
            own_addresses: true,
            routers: 2,
            ..ClusterSpec::for_tests(dir.path())
        };
        let layout = prepare_layout(&spec).expect("layout");
        let all: Vec<SocketAddr> = layout.addresses().collect();
        let mut ips: Vec<IpAddr> = all.iter().map(SocketAddr::ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), all.len(), "one address per process: {all:?}");
        assert!(ips.iter().all(IpAddr::is_loopback), "{ips:?}");
        assert_eq!(layout.routers().len(), 2);
        let next = layout.next_address().expect("room for more");
        assert!(!ips.contains(&next.ip()), "{next} is new");
        assert_eq!(prepare_layout(&spec).expect("restart"), layout);
        let shared = ClusterSpec {
            own_addresses: false,
            routers: 2,
            ..ClusterSpec::for_tests(dir.path())
        };
        assert!(
            prepare_layout(&shared).is_err(),
            "the addressing is part of the shape"
        );
    }

    #[test]
    fn a_data_directory_refuses_another_cluster_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare_layout(&spec(dir.path(), 5)).expect("first start");
        let moved = ClusterSpec {
            metad_base_port: 18_000,
            ..spec(dir.path(), 5)
        };
        assert!(prepare_layout(&moved).is_err(), "other metadata ports");
        let error = prepare_layout(&spec(dir.path(), 7)).expect_err("different shape");
        assert!(
            error.to_string().contains("describes a different cluster"),
            "{error}"
        );
    }
}
