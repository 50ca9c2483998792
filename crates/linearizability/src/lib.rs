//! A linearizability checker for histories of a key-value store.
//!
//! - [`history`]: operations as a client saw them: invoked, then returned or unknown.
//! - [`model`]: the sequential specification an operation is checked against, and
//!   [`model::Register`], the model of a Kvorum key.
//! - [`search`]: Wing and Gong's search for a linearization, with Lowe's memoisation.
//! - [`check`]: per-key checking of a whole history and the smallest failing piece.
//! - [`edn`]: reading Jepsen-style EDN histories, and their append model.
//!
//! References: J. M. Wing and C. Gong, "Testing and Verifying Concurrent Objects",
//! JPDC 1993; G. Lowe, "Testing for Linearizability", CCPE 2017; the Porcupine
//! checker (A. Athalye) for the treatment of operations with unknown outcome.

pub mod check;
pub mod edn;
pub mod history;
pub mod model;
pub mod search;

pub use check::{Counterexample, Verdict, check_per_key};
pub use history::{Operation, Outcome};
pub use model::{Model, Register, RegisterInput};
pub use search::{is_linearizable, search};
