//! Redis pub/sub source: SUBSCRIBE + PSUBSCRIBE on one connection, reconnecting with
//! exponential backoff and jitter. Authentication failures are permanent (the process
//! stops with a clear error); network failures are transient. Backoff resets only after a
//! session was subscribed. Pub/sub keeps nothing: messages published while disconnected
//! are lost upstream, so every disconnect is counted.
//!
//! Two tasks per session. The reader drains the socket as fast as Redis writes it and
//! never waits on decoding or sinks, so Redis never disconnects ingestd at its
//! output-buffer limit (and drops what it held). Messages go to the decoder through a
//! buffer bounded by `source.read_buffer`; past that bound the reader sheds them, counted
//! by channel, rather than let Redis cut the connection. The decoder routes each read as
//! one batch. Messages already read when the session ends are still decoded and routed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::metrics::Counter;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, SourceConfig};
use crate::deadletter::DeadLetters;
use crate::pipeline::router::Router;
use crate::redis_client;
use crate::sources::resp::{Endpoint, RawMessage, Subscriber, WireError};
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

/// Memory a buffered message takes beyond its bytes (its slices and the chunk's vector).
const MESSAGE_OVERHEAD: usize = 104;
/// How long connecting and subscribing may take before the attempt is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-channel state of the decoder: the shared channel name and its counters.
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
        let info = redis_client::connection_info(&self.redis)?;
        let tls = match info.addr() {
            redis::ConnectionAddr::TcpTls { .. } => Some(redis_client::tls_config(&self.redis)?),
            _ => None,
        };
        let endpoint = Arc::new(Endpoint {
            info,
            tls,
            connect_timeout: CONNECT_TIMEOUT,
        });
        let channels: Arc<[String]> = self.router.channels().into();
        let patterns: Arc<[String]> = self.router.patterns().into();
        let reader_runtime = ReaderRuntime::new()?;
        let mut delays = self.new_backoff();
        let mut counters: HashMap<Bytes, ChannelCounters> = HashMap::new();
        // Kept across sessions: numbers published while disconnected are gaps too.
        let mut sequences = self
            .source
            .sequence
            .enabled
            .then(|| SequenceGaps::new(&self.source.sequence, SOURCE));
        loop {
            // On the reader's runtime: the socket belongs to the runtime it was made on.
            let mut connecting = reader_runtime.handle().spawn({
                let (endpoint, channels, patterns) =
                    (endpoint.clone(), channels.clone(), patterns.clone());
                async move { Subscriber::connect(&endpoint, &channels, &patterns).await }
            });
            let connected = tokio::select! {
                // Shutdown first: a connect attempt must never delay stopping.
                biased;
                _ = shutdown.cancelled() => {
                    connecting.abort();
                    return Ok(());
                }
                connected = &mut connecting => connected.unwrap_or_else(|error| {
                    Err(WireError::Protocol(format!("connect task failed: {error}")))
                }),
            };
            let subscriber = match connected {
                Ok(subscriber) => subscriber,
                Err(WireError::Auth(error)) => {
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
                .read_session(
                    reader_runtime.handle(),
                    subscriber,
                    &mut counters,
                    &mut sequences,
                    &shutdown,
                )
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

    /// Runs the reader task and decodes what it reads until the connection ends or
    /// `shutdown`; what was read by then is decoded too.
    async fn read_session(
        &self,
        reader_runtime: &tokio::runtime::Handle,
        subscriber: Subscriber,
        counters: &mut HashMap<Bytes, ChannelCounters>,
        sequences: &mut Option<SequenceGaps>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let (chunks, mut received) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let reader = Reader {
            subscriber,
            chunks,
            buffered: Arc::clone(&buffered),
            limit: self.source.read_buffer.as_u64() as usize,
            shed: HashMap::new(),
        };
        let reader = reader_runtime.spawn(reader.run(shutdown.clone()));
        let decoder = super::Decoder {
            dead_letters: &self.dead_letters,
            max_event_bytes: self.source.max_event_bytes.as_u64() as usize,
        };
        let mut batch = self.router.batch();
        while let Some(chunk) = received.recv().await {
            for message in chunk.messages {
                // Hot path: a lookup by bytes, allocating only the first time a channel is seen.
                let channel_counters = match counters.get(&message.channel) {
                    Some(channel_counters) => channel_counters,
                    None => counters
                        // A copy: the key must not pin the whole read buffer it came from.
                        .entry(Bytes::copy_from_slice(&message.channel))
                        .or_insert_with(|| ChannelCounters::new(&message.channel)),
                };
                channel_counters.received.increment(1);
                channel_counters
                    .received_bytes
                    .increment(message.payload.len() as u64);
                // Patterns are the UTF-8 strings subscribed to; anything else routes nowhere.
                let pattern = match &message.pattern {
                    Some(pattern) => Some(std::str::from_utf8(pattern).unwrap_or("")),
                    None => None,
                };
                let message = super::Message {
                    channel: Arc::clone(&channel_counters.name),
                    pattern,
                    payload: message.payload,
                    ack: None,
                };
                if let Some(event) = decoder
                    .decode(message, chunk.received_at, sequences.as_mut())
                    .await
                {
                    batch.add(event, pattern);
                }
            }
            batch.flush().await;
            buffered.fetch_sub(chunk.bytes, Ordering::AcqRel);
        }
        reader.await.unwrap_or(SessionEnd::Disconnected)
    }
}

impl ChannelCounters {
    fn new(channel: &[u8]) -> ChannelCounters {
        let name = String::from_utf8_lossy(channel);
        let (received, received_bytes) = metrics::source_received(SOURCE, &name);
        ChannelCounters {
            name: Arc::from(&*name),
            received,
            received_bytes,
        }
    }
}

/// The reader's own runtime, one thread: the OS schedules it beside the decoder and the
/// sinks instead of the reader waiting for a turn on their workers. When the machine is
/// saturated (publishers flat out on the same cores), a reader sharing their workers fell
/// behind Redis often enough to be disconnected at the output-buffer limit.
struct ReaderRuntime(Option<tokio::runtime::Runtime>);

impl ReaderRuntime {
    fn new() -> anyhow::Result<ReaderRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ingestd-pubsub-reader")
            .enable_all()
            .build()
            .map_err(|error| anyhow::anyhow!("cannot start the pub/sub reader thread: {error}"))?;
        Ok(ReaderRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("runtime until dropped").handle()
    }
}

impl Drop for ReaderRuntime {
    fn drop(&mut self) {
        // Dropped inside the main runtime, where a blocking shutdown is not allowed.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Messages of one socket read, handed from the reader to the decoder.
struct Chunk {
    messages: Vec<RawMessage>,
    /// What they count against `source.read_buffer`.
    bytes: usize,
    received_at: DateTime<Utc>,
}

/// The session's socket reader: drains the connection into the decoder's buffer.
struct Reader {
    subscriber: Subscriber,
    chunks: mpsc::UnboundedSender<Chunk>,
    /// Bytes handed to the decoder and not yet decoded.
    buffered: Arc<AtomicUsize>,
    limit: usize,
    shed: HashMap<Bytes, Counter>,
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) -> SessionEnd {
        let mut shed_warned: Option<tokio::time::Instant> = None;
        loop {
            let read = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                read = self.subscriber.read() => read,
            };
            let messages = match read {
                Ok(Some(messages)) => messages,
                Ok(None) => return SessionEnd::Disconnected,
                Err(error) => {
                    tracing::warn!(%error, "pub/sub read failed");
                    return SessionEnd::Disconnected;
                }
            };
            if messages.is_empty() {
                continue;
            }
            let bytes: usize = messages
                .iter()
                .map(|message| message.payload.len() + message.channel.len() + MESSAGE_OVERHEAD)
                .sum();
            if self.buffered.load(Ordering::Acquire) + bytes > self.limit {
                self.shed(&messages);
                let now = tokio::time::Instant::now();
                if shed_warned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
                    shed_warned = Some(now);
                    tracing::warn!(
                        limit = self.limit,
                        "decoding is source.read_buffer behind: shedding pub/sub messages (counted in ingestd_source_shed_total)"
                    );
                }
                continue;
            }
            self.buffered.fetch_add(bytes, Ordering::AcqRel);
            let chunk = Chunk {
                messages,
                bytes,
                received_at: Utc::now(),
            };
            if self.chunks.send(chunk).is_err() {
                return SessionEnd::Shutdown;
            }
        }
    }

    fn shed(&mut self, messages: &[RawMessage]) {
        for message in messages {
            let counter = match self.shed.get(&message.channel) {
                Some(counter) => counter,
                None => self
                    .shed
                    .entry(Bytes::copy_from_slice(&message.channel))
                    .or_insert_with(|| {
                        metrics::source_shed(SOURCE, &String::from_utf8_lossy(&message.channel))
                    }),
            };
            counter.increment(1);
        }
    }
}
