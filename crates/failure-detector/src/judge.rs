//! From suspicion levels to node states.
//!
//! A node is suspect once its φ reaches the threshold, and down once it has
//! stayed suspect for the grace period; it is up again as soon as φ falls below
//! the threshold (its heartbeats are back). The judge starts from the state the
//! cluster records, so a detector that starts, or takes over from another,
//! does not first declare every node up.

use kvorum_protocol::cluster::NodeState;

/// Settings of a [`Judge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JudgeConfig {
    /// φ at which a node becomes suspect.
    pub threshold: f64,
    /// How long a node stays suspect before it is declared down, in milliseconds.
    pub grace_ms: u64,
}

/// A change of a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: NodeState,
    /// The state now.
    pub to: NodeState,
}

/// The verdict on one node.
#[derive(Debug, Clone)]
pub struct Judge {
    config: JudgeConfig,
    state: NodeState,
    suspect_since_ms: Option<u64>,
}

impl Judge {
    /// A judge of a node the cluster currently records as `state`.
    pub fn new(config: JudgeConfig, state: NodeState, now_ms: u64) -> Self {
        Self {
            config,
            state,
            suspect_since_ms: (state == NodeState::Suspect).then_some(now_ms),
        }
    }

    /// The current verdict.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// Weighs the suspicion `phi` at `now_ms`; returns the transition, if any.
    pub fn observe(&mut self, phi: f64, now_ms: u64) -> Option<Transition> {
        let from = self.state;
        let to = match from {
            // Only an operator's decision ends a decommission.
            NodeState::Decommissioned => return None,
            _ if phi < self.config.threshold => NodeState::Up,
            NodeState::Up => NodeState::Suspect,
            NodeState::Suspect => {
                let since = *self.suspect_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= self.config.grace_ms {
                    NodeState::Down
                } else {
                    NodeState::Suspect
                }
            }
            NodeState::Down => NodeState::Down,
        };
        if to == NodeState::Suspect && from != NodeState::Suspect {
            self.suspect_since_ms = Some(now_ms);
        }
        if to != NodeState::Suspect {
            self.suspect_since_ms = None;
        }
        self.state = to;
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: JudgeConfig = JudgeConfig {
        threshold: 8.0,
        grace_ms: 1500,
    };

    #[test]
    fn silence_makes_a_node_suspect_then_down_after_the_grace() {
        let mut judge = Judge::new(CONFIG, NodeState::Up, 0);
        assert_eq!(judge.observe(1.0, 0), None);
        assert_eq!(
            judge.observe(8.0, 100),
            Some(Transition {
                from: NodeState::Up,
                to: NodeState::Suspect
            })
        );
        assert_eq!(judge.observe(50.0, 1599), None, "still within the grace");
        assert_eq!(
            judge.observe(60.0, 1600),
            Some(Transition {
                from: NodeState::Suspect,
                to: NodeState::Down
            })
        );
        assert_eq!(judge.observe(100.0, 9000), None);
        assert_eq!(
            judge.observe(0.3, 9500),
            Some(Transition {
                from: NodeState::Down,
                to: NodeState::Up
            }),
            "heartbeats are back"
        );
    }

    #[test]
    fn a_pause_shorter_than_the_grace_is_only_suspicion() {
        let mut judge = Judge::new(CONFIG, NodeState::Up, 0);
        judge.observe(9.0, 1000);
        assert_eq!(judge.observe(12.0, 2000), None);
        assert_eq!(
            judge.observe(0.5, 2400),
            Some(Transition {
                from: NodeState::Suspect,
                to: NodeState::Up
            })
        );
        // A later suspicion starts its own grace period.
        judge.observe(9.0, 10_000);
        assert_eq!(judge.observe(9.0, 11_000), None);
        assert_eq!(judge.state(), NodeState::Suspect);
    }

    #[test]
    fn a_judge_starts_from_the_recorded_state() {
        // A node recorded down stays down while it is silent: a new detector does
        // not declare it up first.
        let mut judge = Judge::new(CONFIG, NodeState::Down, 0);
        assert_eq!(judge.observe(20.0, 100), None);
        let mut suspect = Judge::new(CONFIG, NodeState::Suspect, 0);
        assert_eq!(suspect.observe(20.0, 1499), None);
        assert!(suspect.observe(20.0, 1500).is_some());
    }

    #[test]
    fn decommissioned_nodes_are_left_alone() {
        let mut judge = Judge::new(CONFIG, NodeState::Decommissioned, 0);
        assert_eq!(judge.observe(0.0, 10), None);
        assert_eq!(judge.observe(100.0, 5000), None);
    }
}
