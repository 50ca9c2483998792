//! `kvorum-metad` binary: parse flags, start telemetry, check them, bind, run until SIGINT or SIGTERM.

use clap::Parser;
use kvorum_metad::MetadConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = MetadConfig::parse();
    let _telemetry = kvorum_telemetry::init("kvorum-metad", &config.log)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --listen {}: {e}", config.listen))?;
    let shutdown = kvorum_server::shutdown_on_signal();
    kvorum_metad::run(config, listener, shutdown).await?;
    Ok(())
}
