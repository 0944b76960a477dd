//! Observability: every metric name ([`metrics`]), the end-to-end latency histogram
//! ([`latency`]), the HTTP listener ([`http`]) and logs ([`logging`]).

pub mod http;
pub mod latency;
pub mod logging;
pub mod metrics;
