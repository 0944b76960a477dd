//! `ingestd publish`: a load generator that PUBLISHes valid or deliberately malformed
//! events at a target rate, pipelined, with a progress line on stderr.

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::ConnectionManager;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub channel: String,
    pub count: u64,
    /// Events per second; 0 = as fast as possible.
    pub rate: u64,
    /// Fraction of messages that are malformed (0.0 ..= 1.0), cycling through every reason.
    pub malformed_ratio: f64,
    pub users: u64,
    pub event_type: String,
    /// Prefix of generated event ids; ids are `{prefix}-{n}`.
    pub id_prefix: String,
    pub progress: bool,
}

/// Counts of what was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub valid: u64,
    pub malformed: u64,
    /// Sum of PUBLISH replies: how many subscribers received messages.
    pub receivers: u64,
}

/// The `n`th valid event of a plan.
pub fn valid_event(plan: &PublishPlan, sequence: u64) -> String {
    let user = sequence % plan.users.max(1);
    serde_json::json!({
        "event_id": format!("{}-{sequence}", plan.id_prefix),
        "user_id": format!("user-{user}"),
        "event_type": plan.event_type,
        "timestamp": crate::event::format_timestamp(&Utc::now()),
        "amount": ((sequence % 1000) as f64) / 10.0 + 1.0,
        "data": {"sku": format!("sku-{}", sequence % 97), "seq": sequence},
    })
    .to_string()
}

/// One malformed message per decode reason, in turn.
pub fn malformed_event(sequence: u64) -> Vec<u8> {
    match sequence % 6 {
        0 => b"this is not json".to_vec(),
        1 => b"[1,2,3]".to_vec(),
        2 => br#"{"event_type":"click","timestamp":1700000000000}"#.to_vec(),
        3 => br#"{"user_id":42,"event_type":"click","timestamp":1700000000000}"#.to_vec(),
        4 => br#"{"user_id":"u","event_type":"click","timestamp":"not a time"}"#.to_vec(),
        _ => {
            let mut huge = br#"{"user_id":"u","event_type":"click","timestamp":1700000000000,"data":{"blob":""#.to_vec();
            huge.extend(std::iter::repeat_n(b'x', 70 * 1024));
            huge.extend(br#""}}"#);
            huge
        }
    }
}

pub async fn run(
    connection: &mut ConnectionManager,
    plan: &PublishPlan,
) -> redis::RedisResult<PublishReport> {
    let started = Instant::now();
    let mut report = PublishReport::default();
    let chunk = if plan.rate == 0 {
        500
    } else {
        (plan.rate / 100).clamp(1, 500)
    };
    let malformed_every = if plan.malformed_ratio > 0.0 {
        (1.0 / plan.malformed_ratio).round().max(1.0) as u64
    } else {
        0
    };
    let mut last_progress = Instant::now();
    let mut sent = 0u64;
    while sent < plan.count {
        let this_chunk = chunk.min(plan.count - sent);
        let mut pipeline = redis::pipe();
        for offset in 0..this_chunk {
            let sequence = sent + offset;
            if malformed_every > 0 && sequence % malformed_every == malformed_every - 1 {
                pipeline.publish(&plan.channel, malformed_event(report.malformed));
                report.malformed += 1;
            } else {
                pipeline.publish(&plan.channel, valid_event(plan, sequence));
                report.valid += 1;
            }
        }
        let receivers: Vec<u64> = pipeline.query_async(connection).await?;
        report.receivers += receivers.iter().sum::<u64>();
        sent += this_chunk;
        if plan.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / plan.rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        if plan.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let rate = sent as f64 / started.elapsed().as_secs_f64();
            eprint!("\rpublished {sent}/{} ({rate:.0}/s)   ", plan.count);
            let _ = std::io::stderr().flush();
        }
    }
    if plan.progress {
        let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "\rpublished {sent}/{} ({rate:.0}/s): {} valid, {} malformed, {} deliveries",
            plan.count, report.valid, report.malformed, report.receivers
        );
    }
    Ok(report)
}
