//! Redis Streams source: XREADGROUP in a consumer group (created if missing), so several
//! replicas split one stream. An entry is acknowledged (XACK) only once every sink of every
//! pipeline it went to has written or dead-lettered it: each event carries an
//! [`AckToken`] and the ack loop XACKs the ids the dropped tokens report, in batches.
//!
//! Nothing read is lost: a (re)started consumer first re-reads its own pending entries
//! (id `0`) before new ones (`>`); entries a dead consumer left pending longer than
//! `claim_idle` are taken over with XAUTOCLAIM, while this replica keeps its own
//! in-progress entries fresh so a slow sink does not look like a dead replica. Delivery is
//! at-least-once; writes are idempotent by `event_id`, so a replay changes nothing.
//! Trimming (MAXLEN) is left to the producer. Needs Redis 6.2+ (XAUTOCLAIM, XPENDING IDLE).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::Utc;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{ErrorKind, RedisError, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, SourceConfig, StreamsConfig};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::pipeline::ack::AckToken;
use crate::pipeline::router::Router;
use crate::redis_client;
use crate::telemetry::http::Readiness;
use crate::telemetry::metrics;

const SOURCE: &str = "streams";
/// Ids per XACK round trip, at most.
const ACK_BATCH: usize = 500;
/// How long acknowledgements gather before an XACK that is not full.
const ACK_LINGER: Duration = Duration::from_millis(100);
/// Entries per XPENDING page when refreshing this replica's in-progress entries.
const PENDING_PAGE: usize = 1000;
/// Beyond BLOCK, how long a reply may take before the connection is deemed dead.
const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// Why a session ended.
enum SessionEnd {
    /// Shutdown was requested: stop for good.
    Shutdown,
    /// A command failed (connection lost, group deleted, ...): reconnect after a delay.
    /// `was_ready` says whether the session had read successfully (backoff then resets).
    Failed { error: RedisError, was_ready: bool },
}

/// Everything the Streams source needs; [`StreamsSource::spawn`] starts it.
pub struct StreamsSource {
    pub redis: RedisConfig,
    /// A shared, self-reconnecting connection for XACK (never blocked by XREADGROUP,
    /// which gets a connection of its own).
    pub commands: ConnectionManager,
    pub source: SourceConfig,
    pub router: Arc<Router>,
    pub dead_letters: DeadLetters,
    pub readiness: Arc<Readiness>,
}

/// A running Streams source: the reader, and the ack loop that outlives it.
pub struct StreamsTasks {
    /// Ends after shutdown once the read in progress is handed to the pipelines; an error
    /// only for permanent failures (authentication).
    pub reader: JoinHandle<anyhow::Result<()>>,
    pub acker: Acker,
}

/// The ack loop. It ends by itself once the reader has stopped and every event is written
/// or dead-lettered (every token dropped); [`Acker::abandon`] cuts it short.
pub struct Acker {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Acker {
    /// Waits until every entry read is acknowledged. Call once the pipelines are drained.
    pub async fn finish(&mut self) {
        if let Err(error) = (&mut self.task).await {
            tracing::error!(%error, "stream ack loop failed");
        }
    }

    /// The shutdown deadline passed: acknowledges what is already done and stops. Entries
    /// still in the pipelines stay pending; they are re-read at the next start (or claimed).
    pub async fn abandon(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// One stream the source reads, with its metric handles.
struct StreamState {
    key: Arc<str>,
    received: Counter,
    received_bytes: Counter,
    acked: Counter,
    claimed: Counter,
    pending: Gauge,
}

/// What the reader and the ack loop share.
struct Shared {
    streams: Vec<StreamState>,
    /// Entries read by this replica and not yet acknowledged, as token ids
    /// `{stream index}/{entry id}`. An id leaves only once its XACK succeeded, so a re-read
    /// of the pending list (reconnect) or an XAUTOCLAIM never starts the same entry twice.
    in_flight: Mutex<HashSet<String>>,
}

impl Shared {
    /// Marks an entry as in flight; false if it already was.
    fn start(&self, token_id: &str) -> bool {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if in_flight.contains(token_id) {
            return false;
        }
        in_flight.insert(token_id.to_string());
        true
    }

    fn is_in_flight(&self, token_id: &str) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .contains(token_id)
    }
}

fn token_id(stream_index: usize, entry_id: &str) -> String {
    format!("{stream_index}/{entry_id}")
}

fn split_token_id(token_id: &str) -> Option<(usize, &str)> {
    let (index, entry_id) = token_id.split_once('/')?;
    Some((index.parse().ok()?, entry_id))
}

impl StreamsSource {
    /// Starts the reader and the ack loop. The reader stops at `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> StreamsTasks {
        let keys = self.router.channels();
        let shared = Arc::new(Shared {
            streams: keys
                .iter()
                .map(|key| {
                    let (received, received_bytes) = metrics::source_received(SOURCE, key);
                    let (acked, claimed) = metrics::source_stream(SOURCE, key);
                    StreamState {
                        key: Arc::from(key.as_str()),
                        received,
                        received_bytes,
                        acked,
                        claimed,
                        pending: metrics::source_pending(SOURCE, key),
                    }
                })
                .collect(),
            in_flight: Mutex::new(HashSet::new()),
        });
        let (acks, ack_receiver) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let ack_loop = AckLoop {
            connection: self.commands,
            group: self.source.streams.group.clone(),
            shared: Arc::clone(&shared),
            receiver: ack_receiver,
            stop: stop.clone(),
        };
        let acker = Acker {
            task: tokio::spawn(ack_loop.run()),
            stop,
        };
        let consumer = self
            .source
            .streams
            .consumer
            .clone()
            .unwrap_or_else(default_consumer);
        let reader = Reader {
            redis: self.redis,
            settings: self.source.streams.clone(),
            source: self.source,
            consumer,
            router: self.router,
            dead_letters: self.dead_letters,
            readiness: self.readiness,
            shared,
            acks,
        };
        StreamsTasks {
            reader: tokio::spawn(reader.run(shutdown)),
            acker,
        }
    }
}

/// `{hostname}-{pid}`: unique per process, and recognizable in `XINFO CONSUMERS`.
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ingestd".to_string());
    format!("{host}-{}", std::process::id())
}

struct Reader {
    redis: RedisConfig,
    source: SourceConfig,
    settings: StreamsConfig,
    consumer: String,
    router: Arc<Router>,
    dead_letters: DeadLetters,
    readiness: Arc<Readiness>,
    shared: Arc<Shared>,
    /// Cloned into every token; dropped when the reader ends so the ack loop can finish.
    acks: mpsc::UnboundedSender<String>,
}

impl Reader {
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let client = redis_client::client(&self.redis)?;
        let keys: Vec<&str> = self
            .shared
            .streams
            .iter()
            .map(|stream| &*stream.key)
            .collect();
        tracing::info!(streams = ?keys, group = %self.settings.group, consumer = %self.consumer, "reading streams");
        let mut delays = self.new_backoff();
        loop {
            let connected = tokio::select! {
                // Shutdown first: a connect attempt must never delay stopping.
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                connected = self.connect(&client) => connected,
            };
            let end = match connected {
                Ok(mut connection) => self.read_session(&mut connection, &shutdown).await,
                Err(error) => SessionEnd::Failed {
                    error,
                    was_ready: false,
                },
            };
            metrics::source_subscribed(SOURCE, false);
            self.readiness.source_ready.store(false, Ordering::Release);
            let (error, was_ready) = match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Failed { error, was_ready } => (error, was_ready),
            };
            if redis_client::is_auth_error(&error) {
                // Retrying a wrong password only floods the server's log.
                anyhow::bail!(
                    "redis {}: authentication or permission failed: {error} (check redis.username / INGESTD_REDIS__PASSWORD and the ACL of the stream commands)",
                    self.redis.url
                );
            }
            if was_ready {
                metrics::source_disconnected(SOURCE);
                // The connection proved healthy: this outage starts from the shortest delay.
                delays = self.new_backoff();
            }
            let delay = delays.next().unwrap_or(self.source.reconnect_max);
            if error.code() == Some("NOGROUP") && !self.settings.create_group {
                tracing::warn!(%error, group = %self.settings.group, ?delay, "consumer group missing: create it (XGROUP CREATE <stream> <group> $ MKSTREAM) or set source.streams.create_group = true");
            } else {
                tracing::warn!(%error, url = %self.redis.url, ?delay, "stream read failed, reconnecting");
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
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

    /// A dedicated connection (XREADGROUP blocks it) with the groups in place.
    async fn connect(&self, client: &redis::Client) -> RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            // The default (500 ms) is shorter than BLOCK: every idle read would time out.
            .set_response_timeout(Some(self.settings.block + REPLY_MARGIN));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.settings.create_group {
            for stream in &self.shared.streams {
                let created: RedisResult<Value> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&*stream.key)
                    .arg(&self.settings.group)
                    .arg(&self.settings.start_id)
                    .arg("MKSTREAM")
                    .query_async(&mut connection)
                    .await;
                match created {
                    Ok(_) => {
                        tracing::info!(stream = %stream.key, group = %self.settings.group, "consumer group created");
                    }
                    // Another replica (or an earlier run) created it: that is the normal case.
                    Err(error) if error.code() == Some("BUSYGROUP") => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(connection)
    }

    async fn read_session(
        &self,
        connection: &mut MultiplexedConnection,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let mut was_ready = false;
        let failed = |error: RedisError, was_ready: bool| SessionEnd::Failed { error, was_ready };

        // Own pending entries first: those read before a crash or a lost connection. Entries
        // still in flight in this process are skipped (they will be acknowledged).
        let mut cursors: Vec<Option<String>> =
            vec![Some("0".to_string()); self.shared.streams.len()];
        loop {
            // What is not re-read yet stays pending for the next start.
            if shutdown.is_cancelled() {
                return SessionEnd::Shutdown;
            }
            let active: Vec<usize> = (0..cursors.len())
                .filter(|index| cursors[*index].is_some())
                .collect();
            if active.is_empty() {
                break;
            }
            let ids: Vec<&str> = active
                .iter()
                .map(|index| cursors[*index].as_deref().expect("active cursor"))
                .collect();
            let reply = match self.read_group(connection, &active, &ids, None).await {
                Ok(reply) => reply,
                Err(error) => return failed(error, was_ready),
            };
            if !was_ready {
                was_ready = true;
                self.mark_ready();
            }
            let mut entries_by_stream: HashMap<usize, Vec<Entry>> = reply.into_iter().collect();
            for index in active {
                let entries = entries_by_stream.remove(&index).unwrap_or_default();
                let Some(last) = entries.last() else {
                    cursors[index] = None;
                    continue;
                };
                cursors[index] = Some(last.id.clone());
                for entry in entries {
                    self.handle_entry(index, entry, false).await;
                }
            }
        }

        let all: Vec<usize> = (0..self.shared.streams.len()).collect();
        let new_ids: Vec<&str> = vec![">"; all.len()];
        let mut last_claim: Option<Instant> = None;
        loop {
            // The read below is not raced against shutdown: an XREADGROUP cut short may
            // already have assigned entries to this consumer. It returns within `block`.
            if shutdown.is_cancelled() {
                return SessionEnd::Shutdown;
            }
            if last_claim.is_none_or(|at| at.elapsed() >= self.settings.claim_interval) {
                if let Err(error) = self.claim(connection).await {
                    return failed(error, was_ready);
                }
                last_claim = Some(Instant::now());
            }
            let reply = match self
                .read_group(connection, &all, &new_ids, Some(self.settings.block))
                .await
            {
                Ok(reply) => reply,
                Err(error) => return failed(error, was_ready),
            };
            if !was_ready {
                was_ready = true;
                self.mark_ready();
            }
            for (index, entries) in reply {
                for entry in entries {
                    self.handle_entry(index, entry, false).await;
                }
            }
        }
    }

    fn mark_ready(&self) {
        tracing::info!(group = %self.settings.group, consumer = %self.consumer, "reading the consumer group");
        metrics::source_subscribed(SOURCE, true);
        self.readiness.source_ready.store(true, Ordering::Release);
    }

    /// XREADGROUP of `ids` (`0`/an entry id for pending entries, `>` for new ones) on the
    /// streams `indexes`; entries come back by stream index.
    async fn read_group(
        &self,
        connection: &mut MultiplexedConnection,
        indexes: &[usize],
        ids: &[&str],
        block: Option<Duration>,
    ) -> RedisResult<Vec<(usize, Vec<Entry>)>> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.settings.count);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        command.arg("STREAMS");
        for index in indexes {
            command.arg(&*self.shared.streams[*index].key);
        }
        command.arg(ids);
        let reply: Value = command.query_async(connection).await?;
        let mut by_stream = Vec::new();
        for (key, entries) in parse_read_reply(reply)? {
            let Some(index) = indexes
                .iter()
                .copied()
                .find(|index| *self.shared.streams[*index].key == *key)
            else {
                return Err(reply_error(format!(
                    "XREADGROUP returned unknown stream {key:?}"
                )));
            };
            by_stream.push((index, entries));
        }
        Ok(by_stream)
    }

    /// Keeps this replica's in-progress entries from looking abandoned, takes over entries
    /// idle longer than `claim_idle`, and updates the pending gauge.
    async fn claim(&self, connection: &mut MultiplexedConnection) -> RedisResult<()> {
        let min_idle = self.settings.claim_idle.as_millis().max(1) as u64;
        for (index, stream) in self.shared.streams.iter().enumerate() {
            self.refresh_in_flight(connection, index, min_idle / 2)
                .await?;
            let mut cursor = "0-0".to_string();
            loop {
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&*stream.key)
                    .arg(&self.settings.group)
                    .arg(&self.consumer)
                    .arg(min_idle)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.settings.count)
                    .query_async(connection)
                    .await?;
                let (next, entries) = parse_autoclaim_reply(reply)?;
                for entry in entries {
                    self.handle_entry(index, entry, true).await;
                }
                // "0-0": the whole pending list was scanned.
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
            self.forget_idle_consumers(connection, &stream.key).await?;
            let summary: Value = redis::cmd("XPENDING")
                .arg(&*stream.key)
                .arg(&self.settings.group)
                .query_async(connection)
                .await?;
            if let Value::Array(fields) = summary
                && let Some(Value::Int(count)) = fields.first()
            {
                stream.pending.set(*count as f64);
            }
        }
        Ok(())
    }

    /// Removes the group's consumers that hold nothing and have been idle longer than
    /// `forget_idle` (see [`StreamsConfig::forget_idle`]). Never this replica itself.
    async fn forget_idle_consumers(
        &self,
        connection: &mut MultiplexedConnection,
        key: &str,
    ) -> RedisResult<()> {
        let forget_idle = self.settings.forget_idle.as_millis() as usize;
        if forget_idle == 0 {
            return Ok(());
        }
        let info: redis::streams::StreamInfoConsumersReply =
            redis::AsyncCommands::xinfo_consumers(connection, key, &self.settings.group).await?;
        for consumer in info.consumers {
            if consumer.name == self.consumer || consumer.pending > 0 || consumer.idle < forget_idle
            {
                continue;
            }
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(key)
                .arg(&self.settings.group)
                .arg(&consumer.name)
                .query_async(connection)
                .await?;
            tracing::info!(stream = %key, consumer = %consumer.name, idle_ms = consumer.idle, "removed an idle consumer that held nothing");
        }
        Ok(())
    }

    /// XCLAIMs to itself (idle reset, no delivery count) the entries this replica is still
    /// working on that are halfway to `claim_idle`, so no other replica takes them over
    /// while a sink is slow. Own pending entries not in flight (a reply lost with its
    /// connection) are left to age: XAUTOCLAIM then hands them out again.
    async fn refresh_in_flight(
        &self,
        connection: &mut MultiplexedConnection,
        index: usize,
        min_idle_millis: u64,
    ) -> RedisResult<()> {
        let key = &*self.shared.streams[index].key;
        let mut start = "-".to_string();
        loop {
            let reply: Value = redis::cmd("XPENDING")
                .arg(key)
                .arg(&self.settings.group)
                .arg("IDLE")
                .arg(min_idle_millis)
                .arg(&start)
                .arg("+")
                .arg(PENDING_PAGE)
                .arg(&self.consumer)
                .query_async(connection)
                .await?;
            let ids = parse_pending_ids(reply)?;
            let Some(last) = ids.last() else {
                return Ok(());
            };
            start = format!("({last}");
            let page_len = ids.len();
            let working: Vec<&String> = ids
                .iter()
                .filter(|id| self.shared.is_in_flight(&token_id(index, id)))
                .collect();
            if !working.is_empty() {
                let _: Value = redis::cmd("XCLAIM")
                    .arg(key)
                    .arg(&self.settings.group)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(&working)
                    .arg("JUSTID")
                    .query_async(connection)
                    .await?;
            }
            if page_len < PENDING_PAGE {
                return Ok(());
            }
        }
    }

    /// Hands one entry to the pipelines with its ack token; `claimed` when it was taken
    /// over from another consumer.
    async fn handle_entry(&self, index: usize, entry: Entry, claimed: bool) {
        let token_id = token_id(index, &entry.id);
        if !self.shared.start(&token_id) {
            // Already in the pipelines (a re-read of the pending list, or our own entry
            // returned by XAUTOCLAIM while a sink is slow): it will be acknowledged.
            return;
        }
        let stream = &self.shared.streams[index];
        if claimed {
            stream.claimed.increment(1);
        }
        let ack = Arc::new(AckToken::new(token_id, self.acks.clone()));
        let Some(fields) = entry.fields else {
            // Deleted (XDEL, trimming) while pending: nothing to deliver, only to acknowledge.
            tracing::debug!(stream = %stream.key, id = %entry.id, "pending entry was deleted, acknowledging");
            return;
        };
        let payload_field = self.settings.payload_field.as_bytes();
        let max_event_bytes = self.source.max_event_bytes.as_u64() as usize;
        let payload_at = fields.iter().position(|(name, _)| name == payload_field);
        let Some(payload_at) = payload_at else {
            self.dead_letter_without_payload(stream, &entry.id, &fields, ack)
                .await;
            return;
        };
        let payload = Bytes::from(fields.into_iter().nth(payload_at).expect("field exists").1);
        stream.received.increment(1);
        stream.received_bytes.increment(payload.len() as u64);
        let message = super::Message {
            channel: Arc::clone(&stream.key),
            pattern: None,
            payload,
            ack: Some(ack),
        };
        super::ingest_message(
            &self.router,
            &self.dead_letters,
            message,
            max_event_bytes,
            None,
        )
        .await;
    }

    /// An entry without the payload field: its fields, as a JSON object, go to the dead
    /// letter so nothing is lost; it is acknowledged once the dead letter is stored.
    async fn dead_letter_without_payload(
        &self,
        stream: &StreamState,
        entry_id: &str,
        fields: &[(Vec<u8>, Vec<u8>)],
        ack: Arc<AckToken>,
    ) {
        stream.received.increment(1);
        let object: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(name).into_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(value).into_owned()),
                )
            })
            .collect();
        let payload = serde_json::Value::Object(object).to_string();
        stream.received_bytes.increment(payload.len() as u64);
        metrics::event_invalid("missing_field");
        self.dead_letters
            .send_acked(
                DeadLetter {
                    reason: "missing_field".to_string(),
                    stage: "decode".to_string(),
                    channel: stream.key.to_string(),
                    error: format!(
                        "stream entry {entry_id} has no field {:?} (source.streams.payload_field)",
                        self.settings.payload_field
                    ),
                    payload: Bytes::from(payload),
                    at: Utc::now(),
                },
                Some(ack),
            )
            .await;
    }
}

/// Receives the ids of dropped tokens and XACKs them in batches.
struct AckLoop {
    connection: ConnectionManager,
    group: String,
    shared: Arc<Shared>,
    receiver: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
}

impl AckLoop {
    async fn run(mut self) {
        let mut batch: Vec<String> = Vec::with_capacity(ACK_BATCH);
        loop {
            let received = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    self.take_ready(&mut batch);
                    self.flush(&mut batch).await;
                    return;
                }
                received = self.receiver.recv_many(&mut batch, ACK_BATCH) => received,
            };
            // Zero: the reader is gone and every token dropped; nothing more can come.
            if received == 0 {
                return;
            }
            // Gather a little longer so one round trip acknowledges many entries.
            let linger = tokio::time::sleep(ACK_LINGER);
            tokio::pin!(linger);
            while batch.len() < ACK_BATCH {
                let room = ACK_BATCH - batch.len();
                let more = tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => break,
                    _ = &mut linger => break,
                    more = self.receiver.recv_many(&mut batch, room) => more,
                };
                if more == 0 {
                    break;
                }
            }
            self.flush(&mut batch).await;
        }
    }

    fn take_ready(&mut self, batch: &mut Vec<String>) {
        while let Ok(id) = self.receiver.try_recv() {
            batch.push(id);
        }
    }

    /// XACKs the batch, retrying until Redis takes it (or the loop is stopped: the entries
    /// then stay pending and are delivered again, which is harmless).
    async fn flush(&mut self, batch: &mut Vec<String>) {
        if batch.is_empty() {
            return;
        }
        let mut by_stream: HashMap<usize, Vec<&str>> = HashMap::new();
        for token_id in batch.iter() {
            let Some((index, entry_id)) = split_token_id(token_id) else {
                debug_assert!(false, "malformed ack token id {token_id}");
                continue;
            };
            by_stream.entry(index).or_default().push(entry_id);
        }
        let by_stream: Vec<(usize, Vec<&str>)> = by_stream.into_iter().collect();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let mut pipeline = redis::pipe();
            for (index, entry_ids) in &by_stream {
                pipeline
                    .cmd("XACK")
                    .arg(&*self.shared.streams[*index].key)
                    .arg(&self.group)
                    .arg(entry_ids);
            }
            let acked: RedisResult<Vec<u64>> = pipeline.query_async(&mut self.connection).await;
            match acked {
                Ok(counts) => {
                    for ((index, _), count) in by_stream.iter().zip(counts) {
                        self.shared.streams[*index].acked.increment(count);
                    }
                    break;
                }
                Err(error) => {
                    if self.stop.is_cancelled() {
                        tracing::warn!(%error, entries = batch.len(), "cannot acknowledge at shutdown; the entries stay pending and will be read again");
                        batch.clear();
                        return;
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(%error, entries = batch.len(), ?delay, "cannot acknowledge stream entries, retrying");
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Only now may a re-read of the pending list start these entries again.
        let mut in_flight = self.shared.in_flight.lock().expect("in-flight lock");
        for token_id in batch.drain(..) {
            in_flight.remove(&token_id);
        }
    }
}

/// One stream entry; `fields` is `None` for an entry deleted while pending.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

fn reply_error(detail: String) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected stream reply",
        detail,
    ))
}

fn text(value: Value) -> RedisResult<String> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|error| reply_error(error.to_string()))
        }
        Value::SimpleString(text) => Ok(text),
        other => Err(reply_error(format!("expected a string, found {other:?}"))),
    }
}

fn bytes(value: Value) -> RedisResult<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::Int(number) => Ok(number.to_string().into_bytes()),
        other => Err(reply_error(format!("expected bytes, found {other:?}"))),
    }
}

/// XREADGROUP: nil (BLOCK timed out), or per stream `[key, [entry..]]` (RESP2) or a map
/// key -> entries (RESP3).
fn parse_read_reply(reply: Value) -> RedisResult<Vec<(String, Vec<Entry>)>> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut parsed = Vec::with_capacity(streams.len());
            for stream in streams {
                let Value::Array(pair) = stream else {
                    return Err(reply_error(format!(
                        "expected [key, entries], found {stream:?}"
                    )));
                };
                let mut pair = pair.into_iter();
                let (Some(key), Some(entries), None) = (pair.next(), pair.next(), pair.next())
                else {
                    return Err(reply_error("expected [key, entries]".to_string()));
                };
                parsed.push((text(key)?, parse_entries(entries)?));
            }
            Ok(parsed)
        }
        Value::Map(streams) => {
            let mut parsed = Vec::with_capacity(streams.len());
            for (key, entries) in streams {
                parsed.push((text(key)?, parse_entries(entries)?));
            }
            Ok(parsed)
        }
        other => Err(reply_error(format!("XREADGROUP: {other:?}"))),
    }
}

fn parse_entries(value: Value) -> RedisResult<Vec<Entry>> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(entries) => entries.into_iter().map(parse_entry).collect(),
        other => Err(reply_error(format!("expected entries, found {other:?}"))),
    }
}

/// `[id, [field, value, ..]]`, `[id, nil]` for an entry deleted while pending.
fn parse_entry(value: Value) -> RedisResult<Entry> {
    let Value::Array(pair) = value else {
        return Err(reply_error(format!(
            "expected [id, fields], found {value:?}"
        )));
    };
    let mut pair = pair.into_iter();
    let Some(id) = pair.next() else {
        return Err(reply_error("empty entry".to_string()));
    };
    let id = text(id)?;
    let fields = match pair.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Array(flat)) => {
            if flat.len() % 2 != 0 {
                return Err(reply_error(format!("entry {id} has an odd field list")));
            }
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.push((bytes(name)?, bytes(value)?));
            }
            Some(fields)
        }
        Some(Value::Map(pairs)) => {
            let mut fields = Vec::with_capacity(pairs.len());
            for (name, value) in pairs {
                fields.push((bytes(name)?, bytes(value)?));
            }
            Some(fields)
        }
        Some(other) => return Err(reply_error(format!("entry {id}: fields {other:?}"))),
    };
    Ok(Entry { id, fields })
}

/// XAUTOCLAIM: `[next cursor, [entry..], [deleted id..]]` (Redis 7 drops deleted entries
/// from the pending list itself; Redis 6.2 returns them as nil entries).
fn parse_autoclaim_reply(reply: Value) -> RedisResult<(String, Vec<Entry>)> {
    let Value::Array(parts) = reply else {
        return Err(reply_error(format!("XAUTOCLAIM: {reply:?}")));
    };
    let mut parts = parts.into_iter();
    let (Some(next), Some(entries)) = (parts.next(), parts.next()) else {
        return Err(reply_error("XAUTOCLAIM: short reply".to_string()));
    };
    let entries = match entries {
        Value::Array(items) => {
            let mut parsed = Vec::with_capacity(items.len());
            for item in items {
                // Redis 6.2 lists a deleted entry as a bare nil.
                if item == Value::Nil {
                    continue;
                }
                parsed.push(parse_entry(item)?);
            }
            parsed
        }
        other => parse_entries(other)?,
    };
    Ok((text(next)?, entries))
}

/// XPENDING (extended form): `[[id, consumer, idle, deliveries]..]` -> the ids.
fn parse_pending_ids(reply: Value) -> RedisResult<Vec<String>> {
    let items = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(reply_error(format!("XPENDING: {other:?}"))),
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(fields) = item else {
            return Err(reply_error(format!("XPENDING item: {item:?}")));
        };
        let Some(id) = fields.into_iter().next() else {
            return Err(reply_error("XPENDING: empty item".to_string()));
        };
        ids.push(text(id)?);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_in_both_protocols_and_deleted_entries() {
        let entries = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("payload"), bulk("{}"), bulk("n"), Value::Int(3)]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        for reply in [resp2, resp3] {
            let parsed = parse_read_reply(reply).unwrap();
            assert_eq!(parsed.len(), 1);
            let (key, entries) = &parsed[0];
            assert_eq!(key, "s");
            assert_eq!(entries[0].id, "1-0");
            let fields = entries[0].fields.as_ref().unwrap();
            assert_eq!(fields[0], (b"payload".to_vec(), b"{}".to_vec()));
            assert_eq!(fields[1], (b"n".to_vec(), b"3".to_vec()));
            assert!(entries[1].fields.is_none(), "deleted entry");
        }
        assert!(parse_read_reply(Value::Nil).unwrap().is_empty());
        assert!(parse_read_reply(Value::Int(1)).is_err());
    }

    #[test]
    fn autoclaim_and_pending_replies() {
        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("3-0"),
                    Value::Array(vec![bulk("payload"), bulk("x")]),
                ]),
                Value::Nil,
            ]),
            Value::Array(vec![bulk("4-0")]),
        ]);
        let (next, entries) = parse_autoclaim_reply(reply).unwrap();
        assert_eq!(next, "5-0");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "3-0");
        let pending = Value::Array(vec![Value::Array(vec![
            bulk("7-1"),
            bulk("consumer"),
            Value::Int(1000),
            Value::Int(1),
        ])]);
        assert_eq!(parse_pending_ids(pending).unwrap(), vec!["7-1".to_string()]);
    }

    #[test]
    fn token_ids_round_trip() {
        let id = token_id(3, "1700000000000-12");
        assert_eq!(split_token_id(&id), Some((3, "1700000000000-12")));
        assert_eq!(split_token_id("nope"), None);
    }
}
