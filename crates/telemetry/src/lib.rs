//! Telemetry for every Kvorum binary, initialised once in `main`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), in a human or a
//! JSON format. Spans are exported by OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set; the other `OTEL_*` variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`) apply as the
//! OpenTelemetry SDK defines them. W3C `traceparent` is injected into every
//! outgoing call ([`inject_context`]) and extracted from every incoming one
//! ([`set_parent_from`]), so one client request is one trace across services.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The standard OpenTelemetry variable naming the OTLP collector.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard variable naming the collector for traces alone.
pub const OTLP_TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

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
    /// The OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("cannot export spans by OTLP: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps span export running; dropping it flushes the spans not yet sent.
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "spans may have been lost at exit");
        }
    }
}

fn otlp_endpoint() -> Option<String> {
    [OTLP_TRACES_ENDPOINT_VAR, OTLP_ENDPOINT_VAR]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

/// The tracer provider exporting to the configured collector, named `service`
/// unless `OTEL_SERVICE_NAME` says otherwise.
fn tracer_provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the global subscriber for `service`; call once, first thing in
/// `main`, and keep the returned guard until the process ends.
pub fn init(service: &'static str, args: &LogArgs) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::new("info"),
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let endpoint = otlp_endpoint();
    let provider = endpoint
        .as_ref()
        .map(|_| tracer_provider(service))
        .transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
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
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        otlp = endpoint.as_deref().unwrap_or("off"),
        "telemetry ready"
    );
    Ok(Telemetry { provider })
}

/// Writes the current span's trace context into `headers` as W3C `traceparent`.
pub fn inject_context(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
    });
}

/// Makes `span` a child of the trace context `headers` carry, if any.
pub fn set_parent_from(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` in hex, when it is being traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The flag value that asks for a member id derived from the host name.
pub const FROM_HOSTNAME: &str = "from-hostname";

/// Parses a member id flag (`--id`, `--node-id`): a number from 1, or
/// `from-hostname`, which takes a StatefulSet pod's ordinal (the number after
/// the last `-` of `$HOSTNAME`, as in `kvorum-storage-2`) plus one, so that one
/// pod template gives every replica its own id.
pub fn parse_member_id(text: &str) -> Result<u64, String> {
    if text == FROM_HOSTNAME {
        let hostname = std::env::var("HOSTNAME").unwrap_or_default();
        return id_from_pod_name(&hostname);
    }
    match text.parse::<u64>() {
        Ok(id) if id >= 1 => Ok(id),
        _ => Err(format!(
            "{text:?} is not an id of 1 or more, nor {FROM_HOSTNAME}"
        )),
    }
}

/// The member id of the StatefulSet pod `name`: its ordinal plus one.
pub fn id_from_pod_name(name: &str) -> Result<u64, String> {
    name.rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
        .and_then(|ordinal| ordinal.checked_add(1))
        .ok_or_else(|| {
            format!("host name {name:?} does not end in -<ordinal> as a StatefulSet pod's does")
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_numbers_or_a_pod_ordinal_plus_one() {
        assert_eq!(parse_member_id("3"), Ok(3));
        assert!(parse_member_id("0").is_err());
        assert!(parse_member_id("three").is_err());
        assert_eq!(id_from_pod_name("kvorum-storage-0"), Ok(1));
        assert_eq!(id_from_pod_name("kvorum-metad-2"), Ok(3));
        for bad in ["", "kvorum", "kvorum-storage-x", "storage-"] {
            assert!(id_from_pod_name(bad).is_err(), "{bad}");
        }
    }
}
