//! Redis sorted-set leaderboards: per configured board, one sorted set per UTC day of
//! event time, scored per member (`user_id`) by a field of the event or a constant.
//!
//! A batch is one pipeline (one round trip) of one Lua script call per board and day; the
//! script sums (or keeps the max of) each member's new scores and applies them with one
//! `ZINCRBY` (or `ZADD GT`) per member. Each event is counted into a board at most once,
//! however often it is retried or replayed (see [`super::redis_aggregate`], which also
//! explains the Redis Cluster layout). This sink never retries by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::redis_aggregate::{self, invoke_all};
use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::Event;
use crate::telemetry::metrics;

/// The largest `n` a top-N read accepts.
pub const MAX_TOP: usize = 1000;

const SECONDS_PER_DAY: i64 = 86_400;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderboardConfig {
    /// The boards this sink keeps; an event counts into every board whose `event_types`
    /// it matches. Default: one board `purchases` (`event_types = ["purchase"]`,
    /// `score = "amount"`).
    pub boards: Vec<BoardConfig>,
}

impl Default for LeaderboardConfig {
    fn default() -> LeaderboardConfig {
        LeaderboardConfig {
            boards: vec![BoardConfig {
                name: "purchases".to_string(),
                event_types: vec!["purchase".to_string()],
                ..BoardConfig::default()
            }],
        }
    }
}

/// What an event adds to its member's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Score {
    /// A constant, e.g. `score = 1.0` counts events.
    Constant(f64),
    /// A field: `"amount"`, or a field of `data` (`"points"` or `"data.points"`; dots
    /// descend into nested objects, e.g. `"cart.total"`).
    Field(String),
}

/// `increment` or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardMode {
    /// A member's score is the sum of its events' scores (`ZINCRBY`).
    Increment,
    /// A member's score is the highest of its events' scores (`ZADD GT`).
    Max,
}

impl BoardMode {
    fn as_str(self) -> &'static str {
        match self {
            BoardMode::Increment => "increment",
            BoardMode::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardConfig {
    /// Board name, as used by `ingestd top NAME` and `GET /leaderboards/NAME`; letters,
    /// digits, `_`, `-` and `.`.
    pub name: String,
    /// Event types that count into this board (e.g. `["purchase"]`); empty = every event.
    pub event_types: Vec<String>,
    /// What an event adds to its member (`user_id`): a field name (`"amount"`, or a field
    /// of `data`, e.g. `"points"`, `"cart.total"`) or a constant (`1.0` counts events).
    /// Events without a finite number in that field are left out of this board.
    pub score: Score,
    /// `increment` (scores add up) or `max` (a member keeps its highest score).
    pub mode: BoardMode,
    /// Key prefix; a day's key is the prefix plus `yyyy-mm-dd` (UTC day of the event
    /// time). Default `leaderboard:NAME:`. Braces are literal (a Redis Cluster hash tag).
    pub key_prefix: Option<String>,
    /// How long a day's board is kept after its UTC day ends: the key expires at
    /// (end of day + ttl), the same instant on every write, so retries and late events never
    /// extend it. Events for a day already expired are left out.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for BoardConfig {
    fn default() -> BoardConfig {
        BoardConfig {
            name: String::new(),
            event_types: Vec::new(),
            score: Score::Field("amount".to_string()),
            mode: BoardMode::Increment,
            key_prefix: None,
            ttl: Duration::from_secs(8 * SECONDS_PER_DAY as u64),
        }
    }
}

impl BoardConfig {
    /// The key prefix in force (the configured one, or `leaderboard:NAME:`).
    pub fn effective_key_prefix(&self) -> String {
        match &self.key_prefix {
            Some(prefix) => prefix.clone(),
            None => format!("leaderboard:{}:", self.name),
        }
    }
}

impl LeaderboardConfig {
    /// Pure checks, as `(key relative to this table, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.boards.is_empty() {
            problems.push((
                "boards".to_string(),
                "at least one board is needed, e.g. boards = [{ name = \"purchases\", event_types = [\"purchase\"], score = \"amount\" }]".to_string(),
            ));
        }
        let mut seen_names: Vec<&str> = Vec::new();
        for (index, board) in self.boards.iter().enumerate() {
            let key = |field: &str| format!("boards[{index}].{field}");
            if board.name.is_empty() {
                problems.push((key("name"), "must not be empty".to_string()));
            } else if !board
                .name
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || "_-.".contains(character))
            {
                problems.push((
                    key("name"),
                    format!(
                        "{:?} may only contain letters, digits, '_', '-' and '.' (it appears in URLs and keys)",
                        board.name
                    ),
                ));
            } else if seen_names.contains(&board.name.as_str()) {
                problems.push((
                    key("name"),
                    format!("board {:?} is defined twice in this sink", board.name),
                ));
            }
            seen_names.push(&board.name);
            if board
                .event_types
                .iter()
                .any(|event_type| event_type.is_empty())
            {
                problems.push((
                    key("event_types"),
                    "must not contain an empty string (an empty list means every event)"
                        .to_string(),
                ));
            }
            match &board.score {
                Score::Constant(value) if !value.is_finite() => problems.push((
                    key("score"),
                    format!("{value} is not a finite number (e.g. score = 1.0)"),
                )),
                Score::Field(field) if field.is_empty() || field == "data" => problems.push((
                    key("score"),
                    format!("{field:?} is not a numeric field (e.g. score = \"amount\")"),
                )),
                _ => {}
            }
            if board.key_prefix.as_deref() == Some("") {
                problems.push((
                    key("key_prefix"),
                    "must not be empty (default \"leaderboard:NAME:\")".to_string(),
                ));
            }
            if board.ttl < Duration::from_secs(1) {
                problems.push((
                    key("ttl"),
                    format!(
                        "{:?} is too short: at least 1s (default \"8days\")",
                        board.ttl
                    ),
                ));
            }
        }
        problems
    }
}

/// A validated board, ready for the write path.
#[derive(Debug, Clone)]
struct Board {
    name: String,
    event_types: Vec<String>,
    score: Score,
    mode: BoardMode,
    key_prefix: String,
    ttl_secs: i64,
}

impl Board {
    fn from_config(config: &BoardConfig) -> Board {
        Board {
            name: config.name.clone(),
            event_types: config.event_types.clone(),
            score: config.score.clone(),
            mode: config.mode,
            key_prefix: config.effective_key_prefix(),
            ttl_secs: i64::try_from(config.ttl.as_secs()).unwrap_or(i64::MAX / 4),
        }
    }

    fn matches(&self, event: &Event) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&event.event_type)
    }

    fn key(&self, day: NaiveDate) -> String {
        format!("{}{}", self.key_prefix, day.format("%Y-%m-%d"))
    }

    /// Unix seconds at which the board of `day` expires: end of that UTC day plus ttl.
    fn expire_at(&self, day: NaiveDate) -> i64 {
        let day_start = day
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp();
        day_start
            .saturating_add(SECONDS_PER_DAY)
            .saturating_add(self.ttl_secs)
    }
}

/// The score `score` gives `event`, if it has a finite number there.
fn score_of(score: &Score, event: &Event) -> Option<f64> {
    let value = match score {
        Score::Constant(value) => *value,
        Score::Field(field) if field == "amount" => event.amount?,
        Score::Field(path) => {
            let data_path = path.strip_prefix("data.").unwrap_or(path);
            let mut parts = data_path.split('.');
            let mut value = event.data.get(parts.next()?)?;
            for part in parts {
                value = value.get(part)?;
            }
            value.as_f64()?
        }
    };
    value.is_finite().then_some(value)
}

/// One event's contribution to one member of one board-day.
#[derive(Debug, Clone, PartialEq)]
struct Contribution<'a> {
    batch_index: usize,
    event_id: &'a str,
    score: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct MemberUpdate<'a> {
    member: &'a str,
    contributions: Vec<Contribution<'a>>,
}

/// One script call: one board's key for one day, members in order of first appearance,
/// each member's contributions in batch order.
#[derive(Debug, Clone, PartialEq)]
struct DayUpdate<'a> {
    board: usize,
    key: String,
    expire_at: i64,
    members: Vec<MemberUpdate<'a>>,
}

impl DayUpdate<'_> {
    fn batch_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().flat_map(|member| {
            member
                .contributions
                .iter()
                .map(|contribution| contribution.batch_index)
        })
    }

    /// What the script applies when none of the events was seen before: the per-member
    /// sums (or maxima), in member order.
    #[cfg(test)]
    fn totals(&self, mode: BoardMode) -> Vec<(&str, f64)> {
        self.members
            .iter()
            .map(|member| {
                let scores = member.contributions.iter().map(|c| c.score);
                let total = match mode {
                    BoardMode::Increment => scores.sum(),
                    BoardMode::Max => scores.fold(f64::NEG_INFINITY, f64::max),
                };
                (member.member, total)
            })
            .collect()
    }
}

/// Groups a batch into per board-and-day updates. Events that match no board, have no
/// score for it, or fall on a day whose board has already expired (at `now`) are left out.
fn plan<'a>(boards: &[Board], batch: &'a [Arc<Event>], now: DateTime<Utc>) -> Vec<DayUpdate<'a>> {
    let mut updates: Vec<DayUpdate<'a>> = Vec::new();
    let mut update_of_day: HashMap<(usize, NaiveDate), usize> = HashMap::new();
    // Sized for the batch up front: growing it rehashes every member seen so far.
    let mut member_of_update: HashMap<(usize, &'a str), usize> =
        HashMap::with_capacity(batch.len());
    // Most batches hold one day: remember the last (board, day) so it is hashed only once.
    let mut last_day: Option<((usize, NaiveDate), usize)> = None;
    let now_secs = now.timestamp();
    for (batch_index, event) in batch.iter().enumerate() {
        let day = event.timestamp.date_naive();
        for (board_index, board) in boards.iter().enumerate() {
            if !board.matches(event) {
                continue;
            }
            let Some(score) = score_of(&board.score, event) else {
                tracing::debug!(board = %board.name, event_id = %event.event_id, "event has no score for this board, left out");
                continue;
            };
            let expire_at = board.expire_at(day);
            if expire_at <= now_secs {
                tracing::debug!(board = %board.name, %day, event_id = %event.event_id, "the day's board has expired, event left out");
                continue;
            }
            let update_index = match last_day {
                Some((known, index)) if known == (board_index, day) => index,
                _ => {
                    let index = *update_of_day.entry((board_index, day)).or_insert_with(|| {
                        updates.push(DayUpdate {
                            board: board_index,
                            key: board.key(day),
                            expire_at,
                            members: Vec::new(),
                        });
                        updates.len() - 1
                    });
                    last_day = Some(((board_index, day), index));
                    index
                }
            };
            let update = &mut updates[update_index];
            let member_index = *member_of_update
                .entry((update_index, event.user_id.as_str()))
                .or_insert_with(|| {
                    update.members.push(MemberUpdate {
                        member: &event.user_id,
                        contributions: Vec::new(),
                    });
                    update.members.len() - 1
                });
            update.members[member_index]
                .contributions
                .push(Contribution {
                    batch_index,
                    event_id: &event.event_id,
                    score,
                });
        }
    }
    updates
}

/// KEYS[1]: a board's sorted set for one day; KEYS[2]: its seen set (event ids already
/// counted). ARGV[1]: EXPIREAT of both; ARGV[2]: `increment` or `max`; then per member:
/// member, k, and k pairs (event_id, score). Returns how many members were updated.
/// Scores are formatted with 17 significant digits: Lua's default number-to-string
/// conversion keeps only 14.
pub const LEADERBOARD_SCRIPT: &str = r#"
local keep_max = ARGV[2] == 'max'
local updated = 0
local i = 3
while i <= #ARGV do
  local member = ARGV[i]
  local count = tonumber(ARGV[i + 1])
  i = i + 2
  local total = nil
  for _ = 1, count do
    local score = tonumber(ARGV[i + 1])
    if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
      if total == nil then
        total = score
      elseif keep_max then
        total = math.max(total, score)
      else
        total = total + score
      end
    end
    i = i + 2
  end
  if total ~= nil then
    local value = string.format('%.17g', total)
    if keep_max then
      redis.call('ZADD', KEYS[1], 'GT', value, member)
    else
      redis.call('ZINCRBY', KEYS[1], value, member)
    end
    updated = updated + 1
  end
end
if updated > 0 then
  redis.call('EXPIREAT', KEYS[1], ARGV[1])
  redis.call('EXPIREAT', KEYS[2], ARGV[1])
end
return updated
"#;

/// Queues one script call per update, in order (see [`LEADERBOARD_SCRIPT`] for the
/// arguments).
fn script_calls(
    boards: &[Board],
    script: &Script,
    sink_id: &str,
    updates: &[DayUpdate<'_>],
) -> redis::Pipeline {
    let mut pipeline = redis::Pipeline::with_capacity(updates.len());
    for update in updates {
        redis_aggregate::queue_script(&mut pipeline, script, &update.key, sink_id);
        pipeline
            .arg(update.expire_at)
            .arg(boards[update.board].mode.as_str());
        for member in &update.members {
            pipeline.arg(member.member).arg(member.contributions.len());
            for contribution in &member.contributions {
                pipeline.arg(contribution.event_id).arg(contribution.score);
            }
        }
    }
    pipeline
}

/// The commands the sink `sink_id` (`pipeline.sink`) sends for `batch`: one pipeline of
/// `EVALSHA` calls of [`LEADERBOARD_SCRIPT`], one per board and day. Public so that the
/// benchmark's raw-client baseline sends exactly what the sink sends.
pub fn batch_pipeline(
    config: &LeaderboardConfig,
    sink_id: &str,
    batch: &[Arc<Event>],
    now: DateTime<Utc>,
) -> redis::Pipeline {
    let boards: Vec<Board> = config.boards.iter().map(Board::from_config).collect();
    let script = Script::new(LEADERBOARD_SCRIPT);
    script_calls(&boards, &script, sink_id, &plan(&boards, batch, now))
}

pub struct LeaderboardSink {
    boards: Vec<Board>,
    redis: ConnectionManager,
    script: Script,
    pipeline: String,
    /// `pipeline.sink`, part of every seen key: each sink counts an event once.
    sink_id: String,
}

impl LeaderboardSink {
    pub fn new(
        config: &LeaderboardConfig,
        context: &SinkContext,
    ) -> anyhow::Result<LeaderboardSink> {
        let problems = config.validate();
        if let Some((key, reason)) = problems.first() {
            anyhow::bail!("leaderboard.{key}: {reason}");
        }
        Ok(LeaderboardSink {
            boards: config.boards.iter().map(Board::from_config).collect(),
            redis: context.redis.clone(),
            script: Script::new(LEADERBOARD_SCRIPT),
            pipeline: context.pipeline.clone(),
            sink_id: format!("{}.{}", context.pipeline, context.sink),
        })
    }

    async fn write_batch(&self, batch: &[Arc<Event>]) -> Result<Written, BatchFailure> {
        let updates = plan(&self.boards, batch, Utc::now());
        let pipeline = script_calls(&self.boards, &self.script, &self.sink_id, &updates);
        let results = invoke_all(&self.redis, &self.script, pipeline)
            .await
            .map_err(BatchFailure::All)?;

        let mut members_updated: BTreeMap<usize, u64> = BTreeMap::new();
        // An event in several failed updates keeps a retryable error over a permanent one:
        // retrying may fix the first, and a permanent error then still dead-letters it.
        let mut failed: BTreeMap<usize, SinkError> = BTreeMap::new();
        for (update, result) in updates.iter().zip(results) {
            let error = match result {
                Ok(redis::Value::Int(count)) => {
                    *members_updated.entry(update.board).or_default() += count.max(0) as u64;
                    continue;
                }
                Ok(other) => redis_aggregate::unexpected_reply("leaderboard", &other),
                Err(error) => error,
            };
            tracing::debug!(key = %update.key, %error, "leaderboard update failed");
            for batch_index in update.batch_indices() {
                let keep_existing = failed
                    .get(&batch_index)
                    .is_some_and(|existing| existing.retryable || !error.retryable);
                if !keep_existing {
                    failed.insert(batch_index, error.clone());
                }
            }
        }
        for (board_index, count) in members_updated {
            if count > 0 {
                metrics::leaderboard_updated(&self.pipeline, &self.boards[board_index].name, count);
            }
        }
        if failed.is_empty() {
            return Ok(Written::default());
        }
        Err(BatchFailure::Some(failed.into_iter().collect()))
    }
}

impl Sink for LeaderboardSink {
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

/// Reads boards for `ingestd top` and `GET /leaderboards/{board}`.
pub struct LeaderboardReader {
    /// Board name -> key prefix. When two sinks define the same board name, the first
    /// (by pipeline name, then sink name) is read.
    boards: BTreeMap<String, String>,
    redis: ConnectionManager,
}

impl LeaderboardReader {
    /// `None` when no pipeline has a leaderboard sink.
    pub fn from_config(
        config: &crate::config::Config,
        redis: ConnectionManager,
    ) -> Option<LeaderboardReader> {
        let mut boards = BTreeMap::new();
        for pipeline in config.pipelines.values() {
            for sink in pipeline.sinks.values() {
                let Some(leaderboard) = &sink.leaderboard else {
                    continue;
                };
                for board in &leaderboard.boards {
                    boards
                        .entry(board.name.clone())
                        .or_insert_with(|| board.effective_key_prefix());
                }
            }
        }
        if boards.is_empty() {
            return None;
        }
        Some(LeaderboardReader { boards, redis })
    }

    /// The top `n` members of `board` on `day` (`yyyy-mm-dd`, default today in UTC), by
    /// score descending; equal scores come in reverse byte order of the member
    /// (`ZREVRANGE` order), so the order is stable from one read to the next.
    /// JSON: `{"board", "day", "top": [{"member", "score"}, ...]}`.
    pub async fn top(
        &self,
        board: &str,
        day: Option<&str>,
        n: usize,
    ) -> anyhow::Result<serde_json::Value> {
        let Some(key_prefix) = self.boards.get(board) else {
            let known: Vec<&str> = self.boards.keys().map(String::as_str).collect();
            anyhow::bail!(
                "unknown board {board:?}: the configured boards are {}",
                known.join(", ")
            );
        };
        let date = match day {
            None => Utc::now().date_naive(),
            Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
                anyhow::anyhow!("day {text:?} is not a date: use yyyy-mm-dd, e.g. 2026-11-24")
            })?,
        };
        if n > MAX_TOP {
            anyhow::bail!("n = {n} is too large: at most {MAX_TOP}");
        }
        let day_text = date.format("%Y-%m-%d").to_string();
        let key = format!("{key_prefix}{day_text}");
        let entries: Vec<(String, f64)> = if n == 0 {
            Vec::new()
        } else {
            let mut connection = self.redis.clone();
            redis::cmd("ZREVRANGE")
                .arg(&key)
                .arg(0)
                .arg(n - 1)
                .arg("WITHSCORES")
                .query_async(&mut connection)
                .await
                .map_err(|error| anyhow::anyhow!("reading {key}: {error}"))?
        };
        let top: Vec<serde_json::Value> = entries
            .into_iter()
            .map(|(member, score)| serde_json::json!({"member": member, "score": score}))
            .collect();
        Ok(serde_json::json!({
            "board": board,
            "day": day_text,
            "top": top,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        event_id: &str,
        user_id: &str,
        event_type: &str,
        timestamp: &str,
        amount: Option<f64>,
        data: serde_json::Value,
    ) -> Arc<Event> {
        let mut object = serde_json::json!({
            "event_id": event_id,
            "user_id": user_id,
            "event_type": event_type,
            "timestamp": timestamp,
            "data": data,
        });
        if let Some(amount) = amount {
            object["amount"] = serde_json::json!(amount);
        }
        let payload = bytes::Bytes::from(object.to_string());
        Arc::new(
            crate::event::decode(payload, Arc::from("test"), 65536, Utc::now())
                .expect("valid event"),
        )
    }

    fn board(config: BoardConfig) -> Board {
        assert!(
            LeaderboardConfig {
                boards: vec![config.clone()]
            }
            .validate()
            .is_empty()
        );
        Board::from_config(&config)
    }

    fn now() -> DateTime<Utc> {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn default_is_the_purchases_board() {
        let config = LeaderboardConfig::default();
        assert!(config.validate().is_empty());
        assert_eq!(config.boards.len(), 1);
        let purchases = &config.boards[0];
        assert_eq!(purchases.name, "purchases");
        assert_eq!(purchases.event_types, vec!["purchase".to_string()]);
        assert_eq!(purchases.score, Score::Field("amount".to_string()));
        assert_eq!(purchases.mode, BoardMode::Increment);
        assert_eq!(purchases.effective_key_prefix(), "leaderboard:purchases:");
        assert_eq!(purchases.ttl, Duration::from_secs(8 * 86_400));
    }

    #[test]
    fn score_accepts_a_field_or_a_constant() {
        let field: BoardConfig =
            serde_json::from_value(serde_json::json!({"name": "a", "score": "amount"})).unwrap();
        assert_eq!(field.score, Score::Field("amount".to_string()));
        let constant: BoardConfig =
            serde_json::from_value(serde_json::json!({"name": "a", "score": 1})).unwrap();
        assert_eq!(constant.score, Score::Constant(1.0));
        let unknown =
            serde_json::from_value::<BoardConfig>(serde_json::json!({"name": "a", "scores": 1}));
        assert!(unknown.is_err());
    }

    #[test]
    fn validate_names_every_problem() {
        let config = LeaderboardConfig {
            boards: vec![
                BoardConfig {
                    name: "a b".to_string(),
                    ..BoardConfig::default()
                },
                BoardConfig {
                    name: "x".to_string(),
                    score: Score::Constant(f64::NAN),
                    key_prefix: Some(String::new()),
                    ttl: Duration::ZERO,
                    ..BoardConfig::default()
                },
                BoardConfig {
                    name: "x".to_string(),
                    ..BoardConfig::default()
                },
            ],
        };
        let keys: Vec<String> = config.validate().into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            vec![
                "boards[0].name",
                "boards[1].score",
                "boards[1].key_prefix",
                "boards[1].ttl",
                "boards[2].name"
            ]
        );
        assert_eq!(
            LeaderboardConfig { boards: Vec::new() }.validate()[0].0,
            "boards"
        );
    }

    #[test]
    fn plan_groups_per_day_and_member_in_batch_order() {
        let purchases = board(BoardConfig {
            name: "purchases".to_string(),
            event_types: vec!["purchase".to_string()],
            ..BoardConfig::default()
        });
        let batch = vec![
            event(
                "e1",
                "alice",
                "purchase",
                "2026-11-24T10:00:00Z",
                Some(10.0),
                serde_json::json!({}),
            ),
            event(
                "e2",
                "bob",
                "purchase",
                "2026-11-24T10:00:01Z",
                Some(2.5),
                serde_json::json!({}),
            ),
            event(
                "e3",
                "alice",
                "view",
                "2026-11-24T10:00:02Z",
                Some(99.0),
                serde_json::json!({}),
            ),
            event(
                "e4",
                "alice",
                "purchase",
                "2026-11-24T23:59:59.999Z",
                Some(5.25),
                serde_json::json!({}),
            ),
            event(
                "e5",
                "alice",
                "purchase",
                "2026-11-23T23:00:00Z",
                Some(1.0),
                serde_json::json!({}),
            ),
            event(
                "e6",
                "carol",
                "purchase",
                "2026-11-24T11:00:00Z",
                None,
                serde_json::json!({}),
            ),
        ];
        let updates = plan(std::slice::from_ref(&purchases), &batch, now());
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].key, "leaderboard:purchases:2026-11-24");
        assert_eq!(
            updates[0].totals(BoardMode::Increment),
            vec![("alice", 15.25), ("bob", 2.5)]
        );
        assert_eq!(
            updates[0].batch_indices().collect::<Vec<_>>(),
            vec![0, 3, 1]
        );
        // Expires 8 days after the end of 2026-11-24.
        let end_of_day: DateTime<Utc> = "2026-11-25T00:00:00Z".parse().unwrap();
        assert_eq!(updates[0].expire_at, end_of_day.timestamp() + 8 * 86_400);
        assert_eq!(updates[1].key, "leaderboard:purchases:2026-11-23");
        assert_eq!(
            updates[1].totals(BoardMode::Increment),
            vec![("alice", 1.0)]
        );
    }

    /// (board index, key, totals) of one update.
    type Summary<'a> = (usize, &'a str, Vec<(&'a str, f64)>);

    #[test]
    fn plan_reads_data_fields_constants_and_drops_expired_days() {
        let points = board(BoardConfig {
            name: "points".to_string(),
            score: Score::Field("data.game.points".to_string()),
            mode: BoardMode::Max,
            key_prefix: Some("lb:{games}:".to_string()),
            ttl: Duration::from_secs(86_400),
            ..BoardConfig::default()
        });
        let visits = board(BoardConfig {
            name: "visits".to_string(),
            score: Score::Constant(1.0),
            ..BoardConfig::default()
        });
        let batch = vec![
            event(
                "e1",
                "alice",
                "score",
                "2026-11-24T10:00:00Z",
                None,
                serde_json::json!({"game": {"points": 7}}),
            ),
            event(
                "e2",
                "alice",
                "score",
                "2026-11-24T10:00:01Z",
                None,
                serde_json::json!({"game": {"points": 3}}),
            ),
            event(
                "e3",
                "bob",
                "score",
                "2026-11-24T10:00:02Z",
                None,
                serde_json::json!({"game": {"points": "high"}}),
            ),
            // The board of 2026-11-22 expired at 2026-11-24T00:00Z (end of day + 1 day).
            event(
                "e4",
                "bob",
                "score",
                "2026-11-22T10:00:00Z",
                None,
                serde_json::json!({"game": {"points": 1}}),
            ),
        ];
        let updates = plan(&[points, visits], &batch, now());
        let summary: Vec<Summary<'_>> = updates
            .iter()
            .map(|update| {
                let mode = if update.board == 0 {
                    BoardMode::Max
                } else {
                    BoardMode::Increment
                };
                (update.board, update.key.as_str(), update.totals(mode))
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "lb:{games}:2026-11-24", vec![("alice", 7.0)]),
                (
                    1,
                    "leaderboard:visits:2026-11-24",
                    vec![("alice", 2.0), ("bob", 1.0)]
                ),
                (1, "leaderboard:visits:2026-11-22", vec![("bob", 1.0)]),
            ]
        );
    }
}
