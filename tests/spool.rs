//! The spool against the real Redis, with a test sink that can be switched down (it then
//! fails every write with a retryable error) and up again: a 30 s outage at 2,000 events/s
//! loses, duplicates and reorders nothing with bounded memory; damaged segment files are
//! skipped exactly where damaged; a full spool counts what it drops; and events spooled by
//! one process are delivered by the next.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

use common::{
    base_config, event_json, eventually, http_get, metric_value, pipeline, redis_connection, sink,
    start, unique,
};
use ingestd::app::{App, RunOutcome};
use ingestd::config::{Config, FsyncPolicy};
use ingestd::event::Event;
use ingestd::sinks::{BatchFailure, Sink, SinkError, Written};
use ingestd::spool::record::{self, Record};
use ingestd::spool::segment::{self, SegmentWriter};

/// Records the event ids of every batch it accepts; while down, fails every write with a
/// retryable error, as a store that cannot be reached does.
struct SwitchSink {
    down: AtomicBool,
    ids: Mutex<Vec<String>>,
    failed_writes: AtomicUsize,
}

impl SwitchSink {
    fn new(down: bool) -> Arc<SwitchSink> {
        Arc::new(SwitchSink {
            down: AtomicBool::new(down),
            ids: Mutex::new(Vec::new()),
            failed_writes: AtomicUsize::new(0),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

impl Sink for SwitchSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            if self.down.load(Ordering::SeqCst) {
                self.failed_writes.fetch_add(1, Ordering::SeqCst);
                return Err(BatchFailure::All(SinkError::retryable(
                    "network",
                    "test sink is down",
                )));
            }
            let mut ids = self.ids.lock().unwrap();
            ids.extend(batch.iter().map(|event| event.event_id.clone()));
            Ok(Written::default())
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

const PIPELINE_SINK: &str = "recorder";

/// One pipeline `pipeline_name` reading `channel` into the sink `recorder`, which retries
/// for as long as a test needs (backoff at most 200 ms, so recovery shows quickly).
fn spool_config(pipeline_name: &str, channel: &str, capacity: usize, batch: usize) -> Config {
    let mut config = base_config();
    let table = format!(
        "blackhole = {{}}\nmax_in_flight = 1\nqueue = {{ capacity = {capacity}, when_full = \"spool\" }}\nbatch = {{ max_events = {batch}, linger = \"20ms\" }}\nretry = {{ max_attempts = 1000000, initial_delay = \"20ms\", max_delay = \"200ms\", max_elapsed = \"1h\" }}\n"
    );
    config.pipelines.insert(
        pipeline_name.to_string(),
        pipeline(&[channel], vec![(PIPELINE_SINK, sink(&table))]),
    );
    config
}

fn spool_dir(config: &Config, pipeline_name: &str) -> PathBuf {
    segment::sink_dir(&config.spool.dir, pipeline_name, PIPELINE_SINK)
}

fn event_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:06}")
}

fn index_of(id: &str) -> usize {
    id.rsplit('-').next().unwrap().parse().unwrap()
}

/// PUBLISHes events `range` at `per_second`, one pipelined burst every 50 ms.
async fn publish_paced(
    channel: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    per_second: usize,
) {
    let mut connection = redis_connection().await;
    let tick = Duration::from_millis(50);
    let per_tick = (per_second / 20).max(1);
    let started = tokio::time::Instant::now();
    let mut next = range.start;
    let mut ticks = 0u32;
    while next < range.end {
        let mut burst = redis::pipe();
        let end = (next + per_tick).min(range.end);
        for index in next..end {
            let payload = event_json(&event_id(prefix, index), "user-spool", "click", 1.0);
            burst.publish(channel, payload).ignore();
        }
        let () = burst.query_async(&mut connection).await.unwrap();
        next = end;
        ticks += 1;
        tokio::time::sleep_until(started + tick * ticks).await;
    }
}

/// This process's resident memory, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn metrics_of(app: &common::Started) -> String {
    http_get(app.http(), "/metrics").await.1
}

fn labels(pipeline_name: &str) -> [String; 2] {
    [
        format!("pipeline=\"{pipeline_name}\""),
        format!("sink=\"{PIPELINE_SINK}\""),
    ]
}

fn metric(metrics: &str, name: &str, pipeline_name: &str, extra: &[&str]) -> f64 {
    let labels = labels(pipeline_name);
    let mut parts: Vec<&str> = labels.iter().map(String::as_str).collect();
    parts.extend_from_slice(extra);
    metric_value(metrics, name, &parts).unwrap_or(0.0)
}

async fn wait_spool_empty(app: &common::Started, pipeline_name: &str, dir: &Path) {
    eventually(
        Duration::from_secs(30),
        "the spool is drained and deleted",
        || async {
            let metrics = metrics_of(app).await;
            metric(&metrics, "ingestd_spool_bytes", pipeline_name, &[]) == 0.0
                && segment::list_segments(dir).unwrap().is_empty()
        },
    )
    .await;
}

fn assert_unique(ids: &[String]) {
    let unique_ids: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique_ids.len(), ids.len(), "an event was delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_for_30s_at_2000_events_per_second_loses_nothing() {
    const RATE: usize = 2_000;
    const OUTAGE_EVENTS: usize = RATE * 30;
    const WARM_UP: usize = 200;
    const CAPACITY: usize = 5_000;
    let channel = unique("spool-outage");
    let prefix = unique("out");
    let pipeline_name = unique("outage");
    let mut config = spool_config(&pipeline_name, &channel, CAPACITY, 500);
    // Several segments, so deletion of replayed ones is exercised too.
    config.spool.segment_bytes = bytesize::ByteSize::mib(1);
    let dir = spool_dir(&config, &pipeline_name);
    let spool_base = config.spool.dir.clone();
    let recorder = SwitchSink::new(false);
    let app =
        start(App::new(config).with_sink(&pipeline_name, PIPELINE_SINK, recorder.clone())).await;

    publish_paced(&channel, &prefix, 0..WARM_UP, RATE).await;
    eventually(Duration::from_secs(10), "warm-up events recorded", || {
        let recorder = recorder.clone();
        async move { recorder.count() == WARM_UP }
    })
    .await;
    let rss_before = rss_bytes();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = Arc::clone(&sampling);
        async move {
            let mut peak = 0;
            while sampling.load(Ordering::SeqCst) {
                peak = peak.max(rss_bytes());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        }
    });

    recorder.set_down(true);
    let outage_started = Instant::now();
    publish_paced(&channel, &prefix, WARM_UP..WARM_UP + OUTAGE_EVENTS, RATE).await;
    let publish_took = outage_started.elapsed();
    assert!(
        publish_took < Duration::from_secs(35),
        "publishing 30 s of events took {publish_took:?}: the source must not be held back"
    );
    // Everything was read: what is not in memory is in the spool.
    eventually(
        Duration::from_secs(10),
        "every published event read",
        || async {
            let metrics = metrics_of(&app).await;
            metric_value(
                &metrics,
                "ingestd_source_events_received_total",
                &[&format!("channel=\"{channel}\"")],
            ) == Some((WARM_UP + OUTAGE_EVENTS) as f64)
        },
    )
    .await;
    let during = metrics_of(&app).await;
    let spooled_bytes = metric(&during, "ingestd_spool_bytes", &pipeline_name, &[]);
    let queue_depth = metric(&during, "ingestd_sink_queue_depth", &pipeline_name, &[]);
    assert!(
        spooled_bytes > 1_000_000.0,
        "the outage spilled to disk: {spooled_bytes} bytes"
    );
    assert!(queue_depth <= CAPACITY as f64, "queue depth {queue_depth}");
    assert!(segment::list_segments(&dir).unwrap().len() > 1);
    assert_eq!(recorder.count(), WARM_UP, "nothing was written while down");
    assert!(recorder.failed_writes.load(Ordering::SeqCst) > 0);

    recorder.set_down(false);
    let total = WARM_UP + OUTAGE_EVENTS;
    eventually(
        Duration::from_secs(60),
        "every event recorded after recovery",
        || {
            let recorder = recorder.clone();
            async move { recorder.count() >= total }
        },
    )
    .await;
    wait_spool_empty(&app, &pipeline_name, &dir).await;
    sampling.store(false, Ordering::SeqCst);
    let rss_peak = sampler.await.unwrap();
    let growth = rss_peak.saturating_sub(rss_before);
    assert!(
        growth < 100 * 1024 * 1024,
        "RSS grew by {} MiB during the outage (from {} MiB)",
        growth / (1024 * 1024),
        rss_before / (1024 * 1024)
    );

    // Give a duplicate, if any, the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = recorder.ids();
    assert_eq!(ids.len(), total, "no event lost, none duplicated");
    assert_unique(&ids);
    let indices: Vec<usize> = ids.iter().map(|id| index_of(id)).collect();
    let expected: Vec<usize> = (0..total).collect();
    assert!(indices == expected, "events arrived out of order");

    let after = metrics_of(&app).await;
    let written = metric(
        &after,
        "ingestd_spool_records_total",
        &pipeline_name,
        &["op=\"written\""],
    );
    let replayed = metric(
        &after,
        "ingestd_spool_records_total",
        &pipeline_name,
        &["op=\"replayed\""],
    );
    assert!(
        written > (OUTAGE_EVENTS - CAPACITY - 1_000) as f64,
        "spooled {written}"
    );
    assert_eq!(written, replayed, "every spooled event was replayed");
    assert_eq!(
        metric(
            &after,
            "ingestd_spool_corrupt_records_total",
            &pipeline_name,
            &[]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &after,
            "ingestd_spool_dropped_events_total",
            &pipeline_name,
            &[]
        ),
        0.0
    );
    assert_eq!(app.stop().await, RunOutcome::Drained);
    std::fs::remove_dir_all(&spool_base).unwrap();
}

/// A valid event record as the spool stores it.
fn event_record(channel: &str, id: &str) -> Record {
    Record {
        channel: channel.to_string(),
        payload: bytes::Bytes::from(event_json(id, "user-corrupt", "view", 2.0)),
        received_at: chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
            .unwrap(),
        rate_limited: false,
    }
}

/// Writes `ids` as records, one call each; returns each record's (path, offset, len).
fn write_records(
    writer: &mut SegmentWriter,
    channel: &str,
    ids: &[String],
) -> Vec<(PathBuf, u64, u64)> {
    let mut spans = Vec::new();
    for id in ids {
        let encoded = record::encode(&event_record(channel, id)).unwrap();
        let outcome = writer.append(&encoded, &[encoded.len()], false);
        assert_eq!(outcome.written, 1, "{:?}", outcome.error);
        let change = outcome.changes.last().unwrap();
        spans.push((
            change.path.clone(),
            change.len - encoded.len() as u64,
            encoded.len() as u64,
        ));
    }
    writer.close_active().unwrap();
    spans
}

/// A pseudo-random number in `range`, different on each run (no extra crate).
fn random_in(range: std::ops::Range<u64>) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mixed = nanos
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 17;
    range.start + mixed % (range.end - range.start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_is_skipped_where_damaged_and_the_rest_delivered() {
    let channel = unique("spool-corrupt");
    let prefix = unique("bad");
    let pipeline_name = unique("corrupt");
    let config = spool_config(&pipeline_name, &channel, 1_000, 100);
    let dir = spool_dir(&config, &pipeline_name);
    let spool_base = config.spool.dir.clone();

    // Two segments as a crashed process would leave them: 60 records, then 40.
    let ids: Vec<String> = (0..100).map(|index| event_id(&prefix, index)).collect();
    let mut writer = SegmentWriter::new(dir.clone(), 1 << 20, FsyncPolicy::Never, 1, None);
    let first = write_records(&mut writer, &channel, &ids[..60]);
    let second = write_records(&mut writer, &channel, &ids[60..]);
    drop(writer);
    assert_ne!(first[0].0, second[0].0, "two segment files");

    // One byte flipped at a random place inside a random record of the first segment...
    let damaged_index = random_in(5..55) as usize;
    let (path, offset, len) = first[damaged_index].clone();
    let damaged_at = offset + random_in(0..len);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[damaged_at as usize] ^= 0x5A;
    std::fs::write(&path, &bytes).unwrap();
    // ...and the second segment torn at a random byte inside its last record.
    let (path, offset, len) = second[39].clone();
    let cut = random_in(1..len);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(offset + cut).unwrap();
    drop(file);

    // Reading the directory directly sees exactly that damage.
    let contents = segment::read_dir(&dir).unwrap();
    assert_eq!(
        contents.records.len(),
        98,
        "damaged record #{damaged_index} at byte {damaged_at}, cut {cut}"
    );
    assert_eq!(contents.corrupt_regions, 2);
    assert_eq!(contents.skipped_bytes, len_of(&first, damaged_index) + cut);

    let recorder = SwitchSink::new(false);
    let app =
        start(App::new(config).with_sink(&pipeline_name, PIPELINE_SINK, recorder.clone())).await;
    eventually(
        Duration::from_secs(20),
        "98 spooled events delivered",
        || {
            let recorder = recorder.clone();
            async move { recorder.count() >= 98 }
        },
    )
    .await;
    wait_spool_empty(&app, &pipeline_name, &dir).await;
    let delivered = recorder.ids();
    let mut expected = ids.clone();
    expected.remove(99);
    expected.remove(damaged_index);
    assert_eq!(delivered, expected, "the rest arrives, in order");
    let metrics = metrics_of(&app).await;
    assert_eq!(
        metric(
            &metrics,
            "ingestd_spool_corrupt_records_total",
            &pipeline_name,
            &[]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ingestd_spool_skipped_bytes_total",
            &pipeline_name,
            &[]
        ),
        (len_of(&first, damaged_index) + cut) as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "ingestd_spool_records_total",
            &pipeline_name,
            &["op=\"replayed\""]
        ),
        98.0
    );

    // New events flow normally after the replay.
    let fresh = event_id(&prefix, 100);
    common::publish_all(&channel, &[event_json(&fresh, "user-corrupt", "view", 1.0)]).await;
    eventually(
        Duration::from_secs(10),
        "a new event after the replay",
        || {
            let recorder = recorder.clone();
            async move { recorder.count() == 99 }
        },
    )
    .await;
    assert_eq!(recorder.ids().last(), Some(&fresh));
    assert_eq!(app.stop().await, RunOutcome::Drained);
    std::fs::remove_dir_all(&spool_base).unwrap();
}

fn len_of(spans: &[(PathBuf, u64, u64)], index: usize) -> u64 {
    spans[index].2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_spooled_by_one_process_are_delivered_by_the_next() {
    const EVENTS: usize = 3_000;
    let channel = unique("spool-restart");
    let prefix = unique("rst");
    let pipeline_name = unique("restart");
    let mut config = spool_config(&pipeline_name, &channel, 200, 50);
    config.shutdown.deadline = Duration::from_secs(1);
    config.spool.fsync = FsyncPolicy::Always;
    let dir = spool_dir(&config, &pipeline_name);
    let spool_base = config.spool.dir.clone();

    let down = SwitchSink::new(true);
    let first =
        start(App::new(config.clone()).with_sink(&pipeline_name, PIPELINE_SINK, down.clone()))
            .await;
    publish_paced(&channel, &prefix, 0..EVENTS, 10_000).await;
    eventually(
        Duration::from_secs(10),
        "every event read and the overflow spooled",
        || async {
            let metrics = metrics_of(&first).await;
            let received = metric_value(
                &metrics,
                "ingestd_source_events_received_total",
                &[&format!("channel=\"{channel}\"")],
            );
            let written = metric(
                &metrics,
                "ingestd_spool_records_total",
                &pipeline_name,
                &["op=\"written\""],
            );
            received == Some(EVENTS as f64) && written >= (EVENTS - 200 - 2 * 50) as f64
        },
    )
    .await;
    // Stopped while the sink is down: the deadline passes, and what was only in memory
    // (the queue, the batch being retried) joins the spool.
    assert_eq!(first.stop().await, RunOutcome::DeadlineExceeded);
    assert_eq!(down.count(), 0);
    let on_disk = segment::read_dir(&dir).unwrap();
    let spooled: HashSet<String> = on_disk
        .records
        .iter()
        .map(|record| {
            let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            value["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(on_disk.records.len(), EVENTS, "every event is on disk once");
    assert_eq!(spooled.len(), EVENTS);
    assert_eq!(on_disk.corrupt_regions, 0);

    let recorder = SwitchSink::new(false);
    let second =
        start(App::new(config).with_sink(&pipeline_name, PIPELINE_SINK, recorder.clone())).await;
    eventually(
        Duration::from_secs(20),
        "the next process delivers every spooled event",
        || {
            let recorder = recorder.clone();
            async move { recorder.count() >= EVENTS }
        },
    )
    .await;
    wait_spool_empty(&second, &pipeline_name, &dir).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = recorder.ids();
    assert_eq!(ids.len(), EVENTS);
    assert_unique(&ids);
    let delivered: HashSet<String> = ids.into_iter().collect();
    let published: HashSet<String> = (0..EVENTS).map(|index| event_id(&prefix, index)).collect();
    assert_eq!(delivered, published);
    assert_eq!(second.stop().await, RunOutcome::Drained);
    std::fs::remove_dir_all(&spool_base).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_counts_every_event_it_drops() {
    const EVENTS: usize = 2_000;
    const CAPACITY: usize = 100;
    let channel = unique("spool-full");
    let prefix = unique("full");
    let pipeline_name = unique("full");
    let mut config = spool_config(&pipeline_name, &channel, CAPACITY, 50);
    config.spool.segment_bytes = bytesize::ByteSize::kib(16);
    config.spool.max_bytes = bytesize::ByteSize::kib(64);
    let dir = spool_dir(&config, &pipeline_name);
    let spool_base = config.spool.dir.clone();
    let recorder = SwitchSink::new(true);
    let app =
        start(App::new(config).with_sink(&pipeline_name, PIPELINE_SINK, recorder.clone())).await;

    publish_paced(&channel, &prefix, 0..EVENTS, 10_000).await;
    eventually(Duration::from_secs(10), "every event read", || async {
        let metrics = metrics_of(&app).await;
        metric_value(
            &metrics,
            "ingestd_source_events_received_total",
            &[&format!("channel=\"{channel}\"")],
        ) == Some(EVENTS as f64)
    })
    .await;
    let metrics = metrics_of(&app).await;
    let dropped = metric(
        &metrics,
        "ingestd_spool_dropped_events_total",
        &pipeline_name,
        &["reason=\"full\""],
    );
    let spool_bytes = metric(&metrics, "ingestd_spool_bytes", &pipeline_name, &[]);
    assert!(dropped > 0.0, "the spool filled up");
    // Within max_bytes, but for the 16-byte headers of segments started by one write.
    assert!(
        spool_bytes <= 65.0 * 1024.0,
        "spool bytes {spool_bytes} within max_bytes"
    );

    recorder.set_down(false);
    eventually(
        Duration::from_secs(20),
        "everything kept is delivered",
        || {
            let recorder = recorder.clone();
            async move { recorder.count() + dropped as usize >= EVENTS }
        },
    )
    .await;
    wait_spool_empty(&app, &pipeline_name, &dir).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = recorder.ids();
    assert_unique(&ids);
    assert_eq!(
        ids.len() + dropped as usize,
        EVENTS,
        "every event is either delivered or counted as dropped"
    );
    // The newest were refused; what was kept arrives in order.
    let indices: Vec<usize> = ids.iter().map(|id| index_of(id)).collect();
    assert!(indices.windows(2).all(|pair| pair[0] < pair[1]), "in order");
    assert_eq!(app.stop().await, RunOutcome::Drained);
    std::fs::remove_dir_all(&spool_base).unwrap();
}
