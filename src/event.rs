//! The input contract: one JSON object per message, decoded and validated into an [`Event`].
//!
//! Decoding never panics and never drops input silently: every rejection carries a
//! machine-readable [`InvalidReason`] so the caller can dead-letter the original bytes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Deserializer;
use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::pipeline::ack::AckToken;

/// Bounds of the input contract (DESIGN.md, "Events").
pub const MAX_USER_ID_BYTES: usize = 256;
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// The part of [`Event::resident_bytes`] that does not grow with the payload.
const RESIDENT_BASE_BYTES: usize = 512;

/// Why a message was rejected; the string form is the `reason` of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    NotJson,
    NotObject,
    MissingField,
    WrongType,
    BadTimestamp,
    TooLarge,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 6] = [
        InvalidReason::NotJson,
        InvalidReason::NotObject,
        InvalidReason::MissingField,
        InvalidReason::WrongType,
        InvalidReason::BadTimestamp,
        InvalidReason::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::NotJson => "not_json",
            InvalidReason::NotObject => "not_object",
            InvalidReason::MissingField => "missing_field",
            InvalidReason::WrongType => "wrong_type",
            InvalidReason::BadTimestamp => "bad_timestamp",
            InvalidReason::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A rejected message: the reason code plus a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    pub reason: InvalidReason,
    pub detail: String,
}

impl InvalidEvent {
    fn new(reason: InvalidReason, detail: impl Into<String>) -> InvalidEvent {
        InvalidEvent {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.reason, self.detail)
    }
}

/// A validated event, shared read-only by every sink it is routed to.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub event_type: String,
    /// UTC, truncated to millisecond precision.
    pub timestamp: DateTime<Utc>,
    pub amount: Option<f64>,
    /// `data` plus every unknown top-level field, so nothing from the input is dropped.
    pub data: Map<String, Value>,
    /// The pub/sub channel (or stream key) the event was read from.
    pub channel: Arc<str>,
    /// The original bytes, kept for dead letters and replay.
    pub payload: bytes::Bytes,
    /// When ingestd read the message.
    pub received_at: DateTime<Utc>,
    /// Set by a rate counter with `on_limit = "tag"`; stored as `data.rate_limited = true`.
    pub rate_limited: bool,
    /// Released when every sink is done with the event (used by the Streams source to XACK).
    pub ack: Option<Arc<AckToken>>,
}

impl Event {
    /// `timestamp` as RFC 3339 UTC with milliseconds, e.g. `2026-11-24T10:00:00.123Z`.
    pub fn timestamp_rfc3339(&self) -> String {
        format_timestamp(&self.timestamp)
    }

    /// Approximate size used by batchers for `max_bytes`.
    pub fn size_bytes(&self) -> usize {
        self.payload.len()
    }

    /// Estimated memory the event holds while queued: its bytes plus the decoded fields
    /// and `data` map, which take about twice the JSON they came from. `bench/run`
    /// measures the real figure (1,033 B for a 156 B payload; this gives 980 B).
    pub fn resident_bytes(&self) -> usize {
        RESIDENT_BASE_BYTES + 3 * self.payload.len()
    }

    /// `data` as stored: the input's data plus `rate_limited` when tagged.
    pub fn stored_data(&self) -> std::borrow::Cow<'_, Map<String, Value>> {
        if !self.rate_limited {
            return std::borrow::Cow::Borrowed(&self.data);
        }
        let mut tagged = self.data.clone();
        tagged.insert("rate_limited".to_string(), Value::Bool(true));
        std::borrow::Cow::Owned(tagged)
    }
}

pub fn format_timestamp(timestamp: &DateTime<Utc>) -> String {
    timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Decodes one message. `max_event_bytes` is checked before parsing so huge payloads
/// cost nothing.
///
/// One pass over the top-level object: the known fields are picked out as they stream
/// by (no intermediate map to build, hash and remove from), unknown ones go to `data`.
/// The checks then run in a fixed order, so a message with several faults always gets
/// the same reason.
pub fn decode(
    payload: bytes::Bytes,
    channel: Arc<str>,
    max_event_bytes: usize,
    received_at: DateTime<Utc>,
) -> Result<Event, InvalidEvent> {
    if payload.len() > max_event_bytes {
        return Err(InvalidEvent::new(
            InvalidReason::TooLarge,
            format!(
                "message is {} bytes, limit is {max_event_bytes}",
                payload.len()
            ),
        ));
    }
    let mut fields = match parse_fields(&payload) {
        Ok(fields) => fields,
        Err(error) => return Err(classify_parse_error(&payload, error)),
    };
    let user_id = take_string(&mut fields.user_id, "user_id", MAX_USER_ID_BYTES, true)?
        .expect("required field is present");
    let event_type = take_string(
        &mut fields.event_type,
        "event_type",
        MAX_EVENT_TYPE_BYTES,
        true,
    )?
    .expect("required field is present");
    let timestamp = take_timestamp(fields.timestamp.take())?;
    let event_id = take_string(&mut fields.event_id, "event_id", MAX_EVENT_ID_BYTES, false)?;
    let amount = match fields.amount.take() {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => match number.as_f64() {
            Some(amount) if amount.is_finite() => Some(amount),
            _ => {
                return Err(InvalidEvent::new(
                    InvalidReason::WrongType,
                    "amount is not a finite number",
                ));
            }
        },
        Some(other) => {
            return Err(InvalidEvent::new(
                InvalidReason::WrongType,
                format!("amount must be a number, found {}", json_type_name(&other)),
            ));
        }
    };
    let mut data = match fields.data.take() {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(other) => {
            return Err(InvalidEvent::new(
                InvalidReason::WrongType,
                format!("data must be an object, found {}", json_type_name(&other)),
            ));
        }
    };
    // Unknown top-level fields are kept inside `data`; an explicit `data` key wins.
    for (key, value) in fields.extra {
        data.entry(key).or_insert(value);
    }
    let event_id = match event_id {
        Some(event_id) => event_id,
        None => format!("{user_id}_{}", format_timestamp(&timestamp)),
    };
    Ok(Event {
        event_id,
        user_id,
        event_type,
        timestamp,
        amount,
        data,
        channel,
        payload,
        received_at,
        rate_limited: false,
        ack: None,
    })
}

/// The top-level fields of a message, as read; validated by [`decode`].
#[derive(Default)]
struct Fields {
    user_id: Option<Value>,
    event_type: Option<Value>,
    timestamp: Option<Value>,
    event_id: Option<Value>,
    amount: Option<Value>,
    data: Option<Value>,
    /// Unknown top-level fields in input order (a repeated key: the last one wins).
    extra: Map<String, Value>,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        // Borrowed keys: the known ones are never allocated.
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "user_id" => &mut fields.user_id,
                "event_type" => &mut fields.event_type,
                "timestamp" => &mut fields.timestamp,
                "event_id" => &mut fields.event_id,
                "amount" => &mut fields.amount,
                "data" => &mut fields.data,
                _ => {
                    let value = map.next_value::<Value>()?;
                    fields.extra.insert(key.into_owned(), value);
                    continue;
                }
            };
            *slot = Some(map.next_value::<Value>()?);
        }
        Ok(fields)
    }
}

fn parse_fields(payload: &[u8]) -> Result<Fields, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let fields = deserializer.deserialize_map(FieldsVisitor)?;
    deserializer.end()?;
    Ok(fields)
}

/// A failed parse is `not_object` when the input is valid JSON of another type, else
/// `not_json` (the rare path: only then is the input parsed a second time, as a `Value`
/// so nesting past serde_json's depth limit stays `not_json`).
fn classify_parse_error(payload: &[u8], error: serde_json::Error) -> InvalidEvent {
    if error.classify() == serde_json::error::Category::Data
        && serde_json::from_slice::<Value>(payload).is_ok()
    {
        return InvalidEvent::new(
            InvalidReason::NotObject,
            "message is JSON but not an object",
        );
    }
    InvalidEvent::new(InvalidReason::NotJson, error.to_string())
}

fn take_string(
    slot: &mut Option<Value>,
    field: &str,
    max_bytes: usize,
    required: bool,
) -> Result<Option<String>, InvalidEvent> {
    match slot.take() {
        None | Some(Value::Null) if required => Err(InvalidEvent::new(
            InvalidReason::MissingField,
            format!("{field} is required"),
        )),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() && required => Err(InvalidEvent::new(
            InvalidReason::MissingField,
            format!("{field} is empty"),
        )),
        Some(Value::String(text)) if text.len() > max_bytes => Err(InvalidEvent::new(
            InvalidReason::TooLarge,
            format!("{field} is {} bytes, limit is {max_bytes}", text.len()),
        )),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(InvalidEvent::new(
            InvalidReason::WrongType,
            format!("{field} must be a string, found {}", json_type_name(&other)),
        )),
    }
}

fn take_timestamp(value: Option<Value>) -> Result<DateTime<Utc>, InvalidEvent> {
    let parsed = match value {
        None | Some(Value::Null) => {
            return Err(InvalidEvent::new(
                InvalidReason::MissingField,
                "timestamp is required",
            ));
        }
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
            .map(|timestamp| timestamp.with_timezone(&Utc))
            .map_err(|error| {
                InvalidEvent::new(
                    InvalidReason::BadTimestamp,
                    format!("timestamp {text:?} is not RFC 3339: {error}"),
                )
            })?,
        Some(Value::Number(number)) => {
            let Some(millis) = number.as_i64() else {
                return Err(InvalidEvent::new(
                    InvalidReason::BadTimestamp,
                    format!("timestamp {number} is not an integer of epoch milliseconds"),
                ));
            };
            match Utc.timestamp_millis_opt(millis) {
                chrono::LocalResult::Single(timestamp) => timestamp,
                _ => {
                    return Err(InvalidEvent::new(
                        InvalidReason::BadTimestamp,
                        format!("timestamp {millis} is out of range"),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(InvalidEvent::new(
                InvalidReason::WrongType,
                format!(
                    "timestamp must be an RFC 3339 string or epoch milliseconds, found {}",
                    json_type_name(&other)
                ),
            ));
        }
    };
    // Millisecond precision everywhere, so every store sees the same instant.
    let millis = parsed.timestamp_millis();
    Utc.timestamp_millis_opt(millis)
        .single()
        .ok_or_else(|| InvalidEvent::new(InvalidReason::BadTimestamp, "timestamp is out of range"))
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_str(text: &str) -> Result<Event, InvalidEvent> {
        decode(
            bytes::Bytes::copy_from_slice(text.as_bytes()),
            Arc::from("events"),
            64 * 1024,
            Utc::now(),
        )
    }

    #[test]
    fn valid_event_keeps_unknown_fields_in_data() {
        let event = decode_str(
            r#"{"user_id":"u1","event_type":"purchase","timestamp":"2026-11-24T10:00:00.123456+01:00","amount":12.5,"data":{"sku":"a"},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(event.user_id, "u1");
        assert_eq!(event.timestamp_rfc3339(), "2026-11-24T09:00:00.123Z");
        assert_eq!(event.amount, Some(12.5));
        assert_eq!(event.data["sku"], "a");
        assert_eq!(event.data["extra"], 1);
        assert_eq!(event.event_id, "u1_2026-11-24T09:00:00.123Z");
    }

    #[test]
    fn explicit_data_wins_over_unknown_fields_and_the_last_repeat_wins() {
        let event = decode_str(
            r#"{"sku":"top","user_id":"old","data":{"sku":"inner"},"user_id":"u2","event_type":"t","timestamp":1,"n":[1,{"a":null}]}"#,
        )
        .unwrap();
        assert_eq!(event.user_id, "u2");
        assert_eq!(event.data["sku"], "inner");
        assert_eq!(event.data["n"], serde_json::json!([1, {"a": null}]));
        let keys: Vec<&str> = event.data.keys().map(String::as_str).collect();
        assert_eq!(keys, ["sku", "n"]);
    }

    #[test]
    fn json_that_is_not_an_object() {
        for input in ["null", "\"text\"", "12", "[]", " [1, 2] "] {
            assert_eq!(
                decode_str(input).unwrap_err().reason,
                InvalidReason::NotObject,
                "input {input}"
            );
        }
        for input in ["", "{", "{\"user_id\":}", "{} x", "[1,]"] {
            assert_eq!(
                decode_str(input).unwrap_err().reason,
                InvalidReason::NotJson,
                "input {input}"
            );
        }
    }

    #[test]
    fn epoch_millis_timestamp() {
        let event = decode_str(
            r#"{"user_id":"u","event_type":"t","timestamp":1700000000123,"event_id":"e"}"#,
        )
        .unwrap();
        assert_eq!(event.timestamp_rfc3339(), "2023-11-14T22:13:20.123Z");
        assert_eq!(event.event_id, "e");
    }

    #[test]
    fn every_reason_code() {
        let cases = [
            ("nope", InvalidReason::NotJson),
            ("[1]", InvalidReason::NotObject),
            (
                r#"{"event_type":"t","timestamp":1}"#,
                InvalidReason::MissingField,
            ),
            (
                r#"{"user_id":"","event_type":"t","timestamp":1}"#,
                InvalidReason::MissingField,
            ),
            (
                r#"{"user_id":5,"event_type":"t","timestamp":1}"#,
                InvalidReason::WrongType,
            ),
            (
                r#"{"user_id":"u","event_type":"t","timestamp":1,"amount":"x"}"#,
                InvalidReason::WrongType,
            ),
            (
                r#"{"user_id":"u","event_type":"t","timestamp":1,"data":[1]}"#,
                InvalidReason::WrongType,
            ),
            (
                r#"{"user_id":"u","event_type":"t","timestamp":"yesterday"}"#,
                InvalidReason::BadTimestamp,
            ),
            (
                r#"{"user_id":"u","event_type":"t","timestamp":1.5}"#,
                InvalidReason::BadTimestamp,
            ),
        ];
        for (input, expected) in cases {
            let error = decode_str(input).unwrap_err();
            assert_eq!(error.reason, expected, "input {input}");
        }
        let long_user = format!(
            r#"{{"user_id":"{}","event_type":"t","timestamp":1}}"#,
            "u".repeat(300)
        );
        assert_eq!(
            decode_str(&long_user).unwrap_err().reason,
            InvalidReason::TooLarge
        );
        let huge = decode(
            bytes::Bytes::from(vec![b' '; 100]),
            Arc::from("c"),
            10,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(huge.reason, InvalidReason::TooLarge);
    }
}
