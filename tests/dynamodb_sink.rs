//! The DynamoDB sink against DynamoDB Local on 127.0.0.1:8000: items read back with
//! `aws-sdk-dynamodb`, keys and attribute types checked exactly, the seed's queries (a
//! user's events newest first, GSI1 by type and day), idempotent replays, UnprocessedItems
//! re-sent until each item is written once, duplicate keys in one batch, and an item over
//! 400 KB dead-lettered while the rest of its batch is written. Each test has its own table.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{AttributeValue, Select, WriteRequest};
use chrono::{TimeZone, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::AsyncCommands;
use serde_json::{Value, json};

use common::{
    base_config, eventually, http_get, metric_value, pipeline, publish_all, sink, start, unique,
};
use ingestd::app::App;
use ingestd::sinks::SinkError;
use ingestd::sinks::dynamodb::{BatchWriter, ClientBatchWriter, DynamoSink};

type Item = HashMap<String, AttributeValue>;

fn endpoint() -> String {
    std::env::var("INGESTD_TEST_DYNAMODB_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8000".to_string())
}

/// A table name no other test uses (DynamoDB allows a-z A-Z 0-9 _ - .).
fn unique_table(prefix: &str) -> String {
    unique(prefix)
}

fn dynamo_sink_toml(table: &str, delivery: &str, extra: &str) -> String {
    format!(
        r#"{delivery}
[dynamodb]
table = "{table}"
create_table = true
endpoint_url = "{endpoint}"
region = "us-east-1"
{extra}
"#,
        endpoint = endpoint(),
    )
}

async fn reader() -> Client {
    common::ensure_aws_credentials();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .load()
        .await;
    Client::new(&config)
}

async fn scan_all(client: &Client, table: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start_key: Option<Item> = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start_key.take())
            .send()
            .await
            .expect("scan");
        items.extend(page.items.unwrap_or_default());
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start_key = Some(key),
            _ => return items,
        }
    }
}

async fn count_items(client: &Client, table: &str) -> usize {
    let mut count = 0;
    let mut start_key: Option<Item> = None;
    loop {
        let Ok(page) = client
            .scan()
            .table_name(table)
            .select(Select::Count)
            .set_exclusive_start_key(start_key.take())
            .send()
            .await
        else {
            return 0;
        };
        count += page.count as usize;
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start_key = Some(key),
            _ => return count,
        }
    }
}

async fn metric(app: &common::Started, name: &str, labels: &[&str]) -> f64 {
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    metric_value(&metrics, name, labels).unwrap_or(0.0)
}

fn string(item: &Item, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(text)) => text.clone(),
        other => panic!("{name} is not a string attribute: {other:?}"),
    }
}

/// The stored attribute is the native form of the JSON value: objects M, arrays L, strings
/// S, numbers N (same value), booleans BOOL, null NULL.
fn assert_native(attribute: &AttributeValue, value: &Value, path: &str) {
    match (attribute, value) {
        (AttributeValue::M(map), Value::Object(object)) => {
            assert_eq!(map.len(), object.len(), "{path}: keys {:?}", map.keys());
            for (key, inner) in object {
                let stored = map
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} missing"));
                assert_native(stored, inner, &format!("{path}.{key}"));
            }
        }
        (AttributeValue::L(list), Value::Array(array)) => {
            assert_eq!(list.len(), array.len(), "{path}");
            for (index, (stored, inner)) in list.iter().zip(array).enumerate() {
                assert_native(stored, inner, &format!("{path}[{index}]"));
            }
        }
        (AttributeValue::S(text), Value::String(expected)) => assert_eq!(text, expected, "{path}"),
        (AttributeValue::N(number), Value::Number(expected)) => {
            let stored: f64 = number
                .parse()
                .unwrap_or_else(|_| panic!("{path}: N {number:?}"));
            assert_eq!(stored, expected.as_f64().unwrap(), "{path}");
        }
        (AttributeValue::Bool(stored), Value::Bool(expected)) => {
            assert_eq!(stored, expected, "{path}")
        }
        (AttributeValue::Null(true), Value::Null) => {}
        (stored, expected) => {
            panic!("{path}: stored {stored:?}, expected the native form of {expected}")
        }
    }
}

/// Key of an item as `PK|SK`.
fn key_of_request(request: &WriteRequest) -> String {
    let item = request.put_request().expect("a put").item();
    format!("{}|{}", string(item, "PK"), string(item, "SK"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_have_exact_keys_and_native_types_serve_the_queries_and_replays_change_nothing() {
    common::ensure_aws_credentials();
    let channel = unique("dynamo-events");
    let table = unique_table("ingestd-items");
    let pipeline_name = "dynamo_items";
    let mut config = base_config();
    let dead_letter_stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(
            &[&channel],
            vec![(
                "dynamodb",
                sink(&dynamo_sink_toml(
                    &table,
                    "max_in_flight = 4\nbatch = { max_events = 250, linger = \"20ms\" }\nretry = { initial_delay = \"50ms\", max_delay = \"500ms\" }",
                    "",
                )),
            )],
        ),
    );
    let app = start(App::new(config)).await;

    // Two minutes around midnight, so GSI1SK takes two values.
    let base = Utc
        .with_ymd_and_hms(2026, 11, 23, 23, 59, 0)
        .unwrap()
        .timestamp_millis();
    let mut expected: HashMap<String, Value> = HashMap::new();
    let mut payloads = Vec::new();
    for sequence in 0..2000_i64 {
        let event_id = format!("{channel}-{sequence}");
        let timestamp = ingestd::event::format_timestamp(
            &Utc.timestamp_millis_opt(base + sequence * 100).unwrap(),
        );
        let event_type = ["purchase", "click", "view"][sequence as usize % 3];
        let mut payload = json!({
            "event_id": event_id,
            "user_id": format!("user-{}", sequence % 20),
            "event_type": event_type,
            "timestamp": timestamp,
            "data": {
                "sequence": sequence,
                "nested": {"tags": ["a", sequence % 3 == 0], "ratio": sequence as f64 / 4.0 + 0.1, "none": null},
                "empty": {},
            },
            "campaign": format!("c{}", sequence % 5),
        });
        if sequence % 4 != 0 {
            payload["amount"] = json!((sequence % 50) as f64 + 0.25);
        }
        payloads.push(payload.to_string().into_bytes());
        expected.insert(event_id, payload);
    }
    let started_at = Utc::now();
    publish_all(&channel, &payloads).await;

    let client = reader().await;
    eventually(Duration::from_secs(60), "2,000 items in dynamodb", || {
        let client = client.clone();
        let table = table.clone();
        async move { count_items(&client, &table).await >= 2000 }
    })
    .await;

    let items = scan_all(&client, &table).await;
    assert_eq!(items.len(), 2000);
    for item in &items {
        let event_id = string(item, "event_id");
        let want = &expected[&event_id];
        let user_id = want["user_id"].as_str().unwrap();
        let event_type = want["event_type"].as_str().unwrap();
        let timestamp = want["timestamp"].as_str().unwrap();
        assert_eq!(string(item, "PK"), format!("USER#{user_id}"));
        assert_eq!(string(item, "SK"), format!("EVENT#{timestamp}#{event_id}"));
        assert_eq!(string(item, "GSI1PK"), format!("TYPE#{event_type}"));
        assert_eq!(string(item, "GSI1SK"), format!("DATE#{}", &timestamp[..10]));
        assert_eq!(string(item, "user_id"), user_id);
        assert_eq!(string(item, "event_type"), event_type);
        assert_eq!(string(item, "timestamp"), timestamp);
        match want.get("amount") {
            Some(amount) => assert_native(&item["amount"], amount, "amount"),
            None => assert!(!item.contains_key("amount"), "{event_id} has no amount"),
        }
        let mut want_data = want["data"].clone();
        want_data["campaign"] = want["campaign"].clone();
        assert_native(&item["data"], &want_data, "data");
        let ingested_at = chrono::DateTime::parse_from_rfc3339(&string(item, "ingested_at"))
            .expect("ingested_at is RFC 3339");
        assert!(ingested_at >= started_at - chrono::Duration::seconds(1));
        assert_eq!(
            item.len(),
            if want.get("amount").is_some() { 11 } else { 10 },
            "{:?}",
            item.keys()
        );
    }

    // The seed's query: a user's events, newest first.
    let newest_first = client
        .query()
        .table_name(&table)
        .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
        .expression_attribute_values(":pk", AttributeValue::S("USER#user-3".to_string()))
        .expression_attribute_values(":prefix", AttributeValue::S("EVENT#".to_string()))
        .scan_index_forward(false)
        .send()
        .await
        .unwrap();
    assert!(newest_first.last_evaluated_key.is_none());
    let got: Vec<String> = newest_first
        .items()
        .iter()
        .map(|item| string(item, "event_id"))
        .collect();
    let mut want: Vec<(&String, &str)> = expected
        .iter()
        .filter(|(_, payload)| payload["user_id"] == "user-3")
        .map(|(event_id, payload)| (event_id, payload["timestamp"].as_str().unwrap()))
        .collect();
    want.sort_by(|left, right| right.1.cmp(left.1));
    let want_ids: Vec<String> = want
        .iter()
        .map(|(event_id, _)| event_id.to_string())
        .collect();
    assert_eq!(got, want_ids);

    // And GSI1: events of a type on a day.
    for day in ["2026-11-23", "2026-11-24"] {
        let mut count = 0;
        let mut start_key: Option<Item> = None;
        loop {
            let page = client
                .query()
                .table_name(&table)
                .index_name("GSI1")
                .key_condition_expression("GSI1PK = :type AND GSI1SK = :day")
                .expression_attribute_values(
                    ":type",
                    AttributeValue::S("TYPE#purchase".to_string()),
                )
                .expression_attribute_values(":day", AttributeValue::S(format!("DATE#{day}")))
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .unwrap();
            for item in page.items() {
                assert_eq!(string(item, "event_type"), "purchase");
                assert!(string(item, "timestamp").starts_with(day));
            }
            count += page.items().len();
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => break,
            }
        }
        let want_count = expected
            .values()
            .filter(|payload| {
                payload["event_type"] == "purchase"
                    && payload["timestamp"].as_str().unwrap().starts_with(day)
            })
            .count();
        assert!(want_count > 0);
        assert_eq!(count, want_count, "purchases on {day}");
    }

    let label = format!("pipeline=\"{pipeline_name}\"");
    eventually(Duration::from_secs(10), "2,000 written in the metrics", || {
        let app = &app;
        let label = label.clone();
        async move { metric(app, "ingestd_sink_events_written_total", &[&label]).await >= 2000.0 }
    })
    .await;
    // Replaying every event overwrites the same items.
    publish_all(&channel, &payloads).await;
    eventually(Duration::from_secs(60), "4,000 written in the metrics", || {
        let app = &app;
        let label = label.clone();
        async move { metric(app, "ingestd_sink_events_written_total", &[&label]).await >= 4000.0 }
    })
    .await;
    assert_eq!(count_items(&client, &table).await, 2000);
    assert_eq!(
        metric(&app, "ingestd_sink_write_errors_total", &[&label]).await,
        0.0
    );
    let mut redis = common::redis_connection().await;
    let dead_letters: usize = redis.xlen(&dead_letter_stream).await.unwrap();
    assert_eq!(dead_letters, 0);
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

/// DynamoDB Local never throttles and never answers with UnprocessedItems, so this wrapper
/// around the real client plays DynamoDB under pressure: for its first `flaky_calls` calls
/// it sends only the first half of the requests to DynamoDB Local and hands the other half
/// back as unprocessed. It counts how often each key really reached DynamoDB.
struct HoldingBack {
    inner: ClientBatchWriter,
    flaky_calls: usize,
    calls: AtomicUsize,
    held_back: AtomicUsize,
    sent: Mutex<HashMap<String, usize>>,
}

impl BatchWriter for HoldingBack {
    fn batch_write<'a>(
        &'a self,
        table: &'a str,
        mut requests: Vec<WriteRequest>,
    ) -> BoxFuture<'a, Result<Vec<WriteRequest>, SinkError>> {
        async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let held = if call < self.flaky_calls {
                requests.split_off(requests.len() / 2)
            } else {
                Vec::new()
            };
            self.held_back.fetch_add(held.len(), Ordering::SeqCst);
            {
                let mut sent = self.sent.lock().unwrap();
                for request in &requests {
                    *sent.entry(key_of_request(request)).or_default() += 1;
                }
            }
            let mut unprocessed = if requests.is_empty() {
                Vec::new()
            } else {
                self.inner.batch_write(table, requests).await?
            };
            unprocessed.extend(held);
            Ok(unprocessed)
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_items_are_resent_until_every_item_is_written_exactly_once() {
    common::ensure_aws_credentials();
    let channel = unique("dynamo-unprocessed");
    let table = unique_table("ingestd-unprocessed");
    let pipeline_name = "dynamo_unprocessed";
    let mut config = base_config();
    // One request at a time, and only two sends per chunk: the first chunks run out of
    // sends, so their leftovers also take the runner's retry path.
    let sink_config = sink(&dynamo_sink_toml(
        &table,
        "max_in_flight = 1\nbatch = { max_events = 100, linger = \"50ms\" }\nretry = { initial_delay = \"20ms\", max_delay = \"100ms\", max_attempts = 10 }",
        "max_concurrent_requests = 1\nunprocessed_max_attempts = 2\nunprocessed_initial_delay = \"5ms\"\nunprocessed_max_delay = \"20ms\"",
    ));
    let dynamo_config = sink_config.dynamodb.clone().unwrap();
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(&[&channel], vec![("dynamodb", sink_config)]),
    );
    let client = DynamoSink::client(&dynamo_config).await.unwrap();
    let writer = Arc::new(HoldingBack {
        inner: ClientBatchWriter::new(client.clone()),
        flaky_calls: 6,
        calls: AtomicUsize::new(0),
        held_back: AtomicUsize::new(0),
        sent: Mutex::new(HashMap::new()),
    });
    let dynamo_sink = DynamoSink::with_writer(&dynamo_config, client, writer.clone())
        .await
        .unwrap();
    let app =
        start(App::new(config).with_sink(pipeline_name, "dynamodb", Arc::new(dynamo_sink))).await;

    let payloads: Vec<Vec<u8>> = (0..200)
        .map(|sequence| {
            common::event_json(
                &format!("{channel}-{sequence}"),
                &format!("user-{}", sequence % 7),
                "click",
                1.5,
            )
        })
        .collect();
    publish_all(&channel, &payloads).await;
    let label = format!("pipeline=\"{pipeline_name}\"");
    eventually(Duration::from_secs(30), "200 written in the metrics", || {
        let app = &app;
        let label = label.clone();
        async move { metric(app, "ingestd_sink_events_written_total", &[&label]).await >= 200.0 }
    })
    .await;

    let reader = reader().await;
    assert_eq!(count_items(&reader, &table).await, 200);
    let sent = writer.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 200, "every item reached DynamoDB");
    let twice: Vec<&String> = sent
        .iter()
        .filter(|(_, count)| **count != 1)
        .map(|(key, _)| key)
        .collect();
    assert!(twice.is_empty(), "items written more than once: {twice:?}");
    assert!(writer.held_back.load(Ordering::SeqCst) > 0);
    assert!(
        writer.calls.load(Ordering::SeqCst) > 6,
        "held-back items were re-sent"
    );
    // Leftovers after unprocessed_max_attempts went back to the runner as retryable.
    let unprocessed = metric(
        &app,
        "ingestd_sink_write_errors_total",
        &[&label, "error=\"unprocessed\""],
    )
    .await;
    assert!(
        unprocessed > 0.0,
        "some events took the runner's retry path"
    );
    assert!(metric(&app, "ingestd_sink_retries_total", &[&label]).await >= 1.0);
    assert_eq!(
        metric(&app, "ingestd_sink_dead_lettered_total", &[&label]).await,
        0.0
    );
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
    reader
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

/// Passes every call to the real client and notes any call that carried one key twice
/// (DynamoDB refuses such a request).
struct KeyWatcher {
    inner: ClientBatchWriter,
    duplicated_calls: AtomicUsize,
}

impl BatchWriter for KeyWatcher {
    fn batch_write<'a>(
        &'a self,
        table: &'a str,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'a, Result<Vec<WriteRequest>, SinkError>> {
        async move {
            let mut keys: Vec<String> = requests.iter().map(key_of_request).collect();
            keys.sort();
            keys.dedup();
            if keys.len() != requests.len() {
                self.duplicated_calls.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.batch_write(table, requests).await
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_in_one_batch_are_sent_once_and_the_last_event_wins() {
    common::ensure_aws_credentials();
    let channel = unique("dynamo-duplicates");
    let table = unique_table("ingestd-duplicates");
    let pipeline_name = "dynamo_duplicates";
    let mut config = base_config();
    let sink_config = sink(&dynamo_sink_toml(
        &table,
        "max_in_flight = 1\nbatch = { max_events = 100, linger = \"300ms\" }",
        "",
    ));
    let dynamo_config = sink_config.dynamodb.clone().unwrap();
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(&[&channel], vec![("dynamodb", sink_config)]),
    );
    let client = DynamoSink::client(&dynamo_config).await.unwrap();
    let watcher = Arc::new(KeyWatcher {
        inner: ClientBatchWriter::new(client.clone()),
        duplicated_calls: AtomicUsize::new(0),
    });
    let dynamo_sink = DynamoSink::with_writer(&dynamo_config, client, watcher.clone())
        .await
        .unwrap();
    let app =
        start(App::new(config).with_sink(pipeline_name, "dynamodb", Arc::new(dynamo_sink))).await;

    let duplicate_id = format!("{channel}-dup");
    let mut payloads: Vec<Vec<u8>> = (0..10)
        .map(|sequence| {
            common::event_json(&format!("{channel}-{sequence}"), "user-1", "click", 1.0)
        })
        .collect();
    // Same event_id, user and timestamp (so the same PK and SK), three versions in a row.
    for version in 1..=3 {
        let payload = json!({
            "event_id": duplicate_id,
            "user_id": "user-1",
            "event_type": "click",
            "timestamp": "2026-11-24T10:00:00.000Z",
            "data": {"version": version},
        });
        payloads.insert(3 + version as usize, payload.to_string().into_bytes());
    }
    publish_all(&channel, &payloads).await;
    let label = format!("pipeline=\"{pipeline_name}\"");
    eventually(Duration::from_secs(20), "13 written in the metrics", || {
        let app = &app;
        let label = label.clone();
        async move { metric(app, "ingestd_sink_events_written_total", &[&label]).await >= 13.0 }
    })
    .await;

    let reader = reader().await;
    assert_eq!(count_items(&reader, &table).await, 11);
    let stored = reader
        .get_item()
        .table_name(&table)
        .key("PK", AttributeValue::S("USER#user-1".to_string()))
        .key(
            "SK",
            AttributeValue::S(format!("EVENT#2026-11-24T10:00:00.000Z#{duplicate_id}")),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("the duplicated event is stored");
    assert_native(&stored["data"], &json!({"version": 3}), "data");
    assert_eq!(
        watcher.duplicated_calls.load(Ordering::SeqCst),
        0,
        "no request carried a key twice"
    );
    assert_eq!(
        metric(&app, "ingestd_sink_write_errors_total", &[&label]).await,
        0.0
    );
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
    reader
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_dynamodb_cannot_store_are_dead_lettered_and_the_rest_of_their_batch_is_written() {
    common::ensure_aws_credentials();
    let channel = unique("dynamo-refused");
    let table = unique_table("ingestd-refused");
    let pipeline_name = "dynamo_refused";
    let mut config = base_config();
    config.source.max_event_bytes = bytesize::ByteSize::mib(1);
    let dead_letter_stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(
            &[&channel],
            vec![(
                "dynamodb",
                sink(&dynamo_sink_toml(
                    &table,
                    "max_in_flight = 1\nbatch = { max_events = 100, linger = \"300ms\" }",
                    "",
                )),
            )],
        ),
    );
    let app = start(App::new(config)).await;

    // Over 400 KB: refused by the sink before sending.
    let large_id = format!("{channel}-large");
    let large = json!({
        "event_id": large_id,
        "user_id": "user-1",
        "event_type": "upload",
        "timestamp": ingestd::event::format_timestamp(&Utc::now()),
        "data": {"blob": "x".repeat(450_000)},
    })
    .to_string()
    .into_bytes();
    // An empty attribute name: refused by DynamoDB itself (ValidationException for the
    // whole request), so the sink must find which item of the chunk was at fault.
    let unnamed_id = format!("{channel}-unnamed");
    let unnamed = json!({
        "event_id": unnamed_id,
        "user_id": "user-2",
        "event_type": "click",
        "timestamp": ingestd::event::format_timestamp(&Utc::now()),
        "data": {"": 1},
    })
    .to_string()
    .into_bytes();
    let mut payloads: Vec<Vec<u8>> = (0..20)
        .map(|sequence| {
            common::event_json(&format!("{channel}-{sequence}"), "user-1", "click", 1.0)
        })
        .collect();
    payloads.insert(10, large.clone());
    payloads.insert(15, unnamed.clone());
    publish_all(&channel, &payloads).await;

    let mut redis = common::redis_connection().await;
    eventually(Duration::from_secs(20), "two dead letters", || {
        let mut redis = redis.clone();
        let stream = dead_letter_stream.clone();
        async move { redis.xlen::<_, usize>(&stream).await.unwrap() >= 2 }
    })
    .await;
    let label = format!("pipeline=\"{pipeline_name}\"");
    eventually(Duration::from_secs(20), "20 written in the metrics", || {
        let app = &app;
        let label = label.clone();
        async move { metric(app, "ingestd_sink_events_written_total", &[&label]).await >= 20.0 }
    })
    .await;

    let entries: redis::streams::StreamRangeReply =
        redis.xrange_all(&dead_letter_stream).await.unwrap();
    assert_eq!(entries.ids.len(), 2);
    let mut by_payload: HashMap<Vec<u8>, HashMap<String, String>> = HashMap::new();
    for entry in &entries.ids {
        let fields = ["reason", "stage", "channel", "error"]
            .iter()
            .map(|name| (name.to_string(), entry.get::<String>(name).unwrap()))
            .collect();
        by_payload.insert(entry.get::<Vec<u8>>("payload").unwrap(), fields);
    }
    for (payload, kind, words) in [
        (&large, "(too_large)", "bytes"),
        (&unnamed, "(invalid)", "Empty attribute name"),
    ] {
        let fields = by_payload
            .get(payload)
            .expect("the original bytes are dead-lettered");
        assert_eq!(fields["reason"], "permanent_error");
        assert_eq!(fields["stage"], format!("{pipeline_name}.dynamodb"));
        assert_eq!(fields["channel"], channel);
        assert!(fields["error"].contains(kind), "{}", fields["error"]);
        assert!(fields["error"].contains(words), "{}", fields["error"]);
    }

    let reader = reader().await;
    let items = scan_all(&reader, &table).await;
    assert_eq!(items.len(), 20);
    assert!(items.iter().all(|item| {
        let event_id = string(item, "event_id");
        event_id != large_id && event_id != unnamed_id
    }));
    assert_eq!(
        metric(
            &app,
            "ingestd_sink_write_errors_total",
            &[&label, "error=\"too_large\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "ingestd_sink_write_errors_total",
            &[&label, "error=\"invalid\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&app, "ingestd_sink_dead_lettered_total", &[&label]).await,
        2.0
    );
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
    reader
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dynamodb_stops_the_start_with_the_sink_named() {
    common::ensure_aws_credentials();
    let channel = unique("dynamo-unreachable");
    let mut config = base_config();
    config.pipelines.insert(
        "dynamo_unreachable".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "dynamodb",
                sink(
                    "[dynamodb]\nendpoint_url = \"http://127.0.0.1:1\"\nregion = \"us-east-1\"\nconnect_timeout = \"300ms\"",
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
        error.contains("pipelines.dynamo_unreachable.sinks.dynamodb"),
        "{error}"
    );
    assert!(
        error.contains("dynamodb table Events: cannot describe it"),
        "{error}"
    );
}
