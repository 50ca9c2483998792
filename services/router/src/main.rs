//! `kvorum-router` binary: parse flags, start telemetry, check the flags, bind, run.

use clap::Parser;
use kvorum_router::RouterConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RouterConfig::parse();
    let _telemetry = kvorum_telemetry::init("kvorum-router", &config.log)?;
    // Refuse bad settings before binding, so nothing half-starts.
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --listen {}: {e}", config.listen))?;
    let shutdown = kvorum_server::shutdown_on_signal();
    kvorum_router::run(config, listener, shutdown).await?;
    Ok(())
}
