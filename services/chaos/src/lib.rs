//! `kvorum-chaos`: a recorded workload, a nemesis, checkers and a report.
//!
//! - [`config`]: flags and environment.
//! - [`history`]: the recorded operations and faults.
//! - [`workload`]: concurrent clients against the router's REST API.
//! - [`nemesis`]: faults on local processes, containers and pods.
//! - [`partition`]: which links a network fault cuts, free of I/O.
//! - [`firewall`]: nftables rules that cut them.
//! - [`scenario`]: when faults happen (periodic or scripted).
//! - [`check`]: linearizability, lost writes and validity, free of I/O.
//! - [`report`]: the JSON report and the HTML page.
//! - [`plots`]: the page's charts, drawn with plotters.
//! - [`run`]: one whole run.

pub mod check;
pub mod config;
pub mod firewall;
pub mod history;
pub mod nemesis;
pub mod partition;
pub mod plots;
pub mod report;
pub mod run;
pub mod scenario;
pub mod workload;
