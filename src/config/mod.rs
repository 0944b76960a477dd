//! Configuration: figment layers (defaults < `ingestd.toml` < `pipelines/*.toml` <
//! `INGESTD_*` environment), parsed into typed structs and then validated by a pure step.
//!
//! Every problem is reported as `file: key: reason`, so `ingestd check` and a refused
//! start say exactly what to fix. Nothing here does network I/O.

mod load;
mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use load::{LoadedConfig, load};
pub use secret::Secret;

use crate::sinks::SinkConfig;

/// The whole configuration of one ingestd process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where events come from and where dead letters and aggregates go.
    pub redis: RedisConfig,
    /// How the source reads and decodes messages.
    pub source: SourceConfig,
    /// The one HTTP listener: metrics, health, leaderboards.
    pub http: HttpConfig,
    /// Log format and filter.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The dead-letter stream.
    pub dead_letter: DeadLetterConfig,
    /// The local spool of sinks whose queue overflows (`queue.when_full = "spool"`).
    pub spool: SpoolConfig,
    /// Pipelines by name; each `pipelines/NAME.toml` file defines `pipelines.NAME`.
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL, `redis://` or `rediss://` (TLS). Credentials in the URL are
    /// redacted in logs; prefer `username` + `password` from the environment.
    pub url: Secret,
    /// ACL user name (Redis 6+); empty for the default user.
    pub username: Option<String>,
    /// Password; set it through `INGESTD_REDIS__PASSWORD`, never in a committed file.
    pub password: Option<Secret>,
    /// A file holding the password (e.g. a mounted Kubernetes secret).
    pub password_file: Option<PathBuf>,
    /// With `rediss://`: a PEM file of the CA certificate(s) that signed the server's
    /// certificate (a private CA, e.g. a cloud provider's). Unset: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        RedisConfig {
            url: Secret::new("redis://127.0.0.1:6379"),
            username: None,
            password: None,
            password_file: None,
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// SUBSCRIBE/PSUBSCRIBE: lowest latency; Redis keeps nothing for absent subscribers.
    Pubsub,
    /// XREADGROUP in a consumer group (`source.streams`): entries are acknowledged only
    /// once every sink has written or dead-lettered them, so nothing read is lost and
    /// several replicas split one stream. Pipelines list stream keys in `streams`. An
    /// event a `drop_oldest` queue or a rate limit (`on_limit = "drop"`) discards counts as
    /// done and is acknowledged too.
    Streams,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `pubsub` or `streams`.
    pub kind: SourceKind,
    /// Messages larger than this are dead-lettered as `too_large`.
    pub max_event_bytes: ByteSize,
    /// First delay before reconnecting after a disconnect.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Pub/sub only: bytes read from the socket but not yet decoded, at most. The socket
    /// is always drained, so Redis never disconnects ingestd at its output-buffer limit
    /// (`client-output-buffer-limit pubsub`, 32 MB by default) and loses what it held.
    /// When decoding falls this far behind, newly read messages are shed instead, each
    /// counted in `ingestd_source_shed_total{channel}`. Larger absorbs longer bursts at the
    /// cost of memory.
    pub read_buffer: ByteSize,
    /// The consumer group reading, when `kind = "streams"`.
    pub streams: StreamsConfig,
    /// Per-publisher sequence numbers checked on pub/sub, so loss upstream of ingestd
    /// shows in `ingestd_source_sequence_gaps_total`. Off by default.
    pub sequence: SequenceConfig,
}

impl Default for SourceConfig {
    fn default() -> SourceConfig {
        SourceConfig {
            kind: SourceKind::Pubsub,
            max_event_bytes: ByteSize::kib(64),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            read_buffer: ByteSize::mib(64),
            streams: StreamsConfig::default(),
            sequence: SequenceConfig::default(),
        }
    }
}

/// `[source.streams]`: how the Streams source reads its consumer group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Consumer group shared by every replica; each entry goes to one replica.
    pub group: String,
    /// This replica's consumer name, unique within the group. Default: `{hostname}-{pid}`.
    /// A fixed name (e.g. a StatefulSet pod name) lets a restarted replica re-read its own
    /// pending entries at once instead of waiting `claim_idle` for them to be claimed.
    pub consumer: Option<String>,
    /// Entries per stream per XREADGROUP (`COUNT`).
    pub count: usize,
    /// How long one XREADGROUP waits for new entries (`BLOCK`); also bounds how long a
    /// stop waits for the read in progress.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Entries pending (read, not acknowledged) longer than this in another consumer are
    /// taken over with XAUTOCLAIM: that consumer is presumed dead. Entries this replica is
    /// still working on are kept fresh, so only dead consumers' entries go over it.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How often to look for entries to take over (and refresh this replica's own).
    #[serde(with = "humantime_serde")]
    pub claim_interval: Duration,
    /// Consumers of the group that hold no pending entry and have not read for this long
    /// are removed (XGROUP DELCONSUMER): replicas gone after a scale-down or a restart
    /// under a new `{hostname}-{pid}` name, so XINFO CONSUMERS lists live ones. A live
    /// replica reads every `block`, and one removed anyway is recreated at its next read.
    /// `0s` keeps every consumer.
    #[serde(with = "humantime_serde")]
    pub forget_idle: Duration,
    /// The entry field holding the event JSON; entries without it are dead-lettered.
    pub payload_field: String,
    /// Create the group (and the stream, `MKSTREAM`) at start when missing.
    pub create_group: bool,
    /// Where a newly created group starts: `0` reads the stream's history, `$` only new entries.
    pub start_id: String,
}

impl Default for StreamsConfig {
    fn default() -> StreamsConfig {
        StreamsConfig {
            group: "ingestd".to_string(),
            consumer: None,
            count: 500,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            forget_idle: Duration::from_secs(3600),
            payload_field: "payload".to_string(),
            create_group: true,
            start_id: "0".to_string(),
        }
    }
}

/// `[source.sequence]`: publisher sequence numbers, looked up in the event's `data` (where
/// unknown top-level fields land too). Gaps are counted, never repaired; a number lower
/// than the last one seen is taken as a publisher restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequenceConfig {
    /// Check sequences on the pub/sub source.
    pub enabled: bool,
    /// Field naming the publisher (a string or a number); events without it are not checked.
    pub publisher_field: String,
    /// Field holding the publisher's sequence number (a non-negative integer, +1 per event).
    pub sequence_field: String,
}

impl Default for SequenceConfig {
    fn default() -> SequenceConfig {
        SequenceConfig {
            enabled: false,
            publisher_field: "publisher_id".to_string(),
            sequence_field: "seq".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
    /// Serve `/leaderboards/{board}` and `/rate/{user_id}`.
    pub aggregates_api: bool,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: "0.0.0.0:9000".to_string(),
            aggregates_api: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `ingestd=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long queues and batches may take to flush before exiting anyway
    /// (past it, events only in memory are moved to the spool first: a few seconds more).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> ShutdownConfig {
        ShutdownConfig {
            deadline: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Redis stream that receives rejected events.
    pub stream: String,
    /// Approximate cap of the stream (`XADD ... MAXLEN ~`).
    pub max_len: u64,
}

impl Default for DeadLetterConfig {
    fn default() -> DeadLetterConfig {
        DeadLetterConfig {
            stream: "ingestd:dead-letter".to_string(),
            max_len: 1_000_000,
        }
    }
}

/// What a rate counter does with events over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Count them in `ingestd_rate_limited_events_total`, deliver them normally.
    #[default]
    Count,
    /// Count them and keep them out of the pipeline's other sinks.
    Drop,
    /// Count them and store them with `data.rate_limited = true`.
    Tag,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Channels to SUBSCRIBE to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Glob patterns to PSUBSCRIBE to (e.g. `events.*`).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Stream keys to read with `source.kind = "streams"` (instead of channels/patterns).
    #[serde(default)]
    pub streams: Vec<String>,
    /// What a rate counter sink does with events over its limit.
    #[serde(default)]
    pub on_limit: OnLimit,
    /// Sinks by name; each sink table holds exactly one kind table (`mongodb = {..}`).
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// Closes a batch at whichever comes first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_events: 500,
            max_bytes: ByteSize::mib(4),
            linger: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: usize,
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Give up (dead-letter) once a batch has been retried this long.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 12,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Spill to the sink's local spool (`[spool]`) and replay in order as room frees.
    #[default]
    Spool,
    /// Make the source wait (the source stops reading: Redis may drop a slow subscriber).
    Block,
    /// Discard the oldest queued event, counted in `ingestd_sink_dropped_events_total`.
    DropOldest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Events held in memory for this sink.
    pub capacity: usize,
    /// Memory the events held for this sink may take, estimated per event as
    /// `512 B + 3 x its size` (its bytes plus the decoded form). The queue is full at
    /// `capacity` or `max_bytes`, whichever comes first; with large events this is the
    /// bound that holds.
    pub max_bytes: ByteSize,
    /// `spool`, `block` or `drop_oldest`.
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            capacity: 20_000,
            max_bytes: ByteSize::mib(32),
            when_full: WhenFull::Spool,
        }
    }
}

/// When spool writes are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every write (group commit of what arrived together): survives power loss.
    Always,
    /// Every `fsync_interval` and when a segment is closed: loses at most that much on
    /// power loss, nothing when only the process dies.
    #[default]
    Interval,
    /// Never: the OS writes back when it likes; survives a process crash, not power loss.
    Never,
}

/// The spool: when a sink's queue is full (e.g. the sink is down), its events go to
/// segment files in `{dir}/{pipeline}/{sink}/` and are replayed in order when room frees
/// and at the next start. A segment is deleted once every event read from it is written
/// or dead-lettered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Base directory (the container uses `/var/lib/ingestd/spool`); one process per
    /// directory (a lock file enforces it).
    pub dir: PathBuf,
    /// Largest spool of one sink. When reached, new events for that sink are dropped and
    /// counted in `ingestd_spool_dropped_events_total{reason="full"}`; what is spooled
    /// is kept and replayed in order.
    pub max_bytes: ByteSize,
    /// A segment file is closed and a new one started at this size; space is given back
    /// a whole segment at a time.
    pub segment_bytes: ByteSize,
    /// `always`, `interval` or `never`.
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`, how often.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            dir: PathBuf::from("./spool"),
            max_bytes: ByteSize::gib(1),
            segment_bytes: ByteSize::mib(8),
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_millis(100),
        }
    }
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file (or `environment`/`defaults`) that set the key.
    pub origin: String,
    /// Dotted key, e.g. `pipelines.analytics.sinks.mongodb.batch.linger`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}: {}", self.origin, self.key, self.reason)
    }
}

/// All problems of a configuration, one per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(formatter)?;
            }
            write!(formatter, "{problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Semantic checks that serde cannot express. Pure: no I/O.
    /// Returns `(key, reason)` pairs; the loader adds the file of each key.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.pipelines.is_empty() {
            problems.push((
                "pipelines".to_string(),
                "no pipeline is defined: add a pipelines/NAME.toml file (see pipelines/analytics.toml)"
                    .to_string(),
            ));
        }
        if self.source.max_event_bytes.as_u64() == 0 {
            problems.push((
                "source.max_event_bytes".to_string(),
                "must be greater than 0 (e.g. \"64KiB\")".to_string(),
            ));
        }
        if self.source.read_buffer.as_u64() < 64 * 1024 {
            problems.push((
                "source.read_buffer".to_string(),
                format!(
                    "{} is too small to hold one read from the socket: use at least \"64KiB\" (default \"64MiB\")",
                    self.source.read_buffer
                ),
            ));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push((
                "http.listen".to_string(),
                format!(
                    "{:?} is not an address (e.g. \"0.0.0.0:9000\")",
                    self.http.listen
                ),
            ));
        }
        if self.dead_letter.stream.is_empty() {
            problems.push((
                "dead_letter.stream".to_string(),
                "must not be empty".to_string(),
            ));
        }
        problems.extend(self.source.validate());
        problems.extend(self.spool.validate());
        for (pipeline_name, pipeline) in &self.pipelines {
            let prefix = format!("pipelines.{pipeline_name}");
            problems.extend(pipeline.validate_inputs(self.source.kind, &prefix));
            if pipeline.sinks.is_empty() {
                problems.push((
                    format!("{prefix}.sinks"),
                    "the pipeline has no sink".to_string(),
                ));
            }
            for (sink_name, sink) in &pipeline.sinks {
                let sink_prefix = format!("{prefix}.sinks.{sink_name}");
                for (key, reason) in sink.validate() {
                    problems.push((format!("{sink_prefix}.{key}"), reason));
                }
            }
        }
        problems
    }
}

impl SourceConfig {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.kind == SourceKind::Streams {
            let streams = &self.streams;
            if streams.group.is_empty() {
                problems.push((
                    "source.streams.group".to_string(),
                    "must not be empty (e.g. \"ingestd\")".to_string(),
                ));
            }
            if streams.consumer.as_deref() == Some("") {
                problems.push((
                    "source.streams.consumer".to_string(),
                    "must not be empty: remove it for the default {hostname}-{pid}".to_string(),
                ));
            }
            if streams.count == 0 {
                problems.push((
                    "source.streams.count".to_string(),
                    "must be at least 1 (e.g. 500)".to_string(),
                ));
            }
            // BLOCK 0 waits forever: a stop would hang.
            if streams.block < Duration::from_millis(1) {
                problems.push((
                    "source.streams.block".to_string(),
                    "must be at least 1ms (e.g. \"1s\")".to_string(),
                ));
            }
            if streams.claim_idle < Duration::from_millis(1) {
                problems.push((
                    "source.streams.claim_idle".to_string(),
                    "must be at least 1ms (e.g. \"30s\")".to_string(),
                ));
            }
            if streams.claim_interval < Duration::from_millis(1) {
                problems.push((
                    "source.streams.claim_interval".to_string(),
                    "must be at least 1ms (e.g. \"5s\")".to_string(),
                ));
            }
            if streams.payload_field.is_empty() {
                problems.push((
                    "source.streams.payload_field".to_string(),
                    "must not be empty (e.g. \"payload\")".to_string(),
                ));
            }
            if streams.start_id.is_empty() {
                problems.push((
                    "source.streams.start_id".to_string(),
                    "must not be empty: \"0\" (history) or \"$\" (new entries only)".to_string(),
                ));
            }
        }
        if self.sequence.enabled {
            for (key, value) in [
                ("publisher_field", &self.sequence.publisher_field),
                ("sequence_field", &self.sequence.sequence_field),
            ] {
                if value.is_empty() {
                    problems.push((
                        format!("source.sequence.{key}"),
                        "must not be empty when source.sequence.enabled = true".to_string(),
                    ));
                }
            }
        }
        problems
    }
}

impl PipelineConfig {
    /// The pipeline must read something the configured source can read.
    fn validate_inputs(&self, kind: SourceKind, prefix: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match kind {
            SourceKind::Pubsub => {
                if self.channels.is_empty() && self.patterns.is_empty() {
                    problems.push((
                        format!("{prefix}.channels"),
                        "the pipeline reads nothing: set channels or patterns".to_string(),
                    ));
                }
                if !self.streams.is_empty() {
                    problems.push((
                        format!("{prefix}.streams"),
                        "streams are read only with source.kind = \"streams\": set it, or use channels".to_string(),
                    ));
                }
            }
            SourceKind::Streams => {
                if self.streams.is_empty() {
                    problems.push((
                        format!("{prefix}.streams"),
                        "the pipeline reads nothing: list stream keys in streams (source.kind is \"streams\")".to_string(),
                    ));
                }
                if !self.channels.is_empty() || !self.patterns.is_empty() {
                    let key = if self.channels.is_empty() {
                        "patterns"
                    } else {
                        "channels"
                    };
                    problems.push((
                        format!("{prefix}.{key}"),
                        "channels and patterns are read only with source.kind = \"pubsub\": move them to streams".to_string(),
                    ));
                }
            }
        }
        problems
    }
}

impl SpoolConfig {
    /// Pure checks, as `(key, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.dir.as_os_str().is_empty() {
            problems.push((
                "spool.dir".to_string(),
                "must not be empty (e.g. \"/var/lib/ingestd/spool\")".to_string(),
            ));
        }
        if self.segment_bytes.as_u64() < 4096 {
            problems.push((
                "spool.segment_bytes".to_string(),
                format!(
                    "{} is too small: at least \"4KiB\" (e.g. \"8MiB\")",
                    self.segment_bytes
                ),
            ));
        }
        if self.max_bytes.as_u64() < self.segment_bytes.as_u64() {
            problems.push((
                "spool.max_bytes".to_string(),
                format!(
                    "{} is smaller than spool.segment_bytes ({}): raise it (e.g. \"1GiB\")",
                    self.max_bytes, self.segment_bytes
                ),
            ));
        }
        if self.fsync == FsyncPolicy::Interval && self.fsync_interval.is_zero() {
            problems.push((
                "spool.fsync_interval".to_string(),
                "must be greater than 0 with fsync = \"interval\" (e.g. \"100ms\")".to_string(),
            ));
        }
        problems
    }
}
