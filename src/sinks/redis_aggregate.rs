//! Plumbing shared by the Redis aggregate sinks ([`super::leaderboard`] and
//! [`super::rate_counter`]): the "seen" keys that make every update idempotent, one Lua
//! script call per data key sent as one pipeline, and Redis error classification.
//!
//! # No double counting
//!
//! Every data key (one board's sorted set for one UTC day, one user's counter for one
//! window) has a companion *seen key* that records the ids of the events already counted
//! into it: a set for leaderboards, a hash `event_id -> ordinal` for rate counters. The
//! sink's Lua script checks and records each event id and updates the data key in the same
//! atomic step, so a batch retried after a timeout, or an event replayed later, changes no
//! score and no counter a second time. The seen key is given the same expiry as its data
//! key in the same script, so a marker never dies before the count it protects.
//!
//! One seen key per data key (rather than one `SET NX` key per event) costs about a third
//! of the memory (no per-key and per-expiry overhead) and expires together with its data.
//! A very large seen set is freed at once when it expires: for boards with millions of
//! events a day, enable `lazyfree-lazy-expire yes` so Redis frees it in the background.
//!
//! # Redis Cluster
//!
//! A Lua script may only touch keys of one hash slot. Each script invocation touches
//! exactly one data key and its seen key, and the seen key's name carries the data key's
//! hash tag: `ingestd:seen:{<data key>}:<pipeline>.<sink>` when the data key has no hash
//! tag (its slot is then the hash of its whole name, which is exactly what the tag
//! `{<data key>}` hashes), or `ingestd:seen:{<tag>}:<pipeline>.<sink>:<data key>` when the
//! data key has one (e.g. a `key_prefix` of `"lb:{shop}:"`). So every invocation is
//! single-slot and a cluster client can route it by its first key; a batch's invocations
//! go out as one pipeline (one round trip on a standalone server, one per node on a
//! cluster). What is needed to run on Cluster is a cluster connection instead of the
//! standalone `ConnectionManager`; only standalone Redis is tested. One limit: a data key
//! without a hash tag whose name contains `}` (a user id with `}` in it) cannot be
//! co-located by a tag, so on Cluster its invocation fails with `CROSSSLOT` (a permanent
//! error: those events are dead-lettered for that sink); standalone Redis is not affected.

use std::fmt;

use redis::aio::ConnectionManager;
use redis::{
    ErrorKind, Pipeline, RedisError, RedisResult, RedisWrite, Script, ServerErrorKind, ToRedisArgs,
    Value,
};

use super::SinkError;

/// The part of `key` Redis Cluster hashes: the content of the first `{...}` when it is
/// non-empty, else the whole key.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let after_open = &key[open + 1..];
    let close = after_open.find('}')?;
    if close == 0 {
        return None;
    }
    Some(&after_open[..close])
}

/// The seen key of `data_key` for the sink `sink_id` (`pipeline.sink`), in the same hash
/// slot as `data_key` (see the module doc for the one exception).
pub fn seen_key(data_key: &str, sink_id: &str) -> String {
    SeenKey { data_key, sink_id }.to_string()
}

/// [`seen_key`] as a command argument, written straight into the command buffer.
struct SeenKey<'a> {
    data_key: &'a str,
    sink_id: &'a str,
}

impl fmt::Display for SeenKey<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SeenKey { data_key, sink_id } = self;
        match hash_tag(data_key) {
            Some(tag) => write!(formatter, "ingestd:seen:{{{tag}}}:{sink_id}:{data_key}"),
            None => write!(formatter, "ingestd:seen:{{{data_key}}}:{sink_id}"),
        }
    }
}

impl ToRedisArgs for SeenKey<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        out.write_arg_fmt(self);
    }
}

/// Queues one `EVALSHA` of `script` on `data_key` and its seen key (KEYS[1], KEYS[2]) at
/// the end of `pipeline`; the caller then appends the ARGV with `pipeline.arg(..)`.
/// Arguments are written straight into the pipeline's command buffer: a
/// `ScriptInvocation` allocates one buffer per argument and copies them all again when
/// queued, which cost more CPU than the rest of a sink's write path.
pub fn queue_script(pipeline: &mut Pipeline, script: &Script, data_key: &str, sink_id: &str) {
    pipeline
        .cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(2)
        .arg(data_key)
        .arg(SeenKey { data_key, sink_id });
}

/// Sends the pipeline of script calls (see [`queue_script`]) in one round trip and
/// returns one result per call, in order. `Err` means the round trip itself failed
/// (nothing is known about what ran; the scripts are idempotent, so the caller retries
/// everything). A script cache emptied by a server restart (`NOSCRIPT`) is refilled and
/// the affected calls are sent again.
pub async fn invoke_all(
    redis: &ConnectionManager,
    script: &Script,
    mut pipeline: Pipeline,
) -> Result<Vec<Result<Value, SinkError>>, SinkError> {
    if pipeline.is_empty() {
        return Ok(Vec::new());
    }
    pipeline.ignore_errors();
    let mut connection = redis.clone();
    let mut results = send_pipeline(&mut connection, &pipeline).await?;
    let missing_script: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, result)| is_no_script(result))
        .map(|(index, _)| index)
        .collect();
    if !missing_script.is_empty() {
        // NOSCRIPT means the script did not run at all, so sending those again is safe.
        script
            .load_async(&mut connection)
            .await
            .map_err(|error| classify(&error))?;
        let commands: Vec<&redis::Cmd> = pipeline.cmd_iter().collect();
        let mut again = redis::pipe();
        again.ignore_errors();
        for &index in &missing_script {
            again.add_command(commands[index].clone());
        }
        let again_results = send_pipeline(&mut connection, &again).await?;
        for (index, result) in missing_script.into_iter().zip(again_results) {
            results[index] = result;
        }
    }
    Ok(results
        .into_iter()
        .map(|result| result.map_err(|error| classify(&error)))
        .collect())
}

async fn send_pipeline(
    connection: &mut ConnectionManager,
    pipeline: &Pipeline,
) -> Result<Vec<RedisResult<Value>>, SinkError> {
    pipeline
        .query_async::<Vec<RedisResult<Value>>>(connection)
        .await
        .map_err(|error| classify(&error))
}

fn is_no_script(result: &RedisResult<Value>) -> bool {
    matches!(result, Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
}

/// Retryable: the connection, a timeout, or a server that is temporarily unable to answer
/// (`TRYAGAIN`, `LOADING`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` during a
/// failover, `OOM` until memory frees up). Permanent: everything else, notably `WRONGTYPE`
/// (a key holding something else), script errors, `CROSSSLOT` and missing permissions.
pub fn classify(error: &RedisError) -> SinkError {
    let message = format!("redis: {error}");
    if error.is_timeout() {
        return SinkError::retryable("timeout", message);
    }
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.kind() == ErrorKind::ClusterConnectionNotFound
    {
        return SinkError::retryable("network", message);
    }
    match error.code() {
        Some("TRYAGAIN" | "LOADING" | "BUSY" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY") => {
            SinkError::retryable("unavailable", message)
        }
        Some("OOM") => SinkError::retryable("throttled", message),
        Some("WRONGTYPE") => SinkError::permanent("wrong_type", message),
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => SinkError::permanent("auth", message),
        Some("CROSSSLOT") => SinkError::permanent("cross_slot", message),
        Some(_) => SinkError::permanent("script", message),
        None if error.kind() == ErrorKind::AuthenticationFailed => {
            SinkError::permanent("auth", message)
        }
        None => SinkError::permanent("invalid", message),
    }
}

/// A script reply that does not have the expected shape: a bug, never worth retrying.
pub fn unexpected_reply(what: &str, value: &Value) -> SinkError {
    SinkError::permanent(
        "invalid",
        format!("unexpected reply from the {what} script: {value:?}"),
    )
}

/// `PING`, for `/readyz`.
pub async fn ping(redis: &ConnectionManager) -> Result<(), SinkError> {
    let mut connection = redis.clone();
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(|_| ())
        .map_err(|error| classify(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tag_follows_the_cluster_spec() {
        assert_eq!(hash_tag("leaderboard:purchases:2026-11-24"), None);
        assert_eq!(hash_tag("lb:{shop}:2026-11-24"), Some("shop"));
        assert_eq!(hash_tag("a{}b{c}"), None, "an empty first tag means no tag");
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("a{b}c}"), Some("b"));
    }

    #[test]
    fn seen_key_shares_the_data_key_slot() {
        assert_eq!(
            seen_key("rate:alice:29000000", "analytics.rate_counter"),
            "ingestd:seen:{rate:alice:29000000}:analytics.rate_counter"
        );
        let tagged = seen_key("lb:{shop}:2026-11-24", "p.s");
        assert_eq!(tagged, "ingestd:seen:{shop}:p.s:lb:{shop}:2026-11-24");
        assert_eq!(hash_tag(&tagged), Some("shop"));
        // Without a tag the data key hashes whole, and so does the seen key's tag.
        let untagged = seen_key("rate:bob:7", "p.s");
        assert_eq!(hash_tag(&untagged), Some("rate:bob:7"));
    }

    #[test]
    fn queued_calls_are_the_evalsha_redis_rs_would_send() {
        let script = Script::new("return #ARGV");
        let mut ours = redis::pipe();
        queue_script(&mut ours, &script, "lb:{shop}:2026-11-24", "p.s");
        ours.arg(1_700_000_000_i64).arg("increment").arg(2.5_f64);
        queue_script(&mut ours, &script, "rate:bob:7", "p.s");
        ours.arg(120_i64).arg("e1");

        let mut invocation = script.prepare_invoke();
        invocation
            .key("lb:{shop}:2026-11-24")
            .key(seen_key("lb:{shop}:2026-11-24", "p.s"))
            .arg(1_700_000_000_i64)
            .arg("increment")
            .arg(2.5_f64);
        let mut second = script.prepare_invoke();
        second
            .key("rate:bob:7")
            .key(seen_key("rate:bob:7", "p.s"))
            .arg(120_i64)
            .arg("e1");
        let mut expected = redis::pipe();
        expected.invoke_script(&invocation).invoke_script(&second);
        assert_eq!(ours.get_packed_pipeline(), expected.get_packed_pipeline());
    }

    /// A server error as Redis sends it on the wire, e.g. `-BUSY Redis is busy`.
    fn server_error(line: &str) -> RedisError {
        let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        value.extract_error().unwrap_err()
    }

    #[test]
    fn errors_are_classified() {
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(classify(&io).kind, "network");
        assert!(classify(&io).retryable);
        let timeout: RedisError = std::io::Error::from(std::io::ErrorKind::TimedOut).into();
        assert_eq!(classify(&timeout).kind, "timeout");
        assert!(classify(&timeout).retryable);
        for retryable in [
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
        ] {
            assert!(classify(&server_error(retryable)).retryable, "{retryable}");
        }
        for permanent in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR user_script:3: attempt to compare nil with number",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "NOPERM this user has no permissions to run the 'evalsha' command",
        ] {
            assert!(!classify(&server_error(permanent)).retryable, "{permanent}");
        }
        assert_eq!(
            classify(&server_error("WRONGTYPE Operation")).kind,
            "wrong_type"
        );
    }
}
