//! MongoDB sink: one document per event, `_id` = `event_id`, written with one unordered
//! `insert_many` per batch. A duplicate key (11000) means the event is already stored and
//! counts as written, which makes replays idempotent; every other failure is classified
//! per document (retryable or permanent) and handed back to the runner, which retries or
//! dead-letters. The two query indexes are created at start.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use mongodb::bson::{Bson, DateTime as BsonDateTime, Document, RawDocumentBuf, doc};
use mongodb::error::{Error as MongoError, ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, Credential, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::config::Secret;
use crate::event::Event;

/// The server's `maxBsonObjectSize`: the driver refuses a whole `insert_many` when one
/// document is larger, so such documents are failed one by one before sending.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Error codes of a duplicate key: the document is already there.
const DUPLICATE_KEY_CODES: [i32; 3] = [11000, 11001, 12582];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string (`mongodb://` or `mongodb+srv://`). It may hold credentials, so it
    /// is redacted in logs; set it from the environment, e.g.
    /// `INGESTD_PIPELINES__ANALYTICS__SINKS__MONGODB__MONGODB__URI`.
    pub uri: Secret,
    /// User name; overrides the one in `uri` (e.g. `..__MONGODB__USERNAME`).
    pub username: Option<String>,
    /// Password; overrides the one in `uri`. Set it from the environment
    /// (`..__MONGODB__PASSWORD`), never in a committed file.
    pub password: Option<Secret>,
    /// Database holding the collection.
    pub database: String,
    /// Collection receiving one document per event.
    pub collection: String,
    /// Write concern `w`: `"majority"`, a number of nodes (`"1"`, `"2"`, ...) or the name of
    /// a custom write concern. `"0"` (unacknowledged) is refused: ingestd must know what
    /// was written. A bare number (`1`) works too.
    #[serde(deserialize_with = "string_or_number")]
    pub write_concern: String,
    /// Wait for the journal before acknowledging (`j`); unset = server default.
    pub journal: Option<bool>,
    /// How long the server may wait for the write concern (`wtimeout`); unset = forever.
    #[serde(with = "humantime_serde")]
    pub write_concern_timeout: Option<Duration>,
    /// Timeout of opening one connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an operation waits for a usable server before failing (retryable).
    #[serde(with = "humantime_serde")]
    pub server_selection_timeout: Duration,
    /// Longest one batch insert may take; past it the batch fails as a retryable
    /// `timeout` (replaying it is harmless: duplicates count as written).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Connections per server; unset = driver default (10).
    pub max_pool_size: Option<u32>,
    /// Create the indexes `{user_id: 1, timestamp: -1}` and `{event_type: 1}` at start
    /// (needs the `createIndex` privilege).
    pub create_indexes: bool,
}

impl Default for MongoConfig {
    fn default() -> MongoConfig {
        MongoConfig {
            uri: Secret::new("mongodb://127.0.0.1:27017"),
            username: None,
            password: None,
            database: "analytics".to_string(),
            collection: "events".to_string(),
            write_concern: "majority".to_string(),
            journal: None,
            write_concern_timeout: None,
            connect_timeout: Duration::from_secs(5),
            server_selection_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_pool_size: None,
            create_indexes: true,
        }
    }
}

impl MongoConfig {
    /// Pure checks, as `(key, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let uri = self.uri.expose();
        if !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://") {
            problems.push((
                "uri".to_string(),
                format!(
                    "{} is not a MongoDB connection string (e.g. \"mongodb://127.0.0.1:27017\")",
                    self.uri.redacted()
                ),
            ));
        }
        if self.database.is_empty() || self.database.contains(['/', '\\', '.', ' ', '"', '$']) {
            problems.push((
                "database".to_string(),
                format!(
                    "{:?} is not a database name (non-empty, without / \\ . space \" $)",
                    self.database
                ),
            ));
        }
        if self.collection.is_empty()
            || self.collection.contains('$')
            || self.collection.starts_with("system.")
        {
            problems.push((
                "collection".to_string(),
                format!(
                    "{:?} is not a collection name (non-empty, without $, not system.*)",
                    self.collection
                ),
            ));
        }
        if let Err(reason) = parse_acknowledgment(&self.write_concern) {
            problems.push(("write_concern".to_string(), reason));
        }
        if self.password.is_some() && self.username.is_none() {
            problems.push((
                "password".to_string(),
                "is set without username: set username too (or put both in uri)".to_string(),
            ));
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("server_selection_timeout", self.server_selection_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                problems.push((
                    key.to_string(),
                    "must be greater than 0 (e.g. \"5s\")".to_string(),
                ));
            }
        }
        if self.max_pool_size == Some(0) {
            problems.push((
                "max_pool_size".to_string(),
                "must be at least 1 (or unset for the driver default)".to_string(),
            ));
        }
        problems
    }

    fn write_concern(&self) -> Result<WriteConcern, String> {
        let mut write_concern = WriteConcern::default();
        write_concern.w = Some(parse_acknowledgment(&self.write_concern)?);
        write_concern.journal = self.journal;
        write_concern.w_timeout = self.write_concern_timeout;
        Ok(write_concern)
    }
}

/// Accepts `"1"` and `1` alike: TOML users write numbers, and the environment layer
/// turns `..__WRITE_CONCERN=1` into one.
fn string_or_number<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(u64),
    }
    match StringOrNumber::deserialize(deserializer)? {
        StringOrNumber::String(text) => Ok(text),
        StringOrNumber::Number(number) => Ok(number.to_string()),
    }
}

/// `"majority"`, a node count, or a custom write concern name.
fn parse_acknowledgment(text: &str) -> Result<Acknowledgment, String> {
    if text.is_empty() {
        return Err("must not be empty: use \"majority\", \"1\" or a custom name".to_string());
    }
    if text == "majority" {
        return Ok(Acknowledgment::Majority);
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Ok(Acknowledgment::Custom(text.to_string()));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(
            "\"0\" (unacknowledged) cannot report failed writes: use \"1\" or \"majority\""
                .to_string(),
        ),
        Ok(nodes) => Ok(Acknowledgment::Nodes(nodes)),
        Err(_) => Err(format!(
            "{text:?} is not a node count: use \"majority\" or \"1\""
        )),
    }
}

pub struct MongoSink {
    database: Database,
    collection: Collection<RawDocumentBuf>,
    write_timeout: Duration,
}

impl MongoSink {
    /// Connects, checks the server answers and creates the indexes.
    pub async fn connect(config: &MongoConfig, context: &SinkContext) -> anyhow::Result<MongoSink> {
        let problems = config.validate();
        if let Some((key, reason)) = problems.first() {
            anyhow::bail!("mongodb.{key}: {reason}");
        }
        let mut options = ClientOptions::parse(config.uri.expose())
            .await
            .map_err(|error| anyhow::anyhow!("mongodb uri {}: {error}", config.uri))?;
        options.app_name = Some(format!("ingestd/{}.{}", context.pipeline, context.sink));
        options.connect_timeout = Some(config.connect_timeout);
        options.server_selection_timeout = Some(config.server_selection_timeout);
        if let Some(max_pool_size) = config.max_pool_size {
            options.max_pool_size = Some(max_pool_size);
        }
        options.write_concern = Some(
            config
                .write_concern()
                .map_err(|reason| anyhow::anyhow!("mongodb.write_concern: {reason}"))?,
        );
        if let Some(username) = &config.username {
            // Keep the source and mechanism of the URI, only the identity comes from here.
            let mut credential = options
                .credential
                .take()
                .unwrap_or_else(Credential::default);
            credential.username = Some(username.clone());
            credential.password = config
                .password
                .as_ref()
                .map(|password| password.expose().to_string());
            options.credential = Some(credential);
        }
        let client = Client::with_options(options)
            .map_err(|error| anyhow::anyhow!("mongodb client for {}: {error}", config.uri))?;
        let database = client.database(&config.database);
        let collection = database.collection::<RawDocumentBuf>(&config.collection);
        database
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "mongodb at {} does not answer: {error} (is it running? check uri)",
                    config.uri
                )
            })?;
        if config.create_indexes {
            create_indexes(&collection).await.map_err(|error| {
                anyhow::anyhow!(
                    "mongodb {}.{}: cannot create indexes: {error} (or set create_indexes = false)",
                    config.database,
                    config.collection
                )
            })?;
        }
        tracing::info!(
            uri = %config.uri,
            database = %config.database,
            collection = %config.collection,
            write_concern = %config.write_concern,
            "mongodb sink connected"
        );
        Ok(MongoSink {
            database,
            collection,
            write_timeout: config.write_timeout,
        })
    }

    async fn write_batch(&self, batch: &[Arc<Event>]) -> Result<Written, BatchFailure> {
        let ingested_at = BsonDateTime::now();
        let mut failures: Vec<(usize, SinkError)> = Vec::new();
        let mut documents = Vec::with_capacity(batch.len());
        // `positions[i]` is the batch index of `documents[i]`.
        let mut positions = Vec::with_capacity(batch.len());
        for (index, event) in batch.iter().enumerate() {
            match event_document(event, ingested_at) {
                Ok(document) if document.as_bytes().len() > MAX_DOCUMENT_BYTES => {
                    failures.push((
                        index,
                        SinkError::permanent(
                            "too_large",
                            format!(
                                "document of event {:?} is {} bytes, mongodb allows {MAX_DOCUMENT_BYTES}",
                                event.event_id,
                                document.as_bytes().len()
                            ),
                        ),
                    ));
                }
                Ok(document) => {
                    documents.push(document);
                    positions.push(index);
                }
                Err(error) => failures.push((index, error)),
            }
        }
        // The driver refuses an empty insert_many.
        if documents.is_empty() {
            return settle(failures);
        }
        let insert = self.collection.insert_many(&documents).ordered(false);
        let result = match tokio::time::timeout(self.write_timeout, insert).await {
            Ok(result) => result,
            Err(_) => {
                let error = SinkError::retryable(
                    "timeout",
                    format!(
                        "mongodb insert_many of {} documents took longer than write_timeout {:?}",
                        documents.len(),
                        self.write_timeout
                    ),
                );
                return Err(fail_sent(failures, &positions, error));
            }
        };
        let error = match result {
            Ok(_) => return settle(failures),
            Err(error) => error,
        };
        match error.kind.as_ref() {
            ErrorKind::InsertMany(insert_many_error) => {
                failures.extend(insert_many_failures(insert_many_error, &positions));
                settle(failures)
            }
            _ => Err(fail_sent(failures, &positions, classify_error(&error))),
        }
    }
}

/// `Ok` when nothing failed, else the per-event failures.
fn settle(failures: Vec<(usize, SinkError)>) -> Result<Written, BatchFailure> {
    if failures.is_empty() {
        return Ok(Written::default());
    }
    Err(BatchFailure::Some(failures))
}

/// Every sent document failed with `error`, plus the ones that failed before sending.
fn fail_sent(
    mut failures: Vec<(usize, SinkError)>,
    positions: &[usize],
    error: SinkError,
) -> BatchFailure {
    if failures.is_empty() {
        return BatchFailure::All(error);
    }
    failures.extend(positions.iter().map(|&position| (position, error.clone())));
    BatchFailure::Some(failures)
}

/// Per-document outcome of an unordered `insert_many` that reported errors: duplicates
/// count as written; with a write concern error, every document without its own error is
/// applied but not known durable, so it is retried (the retry then meets a duplicate).
pub fn insert_many_failures(
    error: &InsertManyError,
    positions: &[usize],
) -> Vec<(usize, SinkError)> {
    let mut failed = vec![None; positions.len()];
    let mut has_own_error = vec![false; positions.len()];
    for write_error in error.write_errors.iter().flatten() {
        let Some(slot) = failed.get_mut(write_error.index) else {
            tracing::warn!(
                index = write_error.index,
                "mongodb reported a write error for an index outside the batch"
            );
            continue;
        };
        has_own_error[write_error.index] = true;
        *slot = classify_write_error(write_error.code, &write_error.message);
    }
    if let Some(concern_error) = &error.write_concern_error {
        let sink_error = SinkError::retryable(
            "write_concern",
            format!(
                "mongodb write concern not satisfied: code {} ({}): {}",
                concern_error.code, concern_error.code_name, concern_error.message
            ),
        );
        for (slot, own_error) in failed.iter_mut().zip(&has_own_error) {
            if !own_error {
                *slot = Some(sink_error.clone());
            }
        }
    }
    failed
        .into_iter()
        .zip(positions)
        .filter_map(|(failure, &position)| failure.map(|error| (position, error)))
        .collect()
}

/// One server error code: `None` for a duplicate key (already written), else the error
/// with whether retrying can help.
pub fn classify_write_error(code: i32, message: &str) -> Option<SinkError> {
    if DUPLICATE_KEY_CODES.contains(&code) {
        return None;
    }
    let detail = format!("mongodb error code {code}: {message}");
    let retryable_kind = match code {
        // HostUnreachable, HostNotFound, SocketException.
        6 | 7 | 9001 => Some("network"),
        // NetworkTimeout, MaxTimeMSExpired, NetworkInterfaceExceededTimeLimit, ExceededTimeLimit.
        89 | 50 | 202 | 262 => Some("timeout"),
        // NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
        // LegacyNotPrimary, PrimarySteppedDown, ShutdownInProgress, InterruptedAtShutdown,
        // InterruptedDueToReplStateChange.
        10107 | 13435 | 13436 | 10058 | 189 | 91 | 11600 | 11602 => Some("not_primary"),
        // WriteConcernFailed (wtimeout), UnsatisfiableWriteConcern during elections.
        64 | 100 => Some("write_concern"),
        // LockTimeout, LockBusy, WriteConflict, ConflictingOperationInProgress.
        24 | 46 | 112 | 117 => Some("conflict"),
        // RequestRateTooLarge (Cosmos DB), IngressRequestRateLimitExceeded, too many
        // connections / operations queued.
        16500 | 462 | 9002 => Some("throttled"),
        // Unauthorized, AuthenticationFailed: fixable by an operator without touching data.
        13 | 18 => Some("auth"),
        _ => None,
    };
    if let Some(kind) = retryable_kind {
        return Some(SinkError::retryable(kind, detail));
    }
    let permanent_kind = match code {
        // BSONObjectTooLarge, KeyTooLong, document too large for the storage engine.
        10334 | 17280 | 17419 => "too_large",
        // DocumentValidationFailure.
        121 => "invalid",
        // BadValue, DollarPrefixedFieldName, InvalidDBRef, EmptyFieldName, InvalidIdField,
        // TypeMismatch, Location/parse errors of the document itself.
        2 | 14 | 52 | 55 | 56 | 57 | 53 => "invalid",
        _ => "rejected",
    };
    Some(SinkError::permanent(permanent_kind, detail))
}

/// A whole-operation error (nothing is known to be written).
pub fn classify_error(error: &MongoError) -> SinkError {
    let detail = format!("mongodb: {error}");
    match error.kind.as_ref() {
        ErrorKind::Io(io_error) if io_error.kind() == std::io::ErrorKind::TimedOut => {
            SinkError::retryable("timeout", detail)
        }
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => SinkError::retryable("network", detail),
        ErrorKind::ServerSelection { .. } => SinkError::retryable("unavailable", detail),
        ErrorKind::Authentication { .. } => SinkError::retryable("auth", detail),
        ErrorKind::Command(command_error) => {
            match classify_write_error(command_error.code, &command_error.message) {
                Some(sink_error) if sink_error.retryable => sink_error,
                // Labelled by the server as safe to retry, whatever the code.
                _ if error.contains_label("RetryableWriteError") => {
                    SinkError::retryable("server", detail)
                }
                Some(sink_error) if sink_error.kind != "rejected" => sink_error,
                // An unknown command-level failure says nothing about the data: retry
                // rather than dead-letter a whole batch at once.
                _ => SinkError::retryable("server", detail),
            }
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => {
            SinkError::retryable("write_concern", detail)
        }
        ErrorKind::Write(WriteFailure::WriteError(write_error)) => {
            classify_write_error(write_error.code, &write_error.message)
                .unwrap_or_else(|| SinkError::retryable("server", detail))
        }
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => {
            SinkError::permanent("invalid", detail)
        }
        _ => SinkError::retryable("server", detail),
    }
}

/// The document of one event (DESIGN.md, "Stores").
pub fn event_document(
    event: &Event,
    ingested_at: BsonDateTime,
) -> Result<RawDocumentBuf, SinkError> {
    let mut document = Document::new();
    document.insert("_id", event.event_id.as_str());
    document.insert("user_id", event.user_id.as_str());
    document.insert("event_type", event.event_type.as_str());
    document.insert(
        "timestamp",
        BsonDateTime::from_millis(event.timestamp.timestamp_millis()),
    );
    if let Some(amount) = event.amount {
        document.insert("amount", amount);
    }
    document.insert("data", json_object_to_document(&event.stored_data()));
    document.insert("channel", &*event.channel);
    document.insert("ingested_at", ingested_at);
    RawDocumentBuf::from_document(&document).map_err(|error| {
        SinkError::permanent(
            "invalid",
            format!(
                "event {:?} cannot be a BSON document: {error}",
                event.event_id
            ),
        )
    })
}

/// Plain JSON to BSON: unlike `Bson::try_from`, keys such as `$date` or `$oid` in user
/// data stay ordinary fields instead of being read as extended JSON.
pub fn json_object_to_document(object: &Map<String, Value>) -> Document {
    object
        .iter()
        .map(|(key, value)| (key.clone(), json_to_bson(value)))
        .collect()
}

fn json_to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(boolean) => Bson::Boolean(*boolean),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => match i32::try_from(integer) {
                Ok(small) => Bson::Int32(small),
                Err(_) => Bson::Int64(integer),
            },
            // Beyond i64 (large u64) or fractional: BSON has no wider integer.
            None => Bson::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => Bson::String(text.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(json_to_bson).collect()),
        Value::Object(object) => Bson::Document(json_object_to_document(object)),
    }
}

/// The two indexes of DESIGN.md on the events collection (also used by bench/rawclients).
pub async fn create_indexes(collection: &Collection<RawDocumentBuf>) -> Result<(), MongoError> {
    let indexes = [
        IndexModel::builder()
            .keys(doc! { "user_id": 1, "timestamp": -1 })
            .options(
                IndexOptions::builder()
                    .name("user_id_1_timestamp_-1".to_string())
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! { "event_type": 1 })
            .options(
                IndexOptions::builder()
                    .name("event_type_1".to_string())
                    .build(),
            )
            .build(),
    ];
    match collection.create_indexes(indexes).await {
        Ok(_) => Ok(()),
        Err(error) => match error.kind.as_ref() {
            // IndexOptionsConflict / IndexKeySpecsConflict: the same keys already exist
            // under another name or with other options; queries are served either way.
            ErrorKind::Command(command_error) if matches!(command_error.code, 85 | 86) => {
                tracing::warn!(%error, "mongodb indexes exist with other names or options, keeping them");
                Ok(())
            }
            _ => Err(error),
        },
    }
}

impl Sink for MongoSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        self.write_batch(batch).boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.database
                .run_command(doc! { "ping": 1 })
                .await
                .map(|_| ())
                .map_err(|error| classify_error(&error))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson;

    fn insert_many_error(document: Document) -> InsertManyError {
        bson::from_document(document).expect("an InsertManyError document")
    }

    #[test]
    fn per_document_errors_are_classified() {
        let error = insert_many_error(doc! {
            "writeErrors": [
                { "index": 0, "code": 11000, "errmsg": "E11000 duplicate key" },
                { "index": 1, "code": 121, "errmsg": "Document failed validation" },
                { "index": 2, "code": 10107, "errmsg": "not primary" },
                { "index": 4, "code": 10334, "errmsg": "object to insert too large" },
                { "index": 5, "code": 50, "errmsg": "operation exceeded time limit" },
                { "index": 6, "code": 424242, "errmsg": "something new" },
            ]
        });
        // Documents 0..7 were batch indices 10..17 (say 0..9 failed before sending).
        let positions: Vec<usize> = (10..17).collect();
        let failures = insert_many_failures(&error, &positions);
        let summary: Vec<(usize, bool, &str)> = failures
            .iter()
            .map(|(index, error)| (*index, error.retryable, error.kind))
            .collect();
        assert_eq!(
            summary,
            vec![
                (11, false, "invalid"),
                (12, true, "not_primary"),
                (14, false, "too_large"),
                (15, true, "timeout"),
                (16, false, "rejected"),
            ]
        );
    }

    #[test]
    fn write_concern_error_retries_the_documents_without_their_own_error() {
        let error = insert_many_error(doc! {
            "writeErrors": [ { "index": 1, "code": 11000, "errmsg": "dup" } ],
            "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out" },
        });
        let failures = insert_many_failures(&error, &[0, 1, 2]);
        let indices: Vec<usize> = failures.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, vec![0, 2]);
        assert!(
            failures
                .iter()
                .all(|(_, error)| error.retryable && error.kind == "write_concern")
        );
    }

    #[test]
    fn whole_batch_errors_are_classified() {
        let reset = MongoError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        assert_eq!(
            (
                classify_error(&reset).retryable,
                classify_error(&reset).kind
            ),
            (true, "network")
        );
        let timed_out = MongoError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(classify_error(&timed_out).kind, "timeout");
        let command_error: mongodb::error::CommandError = bson::from_document(
            doc! { "code": 10107, "codeName": "NotWritablePrimary", "errmsg": "not primary" },
        )
        .unwrap();
        let not_primary = MongoError::from(ErrorKind::Command(command_error));
        let classified = classify_error(&not_primary);
        assert!(classified.retryable);
        assert_eq!(classified.kind, "not_primary");
        let validation: mongodb::error::CommandError = bson::from_document(
            doc! { "code": 121, "codeName": "DocumentValidationFailure", "errmsg": "failed validation" },
        )
        .unwrap();
        let invalid = classify_error(&MongoError::from(ErrorKind::Command(validation)));
        assert_eq!((invalid.retryable, invalid.kind), (false, "invalid"));
        let unknown: mongodb::error::CommandError =
            bson::from_document(doc! { "code": 424242, "errmsg": "new" }).unwrap();
        // An unknown whole-operation failure keeps the events (retry), unlike per document.
        assert!(classify_error(&MongoError::from(ErrorKind::Command(unknown))).retryable);
    }

    #[test]
    fn write_concern_setting() {
        assert_eq!(
            parse_acknowledgment("majority"),
            Ok(Acknowledgment::Majority)
        );
        assert_eq!(parse_acknowledgment("2"), Ok(Acknowledgment::Nodes(2)));
        assert_eq!(
            parse_acknowledgment("dc-east"),
            Ok(Acknowledgment::Custom("dc-east".to_string()))
        );
        assert!(parse_acknowledgment("0").is_err());
        let config = MongoConfig {
            write_concern: "0".to_string(),
            collection: "system.x".to_string(),
            ..MongoConfig::default()
        };
        let keys: Vec<String> = config.validate().into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, vec!["collection", "write_concern"]);
        assert!(MongoConfig::default().validate().is_empty());
    }

    #[test]
    fn json_keeps_extended_json_keys_as_fields() {
        let object: Map<String, Value> = serde_json::from_str(
            r#"{"when":{"$date":"2020-01-01"},"n":1,"big":5000000000,"f":1.5,"list":[true,null,"x"]}"#,
        )
        .unwrap();
        let document = json_object_to_document(&object);
        assert_eq!(
            document
                .get_document("when")
                .unwrap()
                .get_str("$date")
                .unwrap(),
            "2020-01-01"
        );
        assert_eq!(document.get("n"), Some(&Bson::Int32(1)));
        assert_eq!(document.get("big"), Some(&Bson::Int64(5_000_000_000)));
        assert_eq!(document.get("f"), Some(&Bson::Double(1.5)));
        assert_eq!(
            document.get_array("list").unwrap(),
            &vec![
                Bson::Boolean(true),
                Bson::Null,
                Bson::String("x".to_string())
            ]
        );
    }
}
