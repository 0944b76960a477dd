//! The end-to-end latency histogram (`ingestd_end_to_end_latency_seconds`), bucketed where
//! it is recorded. The Prometheus recorder's histograms keep every sample until the next
//! drain: at the ingest ceiling that was a fifth of the CPU and every sample of the last
//! 5 s in memory (one per event per sink). Here a batch costs one atomic add per bucket
//! it touches, and the family is appended to the recorder's output at scrape time.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};

use crate::event::Event;
use crate::telemetry::metrics::END_TO_END_LATENCY as NAME;
const HELP: &str = "From the event timestamp to the sink's acknowledgement.";

/// Upper bounds in seconds: fine where latencies usually are (linger and write times of
/// tens of milliseconds), coarse beyond.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// One labelled series: a count per bucket (plus +Inf), the sum and the count.
pub struct LatencyHistogram {
    /// Rendered labels, e.g. `pipeline="analytics",sink="mongodb",kind="mongodb"`.
    labels: String,
    /// Non-cumulative counts; the last one is above every bound.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Every series, by rendered labels (a sink started twice in one process shares it).
fn registry() -> &'static Mutex<HashMap<String, Arc<LatencyHistogram>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<LatencyHistogram>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl LatencyHistogram {
    /// The series of these labels, created on first use.
    pub fn register(labels: &[(&str, &str)]) -> Arc<LatencyHistogram> {
        let mut rendered = String::new();
        for (index, (key, value)) in labels.iter().enumerate() {
            if index > 0 {
                rendered.push(',');
            }
            let _ = write!(rendered, "{key}=\"{}\"", escape(value));
        }
        let mut series = registry().lock().expect("latency registry lock");
        let histogram = series.entry(rendered.clone()).or_insert_with(|| {
            Arc::new(LatencyHistogram {
                labels: rendered,
                buckets: (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_micros: AtomicU64::new(0),
                count: AtomicU64::new(0),
            })
        });
        Arc::clone(histogram)
    }

    /// Records the latency of every event of a batch acknowledged at `now`. An event
    /// stamped in the future (clock skew) has no meaningful latency and is left out.
    pub fn record_batch(&self, events: &[Arc<Event>], now: DateTime<Utc>) {
        let mut counts = [0u64; 32];
        debug_assert!(BUCKETS.len() < counts.len());
        let mut sum_micros = 0u64;
        let mut count = 0u64;
        for event in events {
            let Some(micros) = (now - event.timestamp).num_microseconds() else {
                continue;
            };
            let Ok(micros) = u64::try_from(micros) else {
                continue;
            };
            let seconds = micros as f64 / 1e6;
            let bucket = BUCKETS.partition_point(|&bound| bound < seconds);
            counts[bucket] += 1;
            sum_micros = sum_micros.saturating_add(micros);
            count += 1;
        }
        if count == 0 {
            return;
        }
        for (bucket, &added) in self.buckets.iter().zip(&counts) {
            if added > 0 {
                bucket.fetch_add(added, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(sum_micros, Ordering::Relaxed);
        self.count.fetch_add(count, Ordering::Relaxed);
    }
}

/// Appends the family in the Prometheus text format (nothing while no sink exists).
pub fn render(out: &mut String) {
    let series = registry().lock().expect("latency registry lock");
    if series.is_empty() {
        return;
    }
    let mut ordered: Vec<&Arc<LatencyHistogram>> = series.values().collect();
    ordered.sort_by(|left, right| left.labels.cmp(&right.labels));
    let _ = writeln!(out, "# HELP {NAME} {HELP}\n# TYPE {NAME} histogram");
    for histogram in ordered {
        let labels = &histogram.labels;
        let mut cumulative = 0u64;
        for (index, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match BUCKETS.get(index) {
                Some(bound) => {
                    let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{NAME}_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "{NAME}_count{{{labels}}} {}",
            histogram.count.load(Ordering::Relaxed)
        );
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_at(timestamp: DateTime<Utc>) -> Arc<Event> {
        let payload = format!(
            r#"{{"user_id":"u","event_type":"t","timestamp":{}}}"#,
            timestamp.timestamp_millis()
        );
        Arc::new(
            crate::event::decode(
                bytes::Bytes::from(payload),
                Arc::from("c"),
                1024,
                Utc::now(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let histogram = LatencyHistogram::register(&[("sink", "latency-unit"), ("q", "a\"b")]);
        // Whole milliseconds, like event timestamps, so every latency is exact.
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let events: Vec<Arc<Event>> = [10, 10, 30, 2_000, 120_000, -5]
            .iter()
            .map(|&millis| event_at(now - chrono::Duration::milliseconds(millis)))
            .collect();
        histogram.record_batch(&events, now);
        let mut out = String::new();
        render(&mut out);
        let line = |le: &str| {
            let prefix =
                format!("{NAME}_bucket{{sink=\"latency-unit\",q=\"a\\\"b\",le=\"{le}\"}} ");
            out.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{out}"))
                .to_string()
        };
        assert_eq!(line("0.005"), "0");
        assert_eq!(line("0.01"), "2", "10 ms is within le=0.01");
        assert_eq!(line("0.03"), "3");
        assert_eq!(line("2.5"), "4");
        assert_eq!(line("60"), "4");
        assert_eq!(line("+Inf"), "5", "the future event is left out");
        assert!(out.contains(&format!(
            "{NAME}_count{{sink=\"latency-unit\",q=\"a\\\"b\"}} 5"
        )));
        assert!(out.contains(&format!(
            "{NAME}_sum{{sink=\"latency-unit\",q=\"a\\\"b\"}} 122.05"
        )));
        assert_eq!(out.matches("# TYPE").count(), 1);
    }
}
