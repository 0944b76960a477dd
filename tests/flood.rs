//! A flood of 100,000 malformed messages (random bytes, huge payloads, deep nesting,
//! invalid UTF-8, wrong types, ...) interleaved with 10,000 valid events, against the real
//! binary and the real Redis: no crash, bounded memory, every valid event stored, every
//! invalid one dead-lettered with its reason.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;

use common::{PrivateRedis, event_json, eventually, free_port, http_get, metric_value, unique};

/// The malformed message number `index` and the reason ingestd must give it.
fn malformed(index: usize, state: &mut u64) -> (Vec<u8>, &'static str) {
    let mut random = || {
        // xorshift: deterministic, no extra crate.
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    match index % 50 {
        0..=14 => {
            // Random bytes that start with an invalid UTF-8 byte.
            let length = 1 + (random() % 200) as usize;
            let mut bytes: Vec<u8> = (0..length).map(|_| random() as u8).collect();
            bytes[0] = 0xff;
            (bytes, "not_json")
        }
        15..=24 => {
            let mut bytes = br#"{"user_id":""#.to_vec();
            bytes.extend([0xc3, 0x28]); // invalid UTF-8 inside a string
            bytes.extend(br#"","event_type":"t","timestamp":1700000000000}"#);
            (bytes, "not_json")
        }
        25..=27 => {
            let depth = 1_000;
            let mut nested = "[".repeat(depth);
            nested.push_str(&"]".repeat(depth));
            (nested.into_bytes(), "not_json")
        }
        28 if index % 500 == 28 => {
            let mut huge =
                br#"{"user_id":"u","event_type":"t","timestamp":1700000000000,"data":{"blob":""#
                    .to_vec();
            huge.extend(std::iter::repeat_n(b'x', 200 * 1024));
            huge.extend(br#""}}"#);
            (huge, "too_large")
        }
        28..=34 => (
            br#"{"user_id":7,"event_type":"t","timestamp":1700000000000}"#.to_vec(),
            "wrong_type",
        ),
        35..=39 => (br#""just a string""#.to_vec(), "not_object"),
        40..=44 => (
            br#"{"user_id":"u","timestamp":1700000000000}"#.to_vec(),
            "missing_field",
        ),
        _ => (
            br#"{"user_id":"u","event_type":"t","timestamp":"2026-13-45T99:00:00Z"}"#.to_vec(),
            "bad_timestamp",
        ),
    }
}

/// Kills the daemon if the test fails half-way, so no process outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_messages_loses_no_valid_event_and_dead_letters_every_bad_one() {
    let directory = std::env::temp_dir().join(unique("flood"));
    std::fs::create_dir_all(directory.join("pipelines")).unwrap();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let channel = unique("flood");
    let stream = unique("flood-dead-letter");
    // A private Redis without the pub/sub output-buffer limit: on a loaded 2-core machine
    // a flat-out publisher can outrun any subscriber, and Redis would then drop it (a
    // counted disconnect, tested elsewhere); this test is about what ingestd does with
    // what it reads.
    let redis_server = PrivateRedis::start(free_port(), "client-output-buffer-limit pubsub 0 0 0");
    let output = directory.join("out.jsonl");
    std::fs::write(
        directory.join("ingestd.toml"),
        format!(
            "[redis]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[dead_letter]\nstream = \"{stream}\"\n",
            redis_server.url()
        ),
    )
    .unwrap();
    std::fs::write(
        directory.join("pipelines/main.toml"),
        format!(
            "channels = [\"{channel}\"]\n[sinks.out]\nbatch = {{ max_events = 1000, linger = \"20ms\" }}\nfile = {{ path = {:?} }}\n",
            output.display().to_string()
        ),
    )
    .unwrap();
    let mut daemon = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .current_dir(&directory)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let address: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    eventually(Duration::from_secs(20), "the daemon ready", || async move {
        tokio::net::TcpStream::connect(address).await.is_ok()
            && http_get(address, "/readyz").await.0 == 200
    })
    .await;

    let mut connection = redis::Client::open(redis_server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut expected_reasons: HashMap<&'static str, usize> = HashMap::new();
    let mut valid_ids = HashSet::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut pipeline = redis::pipe();
    let mut queued = 0;
    for index in 0..110_000usize {
        if index % 11 == 10 {
            let id = format!("{channel}-ok-{index}");
            pipeline
                .publish(&channel, event_json(&id, "u", "click", 1.0))
                .ignore();
            valid_ids.insert(id);
        } else {
            let (payload, reason) = malformed(index, &mut state);
            *expected_reasons.entry(reason).or_default() += 1;
            pipeline.publish(&channel, payload).ignore();
        }
        queued += 1;
        if queued == 500 {
            let () = pipeline.query_async(&mut connection).await.unwrap();
            pipeline = redis::pipe();
            queued = 0;
        }
    }
    if queued > 0 {
        let () = pipeline.query_async(&mut connection).await.unwrap();
    }
    assert_eq!(expected_reasons.values().sum::<usize>(), 100_000);
    assert_eq!(valid_ids.len(), 10_000);

    let lines = || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .count()
    };
    eventually(
        Duration::from_secs(120),
        "10,000 valid events stored",
        || async { lines() >= 10_000 },
    )
    .await;
    eventually(Duration::from_secs(120), "100,000 dead letters", || {
        let mut connection = connection.clone();
        let stream = stream.clone();
        async move { connection.xlen::<_, usize>(&stream).await.unwrap() >= 100_000 }
    })
    .await;
    assert!(daemon.0.try_wait().unwrap().is_none(), "no crash");
    let peak_kib = peak_rss_kib(daemon.0.id());

    let stored: HashSet<String> = common::file_sink_event_ids(&output).into_iter().collect();
    assert_eq!(stored, valid_ids, "every valid event stored");
    assert_eq!(lines(), 10_000, "none twice");

    // Every dead letter has the expected reason; counts per reason match exactly.
    let mut found: HashMap<String, usize> = HashMap::new();
    let mut start = "-".to_string();
    loop {
        let page: redis::streams::StreamRangeReply = connection
            .xrange_count(&stream, &start, "+", 5_000)
            .await
            .unwrap();
        for entry in &page.ids {
            *found
                .entry(entry.get::<String>("reason").unwrap())
                .or_default() += 1;
            start = format!("({}", entry.id);
        }
        if page.ids.len() < 5_000 {
            break;
        }
    }
    let expected: HashMap<String, usize> = expected_reasons
        .iter()
        .map(|(reason, count)| (reason.to_string(), *count))
        .collect();
    assert_eq!(found, expected);
    let (_, metrics) = http_get(address, "/metrics").await;
    for (reason, count) in &expected {
        let counted = metric_value(
            &metrics,
            "ingestd_events_invalid_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .unwrap();
        assert_eq!(counted, *count as f64, "{reason}");
    }

    Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(daemon.0.wait().unwrap().success());
    let _: () = connection.del(&stream).await.unwrap();
    // Bounded memory: 100 payloads of 200 KiB passed through, plus 110,000 messages.
    assert!(peak_kib < 150 * 1024, "peak RSS {peak_kib} KiB");
    eprintln!("flood: peak RSS {} MiB", peak_kib / 1024);
}
