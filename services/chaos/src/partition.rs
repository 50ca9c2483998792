//! Which links a network fault cuts, free of I/O: a grudge, in Jepsen's
//! word, is the set of directed links whose packets are dropped.

use std::collections::BTreeSet;

use kvorum_launcher::{ProcessInfo, ProcessKind};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::nemesis::FaultKind;

/// Directed links `(from, to)` between processes (indices into the process
/// list) whose packets are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grudge(pub BTreeSet<(usize, usize)>);

impl Grudge {
    /// Cuts `a` and `b` apart, both ways.
    fn cut_both_ways(&mut self, a: usize, b: usize) {
        self.0.insert((a, b));
        self.0.insert((b, a));
    }

    /// Whether packets from `from` to `to` get through.
    pub fn passes(&self, from: usize, to: usize) -> bool {
        !self.0.contains(&(from, to))
    }

    /// `node` cut off from every other process.
    pub fn isolate(count: usize, node: usize) -> Self {
        let mut grudge = Self::default();
        for other in (0..count).filter(|o| *o != node) {
            grudge.cut_both_ways(node, other);
        }
        grudge
    }

    /// Every side cut off from every other side; processes on no side keep all their links.
    pub fn sides(sides: &[Vec<usize>]) -> Self {
        let mut grudge = Self::default();
        for (i, side) in sides.iter().enumerate() {
            for other in &sides[i + 1..] {
                for a in side {
                    for b in other {
                        grudge.cut_both_ways(*a, *b);
                    }
                }
            }
        }
        grudge
    }

    /// Packets from `node` to every other process are dropped; packets to it still arrive.
    pub fn mute(count: usize, node: usize) -> Self {
        Self(
            (0..count)
                .filter(|o| *o != node)
                .map(|o| (node, o))
                .collect(),
        )
    }
}

/// Two sides of a split: the processes of each kind dealt out alternately, at
/// random, so that each side gets a router when there are two, and the first
/// side (the majority) gets the larger half of each kind.
pub fn halves(processes: &[ProcessInfo], rng: &mut StdRng) -> [Vec<usize>; 2] {
    let mut sides = [Vec::new(), Vec::new()];
    for kind in [
        ProcessKind::Metad,
        ProcessKind::Storage,
        ProcessKind::Router,
        ProcessKind::Detector,
        ProcessKind::Recovery,
    ] {
        let mut of_kind: Vec<usize> = (0..processes.len())
            .filter(|i| processes[*i].kind == kind)
            .collect();
        of_kind.shuffle(rng);
        for (n, index) in of_kind.into_iter().enumerate() {
            sides[n % 2].push(index);
        }
    }
    sides
}

/// Two sides and a bridge between them: one metadata replica and one storage
/// node that see both sides, while the sides do not see each other.
pub fn bridge(processes: &[ProcessInfo], rng: &mut StdRng) -> ([Vec<usize>; 2], Vec<usize>) {
    let mut bridge = Vec::new();
    for kind in [ProcessKind::Metad, ProcessKind::Storage] {
        let of_kind: Vec<usize> = (0..processes.len())
            .filter(|i| processes[*i].kind == kind)
            .collect();
        if of_kind.len() >= 3 {
            bridge.push(of_kind[rng.random_range(0..of_kind.len())]);
        }
    }
    let [a, b] = halves(processes, rng);
    let keep = |side: Vec<usize>| side.into_iter().filter(|i| !bridge.contains(i)).collect();
    ([keep(a), keep(b)], bridge)
}

/// What network fault `kind` cuts among `processes`: its grudge, the share of
/// packets dropped (all when `None`), and a description. `storage` is the
/// storage node a one-node fault strikes; `muted` the process a one-way cut
/// silences (the storage node when `None`).
pub fn plan(
    kind: FaultKind,
    processes: &[ProcessInfo],
    storage: usize,
    muted: Option<usize>,
    rng: &mut StdRng,
) -> anyhow::Result<(Grudge, Option<u8>, String)> {
    let names = |side: &[usize]| {
        side.iter()
            .map(|i| processes[*i].name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let count = processes.len();
    let victim = &processes[storage].name;
    Ok(match kind {
        FaultKind::PartitionStorage => (
            Grudge::isolate(count, storage),
            None,
            format!("{victim} isolated"),
        ),
        FaultKind::PartitionHalves => {
            let [a, b] = halves(processes, rng);
            let target = format!("[{}] | [{}]", names(&a), names(&b));
            (Grudge::sides(&[a, b]), None, target)
        }
        FaultKind::PartitionBridge => {
            let ([a, b], bridge) = bridge(processes, rng);
            let target = format!(
                "[{}] | [{}] bridged by [{}]",
                names(&a),
                names(&b),
                names(&bridge)
            );
            (Grudge::sides(&[a, b]), None, target)
        }
        FaultKind::PartitionOneWay => {
            let muted = muted.unwrap_or(storage);
            (
                Grudge::mute(count, muted),
                None,
                format!(
                    "{} unheard (it still hears the others)",
                    processes[muted].name
                ),
            )
        }
        FaultKind::LossyLinks => (
            Grudge::isolate(count, storage),
            Some(30),
            format!("{victim} loses 30% of its packets"),
        ),
        other => anyhow::bail!("{} does not cut links", other.name()),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rand::SeedableRng;

    use super::*;

    fn cluster() -> Vec<ProcessInfo> {
        let mut all = Vec::new();
        let kinds = [
            (ProcessKind::Metad, 3),
            (ProcessKind::Storage, 5),
            (ProcessKind::Router, 2),
            (ProcessKind::Detector, 1),
            (ProcessKind::Recovery, 2),
        ];
        for (kind, count) in kinds {
            for i in 0..count {
                all.push(ProcessInfo {
                    kind,
                    name: format!("{kind:?}-{i}"),
                    address: SocketAddr::from(([127, 0, 0, all.len() as u8 + 1], 7000)),
                });
            }
        }
        all
    }

    // The seed is printed, so that a failure can be replayed.
    #[allow(clippy::print_stderr)]
    fn seeded() -> (u64, StdRng) {
        let seed = std::env::var("KVORUM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("seed {seed} (replay with KVORUM_TEST_SEED={seed})");
        (seed, StdRng::seed_from_u64(seed))
    }

    #[test]
    fn an_isolated_node_neither_sends_nor_hears() {
        let grudge = Grudge::isolate(4, 2);
        for other in [0, 1, 3] {
            assert!(!grudge.passes(2, other) && !grudge.passes(other, 2));
        }
        assert!(grudge.passes(0, 1) && grudge.passes(3, 0));
    }

    #[test]
    fn a_muted_node_hears_but_is_not_heard() {
        let grudge = Grudge::mute(3, 0);
        assert!(!grudge.passes(0, 1) && !grudge.passes(0, 2));
        assert!(grudge.passes(1, 0) && grudge.passes(2, 1));
    }

    #[test]
    fn halves_split_every_kind_with_the_larger_half_first() {
        let processes = cluster();
        let (seed, mut rng) = seeded();
        for _ in 0..50 {
            let [a, b] = halves(&processes, &mut rng);
            assert_eq!(a.len() + b.len(), processes.len(), "seed {seed}");
            let count =
                |side: &[usize], kind| side.iter().filter(|i| processes[**i].kind == kind).count();
            assert_eq!(count(&a, ProcessKind::Metad), 2, "seed {seed}");
            assert_eq!(count(&a, ProcessKind::Storage), 3, "seed {seed}");
            assert_eq!(count(&a, ProcessKind::Router), 1, "seed {seed}");
            assert_eq!(count(&b, ProcessKind::Router), 1, "seed {seed}");
            let grudge = Grudge::sides(&[a.clone(), b.clone()]);
            for x in &a {
                for y in &b {
                    assert!(!grudge.passes(*x, *y) && !grudge.passes(*y, *x));
                }
                for y in &a {
                    assert!(grudge.passes(*x, *y));
                }
            }
        }
    }

    #[test]
    fn a_bridge_sees_both_sides_that_do_not_see_each_other() {
        let processes = cluster();
        let (seed, mut rng) = seeded();
        for _ in 0..50 {
            let ([a, b], bridge) = bridge(&processes, &mut rng);
            assert_eq!(bridge.len(), 2, "seed {seed}");
            assert_eq!(
                a.len() + b.len() + bridge.len(),
                processes.len(),
                "seed {seed}"
            );
            let grudge = Grudge::sides(&[a.clone(), b.clone()]);
            for x in &bridge {
                for y in a.iter().chain(&b) {
                    assert!(
                        grudge.passes(*x, *y) && grudge.passes(*y, *x),
                        "seed {seed}"
                    );
                }
            }
            assert!(a.iter().all(|x| b.iter().all(|y| !grudge.passes(*x, *y))));
        }
    }
}
