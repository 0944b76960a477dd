//! Writes events to Cassandra or ScyllaDB day partitions (`PRIMARY KEY ((day, bucket), ...)`).
//!
//! Each batch is split by partition into single-partition UNLOGGED batches (capped in
//! statements and bytes) written concurrently with a bound; the outcome is reported per
//! event, and the driver never retries on its own: the runner does, with backoff. Writes
//! are idempotent because the row key holds `event_id`: a replay overwrites the same row.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    ConnectionPoolError, DbError, ExecutionError, PrepareError, RequestAttemptError,
    UseKeyspaceError,
};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};
use scylla::value::{CqlDate, CqlTimestamp, MaybeUnset};
use serde::{Deserialize, Serialize};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::config::Secret;
use crate::event::Event;

/// The bound row of the INSERT, in column order:
/// `day, bucket, event_time, user_id, event_id, event_type, amount, data`.
pub type RowValues<'a> = (
    CqlDate,
    i16,
    CqlTimestamp,
    &'a str,
    &'a str,
    &'a str,
    MaybeUnset<f64>,
    String,
);

/// Schema statements (CREATE KEYSPACE/TABLE) wait for schema agreement, which takes
/// longer than a write: they get their own generous timeout.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(60);

/// Fixed per-row overhead added to the text lengths when estimating a batch's size
/// (date, smallint, timestamp, double and per-cell framing).
const ROW_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// Contact points, `host:port` (e.g. `["10.0.0.1:9042", "10.0.0.2:9042"]`); the driver
    /// discovers the rest of the cluster from them.
    pub nodes: Vec<String>,
    /// Keyspace holding the table (letters, digits and `_`, at most 48 characters).
    pub keyspace: String,
    /// Table name (letters, digits and `_`, at most 48 characters).
    pub table: String,
    /// Create the keyspace and table at start when missing (`CREATE ... IF NOT EXISTS`).
    /// Turn off when the user has no CREATE permission and the schema is managed elsewhere.
    pub create_schema: bool,
    /// Replication of the keyspace when ingestd creates it, e.g.
    /// `{ class = "SimpleStrategy", replication_factor = 1 }` or
    /// `{ class = "NetworkTopologyStrategy", datacenters = { dc1 = 3 } }`.
    pub replication: Replication,
    /// Partitions per day: `bucket = crc32(user_id as UTF-8 bytes, IEEE polynomial) % buckets`
    /// (see [`bucket_of`]), so one day never becomes one hot, unbounded partition. A
    /// reader of one day queries buckets `0..buckets`. Changing it moves new events of a
    /// user to another bucket: readers must then query up to the larger of both values.
    pub buckets: u16,
    /// Consistency level of writes: `ANY`, `ONE`, `TWO`, `THREE`, `QUORUM`, `ALL`,
    /// `LOCAL_QUORUM`, `EACH_QUORUM`, `LOCAL_ONE`.
    pub consistency: ConsistencyLevel,
    /// Datacenter whose nodes are used (others are never tried); unset = every node.
    pub local_datacenter: Option<String>,
    /// User name when the cluster requires authentication.
    pub username: Option<String>,
    /// Password of `username`; set it through the environment
    /// (`INGESTD_PIPELINES__<PIPELINE>__SINKS__<SINK>__CASSANDRA__PASSWORD`), never in a file.
    pub password: Option<Secret>,
    /// How long one write (batch or statement) may take before it fails as `timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long opening a connection to a node may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Most rows in one single-partition UNLOGGED batch.
    pub max_batch_statements: usize,
    /// Estimated size cap of one batch; keep it well under the server's
    /// `batch_size_fail_threshold` (50 KiB by default in Cassandra and ScyllaDB).
    pub max_batch_bytes: ByteSize,
    /// Partition batches of one write sent at the same time.
    pub max_concurrent_partitions: usize,
    /// Connect with TLS (the nodes' `client_encryption_options` must be enabled).
    pub tls: bool,
    /// PEM file of the CA certificate(s) that signed the nodes' certificates; unset = the
    /// system's trusted roots. Needs `tls = true`.
    pub tls_ca_file: Option<PathBuf>,
    /// Check that a node's certificate names the IP address the driver dials (an IP
    /// SAN); `false` still verifies the chain to the CA. The driver dials the addresses
    /// the cluster reports, so turn it off only for certificates without IP SANs.
    pub tls_verify_hostname: bool,
}

impl Default for CassandraConfig {
    fn default() -> CassandraConfig {
        CassandraConfig {
            nodes: vec!["127.0.0.1:9042".to_string()],
            keyspace: "analytics".to_string(),
            table: "events_by_day".to_string(),
            create_schema: true,
            replication: Replication::SimpleStrategy {
                replication_factor: 1,
            },
            buckets: 8,
            consistency: ConsistencyLevel::LocalQuorum,
            local_datacenter: None,
            username: None,
            password: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_batch_statements: 50,
            max_batch_bytes: ByteSize::kib(16),
            max_concurrent_partitions: 16,
            tls: false,
            tls_ca_file: None,
            tls_verify_hostname: true,
        }
    }
}

/// Keyspace replication, as in `CREATE KEYSPACE ... WITH replication = {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class", deny_unknown_fields)]
pub enum Replication {
    /// One replica set for the whole cluster: local and single-datacenter clusters.
    SimpleStrategy {
        /// Copies of each row.
        replication_factor: u32,
    },
    /// Replicas per datacenter: production.
    NetworkTopologyStrategy {
        /// Copies of each row per datacenter name, e.g. `{ dc1 = 3, dc2 = 3 }`.
        datacenters: BTreeMap<String, u32>,
    },
}

impl Replication {
    /// The CQL map literal, e.g. `{'class': 'SimpleStrategy', 'replication_factor': 1}`.
    fn cql(&self) -> String {
        match self {
            Replication::SimpleStrategy { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopologyStrategy { datacenters } => {
                let mut text = "{'class': 'NetworkTopologyStrategy'".to_string();
                for (datacenter, factor) in datacenters {
                    text.push_str(&format!(", '{}': {factor}", datacenter.replace('\'', "''")));
                }
                text.push('}');
                text
            }
        }
    }
}

/// Write consistency levels, spelled as in CQL (lowercase accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsistencyLevel {
    #[serde(alias = "any")]
    Any,
    #[serde(alias = "one")]
    One,
    #[serde(alias = "two")]
    Two,
    #[serde(alias = "three")]
    Three,
    #[serde(alias = "quorum")]
    Quorum,
    #[serde(alias = "all")]
    All,
    #[serde(alias = "local_quorum")]
    LocalQuorum,
    #[serde(alias = "each_quorum")]
    EachQuorum,
    #[serde(alias = "local_one")]
    LocalOne,
}

impl ConsistencyLevel {
    fn to_driver(self) -> Consistency {
        match self {
            ConsistencyLevel::Any => Consistency::Any,
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::Two => Consistency::Two,
            ConsistencyLevel::Three => Consistency::Three,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::All => Consistency::All,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
        }
    }
}

/// Unquoted CQL identifiers are case-insensitive and limited to 48 characters; only
/// lowercase is accepted so the name in the config is the name in the cluster.
fn identifier_problem(value: &str) -> Option<String> {
    let valid = !value.is_empty()
        && value.len() <= 48
        && value.starts_with(|first: char| first.is_ascii_lowercase())
        && value.chars().all(|character| {
            character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_'
        });
    if valid {
        return None;
    }
    Some(format!(
        "{value:?} is not a usable name: use 1 to 48 lowercase letters, digits or '_', starting with a letter (e.g. \"analytics\")"
    ))
}

impl CassandraConfig {
    /// Pure checks, as `(key, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| problems.push((key.to_string(), reason));
        if self.nodes.is_empty() {
            problem(
                "nodes",
                "needs at least one contact point (e.g. [\"127.0.0.1:9042\"])".to_string(),
            );
        }
        for node in &self.nodes {
            if node.trim().is_empty() {
                problem(
                    "nodes",
                    "contains an empty contact point (e.g. \"127.0.0.1:9042\")".to_string(),
                );
            }
        }
        if let Some(reason) = identifier_problem(&self.keyspace) {
            problem("keyspace", reason);
        }
        if let Some(reason) = identifier_problem(&self.table) {
            problem("table", reason);
        }
        match &self.replication {
            Replication::SimpleStrategy { replication_factor } => {
                if *replication_factor == 0 {
                    problem(
                        "replication.replication_factor",
                        "must be at least 1".to_string(),
                    );
                }
            }
            Replication::NetworkTopologyStrategy { datacenters } => {
                if datacenters.is_empty() {
                    problem(
                        "replication.datacenters",
                        "needs at least one datacenter (e.g. { dc1 = 3 })".to_string(),
                    );
                }
                for (datacenter, factor) in datacenters {
                    if *factor == 0 {
                        problem(
                            "replication.datacenters",
                            format!("{datacenter} = 0: must be at least 1"),
                        );
                    }
                }
            }
        }
        if self.buckets == 0 || self.buckets > i16::MAX as u16 {
            problem(
                "buckets",
                format!(
                    "{} is out of range: must be 1..={} (the column is a smallint)",
                    self.buckets,
                    i16::MAX
                ),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            problem(
                "password",
                "username and password go together: set both or neither".to_string(),
            );
        }
        if self.request_timeout.is_zero() {
            problem(
                "request_timeout",
                "must be greater than 0 (e.g. \"5s\")".to_string(),
            );
        }
        if self.connect_timeout.is_zero() {
            problem(
                "connect_timeout",
                "must be greater than 0 (e.g. \"5s\")".to_string(),
            );
        }
        if self.max_batch_statements == 0 || self.max_batch_statements > usize::from(u16::MAX) {
            problem(
                "max_batch_statements",
                format!(
                    "{} is out of range: must be 1..=65535 (e.g. 50)",
                    self.max_batch_statements
                ),
            );
        }
        if self.max_batch_bytes.as_u64() == 0 {
            problem(
                "max_batch_bytes",
                "must be greater than 0 (e.g. \"16KiB\")".to_string(),
            );
        }
        if self.max_concurrent_partitions == 0 {
            problem(
                "max_concurrent_partitions",
                "must be at least 1".to_string(),
            );
        }
        // Reads the CA file, so `ingestd check` reports a missing or unreadable one.
        if let Some(path) = &self.tls_ca_file {
            if !self.tls {
                problem(
                    "tls_ca_file",
                    "is set but tls = false: set tls = true to connect with TLS".to_string(),
                );
            } else if let Err(reason) = crate::tls::read_ca_file(path) {
                problem("tls_ca_file", reason);
            }
        }
        problems
    }
}

/// The bucket of a user: CRC-32 (IEEE 802.3 polynomial, as `crc32fast` and zlib compute
/// it) of the UTF-8 bytes of `user_id`, modulo `buckets`. Stable across versions and
/// platforms, so readers in any language can compute it.
pub fn bucket_of(user_id: &str, buckets: u16) -> i16 {
    debug_assert!((1..=i16::MAX as u16).contains(&buckets));
    let bucket = crc32fast::hash(user_id.as_bytes()) % u32::from(buckets.max(1));
    // `buckets` is at most i16::MAX (validated), so the remainder always fits.
    bucket as i16
}

/// The `day` column of an event time: its UTC date.
pub fn day_of(timestamp: &DateTime<Utc>) -> NaiveDate {
    timestamp.date_naive()
}

/// A date in the driver's representation: days since the Unix epoch, offset by 2^31.
pub fn cql_date(date: NaiveDate) -> CqlDate {
    let days = date.signed_duration_since(NaiveDate::default()).num_days();
    CqlDate(((1_i64 << 31) + days) as u32)
}

/// What batch planning needs to know about one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey {
    /// Partition key: UTC day (days since the Unix epoch) and bucket.
    pub partition: (i64, i16),
    /// Estimated size of the row in a batch, in bytes.
    pub size_bytes: usize,
}

/// Splits rows into single-partition batches: rows of one `(day, bucket)` in arrival
/// order, a new batch whenever `max_statements` or `max_bytes` would be passed (a row
/// larger than `max_bytes` goes alone). Returns indices into `rows`.
pub fn plan_batches(rows: &[RowKey], max_statements: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut partition_order: Vec<(i64, i16)> = Vec::new();
    let mut by_partition: HashMap<(i64, i16), Vec<usize>> = HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        by_partition
            .entry(row.partition)
            .or_insert_with(|| {
                partition_order.push(row.partition);
                Vec::new()
            })
            .push(index);
    }
    let mut batches = Vec::new();
    for partition in partition_order {
        let indices = by_partition.remove(&partition).unwrap_or_default();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bytes = 0;
        for index in indices {
            let size_bytes = rows[index].size_bytes;
            let full = current.len() >= max_statements
                || (!current.is_empty() && current_bytes + size_bytes > max_bytes);
            if full {
                batches.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current.push(index);
            current_bytes += size_bytes;
        }
        if !current.is_empty() {
            batches.push(current);
        }
    }
    batches
}

/// Turns per-batch outcomes into the sink's answer: written, `All` when every partition
/// failed alike, else the failed events by index.
pub fn settle(
    planned: &[Vec<usize>],
    outcomes: Vec<Result<(), SinkError>>,
) -> Result<Written, BatchFailure> {
    debug_assert_eq!(planned.len(), outcomes.len());
    let mut failures: Vec<(usize, SinkError)> = Vec::new();
    let mut failed_batches = 0;
    let mut first_error: Option<SinkError> = None;
    let mut all_alike = true;
    for (indices, outcome) in planned.iter().zip(outcomes) {
        let Err(error) = outcome else { continue };
        failed_batches += 1;
        match &first_error {
            None => first_error = Some(error.clone()),
            Some(first) => {
                all_alike &= first.retryable == error.retryable && first.kind == error.kind;
            }
        }
        for &index in indices {
            failures.push((index, error.clone()));
        }
    }
    let Some(first_error) = first_error else {
        return Ok(Written::default());
    };
    if failed_batches == planned.len() && all_alike {
        return Err(BatchFailure::All(first_error));
    }
    failures.sort_by_key(|(index, _)| *index);
    Err(BatchFailure::Some(failures))
}

/// Classifies a driver error: transient cluster states (unavailable, timeouts, overload,
/// bootstrapping, broken connections) are retryable; bad statements, types and missing
/// permissions are permanent.
pub fn classify(error: &ExecutionError) -> SinkError {
    let message = format!("cassandra: {error}");
    let (retryable, kind) = match error {
        // Values the statement cannot take (wrong type, key too long): the same every time.
        ExecutionError::BadQuery(_) => (false, "invalid"),
        ExecutionError::EmptyPlan => (true, "unavailable"),
        ExecutionError::PrepareError(prepare_error) => match prepare_error {
            PrepareError::ConnectionPoolError(_) => (true, "network"),
            PrepareError::AllAttemptsFailed { first_attempt } => classify_attempt(first_attempt),
            _ => (true, "prepare"),
        },
        ExecutionError::ConnectionPoolError(pool_error) => match pool_error {
            ConnectionPoolError::NodeDisabledByHostFilter => (true, "unavailable"),
            _ => (true, "network"),
        },
        ExecutionError::LastAttemptError(attempt_error) => classify_attempt(attempt_error),
        ExecutionError::RequestTimeout(_) => (true, "timeout"),
        ExecutionError::UseKeyspaceError(use_error) => match use_error {
            UseKeyspaceError::BadKeyspaceName(_) => (false, "invalid"),
            UseKeyspaceError::RequestError(attempt_error) => classify_attempt(attempt_error),
            UseKeyspaceError::RequestTimeout(_) => (true, "timeout"),
            _ => (true, "network"),
        },
        ExecutionError::SchemaAgreementError(_) => (true, "schema"),
        ExecutionError::MetadataError(_) => (true, "network"),
        // Unknown (future) variants: a retry is bounded by the runner, a wrong dead letter is not.
        _ => (true, "unknown"),
    };
    SinkError {
        retryable,
        kind,
        message,
    }
}

fn classify_attempt(error: &RequestAttemptError) -> (bool, &'static str) {
    match error {
        RequestAttemptError::DbError(db_error, _) => classify_db(db_error),
        RequestAttemptError::SerializationError(_) => (false, "invalid"),
        RequestAttemptError::CqlRequestSerialization(_) => (false, "invalid"),
        RequestAttemptError::UnableToAllocStreamId => (true, "overloaded"),
        RequestAttemptError::BrokenConnectionError(_) => (true, "network"),
        RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::RepreparedIdMissingInBatch => (true, "prepare"),
        // Unparsable or unexpected responses: a new connection may well behave.
        _ => (true, "protocol"),
    }
}

fn classify_db(error: &DbError) -> (bool, &'static str) {
    match error {
        DbError::Unavailable { .. } => (true, "unavailable"),
        DbError::IsBootstrapping => (true, "unavailable"),
        DbError::Overloaded | DbError::RateLimitReached { .. } => (true, "overloaded"),
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => (true, "timeout"),
        DbError::ReadFailure { .. } | DbError::WriteFailure { .. } => (true, "replica_failure"),
        DbError::Unprepared { .. } => (true, "prepare"),
        DbError::ServerError | DbError::TruncateError => (true, "server"),
        DbError::SyntaxError => (false, "syntax"),
        DbError::Invalid => (false, "invalid"),
        DbError::AlreadyExists { .. } => (false, "invalid"),
        DbError::Unauthorized | DbError::AuthenticationError => (false, "unauthorized"),
        DbError::ConfigError => (false, "config"),
        DbError::FunctionFailure { .. } => (false, "invalid"),
        DbError::ProtocolError => (false, "protocol"),
        _ => (true, "unknown"),
    }
}

pub struct CassandraSink {
    session: Session,
    insert: PreparedStatement,
    ready_check: Statement,
    buckets: u16,
    max_batch_statements: usize,
    max_batch_bytes: usize,
    max_concurrent_partitions: usize,
}

impl CassandraSink {
    /// Connects, creates the keyspace and table when configured to, and prepares the INSERT.
    pub async fn connect(
        config: &CassandraConfig,
        context: &SinkContext,
    ) -> anyhow::Result<CassandraSink> {
        let sink_name = format!("{}.{}", context.pipeline, context.sink);
        // The runner owns retries (with backoff and metrics); a driver retry would hide
        // failures and stretch a write past `request_timeout`.
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency.to_driver())
            .request_timeout(Some(config.request_timeout))
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(datacenter) = &config.local_datacenter {
            builder = builder.prefer_datacenter(datacenter.clone());
        }
        if let (Some(username), Some(password)) = (&config.username, &config.password) {
            builder = builder.user(username, password.expose());
        }
        if config.tls {
            let tls = crate::tls::client_config(
                config.tls_ca_file.as_deref(),
                config.tls_verify_hostname,
            )
            .map_err(|reason| {
                anyhow::anyhow!("sink {sink_name}: cassandra.tls_ca_file: {reason}")
            })?;
            builder = builder.tls_context(Some(tls));
        }
        let session = builder.build().await.map_err(|error| {
            anyhow::anyhow!(
                "sink {sink_name}: cannot connect to cassandra at {}: {error} (check `nodes`, credentials, the `tls` settings and that the cluster is up)",
                config.nodes.join(", ")
            )
        })?;

        let qualified_table = format!("{}.{}", config.keyspace, config.table);
        if config.create_schema {
            let create_keyspace = format!(
                "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
                config.keyspace,
                config.replication.cql()
            );
            let create_table = format!(
                "CREATE TABLE IF NOT EXISTS {qualified_table} (\
                 day date, bucket smallint, event_time timestamp, user_id text, event_id text, \
                 event_type text, amount double, data text, \
                 PRIMARY KEY ((day, bucket), event_time, user_id, event_id)\
                 ) WITH CLUSTERING ORDER BY (event_time DESC, user_id ASC, event_id ASC) \
                 AND compaction = {{'class': 'TimeWindowCompactionStrategy', \
                 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}}"
            );
            for cql in [create_keyspace, create_table] {
                let mut statement = Statement::new(cql.clone());
                statement.set_request_timeout(Some(SCHEMA_TIMEOUT));
                session
                    .query_unpaged(statement, ())
                    .await
                    .map_err(|error| {
                        anyhow::anyhow!("sink {sink_name}: `{cql}` failed: {error}")
                    })?;
            }
        }

        let insert_cql = format!(
            "INSERT INTO {qualified_table} \
             (day, bucket, event_time, user_id, event_id, event_type, amount, data) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let mut insert = session.prepare(insert_cql).await.map_err(|error| {
            anyhow::anyhow!(
                "sink {sink_name}: cannot prepare the insert into {qualified_table}: {error} (does the table exist with the documented columns? set `create_schema = true` to create it)"
            )
        })?;
        // Same primary key, same values: safe to resend, so the driver may use any replica.
        insert.set_is_idempotent(true);

        let mut ready_check = Statement::new("SELECT release_version FROM system.local");
        ready_check.set_is_idempotent(true);

        tracing::info!(
            sink = %sink_name,
            nodes = %config.nodes.join(","),
            table = %qualified_table,
            consistency = ?config.consistency,
            "cassandra sink connected"
        );
        Ok(CassandraSink {
            session,
            insert,
            ready_check,
            buckets: config.buckets,
            max_batch_statements: config.max_batch_statements,
            max_batch_bytes: usize::try_from(config.max_batch_bytes.as_u64()).unwrap_or(usize::MAX),
            max_concurrent_partitions: config.max_concurrent_partitions,
        })
    }

    /// Writes the rows at `indices` (all of one partition) as one statement or one
    /// UNLOGGED batch; the driver routes a batch by its first row, so the batch goes
    /// straight to a replica of that partition.
    async fn write_partition(
        &self,
        rows: &[RowValues<'_>],
        indices: &[usize],
    ) -> Result<(), SinkError> {
        if let [index] = indices {
            return self
                .session
                .execute_unpaged(&self.insert, &rows[*index])
                .await
                .map(|_| ())
                .map_err(|error| classify(&error));
        }
        let statements =
            vec![BatchStatement::PreparedStatement(self.insert.clone()); indices.len()];
        let mut batch = Batch::new_with_statements(BatchType::Unlogged, statements);
        batch.set_is_idempotent(true);
        let values: Vec<&RowValues<'_>> = indices.iter().map(|&index| &rows[index]).collect();
        self.session
            .batch(&batch, values)
            .await
            .map(|_| ())
            .map_err(|error| classify(&error))
    }
}

/// The bound values of one event. Public so that the benchmark's raw-client baseline
/// writes exactly the rows the sink writes.
pub fn row_values(event: &Event, buckets: u16) -> RowValues<'_> {
    // Serialized from the borrowed map: wrapping it in a `Value` would clone every entry.
    // Cannot fail: the keys are strings and every value is plain JSON.
    let data = serde_json::to_string(&*event.stored_data()).expect("a JSON object serializes");
    (
        cql_date(day_of(&event.timestamp)),
        bucket_of(&event.user_id, buckets),
        CqlTimestamp(event.timestamp.timestamp_millis()),
        event.user_id.as_str(),
        event.event_id.as_str(),
        event.event_type.as_str(),
        MaybeUnset::from_option(event.amount),
        data,
    )
}

fn row_key(row: &RowValues<'_>) -> RowKey {
    let (day, bucket, _, user_id, event_id, event_type, _, data) = row;
    RowKey {
        partition: (i64::from(day.0), *bucket),
        size_bytes: ROW_OVERHEAD_BYTES
            + user_id.len()
            + event_id.len()
            + event_type.len()
            + data.len(),
    }
}

impl Sink for CassandraSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            let rows: Vec<RowValues<'_>> = batch
                .iter()
                .map(|event| row_values(event, self.buckets))
                .collect();
            let keys: Vec<RowKey> = rows.iter().map(row_key).collect();
            let planned = plan_batches(&keys, self.max_batch_statements, self.max_batch_bytes);
            let rows_ref = &rows;
            let planned_ref = &planned;
            // Keep each outcome next to its plan position: buffer_unordered completes out
            // of order. (Positions, not references, flow through the stream: a closure over
            // borrowed items trips the compiler's higher-ranked lifetime check in a BoxFuture.)
            let mut outcomes: Vec<(usize, Result<(), SinkError>)> =
                futures::stream::iter(0..planned.len())
                    .map(move |position| async move {
                        let indices = &planned_ref[position];
                        (position, self.write_partition(rows_ref, indices).await)
                    })
                    .buffer_unordered(self.max_concurrent_partitions)
                    .collect()
                    .await;
            outcomes.sort_by_key(|(position, _)| *position);
            let ordered = outcomes.into_iter().map(|(_, outcome)| outcome).collect();
            settle(&planned, ordered)
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.session
                .query_unpaged(self.ready_check.clone(), ())
                .await
                .map(|_| ())
                .map_err(|error| classify(&error))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::{BadQuery, BrokenConnectionErrorKind, ConnectionError, WriteType};

    #[test]
    fn bucket_hash_is_crc32_ieee_and_stable() {
        // CRC-32/ISO-HDLC check value: crc32("123456789") = 0xCBF43926.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(bucket_of("123456789", 8), (0xCBF4_3926_u32 % 8) as i16);
        assert_eq!(bucket_of("123456789", 8), 6);
        assert_eq!(bucket_of("123456789", 1000), 262);
        // Fixed values (cross-checked with Python's `zlib.crc32`): changing any of these
        // breaks every reader of existing data.
        assert_eq!(bucket_of("", 8), 0);
        assert_eq!(bucket_of("user-0", 8), 2);
        assert_eq!(bucket_of("user-1", 8), 4);
        assert_eq!(bucket_of("alice", 8), 7);
        assert_eq!(bucket_of("ü", 8), 5);
        assert_eq!(bucket_of("日本", 8), 4);
        assert_eq!(bucket_of("alice", 1000), 735);
        assert_eq!(bucket_of("alice", 1), 0);
        for user in ["alice", "bob", "carol", "ü", "日本"] {
            let bucket = bucket_of(user, 8);
            assert!((0..8).contains(&bucket), "{user} -> {bucket}");
        }
    }

    #[test]
    fn dates_count_days_from_the_epoch_offset_by_2_pow_31() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        assert_eq!(cql_date(epoch), CqlDate(1 << 31));
        let day = NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
        assert_eq!(cql_date(day), CqlDate((1 << 31) + 20_468));
        let before = NaiveDate::from_ymd_opt(1969, 12, 31).unwrap();
        assert_eq!(cql_date(before), CqlDate((1 << 31) - 1));
        let late = DateTime::parse_from_rfc3339("2026-01-15T23:59:59.999-01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(day_of(&late), NaiveDate::from_ymd_opt(2026, 1, 16).unwrap());
    }

    fn key(day: i64, bucket: i16, size_bytes: usize) -> RowKey {
        RowKey {
            partition: (day, bucket),
            size_bytes,
        }
    }

    #[test]
    fn batches_hold_one_partition_and_respect_both_caps() {
        let rows = vec![
            key(1, 0, 100), // 0
            key(1, 1, 100), // 1
            key(1, 0, 100), // 2
            key(2, 0, 100), // 3
            key(1, 0, 100), // 4
            key(1, 0, 100), // 5
            key(1, 1, 100), // 6
        ];
        // By count: partition (1,0) has 4 rows -> 3 + 1.
        let planned = plan_batches(&rows, 3, 1_000_000);
        assert_eq!(planned, vec![vec![0, 2, 4], vec![5], vec![1, 6], vec![3]]);
        // By bytes: 250 bytes -> 2 rows each.
        let planned = plan_batches(&rows, 50, 250);
        assert_eq!(planned, vec![vec![0, 2], vec![4, 5], vec![1, 6], vec![3]]);
        // Every index exactly once, every batch one partition.
        let mut seen: Vec<usize> = planned.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..rows.len()).collect::<Vec<_>>());
        for indices in &planned {
            assert!(
                indices
                    .iter()
                    .all(|&index| rows[index].partition == rows[indices[0]].partition)
            );
        }
        // A row bigger than the cap goes alone, never dropped.
        let big = vec![key(1, 0, 10), key(1, 0, 5_000), key(1, 0, 10)];
        assert_eq!(plan_batches(&big, 50, 100), vec![vec![0], vec![1], vec![2]]);
        assert!(plan_batches(&[], 50, 100).is_empty());
    }

    #[test]
    fn outcomes_map_back_to_event_indices() {
        let planned = vec![vec![0, 2], vec![1, 3], vec![4]];
        assert!(settle(&planned, vec![Ok(()), Ok(()), Ok(())]).is_ok());

        let timeout = SinkError::retryable("timeout", "t");
        let Err(BatchFailure::Some(failures)) =
            settle(&planned, vec![Ok(()), Err(timeout.clone()), Ok(())])
        else {
            panic!("expected per-event failures");
        };
        let indices: Vec<usize> = failures.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, vec![1, 3]);
        assert!(failures.iter().all(|(_, error)| error.kind == "timeout"));

        let all = settle(
            &planned,
            vec![
                Err(timeout.clone()),
                Err(timeout.clone()),
                Err(timeout.clone()),
            ],
        );
        assert!(matches!(all, Err(BatchFailure::All(error)) if error.kind == "timeout"));

        // Everything failed, but not alike: each event keeps its own error.
        let invalid = SinkError::permanent("invalid", "i");
        let Err(BatchFailure::Some(mixed)) = settle(
            &planned,
            vec![Err(timeout.clone()), Err(invalid), Err(timeout)],
        ) else {
            panic!("expected per-event failures");
        };
        assert_eq!(mixed.len(), 5);
        assert!(!mixed[1].1.retryable && mixed[1].0 == 1);
        assert!(mixed[0].1.retryable && mixed[0].0 == 0);
    }

    fn db(error: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            error,
            "server says".to_string(),
        ))
    }

    #[test]
    fn errors_are_classified() {
        let cases: Vec<(ExecutionError, bool, &str)> = vec![
            (
                db(DbError::Unavailable {
                    consistency: Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                }),
                true,
                "unavailable",
            ),
            (
                db(DbError::WriteTimeout {
                    consistency: Consistency::One,
                    received: 0,
                    required: 1,
                    write_type: WriteType::UnloggedBatch,
                }),
                true,
                "timeout",
            ),
            (
                db(DbError::ReadTimeout {
                    consistency: Consistency::One,
                    received: 0,
                    required: 1,
                    data_present: false,
                }),
                true,
                "timeout",
            ),
            (db(DbError::Overloaded), true, "overloaded"),
            (db(DbError::IsBootstrapping), true, "unavailable"),
            (db(DbError::ServerError), true, "server"),
            (db(DbError::Invalid), false, "invalid"),
            (db(DbError::SyntaxError), false, "syntax"),
            (db(DbError::Unauthorized), false, "unauthorized"),
            (db(DbError::AuthenticationError), false, "unauthorized"),
            (db(DbError::ConfigError), false, "config"),
            (
                ExecutionError::RequestTimeout(Duration::from_secs(5)),
                true,
                "timeout",
            ),
            (
                ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                    BrokenConnectionErrorKind::ChannelError.into(),
                )),
                true,
                "network",
            ),
            (
                ExecutionError::ConnectionPoolError(ConnectionPoolError::Broken {
                    last_connection_error: ConnectionError::ConnectTimeout,
                }),
                true,
                "network",
            ),
            (ExecutionError::EmptyPlan, true, "unavailable"),
            (
                ExecutionError::BadQuery(BadQuery::TooManyQueriesInBatchStatement(70_000)),
                false,
                "invalid",
            ),
            (
                ExecutionError::PrepareError(PrepareError::AllAttemptsFailed {
                    first_attempt: RequestAttemptError::DbError(
                        DbError::SyntaxError,
                        String::new(),
                    ),
                }),
                false,
                "syntax",
            ),
        ];
        for (error, retryable, kind) in cases {
            let classified = classify(&error);
            assert_eq!(
                (classified.retryable, classified.kind),
                (retryable, kind),
                "{error}"
            );
            assert!(classified.message.starts_with("cassandra: "));
        }
    }

    fn parse(toml: &str) -> Result<CassandraConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml))
            .extract()
            .map_err(|error| error.to_string())
    }

    #[test]
    fn config_parses_and_validates() {
        let defaults = parse("").unwrap();
        assert!(defaults.validate().is_empty(), "{:?}", defaults.validate());
        assert_eq!(defaults.consistency, ConsistencyLevel::LocalQuorum);
        assert_eq!(defaults.buckets, 8);
        assert_eq!(
            defaults.replication.cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );

        let production = parse(
            r#"
            nodes = ["10.0.0.1:9042", "10.0.0.2:9042"]
            consistency = "LOCAL_QUORUM"
            local_datacenter = "dc1"
            username = "ingestd"
            password = "hunter2"
            request_timeout = "2s"
            max_batch_bytes = "32KiB"
            replication = { class = "NetworkTopologyStrategy", datacenters = { dc1 = 3, dc2 = 2 } }
            "#,
        )
        .unwrap();
        assert!(
            production.validate().is_empty(),
            "{:?}",
            production.validate()
        );
        assert_eq!(
            production.replication.cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
        );
        assert!(!format!("{production:?}").contains("hunter2"));

        assert!(parse("consistency = \"SOMETIMES\"").is_err());
        assert_eq!(
            parse("consistency = \"local_one\"").unwrap().consistency,
            ConsistencyLevel::LocalOne
        );
        assert!(parse("replication = { class = \"SimpleStrategy\", factor = 1 }").is_err());
        assert!(parse("colour = \"blue\"").is_err());

        let broken = CassandraConfig {
            nodes: Vec::new(),
            keyspace: "Analytics-1".to_string(),
            table: String::new(),
            buckets: 0,
            username: Some("u".to_string()),
            max_batch_statements: 0,
            max_concurrent_partitions: 0,
            ..CassandraConfig::default()
        };
        let keys: Vec<String> = broken.validate().into_iter().map(|(key, _)| key).collect();
        for expected in [
            "nodes",
            "keyspace",
            "table",
            "buckets",
            "password",
            "max_batch_statements",
            "max_concurrent_partitions",
        ] {
            assert!(
                keys.iter().any(|key| key == expected),
                "{expected} missing from {keys:?}"
            );
        }
    }
}
