//! Redis fixed-window rate counters on event time: key `{prefix}{user_id}:{window_index}`,
//! `window_index = floor(epoch_seconds / window_secs)`, `INCRBY` plus `EXPIRE .. NX`.
//!
//! A batch is one pipeline (one round trip) of one Lua script call per key. The script
//! gives each new event its ordinal in the window (counter before + its position among
//! the key's new events) and stores it beside the counter, so an event is counted once
//! however often it is retried or replayed, and a retry reports the same verdict: an event
//! is over the limit iff its ordinal > limit (see [`super::redis_aggregate`] for the seen
//! keys and the Redis Cluster layout). With `on_limit = drop | tag` the runner uses the
//! verdicts returned in [`Written::over_limit`]; this sink never retries by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::redis_aggregate::{self, invoke_all};
use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::Event;
use crate::telemetry::metrics;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateCounterConfig {
    /// Length of a fixed window on event time, in whole seconds (e.g. "60s", "1h").
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Events per user and window; those beyond are over the limit: counted in
    /// `ingestd_rate_limited_events_total`, and handled as the pipeline's `on_limit` says.
    pub limit: u64,
    /// Key prefix; a counter's key is `{key_prefix}{user_id}:{window_index}`.
    pub key_prefix: String,
    /// How long a counter outlives its window length: it expires `window + expire_margin`
    /// after its first event (`EXPIRE key ttl NX`), which leaves time for late events and
    /// for reading it. Rounded up to whole seconds.
    #[serde(with = "humantime_serde")]
    pub expire_margin: Duration,
}

impl Default for RateCounterConfig {
    fn default() -> RateCounterConfig {
        RateCounterConfig {
            window: Duration::from_secs(60),
            limit: 100,
            key_prefix: "rate:".to_string(),
            expire_margin: Duration::from_secs(60),
        }
    }
}

impl RateCounterConfig {
    /// Pure checks, as `(key relative to this table, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.window < Duration::from_secs(1) || self.window.subsec_nanos() != 0 {
            problems.push((
                "window".to_string(),
                format!(
                    "{:?} is not a whole number of seconds of at least 1s (e.g. \"60s\")",
                    self.window
                ),
            ));
        }
        if self.limit == 0 {
            problems.push((
                "limit".to_string(),
                "must be at least 1 (default 100)".to_string(),
            ));
        }
        if self.key_prefix.is_empty() {
            problems.push((
                "key_prefix".to_string(),
                "must not be empty (default \"rate:\")".to_string(),
            ));
        }
        problems
    }

    fn window_secs(&self) -> i64 {
        i64::try_from(self.window.as_secs())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// `window + expire_margin` in whole seconds, rounded up.
    fn ttl_secs(&self) -> i64 {
        let ttl = self.window.saturating_add(self.expire_margin);
        let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        i64::try_from(whole).unwrap_or(i64::MAX)
    }
}

/// `floor(epoch_seconds / window_secs)`, also for times before 1970.
pub fn window_index(timestamp: DateTime<Utc>, window_secs: i64) -> i64 {
    timestamp.timestamp().div_euclid(window_secs)
}

fn counter_key(key_prefix: &str, user_id: &str, window_index: i64) -> String {
    format!("{key_prefix}{user_id}:{window_index}")
}

/// One script call: one user's counter for one window and its events in batch order.
#[derive(Debug, Clone, PartialEq)]
struct WindowUpdate<'a> {
    key: String,
    batch_indices: Vec<usize>,
    event_ids: Vec<&'a str>,
}

/// Groups a batch per counter key, keys in order of first appearance.
fn plan<'a>(batch: &'a [Arc<Event>], key_prefix: &str, window_secs: i64) -> Vec<WindowUpdate<'a>> {
    let mut updates: Vec<WindowUpdate<'a>> = Vec::new();
    // Keyed by (user, window) rather than by the formatted key: a lookup then formats
    // and allocates nothing. Sized for the batch: growing it rehashes every key again.
    let mut update_of_key: HashMap<(&'a str, i64), usize> = HashMap::with_capacity(batch.len());
    for (batch_index, event) in batch.iter().enumerate() {
        let window = window_index(event.timestamp, window_secs);
        let update_index = *update_of_key
            .entry((event.user_id.as_str(), window))
            .or_insert_with(|| {
                updates.push(WindowUpdate {
                    key: counter_key(key_prefix, &event.user_id, window),
                    batch_indices: Vec::new(),
                    event_ids: Vec::new(),
                });
                updates.len() - 1
            });
        updates[update_index].batch_indices.push(batch_index);
        updates[update_index].event_ids.push(&event.event_id);
    }
    updates
}

/// Queues one script call per update, in order (see [`RATE_SCRIPT`] for the arguments).
fn script_calls(
    script: &Script,
    sink_id: &str,
    ttl_secs: i64,
    updates: &[WindowUpdate<'_>],
) -> redis::Pipeline {
    let mut pipeline = redis::Pipeline::with_capacity(updates.len());
    for update in updates {
        redis_aggregate::queue_script(&mut pipeline, script, &update.key, sink_id);
        pipeline.arg(ttl_secs);
        for event_id in &update.event_ids {
            pipeline.arg(*event_id);
        }
    }
    pipeline
}

/// The commands the sink `sink_id` (`pipeline.sink`) sends for `batch`: one pipeline of
/// `EVALSHA` calls of [`RATE_SCRIPT`], one per counter key. Public so that the
/// benchmark's raw-client baseline sends exactly what the sink sends.
pub fn batch_pipeline(
    config: &RateCounterConfig,
    sink_id: &str,
    batch: &[Arc<Event>],
) -> redis::Pipeline {
    let updates = plan(batch, &config.key_prefix, config.window_secs());
    let script = Script::new(RATE_SCRIPT);
    script_calls(&script, sink_id, config.ttl_secs(), &updates)
}

/// What one script call reported: the counter before and after, and each event's
/// ordinal in the window (for an event seen before, the ordinal it got then).
#[derive(Debug, Clone, PartialEq, Eq)]
struct WindowReply {
    before: i64,
    after: i64,
    ordinals: Vec<i64>,
}

impl WindowReply {
    fn parse(value: redis::Value, expected_events: usize) -> Result<WindowReply, SinkError> {
        let mut numbers: Vec<i64> = redis::from_redis_value_ref(&value)
            .map_err(|_| redis_aggregate::unexpected_reply("rate_counter", &value))?;
        if numbers.len() != expected_events + 2 {
            return Err(redis_aggregate::unexpected_reply("rate_counter", &value));
        }
        let (before, after) = (numbers[0], numbers[1]);
        // The ordinals stay in the same buffer (one allocation per key, not two).
        numbers.drain(..2);
        Ok(WindowReply {
            before,
            after,
            ordinals: numbers,
        })
    }
}

/// The verdicts of one key's events and what they add to the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Verdicts {
    /// Batch indices of the events over the limit (new or seen before).
    over_limit: Vec<usize>,
    /// New events over the limit (a replay is not counted twice).
    newly_limited: u64,
    /// 1 when this call took the counter over the limit: before <= limit < after.
    crossed: u64,
}

/// An event is over the limit iff its ordinal in the window is above the limit; the
/// window crosses the limit once, in the call where before <= limit < after.
fn verdicts(update: &WindowUpdate<'_>, reply: &WindowReply, limit: u64) -> Verdicts {
    let signed_limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut result = Verdicts::default();
    for (&batch_index, &ordinal) in update.batch_indices.iter().zip(&reply.ordinals) {
        if ordinal <= signed_limit {
            continue;
        }
        result.over_limit.push(batch_index);
        // Ordinals above `before` were handed out by this call: the event is new.
        if ordinal > reply.before {
            result.newly_limited += 1;
        }
    }
    result.crossed = u64::from(reply.before <= signed_limit && signed_limit < reply.after);
    result
}

/// KEYS[1]: one user's counter for one window; KEYS[2]: its seen hash (event id ->
/// ordinal). ARGV[1]: ttl seconds; ARGV[2..]: event ids in batch order. Returns
/// {counter before, counter after, ordinal of each event}.
pub const RATE_SCRIPT: &str = r#"
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = before
local result = {before, 0}
for i = 2, #ARGV do
  local ordinal = redis.call('HGET', KEYS[2], ARGV[i])
  if ordinal then
    ordinal = tonumber(ordinal)
  else
    after = after + 1
    ordinal = after
    redis.call('HSET', KEYS[2], ARGV[i], ordinal)
  end
  result[#result + 1] = ordinal
end
if after > before then
  redis.call('INCRBY', KEYS[1], after - before)
  redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
  redis.call('EXPIRE', KEYS[2], ARGV[1], 'NX')
end
result[2] = after
return result
"#;

pub struct RateCounterSink {
    config: RateCounterConfig,
    redis: ConnectionManager,
    script: Script,
    pipeline: String,
    sink: String,
    /// `pipeline.sink`, part of every seen key: each sink counts an event once.
    sink_id: String,
}

impl RateCounterSink {
    pub fn new(
        config: &RateCounterConfig,
        context: &SinkContext,
    ) -> anyhow::Result<RateCounterSink> {
        let problems = config.validate();
        if let Some((key, reason)) = problems.first() {
            anyhow::bail!("rate_counter.{key}: {reason}");
        }
        Ok(RateCounterSink {
            config: config.clone(),
            redis: context.redis.clone(),
            script: Script::new(RATE_SCRIPT),
            pipeline: context.pipeline.clone(),
            sink: context.sink.clone(),
            sink_id: format!("{}.{}", context.pipeline, context.sink),
        })
    }

    async fn write_batch(&self, batch: &[Arc<Event>]) -> Result<Written, BatchFailure> {
        let updates = plan(batch, &self.config.key_prefix, self.config.window_secs());
        let pipeline = script_calls(
            &self.script,
            &self.sink_id,
            self.config.ttl_secs(),
            &updates,
        );
        let results = invoke_all(&self.redis, &self.script, pipeline)
            .await
            .map_err(BatchFailure::All)?;

        let mut over_limit = Vec::new();
        let mut newly_limited = 0;
        let mut crossed = 0;
        let mut retryable: Option<SinkError> = None;
        let mut permanent: Vec<(usize, SinkError)> = Vec::new();
        for (update, result) in updates.iter().zip(results) {
            let parsed = result.and_then(|value| WindowReply::parse(value, update.event_ids.len()));
            let reply = match parsed {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(key = %update.key, %error, "rate counter update failed");
                    if error.retryable {
                        retryable.get_or_insert(error);
                    } else {
                        permanent.extend(
                            update
                                .batch_indices
                                .iter()
                                .map(|&index| (index, error.clone())),
                        );
                    }
                    continue;
                }
            };
            let key_verdicts = verdicts(update, &reply, self.config.limit);
            over_limit.extend(key_verdicts.over_limit);
            newly_limited += key_verdicts.newly_limited;
            crossed += key_verdicts.crossed;
        }
        // Metrics first, even if the batch fails: the keys that were counted now will
        // report their events as seen on a retry, and must not be missed.
        if newly_limited > 0 {
            metrics::rate_limited(&self.pipeline, &self.sink, newly_limited);
        }
        if crossed > 0 {
            metrics::rate_limit_exceeded(&self.pipeline, &self.sink, crossed);
        }
        if let Some(error) = retryable {
            // The whole batch is retried: counted keys only replay their stored ordinals,
            // so the retry returns every verdict, which a partial failure cannot carry.
            return Err(BatchFailure::All(error));
        }
        over_limit.sort_unstable();
        let written = Written { over_limit };
        if !permanent.is_empty() {
            // The verdicts of the counted keys go along, or a gate would let events
            // over their limit through because another key of the batch was broken.
            return Err(BatchFailure::SomeWritten {
                failed: permanent,
                written,
            });
        }
        Ok(written)
    }
}

impl Sink for RateCounterSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        self.write_batch(batch).boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move { redis_aggregate::ping(&self.redis).await }.boxed()
    }
}

/// Reads counters for `GET /rate/{user_id}`.
pub struct RateReader {
    config: RateCounterConfig,
    redis: ConnectionManager,
}

impl RateReader {
    /// Reads the first rate counter sink (by pipeline name, then sink name); `None` when
    /// there is none.
    pub fn from_config(
        config: &crate::config::Config,
        redis: ConnectionManager,
    ) -> Option<RateReader> {
        let rate_counter = config
            .pipelines
            .values()
            .flat_map(|pipeline| pipeline.sinks.values())
            .find_map(|sink| sink.rate_counter.clone())?;
        Some(RateReader {
            config: rate_counter,
            redis,
        })
    }

    /// The current window (by the clock of this process) of `user_id`:
    /// `{"user_id", "window_index", "window_secs", "window_start", "count", "limit", "over_limit"}`.
    pub async fn current(&self, user_id: &str) -> anyhow::Result<serde_json::Value> {
        if user_id.is_empty() {
            anyhow::bail!("user_id must not be empty");
        }
        let window_secs = self.config.window_secs();
        let index = window_index(Utc::now(), window_secs);
        let key = counter_key(&self.config.key_prefix, user_id, index);
        let mut connection = self.redis.clone();
        let count: Option<u64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(|error| anyhow::anyhow!("reading {key}: {error}"))?;
        let count = count.unwrap_or(0);
        let window_start = DateTime::<Utc>::from_timestamp(index.saturating_mul(window_secs), 0)
            .map(|start| crate::event::format_timestamp(&start));
        Ok(serde_json::json!({
            "user_id": user_id,
            "window_index": index,
            "window_secs": window_secs,
            "window_start": window_start,
            "count": count,
            "limit": self.config.limit,
            "over_limit": count > self.config.limit,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_id: &str, user_id: &str, timestamp: &str) -> Arc<Event> {
        let payload = serde_json::json!({
            "event_id": event_id,
            "user_id": user_id,
            "event_type": "click",
            "timestamp": timestamp,
        })
        .to_string();
        Arc::new(
            crate::event::decode(payload.into(), Arc::from("test"), 65536, Utc::now())
                .expect("valid event"),
        )
    }

    #[test]
    fn window_index_is_floor_of_epoch_seconds() {
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(window_index(at("1970-01-01T00:00:59.999Z"), 60), 0);
        assert_eq!(window_index(at("1970-01-01T00:01:00Z"), 60), 1);
        assert_eq!(
            window_index(at("2026-11-24T10:00:00Z"), 60),
            1_795_514_400 / 60
        );
        assert_eq!(
            window_index(at("2026-11-24T10:00:59.999Z"), 60),
            1_795_514_400 / 60
        );
        assert_eq!(window_index(at("1969-12-31T23:59:59.500Z"), 60), -1);
        assert_eq!(
            window_index(at("2026-11-24T10:30:00Z"), 3600),
            1_795_516_200 / 3600
        );
    }

    #[test]
    fn plan_groups_per_user_and_window_in_batch_order() {
        let batch = vec![
            event("e1", "alice", "2026-11-24T10:00:01Z"),
            event("e2", "bob", "2026-11-24T10:00:02Z"),
            event("e3", "alice", "2026-11-24T10:00:59Z"),
            event("e4", "alice", "2026-11-24T10:01:00Z"),
            event("e5", "alice", "2026-11-24T10:00:30Z"),
        ];
        let updates = plan(&batch, "rate:", 60);
        let window = 1_795_514_400 / 60;
        assert_eq!(
            updates,
            vec![
                WindowUpdate {
                    key: format!("rate:alice:{window}"),
                    batch_indices: vec![0, 2, 4],
                    event_ids: vec!["e1", "e3", "e5"],
                },
                WindowUpdate {
                    key: format!("rate:bob:{window}"),
                    batch_indices: vec![1],
                    event_ids: vec!["e2"],
                },
                WindowUpdate {
                    key: format!("rate:alice:{}", window + 1),
                    batch_indices: vec![3],
                    event_ids: vec!["e4"],
                },
            ]
        );
    }

    fn update(batch_indices: Vec<usize>) -> WindowUpdate<'static> {
        WindowUpdate {
            key: "k".to_string(),
            event_ids: vec!["id"; batch_indices.len()],
            batch_indices,
        }
    }

    #[test]
    fn the_events_past_the_limit_are_over_it() {
        // Counter at 98 before the batch, limit 100: the 3rd and 4th new events are over.
        let reply = WindowReply {
            before: 98,
            after: 102,
            ordinals: vec![99, 100, 101, 102],
        };
        let result = verdicts(&update(vec![5, 6, 7, 8]), &reply, 100);
        assert_eq!(
            result,
            Verdicts {
                over_limit: vec![7, 8],
                newly_limited: 2,
                crossed: 1
            }
        );
    }

    #[test]
    fn the_limit_is_crossed_once_per_window() {
        let first = WindowReply {
            before: 0,
            after: 100,
            ordinals: (1..=100).collect(),
        };
        assert_eq!(
            verdicts(&update((0..100).collect()), &first, 100),
            Verdicts::default()
        );
        let second = WindowReply {
            before: 100,
            after: 150,
            ordinals: (101..=150).collect(),
        };
        let result = verdicts(&update((0..50).collect()), &second, 100);
        assert_eq!(result.over_limit, (0..50).collect::<Vec<_>>());
        assert_eq!((result.newly_limited, result.crossed), (50, 1));
        let third = WindowReply {
            before: 150,
            after: 151,
            ordinals: vec![151],
        };
        assert_eq!(verdicts(&update(vec![0]), &third, 100).crossed, 0);
    }

    #[test]
    fn a_replay_keeps_its_verdict_without_counting_again() {
        // Both events were counted before (ordinals 100 and 101 <= before = 120).
        let reply = WindowReply {
            before: 120,
            after: 120,
            ordinals: vec![100, 101],
        };
        let result = verdicts(&update(vec![0, 1]), &reply, 100);
        assert_eq!(
            result,
            Verdicts {
                over_limit: vec![1],
                newly_limited: 0,
                crossed: 0
            }
        );
    }

    #[test]
    fn validate_names_every_problem() {
        assert!(RateCounterConfig::default().validate().is_empty());
        let config = RateCounterConfig {
            window: Duration::from_millis(1500),
            limit: 0,
            key_prefix: String::new(),
            expire_margin: Duration::ZERO,
        };
        let keys: Vec<String> = config.validate().into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, vec!["window", "limit", "key_prefix"]);
    }

    #[test]
    fn ttl_is_window_plus_margin_rounded_up() {
        assert_eq!(RateCounterConfig::default().ttl_secs(), 120);
        let config = RateCounterConfig {
            expire_margin: Duration::from_millis(500),
            ..RateCounterConfig::default()
        };
        assert_eq!(config.ttl_secs(), 61);
    }
}
