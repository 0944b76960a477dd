//! Sources read messages, decode them and hand valid events to the router. A source never
//! waits on a sink except through a queue's `block` policy, and never drops input silently:
//! invalid messages are dead-lettered with their reason.

pub mod pubsub;

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;

use crate::deadletter::{DeadLetter, DeadLetters};
use crate::event;
use crate::pipeline::router::Router;
use crate::telemetry::metrics;

/// Decodes one message and routes it, or dead-letters it with its reason.
pub async fn ingest(
    router: &Router,
    dead_letters: &DeadLetters,
    channel: Arc<str>,
    pattern: Option<&str>,
    payload: Bytes,
    max_event_bytes: usize,
) {
    let received_at = Utc::now();
    match event::decode(
        payload.clone(),
        Arc::clone(&channel),
        max_event_bytes,
        received_at,
    ) {
        Ok(event) => {
            router.dispatch(event, pattern).await;
        }
        Err(mut invalid) => {
            metrics::event_invalid(invalid.reason.as_str());
            tracing::debug!(reason = %invalid.reason, channel = %channel, "invalid event");
            // An oversized message is kept only up to the limit, so a flood of huge
            // messages cannot exhaust memory or Redis; the error says what was cut.
            let payload = if payload.len() > max_event_bytes {
                invalid.detail = format!(
                    "{} (dead letter keeps the first {max_event_bytes} bytes)",
                    invalid.detail
                );
                payload.slice(..max_event_bytes)
            } else {
                payload
            };
            dead_letters
                .send(DeadLetter {
                    reason: invalid.reason.as_str().to_string(),
                    stage: "decode".to_string(),
                    channel: channel.to_string(),
                    error: invalid.detail,
                    payload,
                    at: received_at,
                })
                .await;
        }
    }
}
