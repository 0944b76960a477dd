//! The Redis aggregate sinks against the real Redis: leaderboards and rate counters count
//! every event exactly once (retried batches, replayed events), rate limits gate the other
//! sinks of a pipeline, keys expire as configured. Every test uses its own key prefixes,
//! pipeline names (metric labels) and user ids.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde_json::{Value, json};

use common::*;
use ingestd::app::App;
use ingestd::config::OnLimit;
use ingestd::event::{Event, format_timestamp};
use ingestd::sinks::leaderboard::{LeaderboardConfig, LeaderboardReader, LeaderboardSink};
use ingestd::sinks::rate_counter::{RateCounterConfig, RateCounterSink, window_index};
use ingestd::sinks::{BatchFailure, Sink, SinkContext};

const WAIT: Duration = Duration::from_secs(30);

fn payload(
    event_id: &str,
    user_id: &str,
    event_type: &str,
    amount: Option<f64>,
    timestamp: DateTime<Utc>,
    data: Value,
) -> Vec<u8> {
    let mut object = json!({
        "event_id": event_id,
        "user_id": user_id,
        "event_type": event_type,
        "timestamp": format_timestamp(&timestamp),
        "data": data,
    });
    if let Some(amount) = amount {
        object["amount"] = json!(amount);
    }
    object.to_string().into_bytes()
}

fn decoded(payload: Vec<u8>) -> Arc<Event> {
    Arc::new(
        ingestd::event::decode(payload.into(), Arc::from("test"), 65_536, Utc::now())
            .expect("valid test event"),
    )
}

async fn context(pipeline: &str, sink: &str) -> SinkContext {
    SinkContext {
        pipeline: pipeline.to_string(),
        sink: sink.to_string(),
        on_limit: OnLimit::Count,
        redis: ingestd::redis_client::connection_manager(&base_config().redis)
            .await
            .expect("redis is up (deploy/local/services up)"),
    }
}

fn leaderboard_config(toml: &str) -> LeaderboardConfig {
    sink(&format!("[leaderboard]\n{toml}"))
        .leaderboard
        .expect("a leaderboard table")
}

fn rate_config(toml: &str) -> RateCounterConfig {
    sink(&format!("[rate_counter]\n{toml}"))
        .rate_counter
        .expect("a rate_counter table")
}

async fn zset(key: &str) -> BTreeMap<String, f64> {
    let mut connection = redis_connection().await;
    let entries: Vec<(String, f64)> = connection
        .zrange_withscores(key, 0, -1)
        .await
        .expect("ZRANGE");
    entries.into_iter().collect()
}

async fn get_counter(key: &str) -> Option<i64> {
    let mut connection = redis_connection().await;
    connection.get(key).await.expect("GET")
}

async fn metrics_text(started: &Started) -> String {
    let (status, body) = http_get(started.http(), "/metrics").await;
    assert_eq!(status, 200);
    body
}

fn assert_same_scores(actual: &BTreeMap<String, f64>, expected: &BTreeMap<String, f64>) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "members"
    );
    for (member, score) in expected {
        assert!(
            (actual[member] - score).abs() < 1e-9,
            "{member}: {} != {score}",
            actual[member]
        );
    }
}

/// Expected top-N order: score descending, equal scores in reverse byte order of the
/// member (what ZREVRANGE returns, as documented by `LeaderboardReader::top`).
fn ranked(scores: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut entries: Vec<(String, f64)> = scores
        .iter()
        .map(|(member, score)| (member.clone(), *score))
        .collect();
    entries.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    entries
}

fn top_entries(top: &Value) -> Vec<(String, f64)> {
    top["top"]
        .as_array()
        .expect("top is a list")
        .iter()
        .map(|entry| {
            (
                entry["member"].as_str().unwrap().to_string(),
                entry["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Waits, if needed, until a fresh 60 s window has at least 45 s left, so a test's events
/// and its reads by the clock (`GET /rate`) land in one window.
async fn wait_for_window_room() {
    let into_window = Utc::now().timestamp().rem_euclid(60);
    if into_window > 15 {
        tokio::time::sleep(Duration::from_secs((60 - into_window) as u64)).await;
    }
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.jsonl", unique(name)))
}

#[test]
fn the_shipped_pipeline_has_the_default_board_and_counter() {
    let loaded = ingestd::config::load(None, Path::new("pipelines")).expect("pipelines load");
    let analytics = &loaded.config.pipelines["analytics"];
    let leaderboard = analytics.sinks["leaderboard"]
        .leaderboard
        .as_ref()
        .expect("leaderboard sink");
    assert_eq!(leaderboard.boards.len(), 1);
    let purchases = &leaderboard.boards[0];
    assert_eq!(purchases.name, "purchases");
    assert_eq!(purchases.event_types, vec!["purchase".to_string()]);
    assert_eq!(purchases.effective_key_prefix(), "leaderboard:purchases:");
    assert_eq!(purchases.ttl, Duration::from_secs(8 * 86_400));
    let rate = analytics.sinks["rate_counter"]
        .rate_counter
        .as_ref()
        .expect("rate_counter sink");
    assert_eq!(
        (rate.window, rate.limit, rate.key_prefix.as_str()),
        (Duration::from_secs(60), 100, "rate:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_scores_are_exact_sums_and_top_n_is_ordered() {
    let pipeline_name = unique("lb");
    let channel = unique("lb-events");
    let prefix = unique("test-lb");
    let purchases_prefix = format!("{prefix}:purchases:");
    let best_prefix = format!("{prefix}:best:");
    let board_sink = sink(&format!(
        r#"
        [leaderboard]
        [[leaderboard.boards]]
        name = "purchases"
        event_types = ["purchase"]
        score = "amount"
        key_prefix = "{purchases_prefix}"
        ttl = "2days"
        [[leaderboard.boards]]
        name = "best"
        event_types = ["purchase", "refund"]
        score = "amount"
        mode = "max"
        key_prefix = "{best_prefix}"
        "#
    ));
    let mut config = base_config();
    config.pipelines.insert(
        pipeline_name.clone(),
        pipeline(&[&channel], vec![("leaderboard", board_sink)]),
    );
    let started = start(App::new(config.clone())).await;

    // One timestamp for all, so they share one UTC day whenever the test runs.
    let at = Utc::now();
    let day = at.date_naive().format("%Y-%m-%d").to_string();
    let users: Vec<String> = (0..6)
        .map(|index| format!("{}-u{index}", unique("user")))
        .collect();
    let mut payloads = Vec::new();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut maxima: BTreeMap<String, f64> = BTreeMap::new();
    for index in 0..240_usize {
        let user = &users[index % users.len()];
        // Quarters are exact in binary, so any summing order gives the same double.
        let varied = ((index * 37) % 50) as f64 * 0.25 + 1.0;
        let event_type = ["purchase", "view", "purchase", "refund"][(index / users.len()) % 4];
        // users[4] and users[5] get the same total: a tie.
        let amount = if index % users.len() >= 4 {
            2.5
        } else {
            varied
        };
        payloads.push(payload(
            &format!("{prefix}-e{index}"),
            user,
            event_type,
            Some(amount),
            at,
            json!({"n": index}),
        ));
        if event_type == "purchase" {
            *sums.entry(user.clone()).or_default() += amount;
        }
        if event_type == "purchase" || event_type == "refund" {
            let best = maxima.entry(user.clone()).or_insert(f64::MIN);
            *best = best.max(amount);
        }
    }
    assert_eq!(sums[&users[4]], sums[&users[5]], "the test needs a tie");
    publish_all(&channel, &payloads).await;

    let purchases_key = format!("{purchases_prefix}{day}");
    let best_key = format!("{best_prefix}{day}");
    eventually(WAIT, "the boards hold the published purchases", || async {
        zset(&purchases_key).await == sums && zset(&best_key).await == maxima
    })
    .await;
    assert_same_scores(&zset(&purchases_key).await, &sums);
    assert_same_scores(&zset(&best_key).await, &maxima);

    // Top 3 over HTTP: by score, ties in ZREVRANGE order.
    let expected = ranked(&sums);
    let (status, body) = http_get(
        started.http(),
        &format!("/leaderboards/purchases?day={day}&n=3"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let top: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(top["board"], "purchases");
    assert_eq!(top["day"], day.as_str());
    assert_eq!(top_entries(&top), expected[..3].to_vec());

    // The same through the reader the CLI uses, whole board: the tie is ordered too.
    let manager = ingestd::redis_client::connection_manager(&config.redis)
        .await
        .unwrap();
    let reader = LeaderboardReader::from_config(&config, manager).expect("a board is configured");
    let whole = reader.top("purchases", Some(&day), 10).await.unwrap();
    assert_eq!(top_entries(&whole), expected);
    let tie: Vec<&String> = expected
        .iter()
        .filter(|(_, score)| *score == sums[&users[4]])
        .map(|(member, _)| member)
        .collect();
    assert_eq!(tie, vec![&users[5], &users[4]], "ties: reverse byte order");
    let best = reader.top("best", Some(&day), 2).await.unwrap();
    assert_eq!(top_entries(&best), ranked(&maxima)[..2].to_vec());

    let (status, body) = http_get(started.http(), "/leaderboards/nope").await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown board \"nope\""), "{body}");
    let (status, body) = http_get(started.http(), "/leaderboards/purchases?day=yesterday").await;
    assert_eq!(status, 400);
    assert!(body.contains("yyyy-mm-dd"), "{body}");

    // Expiry: end of the UTC day + ttl (2 days), data and seen set alike.
    let day_end = (at.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let mut connection = redis_connection().await;
    let expire_time: i64 = redis::cmd("EXPIRETIME")
        .arg(&purchases_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(expire_time, day_end + 2 * 86_400);
    let seen_key = format!("ingestd:seen:{{{purchases_key}}}:{pipeline_name}.leaderboard");
    let seen_expire_time: i64 = redis::cmd("EXPIRETIME")
        .arg(&seen_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(seen_expire_time, expire_time);
    let ttl: i64 = connection.ttl(&best_key).await.unwrap();
    assert!(
        ttl > 8 * 86_400 && ttl <= 9 * 86_400,
        "default ttl 8 days after the day: {ttl}"
    );

    let metrics = metrics_text(&started).await;
    let label = format!("pipeline=\"{pipeline_name}\"");
    assert!(
        metric_value(
            &metrics,
            "ingestd_leaderboard_updates_total",
            &[&label, "board=\"purchases\""]
        )
        .unwrap_or(0.0)
            >= users.len() as f64
    );

    // Replay every event: nothing changes.
    publish_all(&channel, &payloads).await;
    let written = || async {
        let metrics = metrics_text(&started).await;
        metric_value(&metrics, "ingestd_sink_events_written_total", &[&label]).unwrap_or(0.0)
    };
    eventually(WAIT, "the replay is written", || async {
        written().await >= 2.0 * payloads.len() as f64
    })
    .await;
    assert_same_scores(&zset(&purchases_key).await, &sums);
    assert_same_scores(&zset(&best_key).await, &maxima);
    started.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_changes_no_score_and_no_counter() {
    let prefix = unique("test-retry");
    let pipeline_name = unique("retry");
    let board_config = leaderboard_config(&format!(
        "[[leaderboard.boards]]\nname = \"purchases\"\nevent_types = [\"purchase\"]\nkey_prefix = \"{prefix}:lb:\"\n\
         [[leaderboard.boards]]\nname = \"events\"\nscore = 1\nkey_prefix = \"{prefix}:events:\""
    ));
    let leaderboard =
        LeaderboardSink::new(&board_config, &context(&pipeline_name, "leaderboard").await).unwrap();
    let rate = RateCounterSink::new(
        &rate_config(&format!("limit = 3\nkey_prefix = \"{prefix}:rate:\"")),
        &context(&pipeline_name, "rate").await,
    )
    .unwrap();

    let at = Utc::now();
    let day = at.date_naive().format("%Y-%m-%d");
    let window = window_index(at, 60);
    let batch: Vec<Arc<Event>> = [
        ("e1", "alice", "purchase", 10.5),
        ("e2", "bob", "purchase", 3.0),
        ("e3", "alice", "view", 99.0),
        ("e4", "alice", "purchase", 4.25),
        // The same event twice in one batch counts once.
        ("e4", "alice", "purchase", 4.25),
        ("e5", "alice", "purchase", 1.0),
    ]
    .into_iter()
    .map(|(id, user, event_type, amount)| {
        decoded(payload(
            &format!("{prefix}-{id}"),
            user,
            event_type,
            Some(amount),
            at,
            json!({}),
        ))
    })
    .collect();

    let first = rate.write(&batch).await.expect("first write");
    leaderboard.write(&batch).await.expect("first write");
    // alice's events are ordinals 1, 2, 3, 3 (the duplicate), 4: only the last is over 3.
    assert_eq!(first.over_limit, vec![5]);
    let lb_key = format!("{prefix}:lb:{day}");
    let events_key = format!("{prefix}:events:{day}");
    let alice_key = format!("{prefix}:rate:alice:{window}");
    let bob_key = format!("{prefix}:rate:bob:{window}");
    let expected_scores = BTreeMap::from([("alice".to_string(), 15.75), ("bob".to_string(), 3.0)]);
    let expected_counts = BTreeMap::from([("alice".to_string(), 4.0), ("bob".to_string(), 1.0)]);
    assert_same_scores(&zset(&lb_key).await, &expected_scores);
    assert_same_scores(&zset(&events_key).await, &expected_counts);
    assert_eq!(get_counter(&alice_key).await, Some(4));
    assert_eq!(get_counter(&bob_key).await, Some(1));

    // A retry of the whole batch (as after a timeout): same verdicts, nothing counted again.
    let second = rate.write(&batch).await.expect("retried write");
    leaderboard.write(&batch).await.expect("retried write");
    assert_eq!(second, first);
    assert_same_scores(&zset(&lb_key).await, &expected_scores);
    assert_same_scores(&zset(&events_key).await, &expected_counts);
    assert_eq!(get_counter(&alice_key).await, Some(4));
    assert_eq!(get_counter(&bob_key).await, Some(1));

    // A later batch mixing a replay with a new event counts only the new one.
    let mixed = vec![
        Arc::clone(&batch[0]),
        decoded(payload(
            &format!("{prefix}-e6"),
            "alice",
            "purchase",
            Some(2.0),
            at,
            json!({}),
        )),
    ];
    let third = rate.write(&mixed).await.expect("mixed write");
    leaderboard.write(&mixed).await.expect("mixed write");
    assert_eq!(
        third.over_limit,
        vec![1],
        "the replay keeps its verdict, e6 is 5th"
    );
    assert_eq!(get_counter(&alice_key).await, Some(5));
    assert_eq!(zset(&lb_key).await["alice"], 17.75);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drop_lets_exactly_the_first_100_through() {
    wait_for_window_room().await;
    let pipeline_name = unique("rate-drop");
    let channel = unique("rate-drop-events");
    let prefix = unique("test-rate");
    let output = temp_file("rate-drop");
    let mut pipeline_config = pipeline(
        &[&channel],
        vec![
            (
                "rate",
                sink(&format!(
                    "max_in_flight = 1\n[rate_counter]\nkey_prefix = \"{prefix}:\"\nwindow = \"60s\"\nlimit = 100"
                )),
            ),
            (
                "file",
                sink(&format!(
                    "file = {{ path = {:?} }}",
                    output.display().to_string()
                )),
            ),
        ],
    );
    pipeline_config.on_limit = OnLimit::Drop;
    let mut config = base_config();
    config
        .pipelines
        .insert(pipeline_name.clone(), pipeline_config);
    let started = start(App::new(config)).await;

    let at = Utc::now();
    let heavy = unique("heavy");
    let light = unique("light");
    let mut payloads: Vec<Vec<u8>> = (0..150)
        .map(|seq| {
            payload(
                &format!("{heavy}-{seq}"),
                &heavy,
                "click",
                None,
                at,
                json!({"seq": seq}),
            )
        })
        .collect();
    payloads.extend((0..20).map(|seq| {
        payload(
            &format!("{light}-{seq}"),
            &light,
            "click",
            None,
            at,
            json!({"seq": seq}),
        )
    }));
    publish_all(&channel, &payloads).await;

    let label = format!("pipeline=\"{pipeline_name}\"");
    let written = |sink_name: &'static str| {
        let pipeline_label = label.clone();
        let address = started.http();
        async move {
            let (_, metrics) = http_get(address, "/metrics").await;
            metric_value(
                &metrics,
                "ingestd_sink_events_written_total",
                &[&pipeline_label, &format!("sink=\"{sink_name}\"")],
            )
            .unwrap_or(0.0)
        }
    };
    eventually(
        WAIT,
        "the gate counts all 170 and the file gets 120",
        || async { written("rate").await == 170.0 && written("file").await == 120.0 },
    )
    .await;

    let window = window_index(at, 60);
    let heavy_key = format!("{prefix}:{heavy}:{window}");
    assert_eq!(get_counter(&heavy_key).await, Some(150));
    let mut connection = redis_connection().await;
    let ttl: i64 = connection.ttl(&heavy_key).await.unwrap();
    assert!((110..=120).contains(&ttl), "window 60s + margin 60s: {ttl}");

    let metrics = metrics_text(&started).await;
    assert_eq!(
        metric_value(&metrics, "ingestd_rate_limit_exceeded_total", &[&label]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "ingestd_rate_limited_events_total", &[&label]),
        Some(50.0)
    );

    let (status, body) = http_get(started.http(), &format!("/rate/{heavy}")).await;
    assert_eq!(status, 200, "{body}");
    let current: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(current["count"], 150);
    assert_eq!(current["limit"], 100);
    assert_eq!(current["window_index"], window);
    assert_eq!(current["over_limit"], true);

    // Replayed: counters, crossings and limited counts stay; each replay keeps its verdict.
    publish_all(&channel, &payloads).await;
    eventually(WAIT, "the replay passes the gate", || async {
        written("rate").await == 340.0 && written("file").await == 240.0
    })
    .await;
    assert_eq!(get_counter(&heavy_key).await, Some(150));
    assert_eq!(
        get_counter(&format!("{prefix}:{light}:{window}")).await,
        Some(20)
    );
    let metrics = metrics_text(&started).await;
    assert_eq!(
        metric_value(&metrics, "ingestd_rate_limit_exceeded_total", &[&label]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "ingestd_rate_limited_events_total", &[&label]),
        Some(50.0)
    );
    started.stop().await;

    let lines = lines_of(&output);
    // The file sink may write batches concurrently, so compare in sorted order.
    let mut heavy_seqs: Vec<i64> = lines
        .iter()
        .filter(|line| line["user_id"] == heavy.as_str())
        .map(|line| line["data"]["seq"].as_i64().unwrap())
        .collect();
    heavy_seqs.sort_unstable();
    let first_hundred_twice: Vec<i64> = (0..100).flat_map(|seq| [seq, seq]).collect();
    assert_eq!(
        heavy_seqs, first_hundred_twice,
        "the first 100 admitted, twice"
    );
    let light_count = lines
        .iter()
        .filter(|line| line["user_id"] == light.as_str())
        .count();
    assert_eq!(light_count, 40);
    let _ = std::fs::remove_file(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_tag_stores_the_extra_50_tagged() {
    let pipeline_name = unique("rate-tag");
    let channel = unique("rate-tag-events");
    let prefix = unique("test-rate-tag");
    let output = temp_file("rate-tag");
    let mut pipeline_config = pipeline(
        &[&channel],
        vec![
            (
                "rate",
                sink(&format!(
                    "max_in_flight = 1\n[rate_counter]\nkey_prefix = \"{prefix}:\""
                )),
            ),
            (
                "file",
                sink(&format!(
                    "file = {{ path = {:?} }}",
                    output.display().to_string()
                )),
            ),
        ],
    );
    pipeline_config.on_limit = OnLimit::Tag;
    let mut config = base_config();
    config
        .pipelines
        .insert(pipeline_name.clone(), pipeline_config);
    let started = start(App::new(config)).await;

    // A window in the past: the window comes from event time, not from the clock.
    let at: DateTime<Utc> = Utc::now() - chrono::Duration::minutes(30);
    let user = unique("tagged");
    let payloads: Vec<Vec<u8>> = (0..150)
        .map(|seq| {
            payload(
                &format!("{user}-{seq}"),
                &user,
                "click",
                None,
                at,
                json!({"seq": seq}),
            )
        })
        .collect();
    publish_all(&channel, &payloads).await;
    let label = format!("pipeline=\"{pipeline_name}\"");
    eventually(WAIT, "150 lines in the file", || async {
        let (_, metrics) = http_get(started.http(), "/metrics").await;
        metric_value(
            &metrics,
            "ingestd_sink_events_written_total",
            &[&label, "sink=\"file\""],
        ) == Some(150.0)
    })
    .await;
    let metrics = metrics_text(&started).await;
    assert_eq!(
        metric_value(&metrics, "ingestd_rate_limit_exceeded_total", &[&label]),
        Some(1.0)
    );
    started.stop().await;

    let lines = lines_of(&output);
    assert_eq!(lines.len(), 150);
    let mut tagged: Vec<i64> = lines
        .iter()
        .filter(|line| line["data"]["rate_limited"] == true)
        .map(|line| line["data"]["seq"].as_i64().unwrap())
        .collect();
    tagged.sort_unstable();
    assert_eq!(tagged, (100..150).collect::<Vec<i64>>());
    let untagged = lines
        .iter()
        .filter(|line| line["data"].get("rate_limited").is_none())
        .count();
    assert_eq!(untagged, 100);
    assert_eq!(
        get_counter(&format!("{prefix}:{user}:{}", window_index(at, 60))).await,
        Some(150)
    );
    let _ = std::fs::remove_file(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counters_expire_window_plus_margin_after_their_first_event() {
    let prefix = unique("test-expire");
    let pipeline_name = unique("expire");
    let rate = RateCounterSink::new(
        &rate_config(&format!(
            "window = \"1s\"\nexpire_margin = \"1s\"\nkey_prefix = \"{prefix}:\""
        )),
        &context(&pipeline_name, "rate").await,
    )
    .unwrap();
    let at = Utc::now();
    let batch = vec![decoded(payload(
        &format!("{prefix}-e1"),
        "dana",
        "click",
        None,
        at,
        json!({}),
    ))];
    rate.write(&batch).await.expect("write");
    let key = format!("{prefix}:dana:{}", window_index(at, 1));
    let seen = format!("ingestd:seen:{{{key}}}:{pipeline_name}.rate");
    let mut connection = redis_connection().await;
    let key_pttl: i64 = connection.pttl(&key).await.unwrap();
    let seen_pttl: i64 = connection.pttl(&seen).await.unwrap();
    assert!(
        key_pttl > 0 && key_pttl <= 2000,
        "window 1s + margin 1s: {key_pttl} ms"
    );
    assert!(
        seen_pttl > 0 && seen_pttl <= 2000,
        "the seen hash expires with it: {seen_pttl} ms"
    );
    // A second write in the same window does not push the expiry back (EXPIRE NX).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = vec![decoded(payload(
        &format!("{prefix}-e2"),
        "dana",
        "click",
        None,
        at,
        json!({}),
    ))];
    rate.write(&later).await.expect("write");
    let pttl_after: i64 = connection.pttl(&key).await.unwrap();
    assert!(pttl_after < key_pttl, "{pttl_after} < {key_pttl}");
    assert_eq!(get_counter(&key).await, Some(2));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let exists: bool = connection.exists(&key).await.unwrap();
    let seen_exists: bool = connection.exists(&seen).await.unwrap();
    assert!(!exists && !seen_exists, "both keys are gone after 2s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_fails_only_its_events_permanently() {
    let prefix = unique("test-wrongtype");
    let pipeline_name = unique("wrongtype");
    let at = Utc::now();
    let day = at.date_naive().format("%Y-%m-%d");
    let window = window_index(at, 60);
    let mut connection = redis_connection().await;
    // An operator's mistake: a string where a board lives, a hash where a counter lives.
    let () = connection
        .set(format!("{prefix}:lb:{day}"), "oops")
        .await
        .unwrap();
    let () = connection
        .hset(format!("{prefix}:rate:erin:{window}"), "x", "y")
        .await
        .unwrap();

    let leaderboard = LeaderboardSink::new(
        &leaderboard_config(&format!(
            "[[leaderboard.boards]]\nname = \"all\"\nscore = 1.0\nkey_prefix = \"{prefix}:lb:\"\n\
             [[leaderboard.boards]]\nname = \"fine\"\nscore = 1.0\nkey_prefix = \"{prefix}:fine:\""
        )),
        &context(&pipeline_name, "leaderboard").await,
    )
    .unwrap();
    let rate = RateCounterSink::new(
        &rate_config(&format!("key_prefix = \"{prefix}:rate:\"")),
        &context(&pipeline_name, "rate").await,
    )
    .unwrap();
    let batch: Vec<Arc<Event>> = ["erin", "finn"]
        .iter()
        .map(|user| {
            decoded(payload(
                &format!("{prefix}-{user}"),
                user,
                "click",
                None,
                at,
                json!({}),
            ))
        })
        .collect();

    let Err(BatchFailure::Some(failures)) = leaderboard.write(&batch).await else {
        panic!("the board of the wrong type fails");
    };
    // Both events count into the broken board, so both fail, permanently.
    assert_eq!(
        failures.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(
        failures
            .iter()
            .all(|(_, error)| !error.retryable && error.kind == "wrong_type")
    );
    // The healthy board was written, and a retry will not count it again.
    let fine = format!("{prefix}:fine:{day}");
    assert_eq!(zset(&fine).await.len(), 2);
    let _ = leaderboard.write(&batch).await;
    assert_eq!(zset(&fine).await["erin"], 1.0);

    // With a limit of 1, finn's second event is over it: the verdict must survive erin's
    // failure, or a gate would let it through.
    let strict = RateCounterSink::new(
        &rate_config(&format!("key_prefix = \"{prefix}:strict:\"\nlimit = 1")),
        &context(&pipeline_name, "strict").await,
    )
    .unwrap();
    let () = connection
        .hset(format!("{prefix}:strict:erin:{window}"), "x", "y")
        .await
        .unwrap();
    let mut with_second = batch.clone();
    with_second.push(decoded(payload(
        &format!("{prefix}-finn-2"),
        "finn",
        "click",
        None,
        at,
        json!({}),
    )));
    let Err(BatchFailure::SomeWritten { failed, written }) = strict.write(&with_second).await
    else {
        panic!("the counter of the wrong type fails");
    };
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, 0, "only erin's event");
    assert!(!failed[0].1.retryable);
    assert_eq!(written.over_limit, vec![2], "finn's second event");
    assert_eq!(
        get_counter(&format!("{prefix}:strict:finn:{window}")).await,
        Some(2)
    );
    let Err(BatchFailure::SomeWritten { failed, .. }) = rate.write(&batch).await else {
        panic!("the counter of the wrong type fails");
    };
    assert_eq!(failed.len(), 1);
}

/// A private `redis-server` (the Debian package `deploy/local/services` installs) on a
/// free port, so a test can stop and restart it without disturbing the shared one.
struct PrivateRedis {
    port: u16,
    directory: PathBuf,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start(fixed_port: Option<u16>, fixed_directory: Option<PathBuf>) -> PrivateRedis {
        let port = fixed_port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let directory = fixed_directory.unwrap_or_else(|| {
            let created = std::env::temp_dir().join(unique("private-redis"));
            std::fs::create_dir_all(&created).unwrap();
            created
        });
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&directory)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (deploy/local/services up installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        eventually(
            Duration::from_secs(10),
            "the private redis-server answers",
            || {
                let attempt_url = url.clone();
                async move {
                    let Ok(client) = redis::Client::open(attempt_url) else {
                        return false;
                    };
                    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        PrivateRedis {
            port,
            directory,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop the private redis-server");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_retryable_and_the_script_is_reloaded() {
    let mut server = PrivateRedis::start(None, None).await;
    let mut redis_config = base_config().redis;
    redis_config.url = ingestd::config::Secret::new(server.url());
    let context = SinkContext {
        pipeline: "restart".to_string(),
        sink: "rate".to_string(),
        on_limit: OnLimit::Count,
        redis: ingestd::redis_client::connection_manager(&redis_config)
            .await
            .unwrap(),
    };
    let rate = RateCounterSink::new(&RateCounterConfig::default(), &context).unwrap();
    let at = Utc::now();
    let key = format!("rate:gus:{}", window_index(at, 60));
    let event = |id: &str| vec![decoded(payload(id, "gus", "click", None, at, json!({})))];
    rate.write(&event("e1")).await.expect("write");
    rate.check_ready().await.expect("ready");

    server.stop().await;
    match rate.write(&event("e2")).await {
        Err(BatchFailure::All(error)) => {
            assert!(error.retryable, "a lost connection is retryable: {error}");
        }
        other => panic!("expected a retryable failure of the whole batch, got {other:?}"),
    }
    assert!(rate.check_ready().await.is_err());

    // Same port, empty server: empty script cache (NOSCRIPT), counter starts again.
    let port = server.port;
    let directory = server.directory.clone();
    let mut restarted = PrivateRedis::start(Some(port), Some(directory)).await;
    eventually(
        Duration::from_secs(20),
        "the sink writes after the restart",
        || async { rate.write(&event("e2")).await.is_ok() },
    )
    .await;
    let mut connection = redis::Client::open(restarted.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let count: Option<i64> = connection.get(&key).await.unwrap();
    assert_eq!(count, Some(1), "only e2 is in the new server");
    restarted.stop().await;
    let _ = std::fs::remove_dir_all(&restarted.directory);
}
