//! Publisher sequence numbers on pub/sub: Redis keeps nothing for an absent or dropped
//! subscriber, so loss upstream of ingestd is invisible unless publishers number their
//! events. This counts the numbers never seen; it repairs nothing and never rejects.

use std::collections::HashMap;

use ::metrics::Counter;
use serde_json::Value;

use crate::config::SequenceConfig;
use crate::event::Event;
use crate::telemetry::metrics;

/// Publishers remembered at most; past it the memory starts over (a few gaps may then go
/// unseen) so a stream of one-off publisher ids cannot grow it without bound.
const MAX_PUBLISHERS: usize = 100_000;

/// The last sequence number seen per publisher.
pub struct SequenceGaps {
    publisher_field: String,
    sequence_field: String,
    last_seen: HashMap<String, u64>,
    gaps: Counter,
    /// Missing numbers counted so far (the counter's value, for tests and logs).
    missing: u64,
}

impl SequenceGaps {
    pub fn new(config: &SequenceConfig, source: &'static str) -> SequenceGaps {
        SequenceGaps {
            publisher_field: config.publisher_field.clone(),
            sequence_field: config.sequence_field.clone(),
            last_seen: HashMap::new(),
            gaps: metrics::source_sequence_gaps(source),
            missing: 0,
        }
    }

    /// Missing numbers counted since start.
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Looks at one event; events without a publisher or a sequence number are ignored.
    pub fn observe(&mut self, event: &Event) {
        let publisher = match event.data.get(&self.publisher_field) {
            Some(Value::String(publisher)) => publisher.clone(),
            Some(Value::Number(publisher)) => publisher.to_string(),
            _ => return,
        };
        let Some(sequence) = event.data.get(&self.sequence_field).and_then(Value::as_u64) else {
            return;
        };
        self.observe_number(publisher, sequence);
    }

    fn observe_number(&mut self, publisher: String, sequence: u64) {
        if self.last_seen.len() >= MAX_PUBLISHERS && !self.last_seen.contains_key(&publisher) {
            tracing::warn!(
                publishers = self.last_seen.len(),
                "too many publishers for sequence checks, forgetting them all"
            );
            self.last_seen.clear();
        }
        let previous = self.last_seen.insert(publisher, sequence);
        let Some(previous) = previous else {
            // First number of a publisher: nothing to compare with.
            return;
        };
        // Lower or equal: a restarted publisher or a duplicate, not a loss.
        if sequence <= previous {
            return;
        }
        let missing = sequence - previous - 1;
        if missing > 0 {
            self.missing += missing;
            self.gaps.increment(missing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> SequenceGaps {
        SequenceGaps::new(&SequenceConfig::default(), "pubsub")
    }

    fn event(data: serde_json::Value) -> Event {
        let mut payload = serde_json::json!({
            "user_id": "u", "event_type": "t", "timestamp": 1,
        });
        payload["data"] = data;
        crate::event::decode(
            bytes::Bytes::from(payload.to_string()),
            std::sync::Arc::from("c"),
            64 * 1024,
            chrono::Utc::now(),
        )
        .unwrap()
    }

    #[test]
    fn counts_missing_numbers_per_publisher() {
        let mut gaps = tracker();
        for sequence in [1, 2, 3, 5, 6, 9] {
            gaps.observe(&event(
                serde_json::json!({"publisher_id": "a", "seq": sequence}),
            ));
        }
        assert_eq!(gaps.missing(), 3, "4, 7 and 8 are missing");
        // Another publisher has its own numbering; a numeric publisher id works too.
        for sequence in [10, 11, 13] {
            gaps.observe(&event(
                serde_json::json!({"publisher_id": 7, "seq": sequence}),
            ));
        }
        assert_eq!(gaps.missing(), 4);
    }

    #[test]
    fn restarts_duplicates_and_unnumbered_events_are_not_gaps() {
        let mut gaps = tracker();
        for sequence in [1, 2, 3, 3, 1, 2, 3, 4] {
            gaps.observe(&event(
                serde_json::json!({"publisher_id": "a", "seq": sequence}),
            ));
        }
        gaps.observe(&event(serde_json::json!({"publisher_id": "a"})));
        gaps.observe(&event(serde_json::json!({"seq": 100})));
        gaps.observe(&event(serde_json::json!({"publisher_id": "a", "seq": "x"})));
        assert_eq!(gaps.missing(), 0);
        gaps.observe(&event(serde_json::json!({"publisher_id": "a", "seq": 6})));
        assert_eq!(gaps.missing(), 1);
    }

    #[test]
    fn top_level_fields_are_found_in_data() {
        let mut gaps = tracker();
        for sequence in [1, 4] {
            let payload = serde_json::json!({
                "user_id": "u", "event_type": "t", "timestamp": 1,
                "publisher_id": "top", "seq": sequence,
            });
            let decoded = crate::event::decode(
                bytes::Bytes::from(payload.to_string()),
                std::sync::Arc::from("c"),
                64 * 1024,
                chrono::Utc::now(),
            )
            .unwrap();
            gaps.observe(&decoded);
        }
        assert_eq!(gaps.missing(), 2);
    }
}
