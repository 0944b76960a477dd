//! A pipelined publisher: `depth` pipelines of up to `pipeline` PUBLISHes in flight on one
//! multiplexed connection, paced to `rate` events/s (0 = flat out). Reports the PUBLISH
//! replies' sum: the number of subscribers that received each message, added up, so a
//! subscriber that was dropped mid-run shows as fewer deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::payload::{Shape, check_name};
use crate::progress;

#[derive(clap::Args)]
pub struct PublishArgs {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    url: String,
    #[arg(long)]
    channel: String,
    #[arg(long)]
    count: u64,
    /// First sequence number (several publishers of one run use disjoint ranges).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Events per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long)]
    id_prefix: String,
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    #[arg(long, default_value = "purchase")]
    event_type: String,
    /// PUBLISH commands per pipeline (at a set rate: rate/100, at most this).
    #[arg(long, default_value_t = 500)]
    pipeline: u64,
    /// Pipelines in flight at once.
    #[arg(long, default_value_t = 4)]
    depth: usize,
}

pub async fn run(arguments: PublishArgs) -> anyhow::Result<()> {
    check_name("channel", &arguments.channel)?;
    check_name("id prefix", &arguments.id_prefix)?;
    check_name("event type", &arguments.event_type)?;
    let client = redis::Client::open(arguments.url.as_str())?;
    let connection = client.get_multiplexed_async_connection().await?;
    let shape = Arc::new(Shape {
        id_prefix: arguments.id_prefix.clone(),
        users: arguments.users,
        event_type: arguments.event_type.clone(),
    });
    let chunk = if arguments.rate == 0 {
        arguments.pipeline.max(1)
    } else {
        (arguments.rate / 100).clamp(1, arguments.pipeline.max(1))
    };
    let chunks = arguments.count.div_ceil(chunk);
    let next_chunk = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let receivers = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let started_at = progress::now_secs();
    let reporter = progress::spawn_reporter(Arc::clone(&sent), Duration::from_millis(100));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..arguments.depth.max(1) {
        let mut connection = connection.clone();
        let shape = Arc::clone(&shape);
        let next_chunk = Arc::clone(&next_chunk);
        let sent = Arc::clone(&sent);
        let receivers = Arc::clone(&receivers);
        let channel = arguments.channel.clone();
        let (count, first, rate) = (arguments.count, arguments.first, arguments.rate);
        tasks.spawn(async move {
            loop {
                let index = next_chunk.fetch_add(1, Ordering::Relaxed);
                if index >= chunks {
                    return Ok::<(), redis::RedisError>(());
                }
                let offset = index * chunk;
                let size = chunk.min(count - offset);
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(offset as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                }
                // One timestamp per pipeline: they leave within the same millisecond.
                let timestamp = ingestd::event::format_timestamp(&Utc::now());
                let mut pipeline = redis::pipe();
                for sequence in first + offset..first + offset + size {
                    pipeline.publish(&channel, shape.event_json(sequence, &timestamp));
                }
                let replies: Vec<u64> = pipeline.query_async(&mut connection).await?;
                receivers.fetch_add(replies.iter().sum::<u64>(), Ordering::Relaxed);
                sent.fetch_add(size, Ordering::Relaxed);
            }
        });
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined? {
            failure.get_or_insert(error);
        }
    }
    progress::finish(reporter, &sent);
    let seconds = started.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    progress::result(serde_json::json!({
        "sent": total,
        "receivers": receivers.load(Ordering::Relaxed),
        "started_at": started_at,
        "seconds": seconds,
        "rate": total as f64 / seconds.max(1e-9),
        "error": failure.as_ref().map(|error| error.to_string()),
    }));
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}
