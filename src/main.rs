//! The `ingestd` command line: `run`, `check`, `publish`, `dead-letter`, `top`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ingestd::app::{App, RunOutcome};
use ingestd::config::{self, Config, LoadedConfig, SourceKind};
use ingestd::sinks::leaderboard::LeaderboardReader;
use ingestd::{deadletter, publish, redis_client, telemetry};

#[derive(Parser)]
#[command(
    name = "ingestd",
    version,
    about = "Redis events in; MongoDB, Cassandra, DynamoDB and Redis aggregates out"
)]
struct Cli {
    #[command(flatten)]
    files: ConfigFiles,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigFiles {
    /// Config file (default: ./ingestd.toml when present).
    #[arg(long, global = true, env = "INGESTD_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Directory of pipeline files; each NAME.toml defines pipeline NAME.
    #[arg(
        long,
        global = true,
        default_value = "pipelines",
        env = "INGESTD_PIPELINES_DIR"
    )]
    pipelines: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM/SIGINT (a second signal exits at once).
    Run,
    /// Validate the configuration and print every problem as `file: key: reason`.
    Check,
    /// Publish generated events (valid and/or malformed) to a channel.
    Publish(PublishArgs),
    /// Inspect or replay the dead-letter stream.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Print a leaderboard's top N.
    Top {
        /// Board name, e.g. `purchases`.
        board: String,
        /// UTC day `yyyy-mm-dd` (default: today).
        #[arg(long)]
        day: Option<String>,
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
    },
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, default_value = "events")]
    channel: String,
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Fraction of malformed messages, cycling through every reason code.
    #[arg(long, default_value_t = 0.0)]
    malformed_ratio: f64,
    #[arg(long, default_value_t = 1_000)]
    users: u64,
    #[arg(long, default_value = "purchase")]
    event_type: String,
    /// Prefix of event ids (`{prefix}-{n}`); default: a per-run value.
    #[arg(long)]
    id_prefix: Option<String>,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Print entries as JSON lines.
    List {
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Only entries with this reason (e.g. `not_json`, `retries_exhausted`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Publish entries back to their channel and remove them from the stream.
    Replay {
        #[arg(long, default_value_t = usize::MAX)]
        count: usize,
        #[arg(long)]
        reason: Option<String>,
        /// Publish to this channel instead of each entry's own.
        #[arg(long)]
        channel: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config::load(cli.files.config.as_deref(), &cli.files.pipelines) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            eprintln!(
                "ingestd: invalid configuration ({} problem(s))",
                error.problems.len()
            );
            return ExitCode::from(2);
        }
    };
    if let Command::Check = cli.command {
        print_check(&loaded);
        return ExitCode::SUCCESS;
    }
    telemetry::logging::init(&loaded.config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run_command(cli.command, loaded.config));
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("ingestd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_check(loaded: &LoadedConfig) {
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    println!(
        "configuration ok: {}",
        if files.is_empty() {
            "defaults only".to_string()
        } else {
            files.join(", ")
        }
    );
    println!("redis: {}", loaded.config.redis.url);
    for (name, pipeline) in &loaded.config.pipelines {
        let sinks: Vec<String> = pipeline
            .sinks
            .iter()
            .map(|(sink_name, sink)| format!("{sink_name} ({})", sink.kind()))
            .collect();
        println!(
            "pipeline {name}: channels {:?} patterns {:?} -> {}",
            pipeline.channels,
            pipeline.patterns,
            sinks.join(", ")
        );
    }
}

async fn run_command(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check => unreachable!("handled before the runtime starts"),
        Command::Run => run(config).await,
        Command::Publish(arguments) => {
            let mut connection = redis_client::connection_manager(&config.redis).await?;
            let plan = publish::PublishPlan {
                channel: arguments.channel,
                count: arguments.count,
                rate: arguments.rate,
                malformed_ratio: arguments.malformed_ratio.clamp(0.0, 1.0),
                users: arguments.users,
                event_type: arguments.event_type,
                id_prefix: arguments
                    .id_prefix
                    .unwrap_or_else(|| format!("pub{}", chrono::Utc::now().timestamp_millis())),
                progress: true,
            };
            publish::run(&mut connection, &plan).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetter(DeadLetterCommand::List { count, reason }) => {
            let mut connection = redis_client::connection_manager(&config.redis).await?;
            let entries = deadletter::list(
                &mut connection,
                &config.dead_letter.stream,
                count,
                reason.as_deref(),
            )
            .await?;
            for entry in &entries {
                println!("{}", serde_json::to_string(entry)?);
            }
            let summary = deadletter::summarize(&entries);
            eprintln!("{} entries {summary:?}", entries.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetter(DeadLetterCommand::Replay {
            count,
            reason,
            channel,
        }) => {
            let mut connection = redis_client::connection_manager(&config.redis).await?;
            let stream = &config.dead_letter.stream;
            let entries =
                deadletter::list(&mut connection, stream, count, reason.as_deref()).await?;
            let target = match config.source.kind {
                SourceKind::Pubsub => deadletter::ReplayTarget::PubSub,
                SourceKind::Streams => deadletter::ReplayTarget::Streams {
                    payload_field: &config.source.streams.payload_field,
                },
            };
            let outcome = deadletter::replay(
                &mut connection,
                stream,
                &entries,
                channel.as_deref(),
                target,
            )
            .await?;
            eprintln!("replayed {} entries", outcome.replayed);
            if outcome.kept.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let mut channels = outcome.kept.clone();
            channels.sort();
            channels.dedup();
            eprintln!(
                "kept {} entries: no subscriber received them on {} (start ingestd first, then replay again)",
                outcome.kept.len(),
                channels.join(", ")
            );
            Ok(ExitCode::FAILURE)
        }
        Command::Top { board, day, n } => {
            let connection = redis_client::connection_manager(&config.redis).await?;
            let Some(reader) = LeaderboardReader::from_config(&config, connection) else {
                anyhow::bail!("no leaderboard sink is configured");
            };
            let top = reader.top(&board, day.as_deref(), n).await?;
            println!("{}", serde_json::to_string_pretty(&top)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let running = App::new(config).start(shutdown.clone()).await?;
    tokio::spawn(watch_signals(shutdown));
    match running.task.await?? {
        RunOutcome::Drained => Ok(ExitCode::SUCCESS),
        RunOutcome::DeadlineExceeded => Ok(ExitCode::FAILURE),
    }
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("signal received: stopping (send again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}
