//! `kvorum-recovery` binary: parse flags, start telemetry, check the flags, bind, run.

use clap::Parser;
use kvorum_recovery::RecoveryConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RecoveryConfig::parse();
    let _telemetry = kvorum_telemetry::init("kvorum-recovery", &config.log)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --listen {}: {e}", config.listen))?;
    let shutdown = kvorum_server::shutdown_on_signal();
    kvorum_recovery::run(config, listener, shutdown).await?;
    Ok(())
}
