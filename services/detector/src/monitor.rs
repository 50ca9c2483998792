//! Every monitored process's arrival history and verdict; pure, driven by the service's clock.

use std::collections::BTreeMap;

use kvorum_failure_detector::{Judge, JudgeConfig, PhiAccrual, PhiConfig, Transition};
use kvorum_protocol::NodeId;
use kvorum_protocol::cluster::NodeState;
use kvorum_protocol::detector::{Suspicion, SuspicionReport};

/// A monitored process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A storage node (or standby), by id.
    Node(NodeId),
    /// A metadata replica, by address.
    Metad(String),
}

/// A process to monitor, as the cluster describes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Which process.
    pub target: Target,
    /// Where to heartbeat it.
    pub address: String,
    /// The state the cluster records for it (seeds a new judge).
    pub recorded: NodeState,
}

#[derive(Debug, Clone)]
struct Watched {
    address: String,
    history: PhiAccrual,
    judge: Judge,
}

/// The arrival histories and verdicts of every monitored process.
#[derive(Debug, Clone)]
pub struct Monitor {
    phi: PhiConfig,
    judge: JudgeConfig,
    watched: BTreeMap<Target, Watched>,
    transitions: u64,
}

impl Monitor {
    /// A monitor with nothing to watch yet.
    pub fn new(phi: PhiConfig, judge: JudgeConfig) -> Self {
        Self {
            phi,
            judge,
            watched: BTreeMap::new(),
            transitions: 0,
        }
    }

    /// Makes the watched set `wanted`: new processes start with an arrival at
    /// `now_ms` (so that silence from the start counts) and a verdict equal to
    /// what the cluster records; moved ones keep their history; gone ones are dropped.
    pub fn set_targets(&mut self, wanted: &[Wanted], now_ms: u64) {
        self.watched
            .retain(|target, _| wanted.iter().any(|w| &w.target == target));
        for want in wanted {
            let watched = self.watched.entry(want.target.clone()).or_insert_with(|| {
                let mut history = PhiAccrual::new(self.phi);
                history.heartbeat(now_ms);
                Watched {
                    address: want.address.clone(),
                    history,
                    judge: Judge::new(self.judge, want.recorded, now_ms),
                }
            });
            watched.address.clone_from(&want.address);
        }
    }

    /// Every watched process and its address.
    pub fn targets(&self) -> Vec<(Target, String)> {
        self.watched
            .iter()
            .map(|(t, w)| (t.clone(), w.address.clone()))
            .collect()
    }

    /// Records a heartbeat of `target` that arrived at `now_ms`.
    pub fn heartbeat(&mut self, target: &Target, now_ms: u64) {
        if let Some(watched) = self.watched.get_mut(target) {
            watched.history.heartbeat(now_ms);
        }
    }

    /// Judges every process at `now_ms`; returns the changes of verdict.
    pub fn evaluate(&mut self, now_ms: u64) -> Vec<(Target, Transition)> {
        let mut changes = Vec::new();
        for (target, watched) in &mut self.watched {
            let phi = watched.history.phi(now_ms);
            if let Some(transition) = watched.judge.observe(phi, now_ms) {
                changes.push((target.clone(), transition));
            }
        }
        self.transitions += changes.len() as u64;
        changes
    }

    /// The verdict on every storage node.
    pub fn node_verdicts(&self) -> Vec<(NodeId, NodeState)> {
        self.watched
            .iter()
            .filter_map(|(target, watched)| match target {
                Target::Node(id) => Some((*id, watched.judge.state())),
                Target::Metad(_) => None,
            })
            .collect()
    }

    /// The report `GET /v1/suspicion` serves.
    pub fn report(&self, now_ms: u64, active: bool) -> SuspicionReport {
        let mut report = SuspicionReport {
            active,
            nodes: Vec::new(),
            metad: Vec::new(),
            transitions: self.transitions,
        };
        for (target, watched) in &self.watched {
            let suspicion = Suspicion {
                node: match target {
                    Target::Node(id) => Some(*id),
                    Target::Metad(_) => None,
                },
                address: watched.address.clone(),
                phi: watched.history.phi(now_ms),
                state: watched.judge.state(),
                since_heartbeat_ms: watched
                    .history
                    .last_arrival_ms()
                    .map(|at| now_ms.saturating_sub(at)),
            };
            match target {
                Target::Node(_) => report.nodes.push(suspicion),
                Target::Metad(_) => report.metad.push(suspicion),
            }
        }
        report
    }
}

/// The verdicts to report, with no more than a minority of the watched storage
/// nodes down at once: a detector that loses most nodes together is far more
/// likely cut off itself than watching a majority fail, and reporting them all
/// down would have the recovery controller tear the cluster apart.
///
/// `verdicts` are this detector's; `recorded` is what the metadata service
/// holds. Nodes recorded down keep their slot until the metadata service
/// records them up again (even when this detector already sees them up: its
/// "up" may not be applied before a new "down"); new downs take the remaining
/// slots in id order, and the rest are reported suspect instead. Returns the
/// verdicts to report and how many were held back.
pub fn cap_downs(
    verdicts: &[(NodeId, NodeState)],
    recorded: &BTreeMap<NodeId, NodeState>,
) -> (Vec<(NodeId, NodeState)>, usize) {
    let watched = verdicts.len();
    let cap = watched.saturating_sub(1) / 2;
    let mut down = verdicts
        .iter()
        .filter(|(id, _)| recorded.get(id) == Some(&NodeState::Down))
        .count();
    let mut held_back = 0;
    let capped = verdicts
        .iter()
        .map(|&(id, verdict)| {
            if verdict != NodeState::Down || recorded.get(&id) == Some(&NodeState::Down) {
                return (id, verdict);
            }
            if down < cap {
                down += 1;
                (id, verdict)
            } else {
                held_back += 1;
                (id, NodeState::Suspect)
            }
        })
        .collect();
    (capped, held_back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_a_minority_of_the_nodes_is_reported_down() {
        use NodeState::{Down, Suspect, Up};
        let nodes = |states: &[NodeState]| -> Vec<(NodeId, NodeState)> {
            states
                .iter()
                .enumerate()
                .map(|(i, s)| (NodeId(i as u64 + 1), *s))
                .collect()
        };
        /// Verdicts, recorded states, states reported, downs held back.
        type Case<'a> = (&'a [NodeState], &'a [NodeState], &'a [NodeState], usize);
        let table: [Case; 6] = [
            // Two of five down: a minority, reported as seen.
            (
                &[Down, Down, Up, Up, Up],
                &[Up; 5],
                &[Down, Down, Up, Up, Up],
                0,
            ),
            // Five of five silent: the detector is the likely cause; two go down.
            (
                &[Down; 5],
                &[Up; 5],
                &[Down, Down, Suspect, Suspect, Suspect],
                3,
            ),
            // Already recorded down keeps its slot; a newcomer fills the last one.
            (
                &[Down, Down, Down, Up, Up],
                &[Up, Up, Down, Up, Up],
                &[Down, Suspect, Down, Up, Up],
                1,
            ),
            // A recorded-down node seen up again keeps its slot until metad
            // records it up: its "up" and a new "down" may apply in either order.
            (
                &[Down, Down, Up, Down, Up],
                &[Up, Up, Down, Up, Up],
                &[Down, Suspect, Up, Suspect, Up],
                2,
            ),
            // Three nodes: one may be down.
            (&[Down, Down, Up], &[Up; 3], &[Down, Suspect, Up], 1),
            // One node alone is never reported down by its only watcher.
            (&[Down], &[Up], &[Suspect], 1),
        ];
        for (verdicts, recorded, reported, held) in table {
            let recorded: BTreeMap<NodeId, NodeState> = nodes(recorded).into_iter().collect();
            let (capped, held_back) = cap_downs(&nodes(verdicts), &recorded);
            assert_eq!(
                (capped, held_back),
                (nodes(reported), held),
                "{verdicts:?} over {recorded:?}"
            );
        }
    }

    fn monitor() -> Monitor {
        Monitor::new(
            PhiConfig::for_interval(500),
            JudgeConfig {
                threshold: 8.0,
                grace_ms: 1500,
            },
        )
    }

    fn node(id: u64, recorded: NodeState) -> Wanted {
        Wanted {
            target: Target::Node(NodeId(id)),
            address: format!("127.0.0.1:{}", 7000 + id),
            recorded,
        }
    }

    #[test]
    fn a_silent_node_goes_suspect_then_down_while_a_beating_one_stays_up() {
        let mut monitor = monitor();
        monitor.set_targets(&[node(1, NodeState::Up), node(2, NodeState::Up)], 0);
        let mut changes = Vec::new();
        for now in (100..=4000).step_by(100) {
            if now % 500 == 0 {
                monitor.heartbeat(&Target::Node(NodeId(1)), now);
            }
            changes.extend(
                monitor
                    .evaluate(now)
                    .into_iter()
                    .map(|(t, c)| (now, t, c.to)),
            );
        }
        let target = Target::Node(NodeId(2));
        // Silent since 0, judged by the seed distribution 500 ± 125 ms: phi passes 8
        // at about μ + 5.2σ = 1150 ms, so suspect at the 1200 ms evaluation, down 1.5 s later.
        assert_eq!(
            changes,
            vec![
                (1200, target.clone(), NodeState::Suspect),
                (2700, target, NodeState::Down)
            ]
        );
        assert_eq!(
            monitor.node_verdicts(),
            vec![(NodeId(1), NodeState::Up), (NodeId(2), NodeState::Down)]
        );
        let report = monitor.report(4000, true);
        assert_eq!(report.transitions, 2);
        assert!(report.nodes[1].phi > 8.0 && report.nodes[0].phi < 1.0);
    }

    #[test]
    fn targets_follow_the_cluster_and_keep_their_history() {
        let mut monitor = monitor();
        monitor.set_targets(&[node(1, NodeState::Down)], 0);
        monitor.heartbeat(&Target::Node(NodeId(1)), 400);
        let moved = Wanted {
            address: "storage-1.kvorum:7001".into(),
            ..node(1, NodeState::Up)
        };
        monitor.set_targets(&[moved], 500);
        let report = monitor.report(500, false);
        assert_eq!(report.nodes.len(), 1);
        assert_eq!(report.nodes[0].address, "storage-1.kvorum:7001");
        assert_eq!(
            report.nodes[0].since_heartbeat_ms,
            Some(100),
            "history kept"
        );
        assert_eq!(
            report.nodes[0].state,
            NodeState::Down,
            "a known node keeps its verdict"
        );
        assert_eq!(
            monitor.evaluate(600),
            vec![(
                Target::Node(NodeId(1)),
                Transition {
                    from: NodeState::Down,
                    to: NodeState::Up
                }
            )]
        );
        monitor.set_targets(&[], 700);
        assert!(monitor.targets().is_empty());
    }
}
