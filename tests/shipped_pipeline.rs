//! The shipped `pipelines/analytics.toml`, end to end against every real store, with a
//! 20 s Cassandra outage in the middle: the other sinks keep writing, and once Cassandra
//! is back every event is there too, none twice. Publishing everything again changes no
//! count. This test stops and restarts the shared local Cassandra, so it lives alone in
//! its own test binary (cargo runs test binaries one after another).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use mongodb::bson::{Document, doc};
use redis::AsyncCommands;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use common::{eventually, http_get, metric_value, unique};
use ingestd::app::App;
use ingestd::config::Secret;

const EVENTS: usize = 5_000;

fn services(arguments: &[&str]) {
    let status = Command::new("deploy/local/services")
        .args(arguments)
        .status()
        .expect("deploy/local/services");
    assert!(
        status.success(),
        "deploy/local/services {arguments:?} failed"
    );
}

fn payload(prefix: &str, index: usize) -> Vec<u8> {
    let event_type = if index.is_multiple_of(3) {
        "purchase"
    } else {
        "view"
    };
    serde_json::json!({
        "event_id": format!("{prefix}-{index}"),
        "user_id": format!("{prefix}-user-{}", index % 50),
        "event_type": event_type,
        "timestamp": ingestd::event::format_timestamp(&chrono::Utc::now()),
        "amount": (index % 100) as f64 + 0.5,
        "data": {"index": index},
    })
    .to_string()
    .into_bytes()
}

struct Stores {
    mongo: mongodb::Collection<Document>,
    cassandra: Session,
    keyspace: String,
    dynamo: aws_sdk_dynamodb::Client,
    table: String,
    prefix: String,
}

impl Stores {
    async fn mongo_count(&self) -> usize {
        let filter = doc! {"_id": {"$regex": format!("^{}-", self.prefix)}};
        self.mongo.count_documents(filter).await.unwrap_or(0) as usize
    }

    async fn cassandra_ids(&self) -> Option<Vec<String>> {
        let query = format!("SELECT event_id FROM {}.events_by_day", self.keyspace);
        let result = self.cassandra.query_unpaged(query, ()).await.ok()?;
        let rows = result.into_rows_result().ok()?;
        let ids: Vec<String> = rows
            .rows::<(String,)>()
            .ok()?
            .filter_map(Result::ok)
            .map(|(id,)| id)
            .collect();
        Some(
            ids.into_iter()
                .filter(|id| id.starts_with(&self.prefix))
                .collect(),
        )
    }

    async fn dynamo_count(&self) -> usize {
        let mut count = 0;
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let Ok(page) = self
                .dynamo
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
            else {
                return 0;
            };
            count += page
                .items()
                .iter()
                .filter(|item| {
                    item.get("event_id")
                        .and_then(|id| id.as_s().ok())
                        .is_some_and(|id| id.starts_with(&self.prefix))
                })
                .count();
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return count,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_pipeline_survives_a_cassandra_outage_and_replays_change_nothing() {
    common::ensure_aws_credentials();
    let loaded =
        ingestd::config::load(None, Path::new("pipelines")).expect("the shipped config is valid");
    let mut config = loaded.config;
    config.redis.url = Secret::new(common::redis_url());
    config.http.listen = "127.0.0.1:0".to_string();
    config.dead_letter.stream = unique("shipped-dead-letter");
    let prefix = unique("ship").replace('-', "_");
    let database = prefix.clone();
    let keyspace = prefix.clone();
    let table = format!("Events_{prefix}");
    {
        let pipeline = config
            .pipelines
            .get_mut("analytics")
            .expect("analytics pipeline");
        assert_eq!(pipeline.channels, vec!["events".to_string()]);
        for (name, sink) in pipeline.sinks.iter_mut() {
            // Outages are retried for longer than the 20 s Cassandra is away.
            sink.retry.max_elapsed = Duration::from_secs(300);
            sink.retry.max_attempts = 100;
            sink.retry.max_delay = Duration::from_secs(2);
            match name.as_str() {
                "mongodb" => sink.mongodb.as_mut().unwrap().database = database.clone(),
                "cassandra" => sink.cassandra.as_mut().unwrap().keyspace = keyspace.clone(),
                "dynamodb" => sink.dynamodb.as_mut().unwrap().table = table.clone(),
                "leaderboard" => {
                    sink.leaderboard.as_mut().unwrap().boards[0].key_prefix =
                        Some(format!("{prefix}:lb:"));
                }
                "rate_counter" => {
                    sink.rate_counter.as_mut().unwrap().key_prefix = format!("{prefix}:rate:")
                }
                other => panic!("unexpected shipped sink {other}"),
            }
        }
    }
    let app = common::start(App::new(config)).await;

    let stores = Stores {
        mongo: mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017")
            .await
            .unwrap()
            .database(&database)
            .collection("events"),
        cassandra: SessionBuilder::new()
            .known_node("127.0.0.1:9042")
            .build()
            .await
            .unwrap(),
        keyspace,
        dynamo: aws_sdk_dynamodb::Client::new(
            &aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url("http://127.0.0.1:8000")
                .load()
                .await,
        ),
        table,
        prefix: prefix.clone(),
    };

    // 5,000 events over ~25 s on channel `events`, while Cassandra goes away for 20 s.
    // The exact bytes are kept for the replay: same event_id and same timestamp.
    let payloads: Vec<Vec<u8>> = (0..EVENTS).map(|index| payload(&prefix, index)).collect();
    let publisher_payloads = payloads.clone();
    let publisher = tokio::spawn(async move {
        let mut connection = common::redis_connection().await;
        for chunk in publisher_payloads.chunks(50) {
            let mut pipeline = redis::pipe();
            for event in chunk {
                pipeline.publish("events", event).ignore();
            }
            let () = pipeline.query_async(&mut connection).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    services(&["down", "cassandra"]);
    let outage_started = Instant::now();
    let mongo_at_outage = stores.mongo_count().await;
    let dynamo_at_outage = stores.dynamo_count().await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage_started.elapsed())).await;
    // The other stores kept writing while Cassandra was down.
    let mongo_during = stores.mongo_count().await;
    let dynamo_during = stores.dynamo_count().await;
    services(&["up", "cassandra"]);
    assert!(
        mongo_during >= mongo_at_outage + 2_000,
        "mongo stalled: {mongo_at_outage} -> {mongo_during}"
    );
    assert!(
        dynamo_during >= dynamo_at_outage + 2_000,
        "dynamodb stalled: {dynamo_at_outage} -> {dynamo_during}"
    );
    publisher.await.unwrap();

    eventually(
        Duration::from_secs(240),
        "every event in every store",
        || async {
            let cassandra = stores
                .cassandra_ids()
                .await
                .map(|ids| ids.len())
                .unwrap_or(0);
            stores.mongo_count().await == EVENTS
                && stores.dynamo_count().await == EVENTS
                && cassandra == EVENTS
        },
    )
    .await;
    let ids = stores.cassandra_ids().await.unwrap();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        EVENTS,
        "no row twice"
    );

    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let cassandra_errors = metric_value(
        &metrics,
        "ingestd_sink_write_errors_total",
        &["sink=\"cassandra\""],
    )
    .unwrap_or(0.0);
    assert!(
        cassandra_errors > 0.0,
        "the outage was seen as write errors"
    );
    assert!(
        metric_value(
            &metrics,
            "ingestd_sink_retries_total",
            &["sink=\"cassandra\""]
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ingestd_sink_dead_lettered_total",
            &["pipeline=\"analytics\""]
        )
        .unwrap_or(0.0),
        0.0
    );

    // The leaderboard equals sums computed here.
    let mut expected: HashMap<String, f64> = HashMap::new();
    for index in (0..EVENTS).filter(|index| index.is_multiple_of(3)) {
        *expected
            .entry(format!("{prefix}-user-{}", index % 50))
            .or_default() += (index % 100) as f64 + 0.5;
    }
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mut redis_connection = common::redis_connection().await;
    let board: Vec<(String, f64)> = redis_connection
        .zrange_withscores(format!("{prefix}:lb:{day}"), 0, -1)
        .await
        .unwrap();
    let board: HashMap<String, f64> = board.into_iter().collect();
    assert_eq!(board.len(), expected.len());
    for (user, score) in &expected {
        assert!(
            (board[user] - score).abs() < 1e-6,
            "{user}: {} != {score}",
            board[user]
        );
    }

    // Everything again: counts, rows and scores do not change.
    let written_before = metric_value(
        &metrics,
        "ingestd_sink_events_written_total",
        &["sink=\"dynamodb\""],
    )
    .unwrap_or(0.0);
    common::publish_all("events", &payloads).await;
    let address = app.http();
    eventually(
        Duration::from_secs(120),
        "the replay written by every sink",
        || async move {
            let (_, metrics) = http_get(address, "/metrics").await;
            ["mongodb", "cassandra", "dynamodb"].iter().all(|sink| {
                metric_value(
                    &metrics,
                    "ingestd_sink_events_written_total",
                    &[&format!("sink=\"{sink}\"")],
                )
                .unwrap_or(0.0)
                    >= written_before + EVENTS as f64
            })
        },
    )
    .await;
    assert_eq!(stores.mongo_count().await, EVENTS);
    assert_eq!(stores.dynamo_count().await, EVENTS);
    assert_eq!(stores.cassandra_ids().await.unwrap().len(), EVENTS);
    let board_again: Vec<(String, f64)> = redis_connection
        .zrange_withscores(format!("{prefix}:lb:{day}"), 0, -1)
        .await
        .unwrap();
    for (user, score) in board_again {
        assert!(
            (expected[&user] - score).abs() < 1e-6,
            "replay changed {user}'s score"
        );
    }
    app.stop().await;
    let _ = stores
        .cassandra
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", stores.keyspace), ())
        .await;
    let _ = stores.mongo.drop().await;
    let _ = stores
        .dynamo
        .delete_table()
        .table_name(&stores.table)
        .send()
        .await;
}
