//! ingestd: reads JSON events from Redis pub/sub, batches them per sink and writes them
//! to MongoDB, Cassandra/ScyllaDB, DynamoDB and Redis aggregates, losing nothing it has
//! read without saying so.
//!
//! Map of the crate:
//! - [`config`]: figment layers, typed settings, `ingestd check` diagnostics.
//! - [`event`]: the input contract (decode + validate, reason codes).
//! - [`sources`]: Redis pub/sub with reconnect, or Redis Streams in a consumer group
//!   (acknowledged once stored); hands events to the router.
//! - [`pipeline`]: router, per-sink queues, batching runners, retry schedule, acks.
//! - [`sinks`]: the [`sinks::Sink`] trait and one module per store.
//! - [`spool`]: the crash-safe local overflow of a sink's queue (segments, replay).
//! - [`deadletter`]: the dead-letter stream (write, list, replay).
//! - [`telemetry`]: metric names, the HTTP listener, logging.
//! - [`tls`]: CA files and rustls client configurations for the sinks.
//! - [`app`]: wiring and graceful shutdown.
//! - [`publish`]: the load generator behind `ingestd publish`.

pub mod app;
pub mod config;
pub mod deadletter;
pub mod event;
pub mod pipeline;
pub mod publish;
pub mod redis_client;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod telemetry;
pub mod tls;
