//! The ingest baseline: the same redis-rs pub/sub API ingestd's source uses
//! (`get_async_pubsub`, `subscribe`, `on_message`), doing nothing but count messages and
//! their bytes. Runs until SIGTERM/SIGINT or until Redis drops the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::progress;

#[derive(clap::Args)]
pub struct SubscribeArgs {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    url: String,
    #[arg(long)]
    channel: String,
    /// Interval of progress lines, in milliseconds.
    #[arg(long, default_value_t = 50)]
    progress_ms: u64,
}

pub async fn run(arguments: SubscribeArgs) -> anyhow::Result<()> {
    let client = redis::Client::open(arguments.url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&arguments.channel).await?;
    progress::line("ready");
    let count = Arc::new(AtomicU64::new(0));
    let mut bytes = 0u64;
    let reporter = progress::spawn_reporter(
        Arc::clone(&count),
        Duration::from_millis(arguments.progress_ms),
    );
    let mut messages = pubsub.on_message();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let disconnected = loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { break true };
                bytes += message.get_payload_bytes().len() as u64;
                count.fetch_add(1, Ordering::Relaxed);
            }
            _ = terminate.recv() => break false,
            _ = tokio::signal::ctrl_c() => break false,
        }
    };
    progress::finish(reporter, &count);
    progress::result(serde_json::json!({
        "received": count.load(Ordering::Relaxed),
        "bytes": bytes,
        "disconnected": disconnected,
    }));
    Ok(())
}
