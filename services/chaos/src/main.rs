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
    let report = kvorum_chaos::run::run(&config).await?;
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
