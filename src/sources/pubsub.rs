//! Redis pub/sub source: SUBSCRIBE + PSUBSCRIBE on one connection, reconnecting with
//! exponential backoff and jitter. Authentication failures are permanent (the process
//! stops with a clear error); network failures are transient. Backoff resets only after a
//! session was subscribed. Pub/sub keeps nothing: messages published while disconnected
//! are lost upstream, so every disconnect is counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ::metrics::Counter;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, SourceConfig};
use crate::deadletter::DeadLetters;
use crate::pipeline::router::Router;
use crate::redis_client;
use crate::sources::sequence::SequenceGaps;
use crate::telemetry::http::Readiness;
use crate::telemetry::metrics;

const SOURCE: &str = "pubsub";

/// Why a session ended.
enum SessionEnd {
    /// Shutdown was requested: stop for good.
    Shutdown,
    /// The connection dropped after subscribing: reconnect with a fresh backoff.
    Disconnected,
}

/// Per-channel state of the read loop: the shared channel name and its counters.
struct ChannelCounters {
    name: Arc<str>,
    received: Counter,
    received_bytes: Counter,
}

pub struct PubSubSource {
    pub redis: RedisConfig,
    pub source: SourceConfig,
    pub router: Arc<Router>,
    pub dead_letters: DeadLetters,
    pub readiness: Arc<Readiness>,
}

impl PubSubSource {
    /// Reads until `shutdown`; returns an error only for permanent failures (auth).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let client = redis_client::client(&self.redis)?;
        let channels = self.router.channels();
        let patterns = self.router.patterns();
        let mut delays = self.new_backoff();
        let mut counters: HashMap<String, ChannelCounters> = HashMap::new();
        // Kept across sessions: numbers published while disconnected are gaps too.
        let mut sequences = self
            .source
            .sequence
            .enabled
            .then(|| SequenceGaps::new(&self.source.sequence, SOURCE));
        loop {
            let connected = tokio::select! {
                // Shutdown first: a connect attempt must never delay stopping.
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                connected = subscribe(&client, &channels, &patterns) => connected,
            };
            let pubsub = match connected {
                Ok(pubsub) => pubsub,
                Err(error) if redis_client::is_auth_error(&error) => {
                    // Retrying a wrong password only floods the server's log.
                    anyhow::bail!(
                        "redis {}: authentication failed: {error} (check redis.username / INGESTD_REDIS__PASSWORD)",
                        self.redis.url
                    );
                }
                Err(error) => {
                    let delay = delays.next().unwrap_or(self.source.reconnect_max);
                    tracing::warn!(%error, url = %self.redis.url, ?delay, "cannot subscribe, retrying");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            tracing::info!(url = %self.redis.url, ?channels, ?patterns, "subscribed");
            metrics::source_subscribed(SOURCE, true);
            self.readiness.source_ready.store(true, Ordering::Release);
            // The connection proved healthy: the next outage starts from the shortest delay.
            delays = self.new_backoff();
            let end = self
                .read_session(pubsub, &mut counters, &mut sequences, &shutdown)
                .await;
            metrics::source_subscribed(SOURCE, false);
            self.readiness.source_ready.store(false, Ordering::Release);
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Disconnected => {
                    metrics::source_disconnected(SOURCE);
                    tracing::warn!(url = %self.redis.url, "pub/sub connection lost, resubscribing");
                }
            }
        }
    }

    fn new_backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.source.reconnect_initial)
            .with_max_delay(self.source.reconnect_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn read_session(
        &self,
        mut pubsub: redis::aio::PubSub,
        counters: &mut HashMap<String, ChannelCounters>,
        sequences: &mut Option<SequenceGaps>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let max_event_bytes = self.source.max_event_bytes.as_u64() as usize;
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                message = messages.next() => message,
            };
            let Some(message) = message else {
                return SessionEnd::Disconnected;
            };
            let channel_name = message.get_channel_name();
            let payload = bytes::Bytes::copy_from_slice(message.get_payload_bytes());
            // Hot path: a lookup by &str, allocating only the first time a channel is seen.
            if !counters.contains_key(channel_name) {
                let (received, received_bytes) = metrics::source_received(SOURCE, channel_name);
                counters.insert(
                    channel_name.to_string(),
                    ChannelCounters {
                        name: Arc::from(channel_name),
                        received,
                        received_bytes,
                    },
                );
            }
            let channel_counters = &counters[channel_name];
            channel_counters.received.increment(1);
            channel_counters
                .received_bytes
                .increment(payload.len() as u64);
            let channel = Arc::clone(&channel_counters.name);
            let pattern: Option<String> = message.get_pattern().ok().flatten();
            let message = super::Message {
                channel,
                pattern: pattern.as_deref(),
                payload,
                ack: None,
            };
            super::ingest_message(
                &self.router,
                &self.dead_letters,
                message,
                max_event_bytes,
                sequences.as_mut(),
            )
            .await;
        }
    }
}

async fn subscribe(
    client: &redis::Client,
    channels: &[String],
    patterns: &[String],
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    if !channels.is_empty() {
        pubsub.subscribe(channels).await?;
    }
    if !patterns.is_empty() {
        pubsub.psubscribe(patterns).await?;
    }
    Ok(pubsub)
}
