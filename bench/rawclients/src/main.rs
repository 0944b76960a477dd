//! `benchraw`: the load generator and the baselines of the benchmark harness (bench/run).
//!
//! Every command prints machine-readable lines on stdout: `progress <count> <unix seconds>`
//! while it works and one `result <json>` line at the end, so the harness times every
//! tool the same way (by polling counts), whatever it is.

mod cleanup;
mod count;
mod microbench;
mod payload;
mod progress;
mod publish;
mod subscribe;
mod write;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "benchraw",
    about = "ingestd benchmark baselines and load tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// PUBLISH generated events (same shape as `ingestd publish`), pipelined.
    Publish(publish::PublishArgs),
    /// A bare redis-rs subscriber that only counts messages (the ingest baseline).
    Subscribe(subscribe::SubscribeArgs),
    /// Write generated events straight into one store with its driver (the sink baseline).
    Write(write::WriteArgs),
    /// Count what a run left in the stores.
    Count(count::CountArgs),
    /// Drop what a run created in the shared stores.
    Cleanup(cleanup::CleanupArgs),
    /// Time ingestd's event decoder against a single-pass prototype.
    MicrobenchDecode(microbench::MicrobenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Publish(arguments) => publish::run(arguments).await,
            Command::Subscribe(arguments) => subscribe::run(arguments).await,
            Command::Write(arguments) => write::run(arguments).await,
            Command::Count(arguments) => count::run(arguments).await,
            Command::Cleanup(arguments) => cleanup::run(arguments).await,
            Command::MicrobenchDecode(arguments) => microbench::run(arguments).await,
        }
    })
}
