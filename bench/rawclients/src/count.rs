//! Counts what a run left in each store, read back with the drivers: the "nothing lost"
//! check of the end-to-end scenarios, for ingestd and Benthos alike. Only the stores named
//! on the command line are counted.

use std::time::Duration;

use aws_sdk_dynamodb::types::Select;
use mongodb::bson::{Document, doc};
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Statement;

use crate::progress;

#[derive(clap::Args)]
pub struct CountArgs {
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    mongo_uri: String,
    /// `database.collection` to count.
    #[arg(long)]
    mongo: Option<String>,
    #[arg(long, default_value = "127.0.0.1:9042")]
    cassandra_node: String,
    /// `keyspace.table` (events_by_day layout) to count.
    #[arg(long)]
    cassandra: Option<String>,
    /// UTC days (yyyy-mm-dd, comma-separated) whose partitions are counted.
    #[arg(long, value_delimiter = ',')]
    days: Vec<String>,
    #[arg(long, default_value_t = 8)]
    buckets: i16,
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    dynamo_endpoint: String,
    #[arg(long)]
    dynamo_table: Option<String>,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Leaderboard data keys (comma-separated); their seen sets are counted.
    #[arg(long, value_delimiter = ',')]
    leaderboard_keys: Vec<String>,
    /// `pipeline.sink` of the leaderboard's seen keys.
    #[arg(long, default_value = "analytics.leaderboard")]
    leaderboard_sink_id: String,
    /// Rate counter key prefix: the counters `PREFIX*` are summed.
    #[arg(long)]
    rate_prefix: Option<String>,
}

pub async fn run(arguments: CountArgs) -> anyhow::Result<()> {
    let mut counts = serde_json::Map::new();
    if let Some(target) = &arguments.mongo {
        let (database, collection) = target
            .split_once('.')
            .ok_or_else(|| anyhow::anyhow!("--mongo wants database.collection"))?;
        let client = mongodb::Client::with_uri_str(&arguments.mongo_uri).await?;
        let count = client
            .database(database)
            .collection::<Document>(collection)
            .count_documents(doc! {})
            .await?;
        counts.insert("mongodb".into(), count.into());
    }
    if let Some(target) = &arguments.cassandra {
        let session = SessionBuilder::new()
            .known_node(&arguments.cassandra_node)
            .build()
            .await?;
        let mut total = 0i64;
        for day in &arguments.days {
            for bucket in 0..arguments.buckets {
                let mut statement = Statement::new(format!(
                    "SELECT COUNT(*) FROM {target} WHERE day = '{day}' AND bucket = {bucket}"
                ));
                statement.set_request_timeout(Some(Duration::from_secs(60)));
                let rows = session.query_unpaged(statement, ()).await?;
                total += rows.into_rows_result()?.single_row::<(i64,)>()?.0;
            }
        }
        counts.insert("cassandra".into(), total.into());
    }
    if let Some(table) = &arguments.dynamo_table {
        let client = crate::write::dynamo_client(&arguments.dynamo_endpoint).await;
        let mut total = 0i64;
        let mut start_key = None;
        loop {
            let page = client
                .scan()
                .table_name(table)
                .select(Select::Count)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|error| {
                    anyhow::anyhow!(
                        "scan {table}: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(&error)
                    )
                })?;
            total += i64::from(page.count);
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => break,
            }
        }
        counts.insert("dynamodb".into(), total.into());
    }
    if !arguments.leaderboard_keys.is_empty() || arguments.rate_prefix.is_some() {
        let client = redis::Client::open(arguments.redis_url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        if !arguments.leaderboard_keys.is_empty() {
            let mut total = 0u64;
            for key in &arguments.leaderboard_keys {
                let seen =
                    ingestd::sinks::redis_aggregate::seen_key(key, &arguments.leaderboard_sink_id);
                let members: u64 = redis::cmd("SCARD")
                    .arg(&seen)
                    .query_async(&mut connection)
                    .await?;
                total += members;
            }
            counts.insert("leaderboard".into(), total.into());
        }
        if let Some(prefix) = &arguments.rate_prefix {
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut connection)
                    .await?;
                keys.extend(page);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            let mut total = 0i64;
            for chunk in keys.chunks(1000) {
                let values: Vec<Option<i64>> = redis::cmd("MGET")
                    .arg(chunk)
                    .query_async(&mut connection)
                    .await?;
                total += values.into_iter().flatten().sum::<i64>();
            }
            counts.insert("rate_counter".into(), total.into());
        }
    }
    progress::result(serde_json::Value::Object(counts));
    Ok(())
}
