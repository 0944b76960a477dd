//! The MongoDB sink against the real server on 127.0.0.1:27017 (MongoDB, or the local
//! FerretDB/SecantusDB stand-in): documents read back with the `mongodb` crate, field by
//! field and type by type, idempotent replays, the seed's query, and duplicates counted as
//! written. Each test uses its own database.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::Hint;
use redis::AsyncCommands;

use common::{
    base_config, eventually, http_get, metric_value, pipeline, publish_all, sink, start, unique,
};
use ingestd::app::App;

fn mongo_uri() -> String {
    std::env::var("INGESTD_TEST_MONGO_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_string())
}

/// A database name no other test uses (letters, digits and `_` only, under 64 bytes).
fn unique_database(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

async fn collection(database: &str) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .expect("mongodb client");
    client.database(database).collection::<Document>("events")
}

fn mongo_sink(database: &str) -> ingestd::sinks::SinkConfig {
    sink(&format!(
        r#"
max_in_flight = 4
batch = {{ max_events = 250, linger = "20ms" }}
retry = {{ initial_delay = "50ms", max_delay = "500ms", max_attempts = 5 }}
[mongodb]
uri = "{uri}"
database = "{database}"
collection = "events"
write_concern = "majority"
journal = true
write_timeout = "20s"
"#,
        uri = mongo_uri(),
    ))
}

async fn written(app: &common::Started, pipeline_name: &str) -> f64 {
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    metric_value(
        &metrics,
        "ingestd_sink_events_written_total",
        &[&format!("pipeline=\"{pipeline_name}\"")],
    )
    .unwrap_or(0.0)
}

/// What the test published for one event, to compare with what the store holds.
struct Expected {
    user_id: String,
    event_type: String,
    timestamp_millis: i64,
    amount: Option<f64>,
    sequence: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_hold_every_field_with_its_bson_type_and_replays_change_nothing() {
    let channel = unique("mongo-events");
    let database = unique_database("ingestd_mongo");
    let pipeline_name = "mongo_fields";
    let mut config = base_config();
    let dead_letter_stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(&[&channel], vec![("mongodb", mongo_sink(&database))]),
    );
    let app = start(App::new(config)).await;

    let base_millis = Utc::now().timestamp_millis() - 60_000;
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut payloads = Vec::new();
    for sequence in 0..2000_i32 {
        let event_id = format!("{channel}-{sequence}");
        let user_id = format!("user-{}", sequence % 20);
        let event_type = ["purchase", "click", "view"][sequence as usize % 3].to_string();
        let timestamp_millis = base_millis + i64::from(sequence) * 7;
        // Integral amounts too: they must still be stored as doubles.
        let amount = (sequence % 4 != 0)
            .then(|| f64::from(sequence % 50) + if sequence % 2 == 0 { 0.0 } else { 0.25 });
        // Both timestamp forms of the input contract.
        let timestamp = if sequence % 2 == 0 {
            serde_json::json!(timestamp_millis)
        } else {
            serde_json::json!(ingestd::event::format_timestamp(
                &Utc.timestamp_millis_opt(timestamp_millis).unwrap()
            ))
        };
        let mut payload = serde_json::json!({
            "event_id": event_id,
            "user_id": user_id,
            "event_type": event_type,
            "timestamp": timestamp,
            "data": {"sequence": sequence, "nested": {"tags": ["a", sequence % 3 == 0], "ratio": f64::from(sequence) / 4.0 + 0.1}},
            // An unknown top-level field lands in data.
            "campaign": format!("c{}", sequence % 5),
        });
        if let Some(amount) = amount {
            payload["amount"] = serde_json::json!(amount);
        }
        payloads.push(payload.to_string().into_bytes());
        expected.insert(
            event_id,
            Expected {
                user_id,
                event_type,
                timestamp_millis,
                amount,
                sequence,
            },
        );
    }
    let started_at = Utc::now().timestamp_millis();
    publish_all(&channel, &payloads).await;

    let events = collection(&database).await;
    eventually(
        Duration::from_secs(60),
        "2,000 documents in mongodb",
        || {
            let events = events.clone();
            async move { events.count_documents(doc! {}).await.unwrap() >= 2000 }
        },
    )
    .await;

    let documents: Vec<Document> = events
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(documents.len(), 2000);
    for document in &documents {
        let event_id = document.get_str("_id").expect("_id is the event_id string");
        let want = &expected[event_id];
        assert_eq!(document.get_str("user_id").unwrap(), want.user_id);
        assert_eq!(document.get_str("event_type").unwrap(), want.event_type);
        assert_eq!(
            document.get("timestamp"),
            Some(&Bson::DateTime(mongodb::bson::DateTime::from_millis(
                want.timestamp_millis
            ))),
            "timestamp of {event_id} is a BSON date"
        );
        match want.amount {
            Some(amount) => assert_eq!(
                document.get("amount"),
                Some(&Bson::Double(amount)),
                "{event_id}"
            ),
            None => assert!(!document.contains_key("amount"), "{event_id} has no amount"),
        }
        let want_data = doc! {
            "sequence": want.sequence,
            "nested": {"tags": ["a", want.sequence % 3 == 0], "ratio": f64::from(want.sequence) / 4.0 + 0.1},
            "campaign": format!("c{}", want.sequence % 5),
        };
        let data = document
            .get_document("data")
            .expect("data is an embedded document");
        // Key order is not part of the contract; compare as maps.
        let as_map = |document: &Document| -> HashMap<String, Bson> {
            document
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        };
        assert_eq!(as_map(data), as_map(&want_data), "data of {event_id}");
        assert_eq!(document.get_str("channel").unwrap(), channel);
        let ingested_at = document
            .get_datetime("ingested_at")
            .expect("ingested_at is a BSON date");
        assert!(ingested_at.timestamp_millis() >= started_at - 1000);
        assert!(ingested_at.timestamp_millis() <= Utc::now().timestamp_millis() + 1000);
    }

    // The indexes exist, and the seed's query (a user's events, newest first) is served by one.
    let index_names = events.list_index_names().await.unwrap();
    assert!(
        index_names.contains(&"user_id_1_timestamp_-1".to_string()),
        "{index_names:?}"
    );
    assert!(
        index_names.contains(&"event_type_1".to_string()),
        "{index_names:?}"
    );
    let newest_first: Vec<Document> = events
        .find(doc! {"user_id": "user-3"})
        .sort(doc! {"timestamp": -1})
        .hint(Hint::Name("user_id_1_timestamp_-1".to_string()))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut want_order: Vec<(&String, i64)> = expected
        .iter()
        .filter(|(_, want)| want.user_id == "user-3")
        .map(|(event_id, want)| (event_id, want.timestamp_millis))
        .collect();
    want_order.sort_by_key(|(_, millis)| std::cmp::Reverse(*millis));
    let got_order: Vec<&str> = newest_first
        .iter()
        .map(|document| document.get_str("_id").unwrap())
        .collect();
    let want_ids: Vec<&str> = want_order
        .iter()
        .map(|(event_id, _)| event_id.as_str())
        .collect();
    assert_eq!(got_order, want_ids);

    eventually(
        Duration::from_secs(10),
        "2,000 written in the metrics",
        || {
            let app = &app;
            async move { written(app, pipeline_name).await >= 2000.0 }
        },
    )
    .await;

    // Replaying every event: duplicates count as written, the collection does not grow.
    publish_all(&channel, &payloads).await;
    eventually(
        Duration::from_secs(60),
        "4,000 written in the metrics",
        || {
            let app = &app;
            async move { written(app, pipeline_name).await >= 4000.0 }
        },
    )
    .await;
    assert_eq!(events.count_documents(doc! {}).await.unwrap(), 2000);
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "ingestd_sink_write_errors_total",
            &[&format!("pipeline=\"{pipeline_name}\"")]
        )
        .unwrap_or(0.0),
        0.0,
        "a duplicate is not an error"
    );
    let mut redis = common::redis_connection().await;
    let dead_letters: usize = redis.xlen(&dead_letter_stream).await.unwrap();
    assert_eq!(dead_letters, 0);
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
    events.client().database(&database).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_already_present_counts_as_written_and_is_not_dead_lettered() {
    let channel = unique("mongo-dup");
    let database = unique_database("ingestd_mongo_dup");
    let pipeline_name = "mongo_duplicate";
    let events = collection(&database).await;
    let existing_id = format!("{channel}-existing");
    events
        .insert_one(doc! {"_id": &existing_id, "written_by": "someone else"})
        .await
        .unwrap();

    let mut config = base_config();
    let dead_letter_stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(&[&channel], vec![("mongodb", mongo_sink(&database))]),
    );
    let app = start(App::new(config)).await;
    let fresh_id = format!("{channel}-fresh");
    // Same batch: one event whose _id exists, one new, and the new one twice.
    publish_all(
        &channel,
        &[
            common::event_json(&existing_id, "u1", "click", 1.0),
            common::event_json(&fresh_id, "u1", "click", 2.0),
            common::event_json(&fresh_id, "u1", "click", 2.0),
        ],
    )
    .await;
    eventually(Duration::from_secs(20), "3 events written", || {
        let app = &app;
        async move { written(app, pipeline_name).await >= 3.0 }
    })
    .await;
    assert_eq!(events.count_documents(doc! {}).await.unwrap(), 2);
    let existing = events
        .find_one(doc! {"_id": &existing_id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        existing.get_str("written_by").unwrap(),
        "someone else",
        "never overwritten"
    );
    let fresh = events
        .find_one(doc! {"_id": &fresh_id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.get("amount"), Some(&Bson::Double(2.0)));

    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let label = format!("pipeline=\"{pipeline_name}\"");
    assert_eq!(
        metric_value(&metrics, "ingestd_sink_events_written_total", &[&label]),
        Some(3.0)
    );
    assert_eq!(
        metric_value(&metrics, "ingestd_sink_write_errors_total", &[&label]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "ingestd_sink_dead_lettered_total", &[&label]).unwrap_or(0.0),
        0.0
    );
    let mut redis = common::redis_connection().await;
    let dead_letters: usize = redis.xlen(&dead_letter_stream).await.unwrap();
    assert_eq!(dead_letters, 0);
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
    events.client().database(&database).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mongodb_stops_the_start_with_the_sink_named() {
    let channel = unique("mongo-ready");
    let mut config = base_config();
    config.pipelines.insert(
        "mongo_unreachable".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "mongodb",
                sink(
                    "[mongodb]\nuri = \"mongodb://127.0.0.1:1\"\nserver_selection_timeout = \"300ms\"\nconnect_timeout = \"300ms\"",
                ),
            )],
        ),
    );
    let error = match App::new(config)
        .start(tokio_util::sync::CancellationToken::new())
        .await
    {
        Ok(_) => panic!("started against a closed port"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("pipelines.mongo_unreachable.sinks.mongodb"),
        "{error}"
    );
    assert!(error.contains("does not answer"), "{error}");
}
