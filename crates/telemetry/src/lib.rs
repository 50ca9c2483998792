//! Telemetry for every Kvorum binary, initialised once in `main`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), in a human or a
//! JSON format. This is also the one place where span export by OTLP is
//! switched on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The standard OpenTelemetry variable naming the OTLP collector.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The logging flags every service takes.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: human or json.
    #[arg(long, env = "KVORUM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` holds a directive that does not parse.
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("telemetry was already initialised: {0}")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber for `service`; call once, first thing in `main`.
pub fn init(service: &'static str, args: &LogArgs) -> Result<(), TelemetryError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::new("info"),
    };
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    if let Ok(endpoint) = std::env::var(OTLP_ENDPOINT_VAR) {
        // Span export is wired in here (observability issue); until then say so
        // plainly rather than let a user wait for traces that never come.
        tracing::warn!(%endpoint, "{OTLP_ENDPOINT_VAR} is set, but this build does not export spans yet");
    }
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        "telemetry ready"
    );
    Ok(())
}

/// Panics naming every flag of `command` that has no environment variable.
///
/// Each binary's tests call it, so that "every flag can also be set by an
/// environment variable" cannot silently stop being true.
pub fn assert_every_flag_has_an_env(command: &clap::Command) {
    let missing: Vec<String> = command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter(|arg| arg.get_env().is_none())
        .map(|arg| arg.get_id().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "{} flags without an environment variable: {missing:?}",
        command.get_name()
    );
}
