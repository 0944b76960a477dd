//! Raw-client loops: the rows ingestd's sinks write for the same events (same layout as
//! DESIGN.md "Stores", same driver crate, same batch sizes and concurrency as the shipped
//! pipeline by default), built before the clock starts, then written as fast as the driver
//! goes. The loop does no decoding, queueing, retry bookkeeping or metrics: it is the
//! ceiling a sink can approach.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, PutRequest, ScalarAttributeType, WriteRequest,
};
use chrono::{NaiveDate, Utc};
use futures::StreamExt;
use ingestd::event::Event;
use mongodb::bson::{Bson, DateTime as BsonDateTime, Document, RawDocumentBuf, doc};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::{Consistency, Statement};
use scylla::value::{CqlDate, CqlTimestamp, MaybeUnset};
use serde_json::{Map, Value};

use crate::payload::{Shape, check_name};
use crate::progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    Mongodb,
    Cassandra,
    Dynamodb,
    Leaderboard,
    RateCounter,
}

#[derive(clap::Args)]
pub struct WriteArgs {
    #[arg(long, value_enum)]
    sink: Store,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    id_prefix: String,
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    #[arg(long, default_value = "purchase")]
    event_type: String,
    /// Events per write call (mongodb insert_many, one Redis pipeline) or statements per
    /// unlogged batch (cassandra); dynamodb always sends 25.
    #[arg(long)]
    batch: usize,
    /// Write calls in flight at once.
    #[arg(long)]
    concurrency: usize,
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    mongo_uri: String,
    #[arg(long, default_value = "bench")]
    mongo_db: String,
    #[arg(long, default_value = "events")]
    mongo_collection: String,
    #[arg(long, default_value = "127.0.0.1:9042")]
    cassandra_node: String,
    #[arg(long, default_value = "bench")]
    keyspace: String,
    #[arg(long, default_value = "events_by_day")]
    table: String,
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    dynamo_endpoint: String,
    #[arg(long, default_value = "BenchEvents")]
    dynamo_table: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Leaderboard: data key prefix (+ yyyy-mm-dd); rate counter: key prefix.
    #[arg(long, default_value = "bench:")]
    key_prefix: String,
    /// `pipeline.sink` of the seen keys (as ingestd names them).
    #[arg(long, default_value = "bench.raw")]
    sink_id: String,
}

pub async fn run(arguments: WriteArgs) -> anyhow::Result<()> {
    check_name("id prefix", &arguments.id_prefix)?;
    let shape = Shape {
        id_prefix: arguments.id_prefix.clone(),
        users: arguments.users,
        event_type: arguments.event_type.clone(),
    };
    let events = shape.events(0, arguments.count, "bench-raw");
    let written = Arc::new(AtomicU64::new(0));
    let outcome = match arguments.sink {
        Store::Mongodb => mongodb_loop(&arguments, &events, &written).await,
        Store::Cassandra => cassandra_loop(&arguments, &events, &written).await,
        Store::Dynamodb => dynamodb_loop(&arguments, &events, &written).await,
        Store::Leaderboard => leaderboard_loop(&arguments, &events, &written).await,
        Store::RateCounter => rate_counter_loop(&arguments, &events, &written).await,
    };
    let seconds = outcome?;
    let total = written.load(Ordering::Relaxed);
    progress::result(serde_json::json!({
        "written": total,
        "seconds": seconds,
        "rate": total as f64 / seconds.max(1e-9),
    }));
    Ok(())
}

/// Runs `writes` with at most `concurrency` in flight, counting `events_of` each into
/// `written`, with progress lines; returns the elapsed seconds.
async fn timed<F, T>(
    writes: Vec<(u64, F)>,
    concurrency: usize,
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let reporter = progress::spawn_reporter(Arc::clone(written), Duration::from_millis(50));
    let started = Instant::now();
    let mut results = futures::stream::iter(writes)
        .map(|(events, write)| async move { write.await.map(|_| events) })
        .buffer_unordered(concurrency.max(1));
    let mut failure = None;
    while let Some(result) = results.next().await {
        match result {
            Ok(events) => {
                written.fetch_add(events, Ordering::Relaxed);
            }
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress::finish(reporter, written);
    match failure {
        Some(error) => Err(error),
        None => Ok(seconds),
    }
}

// --- mongodb: one document per event, insert_many unordered ---

fn json_to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(boolean) => Bson::Boolean(*boolean),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => match i32::try_from(integer) {
                Ok(small) => Bson::Int32(small),
                Err(_) => Bson::Int64(integer),
            },
            None => Bson::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => Bson::String(text.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(json_to_bson).collect()),
        Value::Object(object) => Bson::Document(
            object
                .iter()
                .map(|(key, value)| (key.clone(), json_to_bson(value)))
                .collect(),
        ),
    }
}

fn mongo_document(event: &Event, ingested_at: BsonDateTime) -> anyhow::Result<RawDocumentBuf> {
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
    document.insert("data", json_to_bson(&Value::Object(event.data.clone())));
    document.insert("channel", &*event.channel);
    document.insert("ingested_at", ingested_at);
    Ok(RawDocumentBuf::from_document(&document)?)
}

async fn mongodb_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
    let mut options = ClientOptions::parse(&arguments.mongo_uri).await?;
    options.app_name = Some("benchraw".to_string());
    let mut write_concern = WriteConcern::default();
    write_concern.w = Some(Acknowledgment::Majority);
    options.write_concern = Some(write_concern);
    let client = mongodb::Client::with_options(options)?;
    let collection = client
        .database(&arguments.mongo_db)
        .collection::<RawDocumentBuf>(&arguments.mongo_collection);
    // The same two indexes ingestd creates: every insert maintains them.
    collection
        .create_indexes([
            mongodb::IndexModel::builder()
                .keys(doc! { "user_id": 1, "timestamp": -1 })
                .options(
                    IndexOptions::builder()
                        .name("user_id_1_timestamp_-1".to_string())
                        .build(),
                )
                .build(),
            mongodb::IndexModel::builder()
                .keys(doc! { "event_type": 1 })
                .options(
                    IndexOptions::builder()
                        .name("event_type_1".to_string())
                        .build(),
                )
                .build(),
        ])
        .await?;
    let ingested_at = BsonDateTime::now();
    let documents: Vec<RawDocumentBuf> = events
        .iter()
        .map(|event| mongo_document(event, ingested_at))
        .collect::<anyhow::Result<_>>()?;
    let collection = &collection;
    let writes = documents
        .chunks(arguments.batch.max(1))
        .map(|chunk| {
            (chunk.len() as u64, async move {
                collection.insert_many(chunk).ordered(false).await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    timed(writes, arguments.concurrency, written).await
}

// --- cassandra: rows of (day, bucket) partitions, single-partition unlogged batches ---

type Row = (
    CqlDate,
    i16,
    CqlTimestamp,
    String,
    String,
    String,
    MaybeUnset<f64>,
    String,
);

fn cql_date(date: NaiveDate) -> CqlDate {
    let days = date.signed_duration_since(NaiveDate::default()).num_days();
    CqlDate(((1_i64 << 31) + days) as u32)
}

fn cassandra_row(event: &Event) -> Row {
    (
        cql_date(event.timestamp.date_naive()),
        (crc32fast::hash(event.user_id.as_bytes()) % 8) as i16,
        CqlTimestamp(event.timestamp.timestamp_millis()),
        event.user_id.clone(),
        event.event_id.clone(),
        event.event_type.clone(),
        MaybeUnset::from_option(event.amount),
        Value::Object(event.data.clone()).to_string(),
    )
}

async fn cassandra_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let session: Session = SessionBuilder::new()
        .known_node(&arguments.cassandra_node)
        .build()
        .await?;
    let qualified = format!("{}.{}", arguments.keyspace, arguments.table);
    for cql in [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
            arguments.keyspace
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {qualified} (day date, bucket smallint, event_time timestamp, \
             user_id text, event_id text, event_type text, amount double, data text, \
             PRIMARY KEY ((day, bucket), event_time, user_id, event_id)) \
             WITH CLUSTERING ORDER BY (event_time DESC, user_id ASC, event_id ASC) \
             AND compaction = {{'class': 'TimeWindowCompactionStrategy', \
             'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}}"
        ),
    ] {
        let mut statement = Statement::new(cql);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        session.query_unpaged(statement, ()).await?;
    }
    let mut insert = session
        .prepare(format!(
            "INSERT INTO {qualified} (day, bucket, event_time, user_id, event_id, event_type, amount, data) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .await?;
    insert.set_consistency(Consistency::One);
    insert.set_is_idempotent(true);
    let rows: Vec<Row> = events.iter().map(|event| cassandra_row(event)).collect();
    // Rows grouped by partition, in arrival order, cut into batches of `batch` statements.
    let mut by_partition: HashMap<(u32, i16), Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        by_partition
            .entry((row.0.0, row.1))
            .or_insert_with(|| {
                order.push((row.0.0, row.1));
                Vec::new()
            })
            .push(index);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for partition in order {
        for group in by_partition[&partition].chunks(arguments.batch.max(1)) {
            groups.push(group.to_vec());
        }
    }
    let (session, insert, rows) = (&session, &insert, &rows);
    let writes = groups
        .into_iter()
        .map(|group| {
            (group.len() as u64, async move {
                if let [index] = group.as_slice() {
                    session.execute_unpaged(insert, &rows[*index]).await?;
                    return Ok::<_, anyhow::Error>(());
                }
                let statements =
                    vec![BatchStatement::PreparedStatement(insert.clone()); group.len()];
                let mut batch = Batch::new_with_statements(BatchType::Unlogged, statements);
                batch.set_consistency(Consistency::One);
                batch.set_is_idempotent(true);
                let values: Vec<&Row> = group.iter().map(|&index| &rows[index]).collect();
                session.batch(&batch, values).await?;
                Ok(())
            })
        })
        .collect();
    timed(writes, arguments.concurrency, written).await
}

// --- dynamodb: single-table items, BatchWriteItem of 25 ---

fn attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(boolean) => AttributeValue::Bool(*boolean),
        Value::Number(number) => AttributeValue::N(number.to_string()),
        Value::String(text) => AttributeValue::S(text.clone()),
        Value::Array(values) => AttributeValue::L(values.iter().map(attribute).collect()),
        Value::Object(object) => AttributeValue::M(attribute_map(object)),
    }
}

fn attribute_map(object: &Map<String, Value>) -> HashMap<String, AttributeValue> {
    object
        .iter()
        .map(|(key, value)| (key.clone(), attribute(value)))
        .collect()
}

fn dynamo_item(event: &Event, ingested_at: &str) -> HashMap<String, AttributeValue> {
    let timestamp = ingestd::event::format_timestamp(&event.timestamp);
    let mut item = HashMap::with_capacity(12);
    let text = |value: String| AttributeValue::S(value);
    item.insert("PK".to_string(), text(format!("USER#{}", event.user_id)));
    item.insert(
        "SK".to_string(),
        text(format!("EVENT#{timestamp}#{}", event.event_id)),
    );
    item.insert(
        "GSI1PK".to_string(),
        text(format!("TYPE#{}", event.event_type)),
    );
    item.insert(
        "GSI1SK".to_string(),
        text(format!("DATE#{}", event.timestamp.format("%Y-%m-%d"))),
    );
    item.insert("event_id".to_string(), text(event.event_id.clone()));
    item.insert("user_id".to_string(), text(event.user_id.clone()));
    item.insert("event_type".to_string(), text(event.event_type.clone()));
    item.insert("timestamp".to_string(), text(timestamp));
    if let Some(amount) = event.amount {
        item.insert("amount".to_string(), AttributeValue::N(format!("{amount}")));
    }
    item.insert(
        "data".to_string(),
        AttributeValue::M(attribute_map(&event.data)),
    );
    item.insert("ingested_at".to_string(), text(ingested_at.to_string()));
    item
}

pub async fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

async fn create_dynamo_table(client: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    let attribute_definition = |name: &str| {
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
        .index_name("GSI1")
        .key_schema(key("GSI1PK", KeyType::Hash))
        .key_schema(key("GSI1SK", KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()?;
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute_definition("PK"))
        .attribute_definitions(attribute_definition("SK"))
        .attribute_definitions(attribute_definition("GSI1PK"))
        .attribute_definitions(attribute_definition("GSI1SK"))
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .global_secondary_indexes(index)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|service| service.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!(
            "create table {table}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&error)
        )),
    }
}

async fn dynamodb_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let client = dynamo_client(&arguments.dynamo_endpoint).await;
    create_dynamo_table(&client, &arguments.dynamo_table).await?;
    let ingested_at = ingestd::event::format_timestamp(&Utc::now());
    let requests: Vec<WriteRequest> = events
        .iter()
        .map(|event| {
            let put = PutRequest::builder()
                .set_item(Some(dynamo_item(event, &ingested_at)))
                .build()
                .expect("item is set");
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    let (client, table) = (&client, arguments.dynamo_table.as_str());
    let writes = requests
        .chunks(25)
        .map(|chunk| {
            (chunk.len() as u64, async move {
                let mut pending = chunk.to_vec();
                // DynamoDB Local never leaves items unprocessed; re-send if it ever does.
                while !pending.is_empty() {
                    let output = client
                        .batch_write_item()
                        .request_items(table, pending)
                        .send()
                        .await
                        .map_err(|error| {
                            anyhow::anyhow!(
                                "batch_write_item: {}",
                                aws_sdk_dynamodb::error::DisplayErrorContext(&error)
                            )
                        })?;
                    pending = output
                        .unprocessed_items
                        .and_then(|mut unprocessed| unprocessed.remove(table))
                        .unwrap_or_default();
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    timed(writes, arguments.concurrency, written).await
}

// --- redis aggregates: the same Lua scripts as ingestd, one invocation per key ---

/// A copy of ingestd's leaderboard script (src/sinks/leaderboard.rs): the raw loop does
/// the same idempotent work per key, so the comparison is about everything around it.
const LEADERBOARD_SCRIPT: &str = r#"
local keep_max = ARGV[2] == 'max'
local updated = 0
local i = 3
while i <= #ARGV do
  local member = ARGV[i]
  local count = tonumber(ARGV[i + 1])
  i = i + 2
  local total = nil
  for _ = 1, count do
    local score = tonumber(ARGV[i + 1])
    if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
      if total == nil then
        total = score
      elseif keep_max then
        total = math.max(total, score)
      else
        total = total + score
      end
    end
    i = i + 2
  end
  if total ~= nil then
    local value = string.format('%.17g', total)
    if keep_max then
      redis.call('ZADD', KEYS[1], 'GT', value, member)
    else
      redis.call('ZINCRBY', KEYS[1], value, member)
    end
    updated = updated + 1
  end
end
if updated > 0 then
  redis.call('EXPIREAT', KEYS[1], ARGV[1])
  redis.call('EXPIREAT', KEYS[2], ARGV[1])
end
return updated
"#;

/// A copy of ingestd's rate counter script (src/sinks/rate_counter.rs).
const RATE_SCRIPT: &str = r#"
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = before
local result = {before, 0}
for i = 2, #ARGV do
  local ordinal = redis.call('HGET', KEYS[2], ARGV[i])
  if ordinal then
    ordinal = tonumber(ordinal)
  else
    after = after + 1
    ordinal = after
    redis.call('HSET', KEYS[2], ARGV[i], ordinal)
  end
  result[#result + 1] = ordinal
end
if after > before then
  redis.call('INCRBY', KEYS[1], after - before)
  redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
  redis.call('EXPIRE', KEYS[2], ARGV[1], 'NX')
end
result[2] = after
return result
"#;

/// One member of a board-day and its `(event_id, score)` contributions, in batch order.
type MemberScores<'a> = (&'a str, Vec<(&'a str, f64)>);

async fn leaderboard_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let client = redis::Client::open(arguments.redis_url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let script = redis::Script::new(LEADERBOARD_SCRIPT);
    script.load_async(&mut connection).await?;
    let ttl_secs = 8 * 86_400;
    // Per batch: one invocation per UTC day, members in order of first appearance.
    let mut pipelines = Vec::new();
    for batch in events.chunks(arguments.batch.max(1)) {
        let mut days: Vec<(NaiveDate, Vec<MemberScores<'_>>)> = Vec::new();
        for event in batch {
            let Some(amount) = event.amount else { continue };
            let day = event.timestamp.date_naive();
            let position = match days.iter().position(|(known, _)| *known == day) {
                Some(position) => position,
                None => {
                    days.push((day, Vec::new()));
                    days.len() - 1
                }
            };
            let members = &mut days[position].1;
            match members
                .iter_mut()
                .find(|(member, _)| *member == event.user_id)
            {
                Some((_, contributions)) => contributions.push((&event.event_id, amount)),
                None => members.push((&event.user_id, vec![(&event.event_id, amount)])),
            }
        }
        let mut pipeline = redis::pipe();
        for (day, members) in days {
            let key = format!("{}{}", arguments.key_prefix, day.format("%Y-%m-%d"));
            let expire_at = day
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp()
                + 86_400
                + ttl_secs;
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&key)
                .key(ingestd::sinks::redis_aggregate::seen_key(
                    &key,
                    &arguments.sink_id,
                ))
                .arg(expire_at)
                .arg("increment");
            for (member, contributions) in &members {
                invocation.arg(*member).arg(contributions.len());
                for (event_id, score) in contributions {
                    invocation.arg(*event_id).arg(*score);
                }
            }
            pipeline.invoke_script(&invocation);
        }
        pipelines.push((batch.len() as u64, pipeline));
    }
    let connection = &connection;
    let writes = pipelines
        .into_iter()
        .map(|(events, pipeline)| {
            (events, async move {
                let mut connection = connection.clone();
                pipeline
                    .query_async::<redis::Value>(&mut connection)
                    .await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    timed(writes, arguments.concurrency, written).await
}

async fn rate_counter_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let client = redis::Client::open(arguments.redis_url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let script = redis::Script::new(RATE_SCRIPT);
    script.load_async(&mut connection).await?;
    let window_secs = 60;
    let ttl_secs = 120;
    let mut pipelines = Vec::new();
    for batch in events.chunks(arguments.batch.max(1)) {
        let mut keys: Vec<String> = Vec::new();
        let mut ids_of_key: HashMap<String, Vec<&str>> = HashMap::new();
        for event in batch {
            let key = format!(
                "{}{}:{}",
                arguments.key_prefix,
                event.user_id,
                event.timestamp.timestamp().div_euclid(window_secs)
            );
            ids_of_key
                .entry(key.clone())
                .or_insert_with(|| {
                    keys.push(key);
                    Vec::new()
                })
                .push(&event.event_id);
        }
        let mut pipeline = redis::pipe();
        for key in &keys {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(key)
                .key(ingestd::sinks::redis_aggregate::seen_key(
                    key,
                    &arguments.sink_id,
                ))
                .arg(ttl_secs);
            for event_id in &ids_of_key[key] {
                invocation.arg(*event_id);
            }
            pipeline.invoke_script(&invocation);
        }
        pipelines.push((batch.len() as u64, pipeline));
    }
    let connection = &connection;
    let writes = pipelines
        .into_iter()
        .map(|(events, pipeline)| {
            (events, async move {
                let mut connection = connection.clone();
                pipeline
                    .query_async::<redis::Value>(&mut connection)
                    .await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    timed(writes, arguments.concurrency, written).await
}
