//! The ingestion core against the real Redis, with a recording test sink: exactly-once
//! arrival, batch limits, linger, retries, dead letters, isolation between sinks.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::AsyncCommands;

use common::{
    base_config, event_json, eventually, http_get, metric_value, pipeline, publish_all, sink,
    start, unique,
};
use ingestd::app::App;
use ingestd::event::Event;
use ingestd::sinks::{BatchFailure, Sink, SinkError, Written};

/// Records every batch it accepts; fails the first `failures` calls as told.
struct RecordingSink {
    batches: Mutex<Vec<Vec<String>>>,
    calls: AtomicUsize,
    failures: usize,
    failure: SinkError,
    delay: Duration,
}

impl RecordingSink {
    fn new() -> Arc<RecordingSink> {
        RecordingSink::failing(0, SinkError::retryable("network", "unused"))
    }

    fn failing(failures: usize, failure: SinkError) -> Arc<RecordingSink> {
        Arc::new(RecordingSink {
            batches: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            failures,
            failure,
            delay: Duration::ZERO,
        })
    }

    fn slow(delay: Duration) -> Arc<RecordingSink> {
        Arc::new(RecordingSink {
            batches: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            failures: 0,
            failure: SinkError::retryable("network", "unused"),
            delay,
        })
    }

    fn event_ids(&self) -> Vec<String> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(Vec::len).collect()
    }
}

impl Sink for RecordingSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if call < self.failures {
                return Err(BatchFailure::All(self.failure.clone()));
            }
            let ids = batch.iter().map(|event| event.event_id.clone()).collect();
            self.batches.lock().unwrap().push(ids);
            Ok(Written::default())
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

fn ids_of(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_arrive_exactly_once_in_bounded_batches() {
    let channel = unique("core-10k");
    let mut config = base_config();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "recorder",
                sink("blackhole = {}\nbatch = { max_events = 250, linger = \"20ms\" }"),
            )],
        ),
    );
    let recorder = RecordingSink::new();
    let app = start(App::new(config).with_sink("main", "recorder", recorder.clone())).await;

    let ids = ids_of(&channel, 10_000);
    let payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| event_json(id, "user-1", "click", 1.0))
        .collect();
    publish_all(&channel, &payloads).await;

    eventually(Duration::from_secs(30), "10,000 events recorded", || {
        let recorder = recorder.clone();
        async move { recorder.event_ids().len() >= 10_000 }
    })
    .await;
    // Give a duplicate, if any, the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in recorder.event_ids() {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 10_000, "every event arrived");
    assert!(
        seen.values().all(|count| *count == 1),
        "no event arrived twice"
    );
    assert!(ids.iter().all(|id| seen.contains_key(id)));
    let sizes = recorder.batch_sizes();
    assert!(
        sizes.iter().all(|size| *size <= 250),
        "batch over max_events: {sizes:?}"
    );
    assert!(sizes.len() >= 40);

    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let received = metric_value(
        &metrics,
        "ingestd_source_events_received_total",
        &[&format!("channel=\"{channel}\"")],
    );
    assert_eq!(received, Some(10_000.0));
    let written = metric_value(
        &metrics,
        "ingestd_sink_events_written_total",
        &["pipeline=\"main\"", "sink=\"recorder\""],
    );
    assert!(written.unwrap_or(0.0) >= 10_000.0);
    assert_eq!(app.stop().await, ingestd::app::RunOutcome::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_event_is_flushed_after_the_linger_time() {
    let channel = unique("core-linger");
    let mut config = base_config();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "recorder",
                sink("blackhole = {}\nbatch = { max_events = 1000, linger = \"400ms\" }"),
            )],
        ),
    );
    let recorder = RecordingSink::new();
    let app = start(App::new(config).with_sink("main", "recorder", recorder.clone())).await;
    publish_all(&channel, &[event_json("lone-1", "u", "click", 1.0)]).await;
    let published = std::time::Instant::now();
    eventually(Duration::from_secs(5), "the lone event", || {
        let recorder = recorder.clone();
        async move { !recorder.event_ids().is_empty() }
    })
    .await;
    // It waited for the linger (a batch of one, not closed early) and no longer than needed.
    assert!(
        published.elapsed() >= Duration::from_millis(300),
        "flushed before linger"
    );
    assert_eq!(recorder.batch_sizes(), vec![1]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_failing_twice_then_succeeding_receives_the_batch_once() {
    let channel = unique("core-retry");
    let mut config = base_config();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "flaky",
                sink("blackhole = {}\nbatch = { max_events = 100, linger = \"50ms\" }\nretry = { initial_delay = \"20ms\", max_delay = \"100ms\", max_attempts = 5 }"),
            )],
        ),
    );
    let flaky = RecordingSink::failing(2, SinkError::retryable("network", "connection reset"));
    let app = start(App::new(config).with_sink("main", "flaky", flaky.clone())).await;
    let ids = ids_of(&channel, 50);
    let payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| event_json(id, "u", "click", 1.0))
        .collect();
    publish_all(&channel, &payloads).await;
    eventually(Duration::from_secs(10), "the retried batch", || {
        let flaky = flaky.clone();
        async move { flaky.event_ids().len() >= 50 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut recorded = flaky.event_ids();
    recorded.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(recorded, expected, "each event once");
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        3,
        "two failures then one success"
    );
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "ingestd_sink_retries_total", &["sink=\"flaky\""]),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ingestd_sink_write_errors_total",
            &["sink=\"flaky\"", "error=\"network\""]
        ),
        Some(100.0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_dead_letters_with_reason_and_payload() {
    let channel = unique("core-permanent");
    let mut config = base_config();
    let stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "broken",
                sink("blackhole = {}\nbatch = { max_events = 10, linger = \"20ms\" }"),
            )],
        ),
    );
    let broken = RecordingSink::failing(
        usize::MAX,
        SinkError::permanent("invalid", "document failed validation"),
    );
    let app = start(App::new(config).with_sink("main", "broken", broken.clone())).await;
    let payloads: Vec<Vec<u8>> = ids_of(&channel, 5)
        .iter()
        .map(|id| event_json(id, "u", "click", 1.0))
        .collect();
    publish_all(&channel, &payloads).await;
    let mut connection = common::redis_connection().await;
    common::wait_stream_len(&stream, 5, Duration::from_secs(10)).await;
    let entries: redis::streams::StreamRangeReply = connection.xrange_all(&stream).await.unwrap();
    assert_eq!(entries.ids.len(), 5);
    let mut stored_payloads = Vec::new();
    for entry in &entries.ids {
        let field = |name: &str| -> String { entry.get(name).unwrap() };
        assert_eq!(field("reason"), "permanent_error");
        assert_eq!(field("stage"), "main.broken");
        assert_eq!(field("channel"), channel);
        assert!(field("error").contains("document failed validation"));
        stored_payloads.push(entry.get::<Vec<u8>>("payload").unwrap());
    }
    stored_payloads.sort();
    let mut expected = payloads.clone();
    expected.sort();
    assert_eq!(stored_payloads, expected, "the original bytes are kept");
    assert_eq!(
        broken.calls.load(Ordering::SeqCst),
        1,
        "a permanent error is not retried"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_does_not_slow_another_sink_of_the_pipeline() {
    let channel = unique("core-slow");
    let mut config = base_config();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![
                ("slow", sink("blackhole = {}\nmax_in_flight = 1\nbatch = { max_events = 50, linger = \"10ms\" }")),
                ("fast", sink("blackhole = {}\nbatch = { max_events = 50, linger = \"10ms\" }")),
            ],
        ),
    );
    let slow = RecordingSink::slow(Duration::from_millis(500));
    let fast = RecordingSink::new();
    let app = start(
        App::new(config)
            .with_sink("main", "slow", slow.clone())
            .with_sink("main", "fast", fast.clone()),
    )
    .await;
    let payloads: Vec<Vec<u8>> = ids_of(&channel, 1_000)
        .iter()
        .map(|id| event_json(id, "u", "click", 1.0))
        .collect();
    publish_all(&channel, &payloads).await;
    eventually(
        Duration::from_secs(5),
        "the fast sink has everything",
        || {
            let fast = fast.clone();
            async move { fast.event_ids().len() >= 1_000 }
        },
    )
    .await;
    // The slow sink needs 20 batches x 500 ms = 10 s; it is far from done.
    assert!(
        slow.event_ids().len() < 500,
        "slow sink wrote {} already",
        slow.event_ids().len()
    );
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let depth = metric_value(&metrics, "ingestd_sink_queue_depth", &["sink=\"slow\""]).unwrap();
    assert!(depth > 0.0, "the slow sink's own queue holds the backlog");
    app.stop().await;
    assert_eq!(
        slow.event_ids().len(),
        1_000,
        "shutdown drained the slow sink too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_of_every_reason_is_dead_lettered_and_counted() {
    let channel = unique("core-malformed");
    let mut config = base_config();
    let stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "recorder",
                sink("blackhole = {}\nbatch = { linger = \"10ms\" }"),
            )],
        ),
    );
    let recorder = RecordingSink::new();
    let app = start(App::new(config).with_sink("main", "recorder", recorder.clone())).await;
    let (_, before) = http_get(app.http(), "/metrics").await;
    let count_before = |reason: &str| {
        metric_value(
            &before,
            "ingestd_events_invalid_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .unwrap_or(0.0)
    };
    let before_counts: HashMap<&str, f64> = [
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "bad_timestamp",
        "too_large",
    ]
    .into_iter()
    .map(|reason| (reason, count_before(reason)))
    .collect();

    let mut payloads: Vec<Vec<u8>> = (0..6).map(ingestd::publish::malformed_event).collect();
    payloads.push(vec![0xff, 0xfe, b'{']); // invalid UTF-8
    payloads.push(
        br#"{"user_id":"u","event_type":"t","timestamp":1700000000000,"amount":"12"}"#.to_vec(),
    );
    payloads.push(event_json("still-alive", "u", "click", 1.0));
    publish_all(&channel, &payloads).await;

    eventually(
        Duration::from_secs(10),
        "the valid event after the bad ones",
        || {
            let recorder = recorder.clone();
            async move { recorder.event_ids() == vec!["still-alive".to_string()] }
        },
    )
    .await;
    let mut connection = common::redis_connection().await;
    common::wait_stream_len(&stream, 8, Duration::from_secs(10)).await;
    let entries: redis::streams::StreamRangeReply = connection.xrange_all(&stream).await.unwrap();
    let reasons: Vec<String> = entries
        .ids
        .iter()
        .map(|entry| entry.get("reason").unwrap())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "not_json",
            "not_object",
            "missing_field",
            "wrong_type",
            "bad_timestamp",
            "too_large",
            "not_json",
            "wrong_type"
        ]
    );
    for entry in &entries.ids {
        assert_eq!(entry.get::<String>("stage").unwrap(), "decode");
        assert_eq!(entry.get::<String>("channel").unwrap(), channel);
    }
    let first_payload: Vec<u8> = entries.ids[6].get("payload").unwrap();
    assert_eq!(
        first_payload,
        vec![0xff, 0xfe, b'{'],
        "original bytes, even invalid UTF-8"
    );

    let (_, after) = http_get(app.http(), "/metrics").await;
    for (reason, expected_increase) in [
        ("not_json", 2.0),
        ("not_object", 1.0),
        ("missing_field", 1.0),
        ("wrong_type", 2.0),
        ("bad_timestamp", 1.0),
        ("too_large", 1.0),
    ] {
        let now = metric_value(
            &after,
            "ingestd_events_invalid_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .unwrap_or(0.0);
        assert!(
            now - before_counts[reason] >= expected_increase,
            "{reason}: {} -> {now}",
            before_counts[reason]
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_endpoints() {
    let channel = unique("core-health");
    let mut config = base_config();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(&[&channel], vec![("down", sink("blackhole = {}"))]),
    );
    let app = start(App::new(config)).await;
    assert_eq!(http_get(app.http(), "/healthz").await.0, 200);
    let (status, body) = http_get(app.http(), "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    app.stop().await;
}

/// A sink whose store does not answer.
struct UnreachableSink;

impl Sink for UnreachableSink {
    fn write<'a>(
        &'a self,
        _batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async {
            Err(BatchFailure::All(SinkError::retryable(
                "network",
                "connection refused",
            )))
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Err(SinkError::retryable("network", "connection refused")) }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_sink_that_is_not_reachable() {
    let channel = unique("core-unready");
    let mut config = base_config();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(&[&channel], vec![("db", sink("blackhole = {}"))]),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = App::new(config)
        .with_sink("main", "db", Arc::new(UnreachableSink))
        .start(shutdown.clone())
        .await
        .unwrap();
    assert_eq!(
        http_get(running.http_addr, "/healthz").await.0,
        200,
        "alive even when not ready"
    );
    let (status, body) = http_get(running.http_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("main.db: connection refused"), "{body}");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.task).await;
}

/// A rate-limit gate whose keys partly fail for good: events whose `user_id` is `broken`
/// fail permanently, those of `heavy` are over the limit; the rest are within it.
struct PartlyBrokenGate;

impl Sink for PartlyBrokenGate {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            let mut failed = Vec::new();
            let mut over_limit = Vec::new();
            for (index, event) in batch.iter().enumerate() {
                match event.user_id.as_str() {
                    "broken" => {
                        failed.push((index, SinkError::permanent("wrong_type", "WRONGTYPE")))
                    }
                    "heavy" => over_limit.push(index),
                    _ => {}
                }
            }
            Err(BatchFailure::SomeWritten {
                failed,
                written: Written { over_limit },
            })
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_partly_fails_still_drops_what_is_over_the_limit() {
    let channel = unique("gate-partial");
    let mut config = base_config();
    let mut gated = pipeline(
        &[&channel],
        vec![
            (
                "rate",
                sink("batch = { max_events = 30, linger = \"200ms\" }\n[rate_counter]\nlimit = 1"),
            ),
            ("out", sink("blackhole = {}\nbatch = { linger = \"10ms\" }")),
        ],
    );
    gated.on_limit = ingestd::config::OnLimit::Drop;
    config.pipelines.insert("gated".to_string(), gated);
    let recording = RecordingSink::new();
    let app = start(
        App::new(config)
            .with_sink("gated", "rate", Arc::new(PartlyBrokenGate))
            .with_sink("gated", "out", recording.clone()),
    )
    .await;
    let mut payloads = Vec::new();
    for user in ["light", "heavy", "broken"] {
        for index in 0..10 {
            payloads.push(event_json(
                &format!("{channel}-{user}-{index}"),
                user,
                "click",
                1.0,
            ));
        }
    }
    publish_all(&channel, &payloads).await;
    eventually(
        Duration::from_secs(10),
        "the light user's 10 events",
        || async { recording.event_ids().len() >= 10 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut forwarded = recording.event_ids();
    forwarded.sort();
    let mut expected: Vec<String> = (0..10)
        .map(|index| format!("{channel}-light-{index}"))
        .collect();
    expected.sort();
    // Over the limit: dropped; failed for good: dead-lettered and (the gate gave up on
    // them) still forwarded, as before.
    let broken: Vec<String> = (0..10)
        .map(|index| format!("{channel}-broken-{index}"))
        .collect();
    expected.extend(broken);
    expected.sort();
    assert_eq!(forwarded, expected);
    app.stop().await;
}
