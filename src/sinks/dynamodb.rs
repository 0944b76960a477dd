//! DynamoDB sink: one single-table item per event (`PK = USER#..`, `SK = EVENT#{ts}#{id}`,
//! GSI1 by type and day), written with BatchWriteItem in chunks of at most 25 items and
//! 16 MB, sent concurrently. Puts are idempotent (same key, same item). Only
//! `UnprocessedItems` are re-sent here, with backoff and jitter, since DynamoDB returns
//! them as a normal answer; what stays unprocessed, and every other error, goes back to the
//! runner per event as retryable or permanent. Items over 400 KB never leave the process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig as SdkRetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, Projection, ProjectionType, PutRequest, ScalarAttributeType,
    TableStatus, WriteRequest,
};
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::{Event, format_timestamp};

/// DynamoDB's item size limit (names and values, UTF-8).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// BatchWriteItem limits.
pub const MAX_CHUNK_ITEMS: usize = 25;
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// Name of the global secondary index (type and day).
pub const GSI1: &str = "GSI1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoConfig {
    /// Table receiving one item per event.
    pub table: String,
    /// Create the table (on-demand billing, keys PK/SK, index GSI1) at start when it does
    /// not exist, and wait until it is ACTIVE. Needs `dynamodb:CreateTable`.
    pub create_table: bool,
    /// Endpoint override, e.g. `http://127.0.0.1:8000` for DynamoDB Local; unset or `""`
    /// = AWS.
    pub endpoint_url: Option<String>,
    /// PEM file of the CA certificate(s) to trust for an `https://` endpoint, e.g. a
    /// TLS proxy or a VPC endpoint with a private CA; unset = the system's trusted roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Region; unset or `""` = the AWS configuration chain (`AWS_REGION`, profile, IMDS).
    /// Credentials always come from that chain (`AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY`, profile, web identity, instance role), never from here.
    pub region: Option<String>,
    /// BatchWriteItem requests of one batch in flight at once.
    pub max_concurrent_requests: usize,
    /// Sends of one chunk in all (the first included) while DynamoDB keeps answering with
    /// `UnprocessedItems`; what is still unprocessed then goes back to the runner.
    pub unprocessed_max_attempts: usize,
    /// First delay before re-sending unprocessed items (doubles, with jitter).
    #[serde(with = "humantime_serde")]
    pub unprocessed_initial_delay: Duration,
    /// Longest delay between re-sends of unprocessed items.
    #[serde(with = "humantime_serde")]
    pub unprocessed_max_delay: Duration,
    /// Timeout of one request, connecting included (a retryable `timeout`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Timeout of opening a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long start waits for a new table to become ACTIVE.
    #[serde(with = "humantime_serde")]
    pub table_ready_timeout: Duration,
}

impl Default for DynamoConfig {
    fn default() -> DynamoConfig {
        DynamoConfig {
            table: "Events".to_string(),
            create_table: true,
            endpoint_url: None,
            tls_ca_file: None,
            region: None,
            max_concurrent_requests: 8,
            unprocessed_max_attempts: 8,
            unprocessed_initial_delay: Duration::from_millis(50),
            unprocessed_max_delay: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            table_ready_timeout: Duration::from_secs(120),
        }
    }
}

impl DynamoConfig {
    /// Pure checks, as `(key, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let table_name_ok = (3..=255).contains(&self.table.len())
            && self
                .table
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'));
        if !table_name_ok {
            problems.push((
                "table".to_string(),
                format!(
                    "{:?} is not a table name (3 to 255 of a-z A-Z 0-9 _ - .)",
                    self.table
                ),
            ));
        }
        if let Some(endpoint_url) = self.endpoint_url()
            && !endpoint_url.starts_with("http://")
            && !endpoint_url.starts_with("https://")
        {
            problems.push((
                "endpoint_url".to_string(),
                format!("{endpoint_url:?} is not a URL (e.g. \"http://127.0.0.1:8000\")"),
            ));
        }
        // Reads the CA file, so `ingestd check` reports a missing or unreadable one.
        if let Some(path) = &self.tls_ca_file {
            if self
                .endpoint_url()
                .is_some_and(|url| url.starts_with("http://"))
            {
                problems.push((
                    "tls_ca_file".to_string(),
                    "is set but endpoint_url is http:// (no TLS): use an https:// endpoint_url or remove tls_ca_file".to_string(),
                ));
            } else if let Err(reason) = crate::tls::read_ca_file(path) {
                problems.push(("tls_ca_file".to_string(), reason));
            }
        }
        if self.max_concurrent_requests == 0 {
            problems.push((
                "max_concurrent_requests".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if self.unprocessed_max_attempts == 0 {
            problems.push((
                "unprocessed_max_attempts".to_string(),
                "must be at least 1 (1 = never re-send here, leave it to the runner)".to_string(),
            ));
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("table_ready_timeout", self.table_ready_timeout),
        ] {
            if value.is_zero() {
                problems.push((
                    key.to_string(),
                    "must be greater than 0 (e.g. \"10s\")".to_string(),
                ));
            }
        }
        if self.unprocessed_initial_delay > self.unprocessed_max_delay {
            problems.push((
                "unprocessed_initial_delay".to_string(),
                format!(
                    "{:?} is longer than unprocessed_max_delay {:?}",
                    self.unprocessed_initial_delay, self.unprocessed_max_delay
                ),
            ));
        }
        problems
    }

    /// The endpoint override; `""` means none, so the environment can switch a shipped
    /// local setting back to AWS.
    fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref().filter(|url| !url.is_empty())
    }

    fn region(&self) -> Option<&str> {
        self.region.as_deref().filter(|region| !region.is_empty())
    }
}

/// The client boundary: one BatchWriteItem call. A seam so tests can make DynamoDB
/// answer with `UnprocessedItems` (DynamoDB Local never does).
pub trait BatchWriter: Send + Sync + 'static {
    /// Writes `requests` to `table`; returns the requests DynamoDB did not process
    /// (`UnprocessedItems`), or why the whole call failed.
    fn batch_write<'a>(
        &'a self,
        table: &'a str,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'a, Result<Vec<WriteRequest>, SinkError>>;
}

/// The real [`BatchWriter`]: the SDK client.
pub struct ClientBatchWriter {
    client: Client,
}

impl ClientBatchWriter {
    pub fn new(client: Client) -> ClientBatchWriter {
        ClientBatchWriter { client }
    }
}

impl BatchWriter for ClientBatchWriter {
    fn batch_write<'a>(
        &'a self,
        table: &'a str,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'a, Result<Vec<WriteRequest>, SinkError>> {
        async move {
            let output = self
                .client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .map_err(|error| classify_sdk_error(&error))?;
            let mut unprocessed = output.unprocessed_items.unwrap_or_default();
            Ok(unprocessed.remove(table).unwrap_or_default())
        }
        .boxed()
    }
}

pub struct DynamoSink {
    client: Client,
    writer: Arc<dyn BatchWriter>,
    table: String,
    max_concurrent_requests: usize,
    unprocessed_max_attempts: usize,
    unprocessed_initial_delay: Duration,
    unprocessed_max_delay: Duration,
}

impl DynamoSink {
    /// Builds the client from the AWS chain, creates or checks the table.
    pub async fn connect(
        config: &DynamoConfig,
        context: &SinkContext,
    ) -> anyhow::Result<DynamoSink> {
        let client = DynamoSink::client(config).await?;
        let writer = Arc::new(ClientBatchWriter::new(client.clone()));
        let sink = DynamoSink::with_writer(config, client, writer).await?;
        tracing::info!(
            pipeline = %context.pipeline,
            sink = %context.sink,
            table = %config.table,
            endpoint_url = config.endpoint_url().unwrap_or("aws"),
            "dynamodb sink connected"
        );
        Ok(sink)
    }

    /// The SDK client of this configuration: region and credentials from the AWS chain,
    /// the SDK's own retries off (the runner retries, and counts it).
    pub async fn client(config: &DynamoConfig) -> anyhow::Result<Client> {
        let problems = config.validate();
        if let Some((key, reason)) = problems.first() {
            anyhow::bail!("dynamodb.{key}: {reason}");
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = config.region() {
            loader = loader.region(Region::new(region.to_string()));
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            anyhow::bail!(
                "dynamodb: no AWS region: set dynamodb.region or the AWS_REGION environment variable"
            );
        }
        let mut builder = aws_sdk_dynamodb::config::Builder::from(&sdk_config)
            .retry_config(SdkRetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_timeout(config.request_timeout)
                    .build(),
            );
        if let Some(endpoint_url) = config.endpoint_url() {
            builder = builder.endpoint_url(endpoint_url);
        }
        if let Some(path) = &config.tls_ca_file {
            let (pem, _) = crate::tls::read_ca_file(path)
                .map_err(|reason| anyhow::anyhow!("dynamodb.tls_ca_file: {reason}"))?;
            builder = builder.http_client(DynamoSink::https_client_trusting(pem));
        }
        Ok(Client::from_conf(builder.build()))
    }

    /// The SDK's default HTTPS client (rustls on aws-lc-rs, proxy settings from the
    /// environment) trusting only the CA certificates in `pem` (already validated: the SDK
    /// panics on a PEM it cannot parse).
    fn https_client_trusting(pem: Vec<u8>) -> aws_sdk_dynamodb::config::SharedHttpClient {
        use aws_smithy_http_client::tls::{
            self, TlsContext, TrustStore, rustls_provider::CryptoMode,
        };
        use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
        let trust_store = TrustStore::empty().with_pem_certificate(pem);
        Builder::new().build_with_connector_fn(move |settings, runtime_components| {
            let mut connector = ConnectorBuilder::default()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(
                    TlsContext::builder()
                        .with_trust_store(trust_store.clone())
                        .build()
                        .expect("a TLS context without extra server names always builds"),
                );
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = runtime_components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(ProxyConfig::from_env()));
            connector.build()
        })
    }

    /// A sink writing through `writer` (tests inject faults here); `client` is used for the
    /// table set-up and readiness.
    pub async fn with_writer(
        config: &DynamoConfig,
        client: Client,
        writer: Arc<dyn BatchWriter>,
    ) -> anyhow::Result<DynamoSink> {
        ensure_table(&client, config).await?;
        Ok(DynamoSink {
            client,
            writer,
            table: config.table.clone(),
            max_concurrent_requests: config.max_concurrent_requests,
            unprocessed_max_attempts: config.unprocessed_max_attempts,
            unprocessed_initial_delay: config.unprocessed_initial_delay,
            unprocessed_max_delay: config.unprocessed_max_delay,
        })
    }

    async fn write_batch(&self, batch: &[Arc<Event>]) -> Result<Written, BatchFailure> {
        let ingested_at = format_timestamp(&Utc::now());
        let mut failures: Vec<(usize, SinkError)> = Vec::new();
        let mut items: Vec<PendingItem> = Vec::with_capacity(batch.len());
        let mut item_of_key: HashMap<ItemKey, usize> = HashMap::with_capacity(batch.len());
        for (index, event) in batch.iter().enumerate() {
            let item = match event_item(event, &ingested_at) {
                Ok(item) => item,
                Err(error) => {
                    failures.push((index, error));
                    continue;
                }
            };
            let size = item_size(&item);
            if size > MAX_ITEM_BYTES {
                failures.push((
                    index,
                    SinkError::permanent(
                        "too_large",
                        format!(
                            "dynamodb item of event {:?} is {size} bytes, the limit is {MAX_ITEM_BYTES}: make data smaller",
                            event.event_id
                        ),
                    ),
                ));
                continue;
            }
            let key = ItemKey::of(event);
            // BatchWriteItem refuses two requests with one key: the last event wins, and
            // the events it replaces share its outcome.
            match item_of_key.get(&key) {
                Some(&position) => {
                    let pending = &mut items[position];
                    pending.item = item;
                    pending.size = size;
                    pending.batch_indices.push(index);
                }
                None => {
                    item_of_key.insert(key.clone(), items.len());
                    items.push(PendingItem {
                        key,
                        item,
                        size,
                        batch_indices: vec![index],
                    });
                }
            }
        }
        let chunks = chunk_items(&items);
        let item_failures: Vec<(usize, SinkError)> = futures::stream::iter(chunks)
            .map(|chunk| self.write_chunk(&items, chunk))
            .buffer_unordered(self.max_concurrent_requests)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        for (position, error) in item_failures {
            for &index in &items[position].batch_indices {
                failures.push((index, error.clone()));
            }
        }
        if failures.is_empty() {
            return Ok(Written::default());
        }
        Err(BatchFailure::Some(failures))
    }

    /// Writes one chunk (positions into `items`), re-sending unprocessed items; returns the
    /// positions that failed.
    async fn write_chunk(
        &self,
        items: &[PendingItem],
        chunk: Vec<usize>,
    ) -> Vec<(usize, SinkError)> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.unprocessed_initial_delay)
            .with_max_delay(self.unprocessed_max_delay)
            .with_factor(2.0)
            .with_jitter()
            // backon counts re-sends, the setting counts sends.
            .with_max_times(self.unprocessed_max_attempts.saturating_sub(1))
            .build();
        let mut pending = chunk;
        let mut sends = 0;
        loop {
            sends += 1;
            let requests = pending
                .iter()
                .map(|&position| items[position].request())
                .collect();
            let unprocessed = match self.writer.batch_write(&self.table, requests).await {
                Ok(unprocessed) => unprocessed,
                // A permanent error of a multi-item request is about one of its items
                // (e.g. a number DynamoDB cannot hold): find which, so the others are kept.
                Err(error) if !error.retryable && pending.len() > 1 => {
                    return self.write_one_by_one(items, pending).await;
                }
                Err(error) => {
                    return pending
                        .into_iter()
                        .map(|position| (position, error.clone()))
                        .collect();
                }
            };
            if unprocessed.is_empty() {
                return Vec::new();
            }
            pending = unprocessed_positions(items, &pending, &unprocessed);
            if pending.is_empty() {
                return Vec::new();
            }
            let Some(delay) = delays.next() else {
                let error = SinkError::retryable(
                    "unprocessed",
                    format!(
                        "dynamodb left {} items unprocessed after {sends} sends (unprocessed_max_attempts)",
                        pending.len()
                    ),
                );
                tracing::debug!(table = %self.table, items = pending.len(), sends, "unprocessed items handed back to the runner");
                return pending
                    .into_iter()
                    .map(|position| (position, error.clone()))
                    .collect();
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends each item alone to tell the bad ones from the good ones.
    async fn write_one_by_one(
        &self,
        items: &[PendingItem],
        positions: Vec<usize>,
    ) -> Vec<(usize, SinkError)> {
        let outcomes = futures::stream::iter(positions)
            .map(|position| async move {
                let result = self
                    .writer
                    .batch_write(&self.table, vec![items[position].request()])
                    .await;
                match result {
                    Ok(unprocessed) if unprocessed.is_empty() => None,
                    Ok(_) => Some((
                        position,
                        SinkError::retryable("unprocessed", "dynamodb left the item unprocessed"),
                    )),
                    Err(error) => Some((position, error)),
                }
            })
            .buffer_unordered(self.max_concurrent_requests)
            .collect::<Vec<_>>()
            .await;
        outcomes.into_iter().flatten().collect()
    }
}

/// The primary key of an item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ItemKey {
    partition: String,
    sort: String,
}

impl ItemKey {
    fn of(event: &Event) -> ItemKey {
        ItemKey {
            partition: partition_key(event),
            sort: sort_key(event),
        }
    }

    fn of_item(item: &HashMap<String, AttributeValue>) -> Option<ItemKey> {
        Some(ItemKey {
            partition: item.get("PK")?.as_s().ok()?.clone(),
            sort: item.get("SK")?.as_s().ok()?.clone(),
        })
    }
}

/// One distinct item of a batch and the batch indices it stands for.
struct PendingItem {
    key: ItemKey,
    item: HashMap<String, AttributeValue>,
    size: usize,
    batch_indices: Vec<usize>,
}

impl PendingItem {
    fn request(&self) -> WriteRequest {
        let put = PutRequest::builder()
            .set_item(Some(self.item.clone()))
            .build()
            .expect("item is always set");
        WriteRequest::builder().put_request(put).build()
    }
}

/// Positions (into `items`) of the chunk `pending` that came back unprocessed.
fn unprocessed_positions(
    items: &[PendingItem],
    pending: &[usize],
    unprocessed: &[WriteRequest],
) -> Vec<usize> {
    let keys: std::collections::HashSet<ItemKey> = unprocessed
        .iter()
        .filter_map(|request| ItemKey::of_item(request.put_request()?.item()))
        .collect();
    pending
        .iter()
        .copied()
        .filter(|&position| keys.contains(&items[position].key))
        .collect()
}

/// Positions grouped into BatchWriteItem chunks: at most 25 items and 16 MB each.
fn chunk_items(items: &[PendingItem]) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let mut current = Vec::with_capacity(MAX_CHUNK_ITEMS);
    let mut current_bytes = 0;
    for (position, item) in items.iter().enumerate() {
        let full = current.len() == MAX_CHUNK_ITEMS || current_bytes + item.size > MAX_CHUNK_BYTES;
        if full && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(position);
        current_bytes += item.size;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// `USER#{user_id}`.
pub fn partition_key(event: &Event) -> String {
    format!("USER#{}", event.user_id)
}

/// `EVENT#{timestamp RFC 3339 ms}#{event_id}`: sorts a user's events by time.
pub fn sort_key(event: &Event) -> String {
    format!("EVENT#{}#{}", event.timestamp_rfc3339(), event.event_id)
}

/// The item of one event (DESIGN.md, "Stores").
pub fn event_item(
    event: &Event,
    ingested_at: &str,
) -> Result<HashMap<String, AttributeValue>, SinkError> {
    let mut item = HashMap::with_capacity(12);
    item.insert("PK".to_string(), AttributeValue::S(partition_key(event)));
    item.insert("SK".to_string(), AttributeValue::S(sort_key(event)));
    item.insert(
        "GSI1PK".to_string(),
        AttributeValue::S(format!("TYPE#{}", event.event_type)),
    );
    item.insert(
        "GSI1SK".to_string(),
        AttributeValue::S(format!("DATE#{}", event.timestamp.format("%Y-%m-%d"))),
    );
    item.insert(
        "event_id".to_string(),
        AttributeValue::S(event.event_id.clone()),
    );
    item.insert(
        "user_id".to_string(),
        AttributeValue::S(event.user_id.clone()),
    );
    item.insert(
        "event_type".to_string(),
        AttributeValue::S(event.event_type.clone()),
    );
    item.insert(
        "timestamp".to_string(),
        AttributeValue::S(event.timestamp_rfc3339()),
    );
    if let Some(amount) = event.amount {
        let number = format_number(amount).ok_or_else(|| {
            SinkError::permanent(
                "invalid",
                format!(
                    "amount {amount} of event {:?} is outside DynamoDB's number range",
                    event.event_id
                ),
            )
        })?;
        item.insert("amount".to_string(), AttributeValue::N(number));
    }
    let data = json_object_to_map(&event.stored_data()).map_err(|reason| {
        SinkError::permanent(
            "invalid",
            format!("data of event {:?}: {reason}", event.event_id),
        )
    })?;
    item.insert("data".to_string(), AttributeValue::M(data));
    item.insert(
        "ingested_at".to_string(),
        AttributeValue::S(ingested_at.to_string()),
    );
    Ok(item)
}

/// JSON object to a native DynamoDB map, recursively: objects M, arrays L, strings S,
/// numbers N, booleans BOOL, null NULL.
pub fn json_object_to_map(
    object: &Map<String, Value>,
) -> Result<HashMap<String, AttributeValue>, String> {
    object
        .iter()
        .map(|(key, value)| Ok((key.clone(), json_to_attribute(value)?)))
        .collect()
}

fn json_to_attribute(value: &Value) -> Result<AttributeValue, String> {
    Ok(match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(boolean) => AttributeValue::Bool(*boolean),
        Value::Number(number) if number.is_f64() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            AttributeValue::N(
                format_number(float)
                    .ok_or_else(|| format!("number {number} is outside DynamoDB's range"))?,
            )
        }
        // Integers keep every digit (u64/i64 are within DynamoDB's 38 digits).
        Value::Number(number) => AttributeValue::N(number.to_string()),
        Value::String(text) => AttributeValue::S(text.clone()),
        Value::Array(values) => AttributeValue::L(
            values
                .iter()
                .map(json_to_attribute)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(object) => AttributeValue::M(json_object_to_map(object)?),
    })
}

/// A float as a DynamoDB number: plain decimal (Rust's shortest round-trip form never uses
/// an exponent), or `None` when DynamoDB cannot hold it (magnitude above 1e126 or below
/// 1e-130).
pub fn format_number(value: f64) -> Option<String> {
    if !value.is_finite() {
        return None;
    }
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-130..1e126).contains(&magnitude) {
        return None;
    }
    Some(format!("{value}"))
}

/// Item size as DynamoDB counts it (attribute names plus values; numbers about one byte
/// per two digits plus one; 3 bytes per map or list plus 1 per element), rounded up.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + attribute_size(value))
        .sum()
}

fn attribute_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        AttributeValue::N(number) => number.len().div_ceil(2) + 1,
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(values) => {
            3 + values
                .iter()
                .map(|value| 1 + attribute_size(value))
                .sum::<usize>()
        }
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(name, value)| 1 + name.len() + attribute_size(value))
                .sum::<usize>()
        }
        AttributeValue::Ss(texts) => texts.iter().map(String::len).sum(),
        AttributeValue::Ns(numbers) => numbers
            .iter()
            .map(|number| number.len().div_ceil(2) + 1)
            .sum(),
        AttributeValue::Bs(blobs) => blobs.iter().map(|blob| blob.as_ref().len()).sum(),
        // Variants added later: count them as large rather than small.
        _ => MAX_ITEM_BYTES,
    }
}

/// Whether retrying an SDK error can help, and its metric label.
pub fn classify_sdk_error<E>(error: &SdkError<E, HttpResponse>) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = describe_sdk_error(error);
    match error {
        SdkError::ConstructionFailure(_) => SinkError::permanent("invalid", detail),
        SdkError::TimeoutError(_) => SinkError::retryable("timeout", detail),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            SinkError::retryable("timeout", detail)
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            SinkError::retryable("network", detail)
        }
        SdkError::ServiceError(service_error) => classify_service_error(
            service_error.err().code(),
            service_error.raw().status().as_u16(),
            detail,
        ),
        _ => SinkError::retryable("network", detail),
    }
}

/// One line for logs and dead letters: the service's code and message, or the chain of
/// causes (the SDK's own formatting appends a debug dump of the whole response).
pub fn describe_sdk_error<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ServiceError(service_error) = error {
        let service = service_error.err();
        return format!(
            "dynamodb {} (HTTP {}): {}",
            service.code().unwrap_or("error"),
            service_error.raw().status().as_u16(),
            service.message().unwrap_or("no message")
        );
    }
    let mut text = format!("dynamodb: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A DynamoDB error answer by its code and HTTP status.
pub fn classify_service_error(code: Option<&str>, status: u16, detail: String) -> SinkError {
    match code {
        Some(
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "Throttling",
        ) => SinkError::retryable("throttled", detail),
        Some("InternalServerError" | "InternalFailure" | "ServiceUnavailable") => {
            SinkError::retryable("server", detail)
        }
        // The table is missing or not ACTIVE yet: an operator can fix it, keep the events.
        Some("ResourceNotFoundException") => SinkError::retryable("not_found", detail),
        Some("ReplicatedWriteConflictException" | "TransactionConflictException") => {
            SinkError::retryable("conflict", detail)
        }
        Some(
            "UnrecognizedClientException"
            | "AccessDeniedException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "MissingAuthenticationToken"
            | "IncompleteSignature",
        ) => SinkError::retryable("auth", detail),
        Some("ValidationException" | "SerializationException") => {
            SinkError::permanent("invalid", detail)
        }
        Some("ItemCollectionSizeLimitExceededException") => {
            SinkError::permanent("too_large", detail)
        }
        _ if status >= 500 => SinkError::retryable("server", detail),
        _ if status == 429 => SinkError::retryable("throttled", detail),
        _ if (400..500).contains(&status) => SinkError::permanent("rejected", detail),
        _ => SinkError::retryable("server", detail),
    }
}

/// Checks the table exists (creating it when configured) and waits until it and its
/// indexes are ACTIVE.
async fn ensure_table(client: &Client, config: &DynamoConfig) -> anyhow::Result<()> {
    let table = config.table.as_str();
    let exists = match client.describe_table().table_name(table).send().await {
        Ok(_) => true,
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|service| service.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(error) => anyhow::bail!(
            "dynamodb table {table}: cannot describe it: {} (check endpoint_url, region and AWS credentials)",
            describe_sdk_error(&error)
        ),
    };
    if !exists {
        if !config.create_table {
            anyhow::bail!(
                "dynamodb table {table} does not exist: create it or set create_table = true"
            );
        }
        create_table(client, table).await?;
    }
    wait_until_active(client, table, config.table_ready_timeout).await
}

/// Creates the single table of DESIGN.md with its GSI1 (also used by bench/rawclients).
pub async fn create_table(client: &Client, table: &str) -> anyhow::Result<()> {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .expect("name and type are set")
    };
    let index = GlobalSecondaryIndex::builder()
        .index_name(GSI1)
        .key_schema(key("GSI1PK", KeyType::Hash))
        .key_schema(key("GSI1SK", KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .expect("name, keys and projection are set");
    let result = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("PK"))
        .attribute_definitions(attribute("SK"))
        .attribute_definitions(attribute("GSI1PK"))
        .attribute_definitions(attribute("GSI1SK"))
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .global_secondary_indexes(index)
        .send()
        .await;
    match result {
        Ok(_) => {
            tracing::info!(table, "dynamodb table created");
            Ok(())
        }
        // Another replica created it between our describe and create.
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|service| service.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(error) => anyhow::bail!(
            "dynamodb table {table}: cannot create it: {} (or create it yourself and set create_table = false)",
            describe_sdk_error(&error)
        ),
    }
}

async fn wait_until_active(client: &Client, table: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let description = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!("dynamodb table {table}: {}", describe_sdk_error(&error))
            })?
            .table;
        let active = description.as_ref().is_some_and(|description| {
            description.table_status() == Some(&TableStatus::Active)
                && description
                    .global_secondary_indexes()
                    .iter()
                    .all(|index| index.index_status() == Some(&IndexStatus::Active))
        });
        if active {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "dynamodb table {table} is not ACTIVE after {timeout:?} (raise table_ready_timeout)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Sink for DynamoSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        self.write_batch(batch).boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map(|_| ())
                .map_err(|error| classify_sdk_error(&error))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user_id: &str, event_id: &str, data: Value) -> Event {
        let payload = serde_json::json!({
            "event_id": event_id,
            "user_id": user_id,
            "event_type": "purchase",
            "timestamp": "2026-11-24T10:00:00.123Z",
            "amount": 12.5,
            "data": data,
        });
        crate::event::decode(
            bytes::Bytes::from(payload.to_string()),
            Arc::from("events"),
            1 << 20,
            Utc::now(),
        )
        .unwrap()
    }

    #[test]
    fn item_layout() {
        let item = event_item(
            &event(
                "u1",
                "e1",
                serde_json::json!({"a": {"b": [1, 2.5, "x", true, null]}}),
            ),
            "2026-11-24T10:00:01.000Z",
        )
        .unwrap();
        assert_eq!(item["PK"], AttributeValue::S("USER#u1".to_string()));
        assert_eq!(
            item["SK"],
            AttributeValue::S("EVENT#2026-11-24T10:00:00.123Z#e1".to_string())
        );
        assert_eq!(
            item["GSI1PK"],
            AttributeValue::S("TYPE#purchase".to_string())
        );
        assert_eq!(
            item["GSI1SK"],
            AttributeValue::S("DATE#2026-11-24".to_string())
        );
        assert_eq!(item["amount"], AttributeValue::N("12.5".to_string()));
        let AttributeValue::M(data) = &item["data"] else {
            panic!("data is a map")
        };
        let AttributeValue::M(inner) = &data["a"] else {
            panic!("a is a map")
        };
        assert_eq!(
            inner["b"],
            AttributeValue::L(vec![
                AttributeValue::N("1".to_string()),
                AttributeValue::N("2.5".to_string()),
                AttributeValue::S("x".to_string()),
                AttributeValue::Bool(true),
                AttributeValue::Null(true),
            ])
        );
    }

    #[test]
    fn numbers_dynamodb_cannot_hold_are_refused() {
        assert_eq!(
            format_number(1e20).as_deref(),
            Some("100000000000000000000")
        );
        assert_eq!(format_number(-0.25).as_deref(), Some("-0.25"));
        assert_eq!(format_number(0.0).as_deref(), Some("0"));
        assert_eq!(format_number(1e300), None);
        assert_eq!(format_number(1e-200), None);
        let error = event_item(&event("u", "e", serde_json::json!({"x": 1e300})), "t").unwrap_err();
        assert!(!error.retryable);
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let mut item = HashMap::new();
        item.insert("ab".to_string(), AttributeValue::S("xyz".to_string()));
        item.insert("n".to_string(), AttributeValue::N("1234".to_string()));
        item.insert(
            "m".to_string(),
            AttributeValue::M(HashMap::from([(
                "k".to_string(),
                AttributeValue::Bool(true),
            )])),
        );
        // 2+3, 1+(2+1), 1+(3 + 1+1+1).
        assert_eq!(item_size(&item), 5 + 4 + 7);
        let big = event(
            "u",
            "e",
            serde_json::json!({"blob": "x".repeat(MAX_ITEM_BYTES)}),
        );
        assert!(item_size(&event_item(&big, "t").unwrap()) > MAX_ITEM_BYTES);
    }

    #[test]
    fn chunks_hold_at_most_25_items() {
        let items: Vec<PendingItem> = (0..60)
            .map(|index| PendingItem {
                key: ItemKey {
                    partition: "p".to_string(),
                    sort: index.to_string(),
                },
                item: HashMap::new(),
                size: 100,
                batch_indices: vec![index],
            })
            .collect();
        let sizes: Vec<usize> = chunk_items(&items).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![25, 25, 10]);
        let heavy: Vec<PendingItem> = (0..3)
            .map(|index| PendingItem {
                key: ItemKey {
                    partition: "p".to_string(),
                    sort: index.to_string(),
                },
                item: HashMap::new(),
                size: MAX_CHUNK_BYTES / 2,
                batch_indices: vec![index],
            })
            .collect();
        let heavy_sizes: Vec<usize> = chunk_items(&heavy).iter().map(Vec::len).collect();
        assert_eq!(heavy_sizes, vec![2, 1]);
    }

    #[test]
    fn service_errors_are_classified() {
        let classify = |code: &str, status: u16| {
            let error = classify_service_error(Some(code), status, String::new());
            (error.retryable, error.kind)
        };
        assert_eq!(
            classify("ProvisionedThroughputExceededException", 400),
            (true, "throttled")
        );
        assert_eq!(classify("ThrottlingException", 400), (true, "throttled"));
        assert_eq!(classify("RequestLimitExceeded", 400), (true, "throttled"));
        assert_eq!(classify("InternalServerError", 500), (true, "server"));
        assert_eq!(classify("SomethingNew", 503), (true, "server"));
        assert_eq!(classify("ValidationException", 400), (false, "invalid"));
        assert_eq!(classify("SomethingElse", 400), (false, "rejected"));
    }

    #[test]
    fn config_checks() {
        assert!(DynamoConfig::default().validate().is_empty());
        let config = DynamoConfig {
            table: "a b".to_string(),
            endpoint_url: Some("127.0.0.1:8000".to_string()),
            unprocessed_max_attempts: 0,
            ..DynamoConfig::default()
        };
        let keys: Vec<String> = config.validate().into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            vec!["table", "endpoint_url", "unprocessed_max_attempts"]
        );
    }
}
