//! `kvorum-storage` binary: parse flags, start telemetry, bind, run until SIGINT or SIGTERM.

use clap::Parser;
use kvorum_storage::StorageConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = StorageConfig::parse();
    let _telemetry = kvorum_telemetry::init("kvorum-storage", &config.log)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --listen {}: {e}", config.listen))?;
    let shutdown = kvorum_server::shutdown_on_signal();
    kvorum_storage::run(config, listener, shutdown).await?;
    Ok(())
}
