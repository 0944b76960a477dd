//! The operator commands against the real Redis: `ingestd publish` (load generator) and
//! `ingestd dead-letter list|replay` (re-inject dead letters after a fix, idempotently).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use redis::AsyncCommands;

use common::{base_config, event_json, eventually, pipeline, publish_all, sink, start, unique};
use ingestd::app::App;
use ingestd::event::Event;
use ingestd::sinks::{BatchFailure, Sink, SinkError, Written};

fn write_config(directory: &Path, dead_letter_stream: &str) {
    std::fs::create_dir_all(directory.join("pipelines")).unwrap();
    std::fs::write(
        directory.join("ingestd.toml"),
        format!(
            "[redis]\nurl = \"{}\"\n[dead_letter]\nstream = \"{dead_letter_stream}\"\n",
            common::redis_url()
        ),
    )
    .unwrap();
    std::fs::write(
        directory.join("pipelines/main.toml"),
        "channels = [\"unused\"]\n[sinks.out]\nblackhole = {}\n",
    )
    .unwrap();
}

fn ingestd(directory: &Path, arguments: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(directory)
        .args(arguments)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ingestd {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_valid_and_malformed_events_at_the_given_count() {
    let directory = std::env::temp_dir().join(unique("cli-publish"));
    write_config(&directory, &unique("cli-dl"));
    let channel = unique("cli-publish");
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let output = ingestd(
        &directory,
        &[
            "publish",
            "--channel",
            &channel,
            "--count",
            "600",
            "--rate",
            "3000",
            "--malformed-ratio",
            "0.1",
            "--id-prefix",
            "p",
        ],
    );
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(progress.contains("published 600/600"), "{progress}");
    assert!(progress.contains("540 valid, 60 malformed"), "{progress}");
    let mut messages = pubsub.on_message();
    let mut valid = 0;
    let mut malformed = 0;
    for _ in 0..600 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap();
        let payload = message.get_payload_bytes().to_vec();
        let decoded = ingestd::event::decode(
            payload.into(),
            Arc::from(channel.as_str()),
            64 * 1024,
            chrono::Utc::now(),
        );
        match decoded {
            Ok(event) => {
                assert!(event.event_id.starts_with("p-"));
                valid += 1;
            }
            Err(_) => malformed += 1,
        }
    }
    assert_eq!((valid, malformed), (540, 60));
}

/// Fails permanently until `fixed` is set (the operator's fix), then records.
struct FixableSink {
    fixed: AtomicBool,
    recorded: Mutex<Vec<String>>,
}

impl Sink for FixableSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            if !self.fixed.load(Ordering::SeqCst) {
                return Err(BatchFailure::All(SinkError::permanent(
                    "invalid",
                    "schema rejects the event",
                )));
            }
            let mut recorded = self.recorded.lock().unwrap();
            recorded.extend(batch.iter().map(|event| event.event_id.clone()));
            Ok(Written::default())
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_after_a_fix() {
    let channel = unique("cli-replay");
    let mut config = base_config();
    let stream = config.dead_letter.stream.clone();
    config.pipelines.insert(
        "main".to_string(),
        pipeline(
            &[&channel],
            vec![("out", sink("blackhole = {}\nbatch = { linger = \"10ms\" }"))],
        ),
    );
    let fixable = Arc::new(FixableSink {
        fixed: AtomicBool::new(false),
        recorded: Mutex::new(Vec::new()),
    });
    let app = start(App::new(config).with_sink("main", "out", fixable.clone())).await;
    let ids: Vec<String> = (0..20).map(|index| format!("{channel}-{index}")).collect();
    let mut payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| event_json(id, "u", "click", 1.0))
        .collect();
    payloads.push(b"not json at all".to_vec());
    publish_all(&channel, &payloads).await;
    let mut connection = common::redis_connection().await;
    common::wait_stream_len(&stream, 21, Duration::from_secs(10)).await;

    let directory = std::env::temp_dir().join(unique("cli-replay"));
    write_config(&directory, &stream);
    let listed = ingestd(
        &directory,
        &["dead-letter", "list", "--reason", "permanent_error"],
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    assert!(
        lines
            .iter()
            .all(|line| line["stage"] == "main.out" && line["channel"] == channel.as_str())
    );

    // The fix; then only the sink's dead letters are replayed (the malformed one stays).
    fixable.fixed.store(true, Ordering::SeqCst);
    let replayed = ingestd(
        &directory,
        &["dead-letter", "replay", "--reason", "permanent_error"],
    );
    assert!(String::from_utf8_lossy(&replayed.stderr).contains("replayed 20 entries"));
    eventually(Duration::from_secs(10), "replayed events written", || {
        let fixable = fixable.clone();
        async move { fixable.recorded.lock().unwrap().len() >= 20 }
    })
    .await;
    assert_eq!(
        connection.xlen::<_, usize>(&stream).await.unwrap(),
        1,
        "only the malformed entry is left"
    );
    // A second replay finds nothing to do: replays are idempotent.
    let again = ingestd(
        &directory,
        &["dead-letter", "replay", "--reason", "permanent_error"],
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("replayed 0 entries"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recorded: Vec<String> = fixable.recorded.lock().unwrap().clone();
    assert_eq!(recorded.len(), 20);
    assert_eq!(
        recorded.into_iter().collect::<HashSet<_>>(),
        ids.into_iter().collect::<HashSet<_>>()
    );
    app.stop().await;
    let _: () = connection.del(&stream).await.unwrap();
}

/// Writes a dead letter as ingestd does, for the replay tests.
async fn add_dead_letter(
    connection: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    channel: &str,
    payload: &[u8],
) {
    let _: String = connection
        .xadd(
            stream,
            "*",
            &[
                ("reason", "permanent_error".as_bytes()),
                ("stage", b"main.out"),
                ("channel", channel.as_bytes()),
                ("error", b"schema rejects the event"),
                ("payload", payload),
                ("at", b"2026-11-24T10:00:00.000Z"),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_nobody_receives_keeps_its_dead_letters() {
    let stream = unique("cli-dl-unheard");
    let channel = unique("cli-unheard");
    let mut connection = common::redis_connection().await;
    for index in 0..3 {
        let payload = event_json(&format!("{channel}-{index}"), "u", "click", 1.0);
        add_dead_letter(&mut connection, &stream, &channel, &payload).await;
    }
    let directory = std::env::temp_dir().join(unique("cli-unheard"));
    write_config(&directory, &stream);
    // No subscriber on the channel: publishing would lose the events.
    let output = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(&directory)
        .args(["dead-letter", "replay"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("replayed 0 entries"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "kept 3 entries: no subscriber received them on {channel}"
        )),
        "{stderr}"
    );
    assert_eq!(connection.xlen::<_, usize>(&stream).await.unwrap(), 3);
    let _: () = connection.del(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_streams_source_a_replay_appends_to_the_entry_stream() {
    let stream = unique("cli-dl-streams");
    let source_stream = unique("cli-source-stream");
    let mut connection = common::redis_connection().await;
    let payloads: Vec<Vec<u8>> = (0..3)
        .map(|index| event_json(&format!("{source_stream}-{index}"), "u", "click", 1.0))
        .collect();
    for payload in &payloads {
        add_dead_letter(&mut connection, &stream, &source_stream, payload).await;
    }
    let directory = std::env::temp_dir().join(unique("cli-streams-replay"));
    write_config(&directory, &stream);
    std::fs::write(
        directory.join("pipelines/main.toml"),
        format!("streams = [\"{source_stream}\"]\n[sinks.out]\nblackhole = {{}}\n"),
    )
    .unwrap();
    let config = std::fs::read_to_string(directory.join("ingestd.toml")).unwrap();
    std::fs::write(
        directory.join("ingestd.toml"),
        format!(
            "{config}[source]\nkind = \"streams\"\n[source.streams]\npayload_field = \"body\"\n"
        ),
    )
    .unwrap();
    let output = ingestd(&directory, &["dead-letter", "replay"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("replayed 3 entries"));
    let appended: redis::streams::StreamRangeReply =
        connection.xrange_all(&source_stream).await.unwrap();
    let bodies: Vec<Vec<u8>> = appended
        .ids
        .iter()
        .map(|entry| entry.get::<Vec<u8>>("body").unwrap())
        .collect();
    assert_eq!(bodies, payloads);
    assert_eq!(connection.xlen::<_, usize>(&stream).await.unwrap(), 0);
    let _: () = connection.del(&[&stream, &source_stream]).await.unwrap();
}
