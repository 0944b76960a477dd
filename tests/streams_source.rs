//! The Redis Streams source against the real Redis (and the MongoDB-wire server for the
//! "every entry stored exactly once" checks): acknowledgement only after every sink is
//! done, own pending entries re-read at start, dead letters acknowledged once stored,
//! SIGKILL and restart, two replicas splitting one group with takeover of a killed one's
//! entries, and a graceful SIGTERM that leaves nothing pending. Every stream, group,
//! database and dead-letter stream is unique per test.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use mongodb::bson::{Document, doc};
use redis::AsyncCommands;

use common::{
    base_config, event_json, eventually, http_get, metric_value, redis_connection, sink, start,
    unique,
};
use ingestd::app::{App, RunOutcome};
use ingestd::config::{PipelineConfig, SourceKind};
use ingestd::event::Event;
use ingestd::sinks::{BatchFailure, Sink, SinkError, Written};

// ---------------------------------------------------------------------------------------
// Redis and MongoDB helpers

/// XADDs every payload as `payload <json>`, pipelined.
async fn xadd_all(stream: &str, payloads: &[Vec<u8>]) {
    let mut connection = redis_connection().await;
    for chunk in payloads.chunks(500) {
        let mut pipeline = redis::pipe();
        for payload in chunk {
            pipeline
                .cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(payload.as_slice())
                .ignore();
        }
        let () = pipeline.query_async(&mut connection).await.unwrap();
    }
}

/// Entries of the group read and not acknowledged (XPENDING summary).
/// Creates `group` on `stream` (and the stream), reading from its start.
async fn create_group(stream: &str, group: &str) {
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut redis_connection().await)
        .await
        .unwrap();
}

async fn pending(stream: &str, group: &str) -> i64 {
    let mut connection = redis_connection().await;
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut connection)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(count)) => *count,
            other => panic!("XPENDING summary: {other:?}"),
        },
        other => panic!("XPENDING summary: {other:?}"),
    }
}

/// Entries pending for one consumer of the group.
async fn pending_of(stream: &str, group: &str, consumer: &str) -> usize {
    let mut connection = redis_connection().await;
    let entries: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query_async(&mut connection)
        .await
        .unwrap();
    entries.len()
}

fn mongo_uri() -> String {
    std::env::var("INGESTD_TEST_MONGO_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_string())
}

async fn collection(database: &str) -> mongodb::Collection<Document> {
    mongodb::Client::with_uri_str(mongo_uri())
        .await
        .expect("mongodb client")
        .database(database)
        .collection::<Document>("events")
}

async fn stored_ids(database: &str) -> HashSet<String> {
    use futures::TryStreamExt;
    let documents: Vec<Document> = collection(database)
        .await
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    documents
        .iter()
        .map(|document| document.get_str("_id").unwrap().to_string())
        .collect()
}

/// The delivery settings and kind table of a MongoDB sink into `database.events`.
fn mongo_sink_table(database: &str, max_events: usize, linger: &str) -> String {
    format!(
        "max_in_flight = 4\nbatch = {{ max_events = {max_events}, linger = \"{linger}\" }}\nretry = {{ initial_delay = \"50ms\", max_delay = \"500ms\" }}\nmongodb = {{ uri = \"{}\", database = \"{database}\", collection = \"events\", write_concern = \"majority\", create_indexes = false }}\n",
        mongo_uri()
    )
}

fn payloads(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range
        .map(|index| event_json(&format!("{prefix}-{index}"), "u", "click", 1.0))
        .collect()
}

// ---------------------------------------------------------------------------------------
// In process: acknowledgement rules

/// Records event ids; fails permanently (dead letter) every event whose id starts with `bad-`.
struct RecordingSink {
    ids: Mutex<Vec<String>>,
}

impl Sink for RecordingSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            let mut failures = Vec::new();
            let mut ids = self.ids.lock().unwrap();
            for (index, event) in batch.iter().enumerate() {
                if event.event_id.starts_with("bad-") {
                    failures.push((
                        index,
                        SinkError::permanent("invalid", "refused by the test"),
                    ));
                } else {
                    ids.push(event.event_id.clone());
                }
            }
            if failures.is_empty() {
                Ok(Written::default())
            } else {
                Err(BatchFailure::Some(failures))
            }
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

fn streams_pipeline(stream: &str, sink_table: &str) -> PipelineConfig {
    let mut pipeline = common::pipeline(&[], vec![("out", sink(sink_table))]);
    pipeline.streams = vec![stream.to_string()];
    pipeline
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_acknowledged_once_written_or_dead_lettered_and_own_pending_entries_come_first()
{
    let stream = unique("streams-ack");
    let group = unique("group");
    let consumer = "ack-consumer";
    let mut redis = redis_connection().await;

    // A previous run of this consumer read entries and died before acknowledging them.
    create_group(&stream, &group).await;
    xadd_all(&stream, &payloads("pre", 0..3)).await;
    let deleted_id: String = redis
        .xadd(&stream, "*", &[("payload", "deleted while pending")])
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg(consumer)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: i64 = redis.xdel(&stream, &[&deleted_id]).await.unwrap();
    assert_eq!(pending(&stream, &group).await, 4);

    // New entries: valid, not JSON, no payload field, refused by the sink.
    xadd_all(&stream, &payloads("new", 0..100)).await;
    let _: String = redis
        .xadd(&stream, "*", &[("payload", "not json")])
        .await
        .unwrap();
    let _: String = redis
        .xadd(&stream, "*", &[("body", "{\"wrong\":\"field\"}")])
        .await
        .unwrap();
    xadd_all(&stream, &payloads("bad", 0..2)).await;

    let mut config = base_config();
    let dead_letter_stream = config.dead_letter.stream.clone();
    config.source.kind = SourceKind::Streams;
    config.source.streams.group = group.clone();
    config.source.streams.consumer = Some(consumer.to_string());
    config.source.streams.block = Duration::from_millis(100);
    // Long: the pre-crash entries must come back through the pending re-read, not a claim.
    config.source.streams.claim_idle = Duration::from_secs(600);
    config.pipelines.insert(
        "main".to_string(),
        streams_pipeline(
            &stream,
            // One batch at a time, so the write order shows the read order.
            "blackhole = {}\nmax_in_flight = 1\nbatch = { max_events = 50, linger = \"20ms\" }",
        ),
    );
    let recorder = Arc::new(RecordingSink {
        ids: Mutex::new(Vec::new()),
    });
    let app = start(App::new(config).with_sink("main", "out", recorder.clone())).await;

    eventually(
        Duration::from_secs(20),
        "every entry acknowledged",
        || async { pending(&stream, &group).await == 0 },
    )
    .await;
    let written: Vec<String> = recorder.ids.lock().unwrap().clone();
    let expected: HashSet<String> = (0..3)
        .map(|index| format!("pre-{index}"))
        .chain((0..100).map(|index| format!("new-{index}")))
        .collect();
    assert_eq!(written.len(), 103, "each valid entry written once");
    assert_eq!(written.iter().cloned().collect::<HashSet<_>>(), expected);
    assert!(
        written[..3].iter().all(|id| id.starts_with("pre-")),
        "own pending entries are read before new ones: {:?}",
        &written[..5]
    );

    // Acknowledged only once stored: the four dead letters are in their stream.
    let dead_letters: Vec<(String, String)> = {
        let reply: redis::streams::StreamRangeReply =
            redis.xrange_all(&dead_letter_stream).await.unwrap();
        reply
            .ids
            .iter()
            .map(|entry| {
                (
                    entry.get::<String>("reason").unwrap(),
                    entry.get::<String>("channel").unwrap(),
                )
            })
            .collect()
    };
    let mut reasons: Vec<&str> = dead_letters
        .iter()
        .map(|(reason, _)| reason.as_str())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "missing_field",
            "not_json",
            "permanent_error",
            "permanent_error"
        ]
    );
    assert!(dead_letters.iter().all(|(_, channel)| *channel == stream));

    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let stream_label = format!("stream=\"{stream}\"");
    // 3 + 100 + 1 + 1 + 2, plus the deleted entry unless XAUTOCLAIM dropped it from the
    // pending list first (Redis 7 does so whatever its idle time; XACK then counts 0).
    let acked = metric_value(&metrics, "ingestd_source_acked_total", &[&stream_label]);
    assert!(
        acked == Some(107.0) || acked == Some(108.0),
        "acknowledged: {acked:?}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ingestd_source_events_received_total",
            &["source=\"streams\"", &format!("channel=\"{stream}\"")]
        ),
        Some(107.0),
        "the deleted entry carried nothing"
    );
    assert_eq!(app.stop().await, RunOutcome::Drained);
}

// ---------------------------------------------------------------------------------------
// The binary: SIGKILL, two replicas, SIGTERM

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// One ingestd process; killed when dropped so a failing test leaves nothing running.
struct Daemon {
    child: std::process::Child,
    http: std::net::SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                return status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            }
            assert!(
                Instant::now() < deadline,
                "ingestd did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("ingestd exited before it was ready: {status}");
            }
            if tokio::net::TcpStream::connect(self.http).await.is_ok()
                && http_get(self.http, "/readyz").await.0 == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "ingestd not ready after 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, metrics) = http_get(self.http, "/metrics").await;
        metric_value(&metrics, name, labels).unwrap_or(0.0)
    }
}

/// How a test daemon reads its stream.
struct StreamsSetup<'a> {
    directory: &'a Path,
    stream: &'a str,
    group: &'a str,
    consumer: &'a str,
    claim_idle: &'a str,
    sink_table: &'a str,
}

fn spawn_daemon(setup: &StreamsSetup<'_>) -> Daemon {
    let port = free_port();
    let directory = setup.directory;
    write(
        &directory.join("ingestd.toml"),
        &format!(
            r#"[redis]
url = "{redis}"
[http]
listen = "127.0.0.1:{port}"
[shutdown]
deadline = "30s"
[dead_letter]
stream = "{dead_letter}"
[source]
kind = "streams"
[source.streams]
group = "{group}"
consumer = "{consumer}"
count = 200
block = "200ms"
claim_idle = "{claim_idle}"
claim_interval = "300ms"
"#,
            redis = common::redis_url(),
            dead_letter = unique("streams-dead-letter"),
            group = setup.group,
            consumer = setup.consumer,
            claim_idle = setup.claim_idle,
        ),
    );
    write(
        &directory.join("pipelines/main.toml"),
        &format!(
            "streams = [\"{}\"]\n[sinks.out]\n{}\n",
            setup.stream, setup.sink_table
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(directory)
        .args([
            "--config",
            "ingestd.toml",
            "--pipelines",
            "pipelines",
            "run",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Daemon {
        child,
        http: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

/// A live producer: XADDs the events `{stream}-{n}` from `n = first` on, 100 every 20 ms,
/// until stopped (at most 100 000, so a stuck test cannot fill Redis).
struct Producer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Producer {
    fn start(stream: &str, first: usize) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let stream = stream.to_string();
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut next = first;
            while !stopped.load(Ordering::Relaxed) && next < first + 100_000 {
                xadd_all(&stream, &payloads(&stream, next..next + 100)).await;
                next += 100;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            next
        });
        Producer { stop, task }
    }

    /// Stops and returns the index after the last event added.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn wait_stored(database: &str, count: u64, timeout: Duration) {
    let events = collection(database).await;
    eventually(timeout, &format!("{count} documents in {database}"), || {
        let events = events.clone();
        async move { events.count_documents(doc! {}).await.unwrap() >= count }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_stores_every_entry_exactly_once() {
    let directory = temp_dir("streams-kill");
    let stream = unique("streams-kill");
    let group = unique("group");
    let database = unique("ingestd_streams_kill").replace('-', "_");
    let sink_table = mongo_sink_table(&database, 250, "50ms");
    // The claim is far off: the restarted consumer (same name) must find its pending
    // entries by re-reading them itself.
    let setup = StreamsSetup {
        directory: &directory,
        stream: &stream,
        group: &group,
        consumer: "kill-consumer",
        claim_idle: "10min",
        sink_table: &sink_table,
    };
    let mut first = spawn_daemon(&setup);
    first.wait_ready().await;
    let producer = Producer::start(&stream, 0);
    wait_stored(&database, 1_000, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(10),
        "entries read and not yet acknowledged",
        || async { pending(&stream, &group).await > 0 },
    )
    .await;
    first.signal("KILL");
    assert_eq!(first.wait_exit(Duration::from_secs(10)), 128 + 9);
    let stranded = pending(&stream, &group).await;
    assert!(
        stranded > 0,
        "the kill stranded read, unacknowledged entries"
    );

    // Entries keep coming while ingestd is down and after it is back.
    let mut second = spawn_daemon(&setup);
    second.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = producer.stop().await;
    wait_stored(&database, total as u64, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(20),
        "nothing pending in the group",
        || async { pending(&stream, &group).await == 0 },
    )
    .await;
    let ids = stored_ids(&database).await;
    assert_eq!(ids.len(), total, "every entry stored exactly once by key");
    let expected: HashSet<String> = (0..total)
        .map(|index| format!("{stream}-{index}"))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(
        collection(&database)
            .await
            .count_documents(doc! {})
            .await
            .unwrap(),
        total as u64
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_one_group_and_the_survivor_takes_over_a_killed_one() {
    let stream = unique("streams-replicas");
    let group = unique("group");
    let database = unique("ingestd_streams_replicas").replace('-', "_");
    // Every batch waits half a second for more entries: a replica that is reading always
    // holds unacknowledged entries, so the kill below strands some.
    let sink_table = mongo_sink_table(&database, 10_000, "500ms");
    let directory_a = temp_dir("streams-replica-a");
    let directory_b = temp_dir("streams-replica-b");
    let replica = |directory: &Path, consumer: &str| {
        spawn_daemon(&StreamsSetup {
            directory,
            stream: &stream,
            group: &group,
            consumer,
            claim_idle: "2s",
            sink_table: &sink_table,
        })
    };
    let mut replica_a = replica(&directory_a, "replica-a");
    let mut replica_b = replica(&directory_b, "replica-b");
    replica_a.wait_ready().await;
    replica_b.wait_ready().await;

    // Part 1, nobody dies: each entry is written by exactly one replica, and both work.
    let first_part = 3_000;
    for slice in payloads(&stream, 0..first_part).chunks(100) {
        xadd_all(&stream, slice).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_stored(&database, first_part as u64, Duration::from_secs(60)).await;
    eventually(Duration::from_secs(20), "part 1 acknowledged", || async {
        pending(&stream, &group).await == 0
    })
    .await;
    let written_a = replica_a
        .metric("ingestd_sink_events_written_total", &[])
        .await;
    let written_b = replica_b
        .metric("ingestd_sink_events_written_total", &[])
        .await;
    assert_eq!(
        written_a + written_b,
        first_part as f64,
        "each entry processed by one replica (a {written_a}, b {written_b})"
    );
    assert!(
        written_a > 0.0 && written_b > 0.0,
        "the work is split (a {written_a}, b {written_b})"
    );

    // Part 2: replica a is killed mid-stream; b claims what a had read.
    let producer = Producer::start(&stream, first_part);
    wait_stored(
        &database,
        first_part as u64 + 1_000,
        Duration::from_secs(60),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "replica a holds entries",
        || async { pending_of(&stream, &group, "replica-a").await > 0 },
    )
    .await;
    replica_a.signal("KILL");
    assert_eq!(replica_a.wait_exit(Duration::from_secs(10)), 128 + 9);
    let stranded = pending_of(&stream, &group, "replica-a").await;
    assert!(stranded > 0, "replica a held unacknowledged entries");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = producer.stop().await;
    wait_stored(&database, total as u64, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "the survivor acknowledged everything, a's entries included",
        || async { pending(&stream, &group).await == 0 },
    )
    .await;
    let ids = stored_ids(&database).await;
    assert_eq!(ids.len(), total, "nothing lost, nothing doubled");
    let claimed = replica_b
        .metric(
            "ingestd_source_claimed_total",
            &[&format!("stream=\"{stream}\"")],
        )
        .await;
    assert!(
        claimed >= stranded as f64,
        "b claimed a's {stranded} pending entries (claimed {claimed})"
    );
    drop(replica_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_acknowledges_everything_before_exiting_zero() {
    let directory = temp_dir("streams-sigterm");
    let stream = unique("streams-sigterm");
    let group = unique("group");
    let output = directory.join("out.jsonl");
    // A long linger keeps every event in ingestd, unacknowledged, until the stop.
    let sink_table = format!(
        "file = {{ path = {:?} }}\nbatch = {{ max_events = 100000, linger = \"60s\" }}",
        output.display().to_string()
    );
    let mut daemon = spawn_daemon(&StreamsSetup {
        directory: &directory,
        stream: &stream,
        group: &group,
        consumer: "sigterm-consumer",
        claim_idle: "10min",
        sink_table: &sink_table,
    });
    daemon.wait_ready().await;
    let total = 2_000;
    xadd_all(&stream, &payloads(&stream, 0..total)).await;
    let channel_label = format!("channel=\"{stream}\"");
    eventually(Duration::from_secs(30), "every entry read", || async {
        daemon
            .metric("ingestd_source_events_received_total", &[&channel_label])
            .await
            == total as f64
    })
    .await;
    assert_eq!(
        pending(&stream, &group).await,
        total as i64,
        "read, not yet written, so not acknowledged"
    );

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
    assert_eq!(pending(&stream, &group).await, 0, "everything acknowledged");
    let written = common::file_sink_event_ids(&output);
    assert_eq!(written.len(), total);
    let ids: HashSet<String> = written.into_iter().collect();
    assert_eq!(ids.len(), total);
}

// ---------------------------------------------------------------------------------------
// Configuration

#[test]
fn the_configuration_must_say_what_the_streams_source_reads() {
    let mut config = base_config();
    config.source.kind = SourceKind::Streams;
    config.pipelines.insert(
        "main".to_string(),
        streams_pipeline("events-stream", "blackhole = {}"),
    );
    assert_eq!(config.validate(), Vec::<(String, String)>::new());

    // Channels are pub/sub's: a streams pipeline naming them would read nothing.
    config.pipelines.insert(
        "old".to_string(),
        common::pipeline(&["events"], vec![("out", sink("blackhole = {}"))]),
    );
    config.source.streams.block = Duration::ZERO;
    config.source.streams.group = String::new();
    let problems: Vec<String> = config
        .validate()
        .into_iter()
        .map(|(key, reason)| format!("{key}: {reason}"))
        .collect();
    assert!(
        problems.contains(&"source.streams.block: must be at least 1ms (e.g. \"1s\")".to_string()),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|problem| problem.starts_with("source.streams.group: must not be empty")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|problem| problem
            .starts_with("pipelines.old.streams: the pipeline reads nothing")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|problem| problem.starts_with(
            "pipelines.old.channels: channels and patterns are read only with source.kind = \"pubsub\""
        )),
        "{problems:?}"
    );

    // And pub/sub refuses stream keys rather than ignoring them.
    let mut pubsub = base_config();
    pubsub.pipelines.insert(
        "main".to_string(),
        streams_pipeline("events-stream", "blackhole = {}"),
    );
    let keys: Vec<String> = pubsub.validate().into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["pipelines.main.channels", "pipelines.main.streams"]);
}

async fn consumer_names(stream: &str, group: &str) -> Vec<String> {
    let mut redis = redis_connection().await;
    let info: redis::streams::StreamInfoConsumersReply =
        redis.xinfo_consumers(stream, group).await.unwrap();
    let mut names: Vec<String> = info
        .consumers
        .into_iter()
        .map(|consumer| consumer.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumers_holding_nothing_are_removed_from_the_group() {
    let stream = unique("streams-forget");
    let group = unique("group");
    let mut redis = redis_connection().await;
    create_group(&stream, &group).await;
    // "gone" holds nothing (a replica scaled away); "holder" died holding one entry.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg(&group)
        .arg("gone")
        .query_async(&mut redis)
        .await
        .unwrap();
    xadd_all(&stream, &payloads("holder", 0..1)).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("holder")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(consumer_names(&stream, &group).await, ["gone", "holder"]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut config = base_config();
    config.source.kind = SourceKind::Streams;
    config.source.streams.group = group.clone();
    config.source.streams.consumer = Some("live".to_string());
    config.source.streams.block = Duration::from_millis(100);
    config.source.streams.claim_interval = Duration::from_millis(100);
    // The holder's entry stays its own (no claim), so it must be kept.
    config.source.streams.claim_idle = Duration::from_secs(600);
    config.source.streams.forget_idle = Duration::from_millis(200);
    config.pipelines.insert(
        "main".to_string(),
        streams_pipeline(&stream, "blackhole = {}"),
    );
    let app = start(App::new(config)).await;
    eventually(
        Duration::from_secs(10),
        "the idle empty consumer removed",
        || async { consumer_names(&stream, &group).await == ["holder", "live"] },
    )
    .await;
    assert_eq!(pending_of(&stream, &group, "holder").await, 1);
    app.stop().await;
    let _: () = redis.del(&stream).await.unwrap();
}
