//! A history: the operations clients invoked, with when they returned and what they saw.

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    /// It returned `output` at time `at`.
    Returned {
        /// What the client was told.
        output: O,
        /// When the answer arrived, on the same clock as invocations.
        at: u64,
    },
    /// No answer (a timeout, a crash, an "outcome unknown" error): the operation
    /// may have taken effect at any moment after its invocation, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client (process) that issued it.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// When it was invoked.
    pub invoked: u64,
    /// How it ended.
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// The output, if the operation returned.
    pub fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Returned { output, .. } => Some(output),
            Outcome::Unknown => None,
        }
    }

    /// When the operation returned; `u64::MAX` when it never did.
    pub fn returned(&self) -> u64 {
        match &self.outcome {
            Outcome::Returned { at, .. } => *at,
            Outcome::Unknown => u64::MAX,
        }
    }
}

/// A history of keyed operations, as recorded.
pub type KeyedHistory<K, I, O> = [(K, Operation<I, O>)];
