//! `benchraw microbench-decode`: the cost of ingestd's decoder per event against a
//! prototype that visits the top-level object once (no intermediate `serde_json::Map`,
//! no hashing and removal of the known keys). Evidence for a proposed change to
//! src/event.rs; the prototype keeps the same outcome for valid events (checked below).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::payload::Shape;
use crate::progress;

#[derive(clap::Args)]
pub struct MicrobenchArgs {
    #[arg(long, default_value_t = 500_000)]
    count: u64,
}

/// What the prototype extracts; equal to ingestd's `Event` fields for valid input.
#[derive(Debug, PartialEq)]
struct Parts {
    event_id: Option<String>,
    user_id: String,
    event_type: String,
    timestamp: DateTime<Utc>,
    amount: Option<f64>,
    data: Map<String, Value>,
}

struct PartsVisitor;

impl<'de> Visitor<'de> for PartsVisitor {
    type Value = Parts;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        use serde::de::Error;
        let mut event_id = None;
        let mut user_id = None;
        let mut event_type = None;
        let mut timestamp = None;
        let mut amount = None;
        let mut data: Option<Map<String, Value>> = None;
        let mut extra: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "user_id" => user_id = Some(map.next_value::<String>()?),
                "event_type" => event_type = Some(map.next_value::<String>()?),
                "event_id" => event_id = Some(map.next_value::<String>()?),
                "timestamp" => {
                    let text = map.next_value::<Cow<'de, str>>()?;
                    let parsed = DateTime::parse_from_rfc3339(&text)
                        .map_err(|error| A::Error::custom(format!("bad_timestamp: {error}")))?;
                    timestamp = Some(parsed.with_timezone(&Utc));
                }
                "amount" => amount = Some(map.next_value::<f64>()?),
                "data" => data = Some(map.next_value::<Map<String, Value>>()?),
                _ => {
                    let value = map.next_value::<Value>()?;
                    extra.push((key.into_owned(), value));
                }
            }
        }
        let mut data = data.unwrap_or_default();
        for (key, value) in extra {
            data.entry(key).or_insert(value);
        }
        Ok(Parts {
            event_id,
            user_id: user_id.ok_or_else(|| A::Error::custom("missing_field user_id"))?,
            event_type: event_type.ok_or_else(|| A::Error::custom("missing_field event_type"))?,
            timestamp: timestamp.ok_or_else(|| A::Error::custom("missing_field timestamp"))?,
            amount,
            data,
        })
    }
}

fn decode_visitor(payload: &[u8]) -> Result<Parts, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let parts = deserializer.deserialize_map(PartsVisitor)?;
    deserializer.end()?;
    Ok(parts)
}

pub async fn run(arguments: MicrobenchArgs) -> anyhow::Result<()> {
    let shape = Shape {
        id_prefix: "m".to_string(),
        users: 10_000,
        event_type: "purchase".to_string(),
    };
    let timestamp = ingestd::event::format_timestamp(&Utc::now());
    let payloads: Vec<bytes::Bytes> = (0..arguments.count)
        .map(|sequence| bytes::Bytes::from(shape.event_json(sequence, &timestamp)))
        .collect();
    let channel: Arc<str> = Arc::from("bench");
    let now = Utc::now();

    // Same outcome on valid events.
    for payload in payloads.iter().take(1000) {
        let theirs = ingestd::event::decode(payload.clone(), Arc::clone(&channel), 65_536, now)
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let ours = decode_visitor(payload)?;
        anyhow::ensure!(ours.user_id == theirs.user_id && ours.event_type == theirs.event_type);
        anyhow::ensure!(ours.timestamp == theirs.timestamp && ours.amount == theirs.amount);
        anyhow::ensure!(ours.event_id.as_deref() == Some(theirs.event_id.as_str()));
        anyhow::ensure!(ours.data == theirs.data, "data differs");
    }

    let started = Instant::now();
    let mut kept = 0usize;
    for payload in &payloads {
        let event = ingestd::event::decode(payload.clone(), Arc::clone(&channel), 65_536, now)
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        kept += event.user_id.len();
    }
    let current_ns = started.elapsed().as_nanos() as f64 / arguments.count as f64;

    let started = Instant::now();
    for payload in &payloads {
        let parts = decode_visitor(payload)?;
        kept += parts.user_id.len();
    }
    let visitor_ns = started.elapsed().as_nanos() as f64 / arguments.count as f64;

    // Memory of a queued event: RSS growth while 100k decoded events are held.
    let held_count = 100_000usize.min(payloads.len());
    let rss_before = rss_bytes();
    let held: Vec<Arc<ingestd::event::Event>> = payloads[..held_count]
        .iter()
        .map(|payload| {
            // A queued event owns its payload (the source copies it out of the message).
            let owned = bytes::Bytes::copy_from_slice(payload);
            Arc::new(
                ingestd::event::decode(owned, Arc::clone(&channel), 65_536, now).expect("valid"),
            )
        })
        .collect();
    let event_bytes = (rss_bytes().saturating_sub(rss_before)) as f64 / held_count as f64;
    let payload_bytes =
        held.iter().map(|event| event.payload.len()).sum::<usize>() as f64 / held_count as f64;
    drop(held);

    progress::result(serde_json::json!({
        "events": arguments.count,
        "resident_bytes_per_decoded_event": event_bytes,
        "payload_bytes_per_event": payload_bytes,
        "ingestd_decode_ns_per_event": current_ns,
        "single_pass_visitor_ns_per_event": visitor_ns,
        "speedup": current_ns / visitor_ns,
        "checksum": kept,
    }));
    Ok(())
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
