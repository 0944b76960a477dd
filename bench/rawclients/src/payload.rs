//! The events every tool of a run publishes or writes: the same fields and values as
//! `ingestd publish` (`ingestd::publish::valid_event`), formatted without building a
//! `serde_json::Value` so the publisher spends its CPU on PUBLISH, not on JSON.

use std::sync::Arc;

use chrono::Utc;
use ingestd::event::Event;

/// What a run's events look like.
#[derive(Debug, Clone)]
pub struct Shape {
    pub id_prefix: String,
    pub users: u64,
    pub event_type: String,
}

impl Shape {
    /// The `sequence`th event, stamped `timestamp` (RFC 3339 UTC with milliseconds). Keys
    /// are in `valid_event`'s order (serde_json keeps insertion order in this build: bson
    /// turns on its `preserve_order` feature), so the bytes are the same.
    pub fn event_json(&self, sequence: u64, timestamp: &str) -> String {
        let user = sequence % self.users.max(1);
        let amount = ((sequence % 1000) as f64) / 10.0 + 1.0;
        // serde_json's float formatting, as `valid_event` prints it.
        let amount = serde_json::Value::from(amount).to_string();
        format!(
            r#"{{"event_id":"{prefix}-{sequence}","user_id":"user-{user}","event_type":"{event_type}","timestamp":"{timestamp}","amount":{amount},"data":{{"sku":"sku-{sku}","seq":{sequence}}}}}"#,
            sku = sequence % 97,
            prefix = self.id_prefix,
            event_type = self.event_type,
        )
    }

    /// The decoded events `first..first+count`, exactly as ingestd's source would hand
    /// them to its sinks (same decoder).
    pub fn events(&self, first: u64, count: u64, channel: &str) -> Vec<Arc<Event>> {
        let channel: Arc<str> = Arc::from(channel);
        let now = Utc::now();
        let timestamp = ingestd::event::format_timestamp(&now);
        (first..first + count)
            .map(|sequence| {
                let payload = bytes::Bytes::from(self.event_json(sequence, &timestamp));
                let event = ingestd::event::decode(payload, Arc::clone(&channel), 65_536, now)
                    .expect("generated events are valid");
                Arc::new(event)
            })
            .collect()
    }
}

/// Names used in JSON and keys must not need escaping.
pub fn check_name(what: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte))
    {
        anyhow::bail!("{what} {value:?} must be non-empty letters, digits, - _ . :");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingestd::publish::{PublishPlan, valid_event};

    #[test]
    fn same_event_as_ingestd_publish() {
        let plan = PublishPlan {
            channel: "c".to_string(),
            count: 1,
            rate: 0,
            malformed_ratio: 0.0,
            users: 1000,
            event_type: "purchase".to_string(),
            id_prefix: "p".to_string(),
            progress: false,
        };
        let shape = Shape {
            id_prefix: "p".to_string(),
            users: 1000,
            event_type: "purchase".to_string(),
        };
        for sequence in [0, 1, 7, 999, 1000, 123_456] {
            let theirs = valid_event(&plan, sequence);
            let timestamp =
                serde_json::from_str::<serde_json::Value>(&theirs).unwrap()["timestamp"]
                    .as_str()
                    .unwrap()
                    .to_string();
            assert_eq!(shape.event_json(sequence, &timestamp), theirs);
        }
    }
}
