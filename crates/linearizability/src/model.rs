//! Sequential specifications: what one operation does to a state, and what it may return.

use std::fmt::Debug;

use crate::history::Operation;
use std::hash::Hash;

/// The sequential behaviour operations are checked against.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash + Debug;
    /// What an operation asks.
    type Input: Debug;
    /// What an operation returns.
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` takes effect in `state` and returns `output`, or
    /// `None` if it cannot return that output there. `output` is `None` for an
    /// operation whose outcome is unknown: then any output is possible.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether an operation never changes the state (used to shrink counterexamples).
    fn is_read_only(&self, input: &Self::Input) -> bool;

    /// Whether a read that returned `output` may have observed the effect of
    /// `write`; a shrunk counterexample keeps such writes, so that a stale read is
    /// shown with the write it missed and the write it saw.
    fn observes(&self, read: &Self::Input, output: &Self::Output, write: &Self::Input) -> bool;
}

/// An operation of the kind `M` specifies.
pub type ModelOperation<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// An operation on one key of Kvorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterInput {
    /// PUT a value.
    Put(Vec<u8>),
    /// DELETE the key.
    Delete,
    /// GET the key; its output is the value, or `None` for 404.
    Get,
}

/// A Kvorum key: absent, or holding bytes. PUT sets, DELETE clears, GET reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

impl Model for Register {
    type State = Option<Vec<u8>>;
    type Input = RegisterInput;
    /// For a GET, the value read (`None` = not found); ignored for writes.
    type Output = Option<Vec<u8>>;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State> {
        match input {
            RegisterInput::Put(value) => Some(Some(value.clone())),
            RegisterInput::Delete => Some(None),
            RegisterInput::Get => match output {
                Some(seen) if seen != state => None,
                _ => Some(state.clone()),
            },
        }
    }

    fn is_read_only(&self, input: &Self::Input) -> bool {
        matches!(input, RegisterInput::Get)
    }

    fn observes(&self, read: &Self::Input, output: &Self::Output, write: &Self::Input) -> bool {
        match (read, output, write) {
            (RegisterInput::Get, Some(seen), RegisterInput::Put(value)) => seen == value,
            (RegisterInput::Get, None, RegisterInput::Delete) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_reads_what_was_last_written() {
        let register = Register;
        let written = register
            .step(&None, &RegisterInput::Put(b"a".to_vec()), None)
            .expect("put");
        assert_eq!(written, Some(b"a".to_vec()));
        assert!(
            register
                .step(&written, &RegisterInput::Get, Some(&Some(b"a".to_vec())))
                .is_some()
        );
        assert!(
            register
                .step(&written, &RegisterInput::Get, Some(&None))
                .is_none()
        );
        assert!(
            register.step(&written, &RegisterInput::Get, None).is_some(),
            "an unknown read allows anything"
        );
        let deleted = register
            .step(&written, &RegisterInput::Delete, None)
            .expect("delete");
        assert!(
            register
                .step(&deleted, &RegisterInput::Get, Some(&None))
                .is_some()
        );
    }
}
