//! Raw-client loops: the rows ingestd's sinks write for the same events (built by the
//! sinks' own public builders where they have one: cassandra rows, dynamodb items, the
//! leaderboard and rate counter script calls; same driver crate, same batch sizes and
//! concurrency as the shipped pipeline by default), built before the clock starts, then written as fast as the driver
//! goes. The loop does no decoding, queueing, retry bookkeeping or metrics: it is the
//! ceiling a sink can approach.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use chrono::Utc;
use futures::StreamExt;
use ingestd::event::Event;
use mongodb::bson::{DateTime as BsonDateTime, RawDocumentBuf};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::{Consistency, Statement};

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

async fn mongodb_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
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
    ingestd::sinks::mongodb::create_indexes(&collection).await?;
    let ingested_at = BsonDateTime::now();
    let documents: Vec<RawDocumentBuf> = events
        .iter()
        .map(|event| {
            ingestd::sinks::mongodb::event_document(event, ingested_at)
                .map_err(|error| anyhow::anyhow!("{error}"))
        })
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

/// ingestd's bound values (`ingestd::sinks::cassandra::row_values`), so the rows cannot
/// drift from the sink's.
type Row<'a> = ingestd::sinks::cassandra::RowValues<'a>;

/// Partitions per day, as the shipped pipeline configures (`buckets = 8`).
const CASSANDRA_BUCKETS: u16 = 8;

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
    let rows: Vec<Row<'_>> = events
        .iter()
        .map(|event| ingestd::sinks::cassandra::row_values(event, CASSANDRA_BUCKETS))
        .collect();
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
                let values: Vec<&Row<'_>> = group.iter().map(|&index| &rows[index]).collect();
                session.batch(&batch, values).await?;
                Ok(())
            })
        })
        .collect();
    timed(writes, arguments.concurrency, written).await
}

// --- dynamodb: single-table items (ingestd's `event_item`), BatchWriteItem of 25 ---

pub async fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

async fn dynamodb_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let client = dynamo_client(&arguments.dynamo_endpoint).await;
    ingestd::sinks::dynamodb::create_table(&client, &arguments.dynamo_table).await?;
    let ingested_at = ingestd::event::format_timestamp(&Utc::now());
    let requests: Vec<WriteRequest> = events
        .iter()
        .map(|event| {
            let item = ingestd::sinks::dynamodb::event_item(event, &ingested_at)
                .map_err(|error| anyhow::anyhow!("item of {}: {error}", event.event_id))?;
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("item is set");
            Ok(WriteRequest::builder().put_request(put).build())
        })
        .collect::<anyhow::Result<_>>()?;
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

// --- redis aggregates: ingestd's own script calls, one pipeline per batch ---
//
// The commands come from `ingestd::sinks::{leaderboard, rate_counter}::batch_pipeline`
// (the same scripts, keys and arguments as the sinks send), built before the clock starts.

/// A connection with `script` loaded, as the sinks have it before their first batch.
async fn script_connection(
    url: &str,
    script: &str,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::Script::new(script)
        .load_async(&mut connection)
        .await?;
    Ok(connection)
}

async fn leaderboard_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    use ingestd::sinks::leaderboard::{self, BoardConfig, LeaderboardConfig, Score};
    let connection =
        script_connection(&arguments.redis_url, leaderboard::LEADERBOARD_SCRIPT).await?;
    // The shipped pipeline's board (pipelines/analytics.toml), under this run's prefix.
    let config = LeaderboardConfig {
        boards: vec![BoardConfig {
            name: "purchases".to_string(),
            event_types: vec![arguments.event_type.clone()],
            score: Score::Field("amount".to_string()),
            key_prefix: Some(arguments.key_prefix.clone()),
            ..BoardConfig::default()
        }],
    };
    let now = Utc::now();
    let pipelines: Vec<(u64, redis::Pipeline)> = events
        .chunks(arguments.batch.max(1))
        .map(|batch| {
            let pipeline = leaderboard::batch_pipeline(&config, &arguments.sink_id, batch, now);
            (batch.len() as u64, pipeline)
        })
        .collect();
    send_pipelines(&connection, pipelines, arguments.concurrency, written).await
}

async fn rate_counter_loop(
    arguments: &WriteArgs,
    events: &[Arc<Event>],
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    use ingestd::sinks::rate_counter::{self, RateCounterConfig};
    let connection = script_connection(&arguments.redis_url, rate_counter::RATE_SCRIPT).await?;
    // The shipped pipeline's counter (pipelines/analytics.toml), under this run's prefix.
    let config = RateCounterConfig {
        key_prefix: arguments.key_prefix.clone(),
        ..RateCounterConfig::default()
    };
    let pipelines: Vec<(u64, redis::Pipeline)> = events
        .chunks(arguments.batch.max(1))
        .map(|batch| {
            let pipeline = rate_counter::batch_pipeline(&config, &arguments.sink_id, batch);
            (batch.len() as u64, pipeline)
        })
        .collect();
    send_pipelines(&connection, pipelines, arguments.concurrency, written).await
}

/// Sends the prepared pipelines, `concurrency` at a time on one multiplexed connection
/// (as the sinks do on theirs).
async fn send_pipelines(
    connection: &redis::aio::MultiplexedConnection,
    pipelines: Vec<(u64, redis::Pipeline)>,
    concurrency: usize,
    written: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
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
    timed(writes, concurrency, written).await
}
