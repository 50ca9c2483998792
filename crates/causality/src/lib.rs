//! Causality for eventual keyspaces, free of I/O.
//!
//! - [`vector`]: version vectors and dots, and the context token clients carry.
//! - [`state`]: a key's causal state — concurrent siblings, each with its dot,
//!   plus the context of everything the state has seen — with the write and
//!   join operations (dotted version vectors in the form of Almeida et al.,
//!   "Scalable and Accurate Causality Tracking for Eventually Consistent Stores").
//! - [`clock`]: the hybrid logical clock that stamps siblings for `lww`.
//! - [`resolve`]: the conflict strategies `lww`, `merge` and `siblings`.

pub mod clock;
pub mod resolve;
pub mod state;
pub mod vector;

pub use clock::HybridClock;
pub use resolve::{ConflictStrategy, Resolution, resolve};
pub use state::{CausalState, InvalidState, Sibling};
pub use vector::{ContextTokenError, Dot, VersionVector};
