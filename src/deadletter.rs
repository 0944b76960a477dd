//! The dead-letter stream: every event ingestd could not decode or deliver, with why.
//!
//! Entries are appended with `XADD stream MAXLEN ~ N * reason .. stage .. channel ..
//! error .. payload .. at ..`. The writer retries with backoff until Redis takes the entry:
//! a dead letter is never dropped while the process runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use crate::pipeline::ack::AckToken;
use crate::telemetry::metrics;

/// One rejected event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Machine-readable: a decode reason (`not_json`, ...) or `permanent_error` /
    /// `retries_exhausted` for sinks.
    pub reason: String,
    /// `decode` or the sink as `pipeline.sink`.
    pub stage: String,
    pub channel: String,
    pub error: String,
    pub payload: Bytes,
    pub at: DateTime<Utc>,
}

/// A dead letter waiting for the writer, with the ack token (Streams) it holds until written.
type Queued = (DeadLetter, Option<Arc<AckToken>>);

/// A cheap, cloneable handle for sending dead letters to the writer task.
#[derive(Clone)]
pub struct DeadLetters {
    sender: mpsc::Sender<Queued>,
}

impl DeadLetters {
    /// Queues one dead letter; waits only if the writer is far behind (Redis down).
    pub async fn send(&self, dead_letter: DeadLetter) {
        self.send_acked(dead_letter, None).await;
    }

    /// Like [`DeadLetters::send`], but the writer holds `ack` until the dead letter is in
    /// the stream, so a Streams entry is acknowledged only once its dead letter is stored.
    pub async fn send_acked(&self, dead_letter: DeadLetter, ack: Option<Arc<AckToken>>) {
        if let Err(error) = self.sender.send((dead_letter, ack)).await {
            // Only after shutdown; say so loudly since the entry is lost.
            let (dead_letter, _) = error.0;
            tracing::error!(reason = %dead_letter.reason, stage = %dead_letter.stage, "dead letter after shutdown, not stored");
        }
    }
}

/// Starts the writer task. It ends once every [`DeadLetters`] handle is dropped and the
/// queue is written.
pub fn spawn_writer(
    connection: ConnectionManager,
    stream: String,
    max_len: u64,
) -> (DeadLetters, tokio::task::JoinHandle<()>) {
    // Bounded so dead letters queued while Redis is away cost at most ~1,000 x 64 KiB.
    let (sender, receiver) = mpsc::channel(1_000);
    let task = tokio::spawn(write_loop(connection, stream, max_len, receiver));
    (DeadLetters { sender }, task)
}

async fn write_loop(
    mut connection: ConnectionManager,
    stream: String,
    max_len: u64,
    mut receiver: mpsc::Receiver<Queued>,
) {
    let mut batch = Vec::with_capacity(256);
    while receiver.recv_many(&mut batch, 256).await > 0 {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match append(&mut connection, &stream, max_len, &batch).await {
                Ok(()) => break,
                Err(error) => {
                    metrics::dead_letter_write_failed();
                    tracing::warn!(%error, stream = %stream, pending = batch.len(), "cannot write dead letters, retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
        for (dead_letter, _) in &batch {
            metrics::dead_letter_written(&dead_letter.stage, &dead_letter.reason, 1);
        }
        // Written: dropping the ack tokens lets their Streams entries be acknowledged.
        batch.clear();
    }
}

async fn append(
    connection: &mut ConnectionManager,
    stream: &str,
    max_len: u64,
    batch: &[Queued],
) -> redis::RedisResult<()> {
    let mut pipeline = redis::pipe();
    for (dead_letter, _) in batch {
        pipeline
            .cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("reason")
            .arg(&dead_letter.reason)
            .arg("stage")
            .arg(&dead_letter.stage)
            .arg("channel")
            .arg(&dead_letter.channel)
            .arg("error")
            .arg(&dead_letter.error)
            .arg("payload")
            .arg(dead_letter.payload.as_ref())
            .arg("at")
            .arg(crate::event::format_timestamp(&dead_letter.at))
            .ignore();
    }
    pipeline.query_async(connection).await
}

/// A dead letter as read back from the stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredDeadLetter {
    pub id: String,
    pub reason: String,
    pub stage: String,
    pub channel: String,
    pub error: String,
    /// The original bytes, lossily shown as UTF-8.
    pub payload: String,
    pub at: String,
    #[serde(skip)]
    pub payload_bytes: Vec<u8>,
}

/// The oldest `count` entries (or all), optionally only one reason.
pub async fn list(
    connection: &mut ConnectionManager,
    stream: &str,
    count: usize,
    reason: Option<&str>,
) -> redis::RedisResult<Vec<StoredDeadLetter>> {
    let mut found = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: redis::streams::StreamRangeReply =
            connection.xrange_count(stream, &start, "+", 1000).await?;
        let page_len = page.ids.len();
        for entry in page.ids {
            start = format!("({}", entry.id);
            let field = |name: &str| -> Vec<u8> {
                entry
                    .map
                    .get(name)
                    .and_then(|value| redis::from_redis_value_ref::<Vec<u8>>(value).ok())
                    .unwrap_or_default()
            };
            let text = |name: &str| String::from_utf8_lossy(&field(name)).into_owned();
            let stored = StoredDeadLetter {
                id: entry.id.clone(),
                reason: text("reason"),
                stage: text("stage"),
                channel: text("channel"),
                error: text("error"),
                payload: text("payload"),
                at: text("at"),
                payload_bytes: field("payload"),
            };
            if reason.is_none_or(|wanted| wanted == stored.reason) {
                found.push(stored);
                if found.len() >= count {
                    return Ok(found);
                }
            }
        }
        if page_len < 1000 {
            return Ok(found);
        }
    }
}

/// Where replayed dead letters go: back where the source reads them.
#[derive(Debug, Clone, Copy)]
pub enum ReplayTarget<'a> {
    /// PUBLISH to the entry's channel.
    PubSub,
    /// XADD to the entry's stream, the payload under `payload_field`.
    Streams { payload_field: &'a str },
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Re-injected and deleted from the dead-letter stream.
    pub replayed: usize,
    /// Kept in the dead-letter stream: published while no subscriber listened, so the
    /// event would have been lost (the channels, for the message).
    pub kept: Vec<String>,
}

/// Re-injects each entry's payload where it came from (or into `channel_override`) and
/// deletes it from the stream. Events are idempotent by `event_id`, so replaying an
/// event that was in fact stored does no harm. A PUBLISH that no subscriber received
/// leaves its entry in place instead of losing it.
pub async fn replay(
    connection: &mut ConnectionManager,
    stream: &str,
    entries: &[StoredDeadLetter],
    channel_override: Option<&str>,
    target: ReplayTarget<'_>,
) -> redis::RedisResult<Replayed> {
    let mut outcome = Replayed::default();
    for chunk in entries.chunks(500) {
        let mut pipeline = redis::pipe();
        for entry in chunk {
            let channel = channel_override.unwrap_or(&entry.channel);
            match target {
                ReplayTarget::PubSub => pipeline.publish(channel, &entry.payload_bytes),
                ReplayTarget::Streams { payload_field } => {
                    pipeline.xadd(channel, "*", &[(payload_field, &entry.payload_bytes)])
                }
            };
        }
        // Subscribers reached per PUBLISH, or the new entry id per XADD.
        let results: Vec<redis::Value> = pipeline.query_async(connection).await?;
        let mut delete = redis::pipe();
        let mut deleting = false;
        for (entry, result) in chunk.iter().zip(results) {
            if matches!(result, redis::Value::Int(0)) {
                outcome
                    .kept
                    .push(channel_override.unwrap_or(&entry.channel).to_string());
                continue;
            }
            delete.xdel(stream, &[&entry.id]).ignore();
            deleting = true;
            outcome.replayed += 1;
        }
        if deleting {
            let () = delete.query_async(connection).await?;
        }
    }
    Ok(outcome)
}

/// Counts by reason, for `ingestd dead-letter list --summary`.
pub fn summarize(entries: &[StoredDeadLetter]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in entries {
        *counts.entry(entry.reason.clone()).or_insert(0) += 1;
    }
    counts
}
