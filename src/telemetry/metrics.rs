//! Every metric ingestd exports, in one place. Names start with `ingestd_`, counters end
//! in `_total`, durations are `_seconds` histograms with explicit buckets.
//!
//! Hot paths hold pre-registered handles ([`SinkMetrics`], [`SourceMetrics`]) so recording
//! is an atomic add, not a label lookup.

use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::telemetry::latency::LatencyHistogram;

pub const SOURCE_EVENTS_RECEIVED: &str = "ingestd_source_events_received_total";
pub const SOURCE_BYTES_RECEIVED: &str = "ingestd_source_bytes_received_total";
pub const SOURCE_DISCONNECTS: &str = "ingestd_source_disconnects_total";
pub const SOURCE_SUBSCRIBED: &str = "ingestd_source_subscribed";
pub const SOURCE_ACKED: &str = "ingestd_source_acked_total";
pub const SOURCE_CLAIMED: &str = "ingestd_source_claimed_total";
pub const SOURCE_PENDING: &str = "ingestd_source_pending";
pub const SOURCE_SEQUENCE_GAPS: &str = "ingestd_source_sequence_gaps_total";
pub const SOURCE_SHED: &str = "ingestd_source_shed_total";
pub const EVENTS_INVALID: &str = "ingestd_events_invalid_total";
pub const EVENTS_UNROUTED: &str = "ingestd_events_unrouted_total";
pub const SINK_EVENTS_WRITTEN: &str = "ingestd_sink_events_written_total";
pub const SINK_WRITE_ERRORS: &str = "ingestd_sink_write_errors_total";
pub const SINK_RETRIES: &str = "ingestd_sink_retries_total";
pub const SINK_DEAD_LETTERED: &str = "ingestd_sink_dead_lettered_total";
pub const SINK_BATCH_SIZE: &str = "ingestd_sink_batch_size_events";
pub const SINK_WRITE_DURATION: &str = "ingestd_sink_write_duration_seconds";
pub const SINK_QUEUE_DEPTH: &str = "ingestd_sink_queue_depth";
pub const SINK_QUEUE_CAPACITY: &str = "ingestd_sink_queue_capacity";
pub const SINK_DROPPED: &str = "ingestd_sink_dropped_events_total";
pub const SINK_IN_FLIGHT: &str = "ingestd_sink_in_flight_batches";
/// Recorded by [`crate::telemetry::latency`], not through the recorder.
pub const END_TO_END_LATENCY: &str = "ingestd_end_to_end_latency_seconds";
pub const DEAD_LETTERS: &str = "ingestd_dead_letters_total";
pub const DEAD_LETTER_WRITE_ERRORS: &str = "ingestd_dead_letter_write_errors_total";
pub const SPOOL_BYTES: &str = "ingestd_spool_bytes";
pub const SPOOL_RECORDS: &str = "ingestd_spool_records_total";
pub const SPOOL_CORRUPT_RECORDS: &str = "ingestd_spool_corrupt_records_total";
pub const SPOOL_SKIPPED_BYTES: &str = "ingestd_spool_skipped_bytes_total";
pub const SPOOL_DROPPED: &str = "ingestd_spool_dropped_events_total";
pub const RATE_LIMITED_EVENTS: &str = "ingestd_rate_limited_events_total";
pub const RATE_LIMIT_EXCEEDED: &str = "ingestd_rate_limit_exceeded_total";
pub const LEADERBOARD_UPDATES: &str = "ingestd_leaderboard_updates_total";
pub const BUILD_INFO: &str = "ingestd_build_info";

/// Seconds: 1 ms .. 60 s, for write durations.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Events per batch.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), SECONDS_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(SINK_BATCH_SIZE.to_string()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // A recorder may already be set (e.g. by an embedding program); keep ours for rendering.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Histogram samples pile up in the recorder until they are drained; a scrape drains
/// them, but an instance nobody scrapes would grow without bound (measured by bench/:
/// ~100 MiB/min at 20,000 events/s). This task drains them every few seconds instead.
pub fn spawn_upkeep(
    handle: PrometheusHandle,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs(5));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => handle.run_upkeep(),
            }
        }
    })
}

fn describe() {
    describe_counter!(
        SOURCE_EVENTS_RECEIVED,
        "Messages read from the source, by source and channel."
    );
    describe_counter!(SOURCE_BYTES_RECEIVED, "Payload bytes read from the source.");
    describe_counter!(
        SOURCE_DISCONNECTS,
        "Times the source lost its Redis connection."
    );
    describe_gauge!(
        SOURCE_SUBSCRIBED,
        "1 while the source is connected and subscribed."
    );
    describe_counter!(
        SOURCE_ACKED,
        "Stream entries acknowledged (XACK) once every sink wrote or dead-lettered them."
    );
    describe_counter!(
        SOURCE_CLAIMED,
        "Stream entries taken over (XAUTOCLAIM) from a consumer presumed dead."
    );
    describe_gauge!(
        SOURCE_PENDING,
        "Entries of the consumer group read but not yet acknowledged, by stream."
    );
    describe_counter!(
        SOURCE_SEQUENCE_GAPS,
        "Publisher sequence numbers never received (lost upstream of ingestd)."
    );
    describe_counter!(
        SOURCE_SHED,
        "Pub/sub messages read but shed because decoding was `source.read_buffer` behind (instead of Redis disconnecting ingestd), by channel."
    );
    describe_counter!(EVENTS_INVALID, "Messages rejected by decoding, by reason.");
    describe_counter!(
        EVENTS_UNROUTED,
        "Valid events whose channel matched no pipeline."
    );
    describe_counter!(SINK_EVENTS_WRITTEN, "Events written by a sink.");
    describe_counter!(
        SINK_WRITE_ERRORS,
        "Failed writes by sink and error kind (per event)."
    );
    describe_counter!(SINK_RETRIES, "Batch write retries by sink.");
    describe_counter!(
        SINK_DEAD_LETTERED,
        "Events a sink gave up on and dead-lettered."
    );
    describe_histogram!(SINK_BATCH_SIZE, "Events per written batch.");
    describe_histogram!(SINK_WRITE_DURATION, "Duration of one batch write attempt.");
    describe_gauge!(SINK_QUEUE_DEPTH, "Events waiting in a sink's queue.");
    describe_gauge!(SINK_QUEUE_CAPACITY, "Capacity of a sink's queue.");
    describe_counter!(
        SINK_DROPPED,
        "Events discarded by a full queue (drop_oldest)."
    );
    describe_gauge!(SINK_IN_FLIGHT, "Batches being written by a sink.");
    describe_counter!(
        DEAD_LETTERS,
        "Entries written to the dead-letter stream, by stage and reason."
    );
    describe_counter!(
        DEAD_LETTER_WRITE_ERRORS,
        "Failed attempts to write to the dead-letter stream."
    );
    describe_gauge!(SPOOL_BYTES, "Bytes held in a sink's local spool.");
    describe_counter!(
        SPOOL_RECORDS,
        "Events written to a sink's spool (op=written) and handed back to its queue (op=replayed)."
    );
    describe_counter!(
        SPOOL_CORRUPT_RECORDS,
        "Damaged spool regions skipped on replay (torn tail, checksum mismatch); each lost at least one event."
    );
    describe_counter!(
        SPOOL_SKIPPED_BYTES,
        "Bytes of damaged spool regions skipped on replay."
    );
    describe_counter!(
        SPOOL_DROPPED,
        "Events a spool could not keep, by reason (full, too_large, write_error, shutdown)."
    );
    describe_counter!(RATE_LIMITED_EVENTS, "Events over their rate limit.");
    describe_counter!(
        RATE_LIMIT_EXCEEDED,
        "Rate-limit windows that went over the limit (once per key and window)."
    );
    describe_counter!(LEADERBOARD_UPDATES, "Leaderboard member updates applied.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label tells the build.");
}

/// Handles for one sink of one pipeline.
#[derive(Clone)]
pub struct SinkMetrics {
    pub pipeline: String,
    pub sink: String,
    pub written: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub batch_size: Histogram,
    pub write_duration: Histogram,
    pub queue_depth: Gauge,
    pub dropped: Counter,
    pub in_flight: Gauge,
    pub latency: Arc<LatencyHistogram>,
}

impl SinkMetrics {
    pub fn new(pipeline: &str, sink: &str, kind: &str) -> SinkMetrics {
        let labels = [
            ("pipeline", pipeline.to_string()),
            ("sink", sink.to_string()),
            ("kind", kind.to_string()),
        ];
        SinkMetrics {
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            written: counter!(SINK_EVENTS_WRITTEN, &labels),
            retries: counter!(SINK_RETRIES, &labels),
            dead_lettered: counter!(SINK_DEAD_LETTERED, &labels),
            batch_size: histogram!(SINK_BATCH_SIZE, &labels),
            write_duration: histogram!(SINK_WRITE_DURATION, &labels),
            queue_depth: gauge!(SINK_QUEUE_DEPTH, &labels),
            dropped: counter!(SINK_DROPPED, &labels),
            in_flight: gauge!(SINK_IN_FLIGHT, &labels),
            latency: LatencyHistogram::register(&[
                ("pipeline", pipeline),
                ("sink", sink),
                ("kind", kind),
            ]),
        }
    }

    pub fn set_capacity(&self, capacity: usize) {
        gauge!(SINK_QUEUE_CAPACITY, "pipeline" => self.pipeline.clone(), "sink" => self.sink.clone())
            .set(capacity as f64);
    }

    /// Per event and error kind; kinds are few so the lookup is acceptable off the hot path.
    pub fn write_errors(&self, error_kind: &'static str, count: u64) {
        counter!(SINK_WRITE_ERRORS, "pipeline" => self.pipeline.clone(), "sink" => self.sink.clone(), "error" => error_kind)
            .increment(count);
    }
}

/// Handles for the spool of one sink of one pipeline.
#[derive(Clone)]
pub struct SpoolMetrics {
    pub pipeline: String,
    pub sink: String,
    pub bytes: Gauge,
    pub written: Counter,
    pub replayed: Counter,
    pub corrupt_records: Counter,
    pub skipped_bytes: Counter,
}

impl SpoolMetrics {
    pub fn new(pipeline: &str, sink: &str) -> SpoolMetrics {
        let labels = [
            ("pipeline", pipeline.to_string()),
            ("sink", sink.to_string()),
        ];
        SpoolMetrics {
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            bytes: gauge!(SPOOL_BYTES, &labels),
            written: counter!(SPOOL_RECORDS, "pipeline" => pipeline.to_string(), "sink" => sink.to_string(), "op" => "written"),
            replayed: counter!(SPOOL_RECORDS, "pipeline" => pipeline.to_string(), "sink" => sink.to_string(), "op" => "replayed"),
            corrupt_records: counter!(SPOOL_CORRUPT_RECORDS, &labels),
            skipped_bytes: counter!(SPOOL_SKIPPED_BYTES, &labels),
        }
    }

    /// Drops are rare (a full disk, a shutdown past its deadline): a lookup is fine.
    pub fn dropped(&self, reason: &'static str, count: u64) {
        counter!(SPOOL_DROPPED, "pipeline" => self.pipeline.clone(), "sink" => self.sink.clone(), "reason" => reason)
            .increment(count);
    }
}

/// Counters of the source, cached per channel.
pub fn source_received(source: &'static str, channel: &str) -> (Counter, Counter) {
    (
        counter!(SOURCE_EVENTS_RECEIVED, "source" => source, "channel" => channel.to_string()),
        counter!(SOURCE_BYTES_RECEIVED, "source" => source, "channel" => channel.to_string()),
    )
}

pub fn source_shed(source: &'static str, channel: &str) -> Counter {
    counter!(SOURCE_SHED, "source" => source, "channel" => channel.to_string())
}

pub fn source_disconnected(source: &'static str) {
    counter!(SOURCE_DISCONNECTS, "source" => source).increment(1);
}

pub fn source_subscribed(source: &'static str, subscribed: bool) {
    gauge!(SOURCE_SUBSCRIBED, "source" => source).set(if subscribed { 1.0 } else { 0.0 });
}

/// Counters of the Streams source for one stream: `(acked, claimed)`.
pub fn source_stream(source: &'static str, stream: &str) -> (Counter, Counter) {
    (
        counter!(SOURCE_ACKED, "source" => source, "stream" => stream.to_string()),
        counter!(SOURCE_CLAIMED, "source" => source, "stream" => stream.to_string()),
    )
}

pub fn source_pending(source: &'static str, stream: &str) -> Gauge {
    gauge!(SOURCE_PENDING, "source" => source, "stream" => stream.to_string())
}

pub fn source_sequence_gaps(source: &'static str) -> Counter {
    counter!(SOURCE_SEQUENCE_GAPS, "source" => source)
}

pub fn event_invalid(reason: &'static str) {
    counter!(EVENTS_INVALID, "reason" => reason).increment(1);
}

pub fn event_unrouted() {
    counter!(EVENTS_UNROUTED).increment(1);
}

pub fn dead_letter_written(stage: &str, reason: &str, count: u64) {
    counter!(DEAD_LETTERS, "stage" => stage.to_string(), "reason" => reason.to_string())
        .increment(count);
}

pub fn dead_letter_write_failed() {
    counter!(DEAD_LETTER_WRITE_ERRORS).increment(1);
}

pub fn rate_limited(pipeline: &str, sink: &str, events: u64) {
    counter!(RATE_LIMITED_EVENTS, "pipeline" => pipeline.to_string(), "sink" => sink.to_string())
        .increment(events);
}

pub fn rate_limit_exceeded(pipeline: &str, sink: &str, windows: u64) {
    counter!(RATE_LIMIT_EXCEEDED, "pipeline" => pipeline.to_string(), "sink" => sink.to_string())
        .increment(windows);
}

pub fn leaderboard_updated(pipeline: &str, board: &str, members: u64) {
    counter!(LEADERBOARD_UPDATES, "pipeline" => pipeline.to_string(), "board" => board.to_string())
        .increment(members);
}
