//! `kvorum-chaos` binary: parse flags, run the scenario, print the summary; exit 1 unless it passed.

use clap::Parser;
use kvorum_chaos::config::ChaosConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ChaosConfig::parse();
    let _telemetry = kvorum_telemetry::init("kvorum-chaos", &config.log)?;
    config.validate().map_err(anyhow::Error::msg)?;
    tracing::info!(
        faults = %kvorum_chaos::run::describe_faults(&config.faults),
        out = %config.out.display(),
        "chaos run configured"
    );
    // On SIGINT or SIGTERM the run is dropped: its cluster is killed and its
    // firewall rules removed on the way out.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let report = tokio::select! {
        report = kvorum_chaos::run::run(&config) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the cluster is stopped and the firewall rules removed"),
        _ = terminate.recv() => anyhow::bail!("terminated; the cluster is stopped and the firewall rules removed"),
    };
    tracing::info!(
        report = %config.out.join("report.html").display(),
        "\n{}",
        report.summary()
    );
    anyhow::ensure!(
        report.valid && report.passed,
        "the chaos run did not pass; see {}",
        config.out.join("report.html").display()
    );
    Ok(())
}
