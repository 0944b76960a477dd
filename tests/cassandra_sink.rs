//! The Cassandra sink against the real local Cassandra (127.0.0.1:9042): rows read back
//! with the scylla crate, column by column, in a keyspace of their own per test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Statement;
use scylla::value::{CqlDate, CqlTimestamp};
use serde_json::{Map, Value, json};

use common::{base_config, eventually, metric_value, pipeline, publish_all, sink, start, unique};
use ingestd::app::App;
use ingestd::sinks::cassandra::{bucket_of, cql_date};

const NODE: &str = "127.0.0.1:9042";

async fn session() -> Session {
    SessionBuilder::new()
        .known_node(NODE)
        .build()
        .await
        .expect("cassandra is up on 127.0.0.1:9042 (deploy/local/services up)")
}

/// A keyspace name no other test or run uses (CQL names: letters, digits, `_`).
fn unique_keyspace() -> String {
    let name = unique("t").replace('-', "_");
    assert!(name.len() <= 48, "{name}");
    name
}

async fn drop_keyspace(session: &Session, keyspace: &str) {
    let mut statement = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    statement.set_request_timeout(Some(Duration::from_secs(60)));
    // Cleanup only: a failure here must not hide the test's verdict.
    if let Err(error) = session.query_unpaged(statement, ()).await {
        eprintln!("could not drop keyspace {keyspace}: {error}");
    }
}

async fn count_rows(session: &Session, keyspace: &str) -> i64 {
    let result = session
        .query_unpaged(format!("SELECT COUNT(*) FROM {keyspace}.events_by_day"), ())
        .await;
    result
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(i64,)>()
        .unwrap()
        .0
}

async fn written_metric(started: &common::Started, pipeline_name: &str) -> f64 {
    let (_, metrics) = common::http_get(started.http(), "/metrics").await;
    metric_value(
        &metrics,
        "ingestd_sink_events_written_total",
        &[
            &format!("pipeline=\"{pipeline_name}\""),
            "sink=\"cassandra\"",
        ],
    )
    .unwrap_or(0.0)
}

/// One published event and what its row must hold.
struct Expected {
    payload: Vec<u8>,
    event_id: String,
    user_id: String,
    event_type: String,
    timestamp: DateTime<Utc>,
    amount: Option<f64>,
    data: Map<String, Value>,
}

fn events(count: usize, tag: &str) -> Vec<Expected> {
    // Two UTC days: 2026-01-15 and 2026-01-16, one event every ~86.4 s, with
    // millisecond parts so precision is checked.
    let base = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
    let mut expected = Vec::with_capacity(count);
    for index in 0..count {
        let offset_ms = (index as i64) * 86_400 + (index as i64 % 997);
        let timestamp = base + chrono::Duration::milliseconds(offset_ms);
        let user_id = if index % 5 == 0 {
            format!("ü-user-{}", index % 7)
        } else {
            format!("user-{}", index % 37)
        };
        let event_id = format!("{tag}-{index}");
        let event_type = ["purchase", "view", "click"][index % 3].to_string();
        let amount = (index % 10 != 0).then_some(index as f64 * 1.25 + 0.01);
        // Half the events use epoch milliseconds, half RFC 3339.
        let timestamp_json = if index % 2 == 0 {
            json!(timestamp.timestamp_millis())
        } else {
            json!(ingestd::event::format_timestamp(&timestamp))
        };
        let mut message = json!({
            "event_id": event_id,
            "user_id": user_id,
            "event_type": event_type,
            "timestamp": timestamp_json,
            "data": {"index": index, "tags": ["a", "b"], "nested": {"x": 1.5, "quote": "say \"hi\""}},
            // Unknown top-level fields are kept inside `data`.
            "extra": format!("e{index}"),
        });
        if let Some(amount) = amount {
            message["amount"] = json!(amount);
        }
        let mut data = message["data"].as_object().unwrap().clone();
        data.insert("extra".to_string(), json!(format!("e{index}")));
        expected.push(Expected {
            payload: message.to_string().into_bytes(),
            event_id,
            user_id,
            event_type,
            timestamp,
            amount,
            data,
        });
    }
    expected
}

type Row = (
    CqlDate,
    i16,
    CqlTimestamp,
    String,
    String,
    String,
    Option<f64>,
    String,
);

async fn all_rows(session: &Session, keyspace: &str) -> HashMap<String, Row> {
    let rows: Vec<Row> = session
        .query_iter(
            format!(
                "SELECT day, bucket, event_time, user_id, event_id, event_type, amount, data \
                 FROM {keyspace}.events_by_day"
            ),
            (),
        )
        .await
        .unwrap()
        .rows_stream::<Row>()
        .expect("columns have the documented CQL types")
        .try_collect()
        .await
        .unwrap();
    rows.into_iter().map(|row| (row.4.clone(), row)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_day_bucket_partitions_and_replays_overwrite() {
    let keyspace = unique_keyspace();
    let channel = unique("cassandra-events");
    let pipeline_name = format!("cass_{}", &keyspace[keyspace.len() - 8..]);
    let sink_config = sink(&format!(
        r#"
        max_in_flight = 4
        batch = {{ max_events = 500, max_bytes = "4MiB", linger = "20ms" }}
        [cassandra]
        nodes = ["{NODE}"]
        keyspace = "{keyspace}"
        consistency = "ONE"
        buckets = 8
        max_batch_statements = 20
        max_concurrent_partitions = 8
        "#
    ));
    let mut config = base_config();
    config.pipelines.insert(
        pipeline_name.clone(),
        pipeline(&[&channel], vec![("cassandra", sink_config)]),
    );
    let started = start(App::new(config)).await;
    let session = session().await;

    let expected = events(2_000, &keyspace);
    let payloads: Vec<Vec<u8>> = expected.iter().map(|event| event.payload.clone()).collect();
    publish_all(&channel, &payloads).await;
    // Wait on the sink's own count (a COUNT(*) poll would spam Cassandra's log), then
    // check the table.
    eventually(Duration::from_secs(60), "2000 events written", || async {
        written_metric(&started, &pipeline_name).await >= 2_000.0
    })
    .await;
    assert_eq!(count_rows(&session, &keyspace).await, 2_000);

    // Schema: the documented types, clustering order and compaction.
    let columns: Vec<(String, String, String)> = session
        .query_unpaged(
            "SELECT column_name, type, clustering_order FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = 'events_by_day'",
            (&keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String, String, String)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let types: BTreeMap<&str, (&str, &str)> = columns
        .iter()
        .map(|(name, kind, order)| (name.as_str(), (kind.as_str(), order.as_str())))
        .collect();
    assert_eq!(types["day"].0, "date");
    assert_eq!(types["bucket"].0, "smallint");
    assert_eq!(types["event_time"], ("timestamp", "desc"));
    assert_eq!(types["user_id"], ("text", "asc"));
    assert_eq!(types["event_id"], ("text", "asc"));
    assert_eq!(types["event_type"].0, "text");
    assert_eq!(types["amount"].0, "double");
    assert_eq!(types["data"].0, "text");
    let (compaction,): (HashMap<String, String>,) = session
        .query_unpaged(
            "SELECT compaction FROM system_schema.tables \
             WHERE keyspace_name = ? AND table_name = 'events_by_day'",
            (&keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert!(
        compaction["class"].ends_with("TimeWindowCompactionStrategy"),
        "{compaction:?}"
    );
    assert_eq!(compaction["compaction_window_unit"], "DAYS");
    assert_eq!(compaction["compaction_window_size"], "1");

    // Every row, every column.
    let rows = all_rows(&session, &keyspace).await;
    assert_eq!(rows.len(), 2_000);
    let mut days_seen = BTreeMap::new();
    for event in &expected {
        let row = rows
            .get(&event.event_id)
            .unwrap_or_else(|| panic!("row of {} missing", event.event_id));
        let (day, bucket, event_time, user_id, event_id, event_type, amount, data) = row;
        assert_eq!(*day, cql_date(event.timestamp.date_naive()), "{event_id}");
        assert_eq!(*bucket, bucket_of(&event.user_id, 8), "{event_id}");
        assert!((0..8).contains(bucket));
        assert_eq!(
            event_time.0,
            event.timestamp.timestamp_millis(),
            "{event_id}"
        );
        assert_eq!(user_id, &event.user_id);
        assert_eq!(event_type, &event.event_type);
        assert_eq!(*amount, event.amount, "{event_id}");
        let stored: Map<String, Value> = serde_json::from_str(data).expect("data is JSON text");
        assert_eq!(stored, event.data, "{event_id}");
        *days_seen.entry(day.0).or_insert(0) += 1;
    }
    assert_eq!(days_seen.len(), 2, "{days_seen:?}");

    // The seed's query: one day across all buckets, newest first.
    let day = NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
    let mut want: Vec<(i64, String, String)> = expected
        .iter()
        .filter(|event| event.timestamp.date_naive() == day)
        .map(|event| {
            (
                event.timestamp.timestamp_millis(),
                event.user_id.clone(),
                event.event_id.clone(),
            )
        })
        .collect();
    want.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    assert!(want.len() > 500);
    let per_bucket = session
        .prepare(format!(
            "SELECT event_time, user_id, event_id FROM {keyspace}.events_by_day \
             WHERE day = ? AND bucket = ?"
        ))
        .await
        .unwrap();
    let mut merged: Vec<(i64, String, String)> = Vec::new();
    for bucket in 0..8_i16 {
        let partition: Vec<(CqlTimestamp, String, String)> = session
            .execute_iter(per_bucket.clone(), (cql_date(day), bucket))
            .await
            .unwrap()
            .rows_stream::<(CqlTimestamp, String, String)>()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        // Within a partition the clustering order already gives newest first.
        assert!(
            partition.windows(2).all(|pair| pair[0].0 >= pair[1].0),
            "bucket {bucket} not newest first"
        );
        merged.extend(
            partition
                .into_iter()
                .map(|(time, user_id, event_id)| (time.0, user_id, event_id)),
        );
    }
    merged.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    assert_eq!(merged, want);
    // The same in one request: `bucket IN (...)` with ORDER BY needs an unpaged query.
    let buckets: Vec<i16> = (0..8).collect();
    let in_query: Vec<(CqlTimestamp, String, String)> = session
        .query_unpaged(
            format!(
                "SELECT event_time, user_id, event_id FROM {keyspace}.events_by_day \
                 WHERE day = ? AND bucket IN ? ORDER BY event_time DESC"
            ),
            (cql_date(day), &buckets),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(CqlTimestamp, String, String)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let in_times: Vec<i64> = in_query.iter().map(|row| row.0.0).collect();
    let want_times: Vec<i64> = want.iter().map(|row| row.0).collect();
    assert_eq!(in_times, want_times);

    // Replay: the same events again overwrite their rows, never add any.
    publish_all(&channel, &payloads).await;
    eventually(
        Duration::from_secs(60),
        "replayed events written",
        || async { written_metric(&started, &pipeline_name).await >= 4_000.0 },
    )
    .await;
    assert_eq!(count_rows(&session, &keyspace).await, 2_000);
    let replayed = all_rows(&session, &keyspace).await;
    assert_eq!(replayed, rows);

    let (_, metrics) = common::http_get(started.http(), "/metrics").await;
    let errors = metric_value(
        &metrics,
        "ingestd_sink_write_errors_total",
        &[&format!("pipeline=\"{pipeline_name}\"")],
    );
    assert_eq!(errors.unwrap_or(0.0), 0.0, "no write errors expected");

    started.stop().await;
    drop_keyspace(&session, &keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_topology_keyspace_with_local_datacenter() {
    let session = session().await;
    let (datacenter,): (String,) = session
        .query_unpaged("SELECT data_center FROM system.local", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    let keyspace = unique_keyspace();
    let channel = unique("cassandra-nts");
    let pipeline_name = format!("cass_{}", &keyspace[keyspace.len() - 8..]);
    let sink_config = sink(&format!(
        r#"
        batch = {{ max_events = 100, linger = "20ms" }}
        [cassandra]
        nodes = ["{NODE}"]
        keyspace = "{keyspace}"
        table = "events_nts"
        consistency = "LOCAL_QUORUM"
        local_datacenter = "{datacenter}"
        buckets = 4
        replication = {{ class = "NetworkTopologyStrategy", datacenters = {{ {datacenter} = 1 }} }}
        "#
    ));
    let mut config = base_config();
    config.pipelines.insert(
        pipeline_name.clone(),
        pipeline(&[&channel], vec![("cassandra", sink_config)]),
    );
    let started = start(App::new(config)).await;

    let payloads: Vec<Vec<u8>> = (0..50)
        .map(|index| {
            common::event_json(
                &format!("{keyspace}-{index}"),
                &format!("u{index}"),
                "view",
                1.0,
            )
        })
        .collect();
    publish_all(&channel, &payloads).await;
    eventually(Duration::from_secs(30), "50 events written", || async {
        written_metric(&started, &pipeline_name).await >= 50.0
    })
    .await;
    let (replication,): (HashMap<String, String>,) = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (&keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert!(
        replication["class"].ends_with("NetworkTopologyStrategy"),
        "{replication:?}"
    );
    assert_eq!(replication[&datacenter], "1");
    // Buckets follow the configured count.
    let buckets: Vec<(i16,)> = session
        .query_unpaged(format!("SELECT bucket FROM {keyspace}.events_nts"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i16,)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(buckets.len(), 50);
    assert!(buckets.iter().all(|(bucket,)| (0..4).contains(bucket)));

    started.stop().await;
    drop_keyspace(&session, &keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_without_create_schema_refuses_to_start() {
    let keyspace = unique_keyspace();
    let sink_config = sink(&format!(
        r#"
        [cassandra]
        nodes = ["{NODE}"]
        keyspace = "{keyspace}"
        create_schema = false
        "#
    ));
    let mut config = base_config();
    config.pipelines.insert(
        "cass_missing".to_string(),
        pipeline(
            &[&unique("cassandra-missing")],
            vec![("cassandra", sink_config)],
        ),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let Err(error) = App::new(config).start(shutdown.clone()).await else {
        shutdown.cancel();
        panic!("started without the table");
    };
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("{keyspace}.events_by_day")) && message.contains("create_schema"),
        "{message}"
    );
}
