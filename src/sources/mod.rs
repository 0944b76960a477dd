//! Sources read messages, decode them and hand valid events to the router. A source never
//! waits on a sink except through a queue's `block` policy, and never drops input silently:
//! invalid messages are dead-lettered with their reason.

pub mod pubsub;
pub mod resp;
pub mod sequence;
pub mod streams;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::deadletter::{DeadLetter, DeadLetters};
use crate::event::{self, Event};
use crate::pipeline::ack::AckToken;
use crate::pipeline::router::Router;
use crate::telemetry::metrics;

use self::sequence::SequenceGaps;

/// One message as read: where it came from, its bytes and, for the Streams source, the
/// token that acknowledges it once every holder (sinks, dead-letter writer) lets go.
pub struct Message<'a> {
    pub channel: Arc<str>,
    /// The PSUBSCRIBE pattern it matched, if any.
    pub pattern: Option<&'a str>,
    pub payload: Bytes,
    pub ack: Option<Arc<AckToken>>,
}

/// Decodes one message and routes it, or dead-letters it with its reason.
pub async fn ingest(
    router: &Router,
    dead_letters: &DeadLetters,
    channel: Arc<str>,
    pattern: Option<&str>,
    payload: Bytes,
    max_event_bytes: usize,
) {
    let message = Message {
        channel,
        pattern,
        payload,
        ack: None,
    };
    ingest_message(router, dead_letters, message, max_event_bytes, None).await;
}

/// [`ingest`] for a [`Message`]: the event carries the message's ack token (an unrouted
/// event drops it at once, an invalid one hands it to its dead letter), and `sequences`,
/// when given, sees every valid event.
pub async fn ingest_message(
    router: &Router,
    dead_letters: &DeadLetters,
    message: Message<'_>,
    max_event_bytes: usize,
    sequences: Option<&mut SequenceGaps>,
) {
    let pattern = message.pattern;
    let decoder = Decoder {
        dead_letters,
        max_event_bytes,
    };
    if let Some(event) = decoder.decode(message, Utc::now(), sequences).await {
        router.dispatch(event, pattern).await;
    }
}

/// Decodes messages into events, dead-lettering the invalid ones with their reason.
pub struct Decoder<'a> {
    pub dead_letters: &'a DeadLetters,
    pub max_event_bytes: usize,
}

impl Decoder<'_> {
    /// The event of `message`, or `None` once it is dead-lettered. The message's pattern
    /// is left to the caller, who routes the event.
    pub async fn decode(
        &self,
        message: Message<'_>,
        received_at: DateTime<Utc>,
        sequences: Option<&mut SequenceGaps>,
    ) -> Option<Event> {
        let max_event_bytes = self.max_event_bytes;
        let Message {
            channel,
            payload,
            ack,
            ..
        } = message;
        let mut invalid = match event::decode(
            payload.clone(),
            Arc::clone(&channel),
            max_event_bytes,
            received_at,
        ) {
            Ok(mut event) => {
                if let Some(sequences) = sequences {
                    sequences.observe(&event);
                }
                event.ack = ack;
                return Some(event);
            }
            Err(invalid) => invalid,
        };
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
        self.dead_letters
            .send_acked(
                DeadLetter {
                    reason: invalid.reason.as_str().to_string(),
                    stage: "decode".to_string(),
                    channel: channel.to_string(),
                    error: invalid.detail,
                    payload,
                    at: received_at,
                },
                ack,
            )
            .await;
        None
    }
}
