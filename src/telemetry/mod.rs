//! Observability: every metric name ([`metrics`]), the HTTP listener ([`http`]) and logs
//! ([`logging`]).

pub mod http;
pub mod logging;
pub mod metrics;
