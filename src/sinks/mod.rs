//! The [`Sink`] trait and the sink registry: one module per store, one config field each.
//!
//! A sink writes a whole batch and reports per-event outcomes; it never retries by itself
//! (the runner does, with backoff) and never dead-letters (the runner does that too), so
//! every sink gets the same delivery guarantees for free.

pub mod blackhole;
pub mod cassandra;
pub mod dynamodb;
pub mod file;
pub mod leaderboard;
pub mod mongodb;
pub mod rate_counter;
pub mod redis_aggregate;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::config::{BatchConfig, OnLimit, QueueConfig, RetryConfig};
use crate::event::Event;

/// Why a write failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    /// Retryable errors (network, timeout, throttling, overload) are retried with backoff;
    /// permanent ones (invalid data, too large) are dead-lettered at once.
    pub retryable: bool,
    /// A short label for metrics: `network`, `timeout`, `throttled`, `invalid`, ...
    pub kind: &'static str,
    pub message: String,
}

impl SinkError {
    pub fn retryable(kind: &'static str, message: impl Into<String>) -> SinkError {
        SinkError {
            retryable: true,
            kind,
            message: message.into(),
        }
    }

    pub fn permanent(kind: &'static str, message: impl Into<String>) -> SinkError {
        SinkError {
            retryable: false,
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.message, self.kind)
    }
}

/// How a batch write failed.
#[derive(Debug, Clone)]
pub enum BatchFailure {
    /// Nothing is known to be written (e.g. the connection dropped).
    All(SinkError),
    /// Only these events (indices into the batch) failed; the rest are written.
    Some(Vec<(usize, SinkError)>),
    /// As [`BatchFailure::Some`], plus what the written events report: a rate counter's
    /// over-limit verdicts (indices into the batch), so its gate still drops or tags them.
    SomeWritten {
        failed: Vec<(usize, SinkError)>,
        written: Written,
    },
}

/// What a successful write reports back beyond "written".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Indices of events over a rate limit (only rate counters fill this).
    pub over_limit: Vec<usize>,
}

/// A destination for batches of events.
pub trait Sink: Send + Sync + 'static {
    /// Writes the batch idempotently (`event_id` is the key): writing an event twice
    /// must leave the store as if it was written once.
    fn write<'a>(&'a self, batch: &'a [Arc<Event>])
    -> BoxFuture<'a, Result<Written, BatchFailure>>;

    /// Whether the store answers now; drives `/readyz`.
    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// What a sink needs from the process to start.
#[derive(Clone)]
pub struct SinkContext {
    pub pipeline: String,
    pub sink: String,
    pub on_limit: OnLimit,
    /// A multiplexed, auto-reconnecting connection to the configured Redis.
    pub redis: redis::aio::ConnectionManager,
}

fn default_max_in_flight() -> usize {
    4
}

/// One sink of a pipeline: delivery settings plus exactly one kind table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// When a batch closes.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Retries of retryable errors.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The in-memory queue in front of this sink.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Batches written concurrently.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// MongoDB collection, one document per event.
    pub mongodb: Option<mongodb::MongoConfig>,
    /// Cassandra/ScyllaDB day partitions.
    pub cassandra: Option<cassandra::CassandraConfig>,
    /// DynamoDB single-table items.
    pub dynamodb: Option<dynamodb::DynamoConfig>,
    /// Redis sorted-set leaderboards.
    pub leaderboard: Option<leaderboard::LeaderboardConfig>,
    /// Redis fixed-window rate counters.
    pub rate_counter: Option<rate_counter::RateCounterConfig>,
    /// JSON lines appended to a local file.
    pub file: Option<file::FileConfig>,
    /// Discards everything (benchmarks, dry runs).
    pub blackhole: Option<blackhole::BlackholeConfig>,
}

impl SinkConfig {
    /// The kinds set in this table, by name.
    fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.mongodb.is_some() {
            kinds.push("mongodb");
        }
        if self.cassandra.is_some() {
            kinds.push("cassandra");
        }
        if self.dynamodb.is_some() {
            kinds.push("dynamodb");
        }
        if self.leaderboard.is_some() {
            kinds.push("leaderboard");
        }
        if self.rate_counter.is_some() {
            kinds.push("rate_counter");
        }
        if self.file.is_some() {
            kinds.push("file");
        }
        if self.blackhole.is_some() {
            kinds.push("blackhole");
        }
        kinds
    }

    /// The sink's kind, once validated.
    pub fn kind(&self) -> &'static str {
        self.kinds().first().copied().unwrap_or("none")
    }

    pub fn is_rate_counter(&self) -> bool {
        self.rate_counter.is_some()
    }

    /// Pure checks, as `(key relative to the sink, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let kinds = self.kinds();
        if kinds.len() != 1 {
            problems.push((
                "-".to_string(),
                format!(
                    "a sink needs exactly one kind table (one of mongodb, cassandra, dynamodb, leaderboard, rate_counter, file, blackhole), found {}",
                    if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") }
                ),
            ));
        }
        if self.batch.max_events == 0 {
            problems.push((
                "batch.max_events".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if self.batch.max_bytes.as_u64() == 0 {
            problems.push((
                "batch.max_bytes".to_string(),
                "must be greater than 0 (e.g. \"1MiB\")".to_string(),
            ));
        }
        if self.queue.capacity == 0 {
            problems.push((
                "queue.capacity".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if self.queue.max_bytes.as_u64() < 64 * 1024 {
            problems.push((
                "queue.max_bytes".to_string(),
                format!(
                    "{} is too small: use at least \"64KiB\" (default \"32MiB\")",
                    self.queue.max_bytes
                ),
            ));
        }
        if self.max_in_flight == 0 {
            problems.push((
                "max_in_flight".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if self.retry.max_attempts == 0 {
            problems.push((
                "retry.max_attempts".to_string(),
                "must be at least 1 (1 = no retry)".to_string(),
            ));
        }
        let kind_problems = match (
            &self.mongodb,
            &self.cassandra,
            &self.dynamodb,
            &self.leaderboard,
            &self.rate_counter,
        ) {
            (Some(config), _, _, _, _) => prefixed("mongodb", config.validate()),
            (_, Some(config), _, _, _) => prefixed("cassandra", config.validate()),
            (_, _, Some(config), _, _) => prefixed("dynamodb", config.validate()),
            (_, _, _, Some(config), _) => prefixed("leaderboard", config.validate()),
            (_, _, _, _, Some(config)) => prefixed("rate_counter", config.validate()),
            _ => Vec::new(),
        };
        problems.extend(kind_problems);
        problems
    }

    /// Connects the sink (creating tables, indexes and prepared statements as needed).
    pub async fn build(&self, context: &SinkContext) -> anyhow::Result<Arc<dyn Sink>> {
        if let Some(config) = &self.mongodb {
            return Ok(Arc::new(
                mongodb::MongoSink::connect(config, context).await?,
            ));
        }
        if let Some(config) = &self.cassandra {
            return Ok(Arc::new(
                cassandra::CassandraSink::connect(config, context).await?,
            ));
        }
        if let Some(config) = &self.dynamodb {
            return Ok(Arc::new(
                dynamodb::DynamoSink::connect(config, context).await?,
            ));
        }
        if let Some(config) = &self.leaderboard {
            return Ok(Arc::new(leaderboard::LeaderboardSink::new(
                config, context,
            )?));
        }
        if let Some(config) = &self.rate_counter {
            return Ok(Arc::new(rate_counter::RateCounterSink::new(
                config, context,
            )?));
        }
        if let Some(config) = &self.file {
            return Ok(Arc::new(file::FileSink::open(config).await?));
        }
        if let Some(config) = &self.blackhole {
            return Ok(Arc::new(blackhole::BlackholeSink::new(config)));
        }
        anyhow::bail!(
            "sink {}.{} has no kind table",
            context.pipeline,
            context.sink
        )
    }
}

fn prefixed(kind: &str, problems: Vec<(String, String)>) -> Vec<(String, String)> {
    problems
        .into_iter()
        .map(|(key, reason)| (format!("{kind}.{key}"), reason))
        .collect()
}
