//! Publisher sequence numbers on pub/sub against the real Redis: numbers a publisher
//! skipped show up in `ingestd_source_sequence_gaps_total`, while every event that did
//! arrive is still delivered. The gap is made by the test publishing with holes, the
//! same thing Redis does to a subscriber it drops.

mod common;

use std::time::Duration;

use common::{
    base_config, eventually, http_get, metric_value, pipeline, publish_all, sink, start, unique,
};
use ingestd::app::App;

fn numbered(publisher: &str, sequence: u64, channel: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": format!("{channel}-{publisher}-{sequence}"),
        "user_id": "u",
        "event_type": "click",
        "timestamp": ingestd::event::format_timestamp(&chrono::Utc::now()),
        // Top level: unknown fields land in data, where the check looks.
        "publisher_id": publisher,
        "seq": sequence,
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_sequence_numbers_are_counted_per_publisher() {
    let channel = unique("gaps");
    let mut config = base_config();
    config.source.sequence.enabled = true;
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![("out", sink("blackhole = {}\nbatch = { linger = \"10ms\" }"))],
        ),
    );
    let app = start(App::new(config)).await;

    // Publisher a skips 4, 7 and 8; publisher b skips 3..=12; c restarts from 1 (no gap).
    let mut payloads = Vec::new();
    for sequence in [1, 2, 3, 5, 6, 9, 10] {
        payloads.push(numbered("a", sequence, &channel));
    }
    for sequence in [1, 2, 13] {
        payloads.push(numbered("b", sequence, &channel));
    }
    for sequence in [1, 2, 3, 1, 2] {
        payloads.push(numbered("c", sequence, &channel));
    }
    // Not numbered: ignored by the check, delivered as usual.
    payloads.push(common::event_json(
        &format!("{channel}-plain"),
        "u",
        "click",
        1.0,
    ));
    publish_all(&channel, &payloads).await;

    let written = || async {
        let (_, metrics) = http_get(app.http(), "/metrics").await;
        metric_value(
            &metrics,
            "ingestd_sink_events_written_total",
            &["pipeline=\"main\""],
        )
    };
    eventually(Duration::from_secs(10), "every event written", || async {
        written().await == Some(payloads.len() as f64)
    })
    .await;
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "ingestd_source_sequence_gaps_total",
            &["source=\"pubsub\""]
        ),
        Some(13.0),
        "3 missing from a, 10 from b"
    );
    app.stop().await;
}
