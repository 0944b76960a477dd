//! PLACEHOLDER: to be written (see issues). Keeps the registry compiling meanwhile.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::Event;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateCounterConfig {}

impl RateCounterConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub struct RateCounterSink {}

impl RateCounterSink {
    pub fn new(
        _config: &RateCounterConfig,
        _context: &SinkContext,
    ) -> anyhow::Result<RateCounterSink> {
        anyhow::bail!("the rate_counter sink is not built yet")
    }
}

impl Sink for RateCounterSink {
    fn write<'a>(
        &'a self,
        _batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async {
            Err(BatchFailure::All(SinkError::permanent(
                "unsupported",
                "not built",
            )))
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

/// Reads counters for `GET /rate/{user_id}`.
pub struct RateReader {}

impl RateReader {
    pub fn from_config(
        _config: &crate::config::Config,
        _redis: redis::aio::ConnectionManager,
    ) -> Option<RateReader> {
        None
    }

    pub async fn current(&self, _user_id: &str) -> anyhow::Result<serde_json::Value> {
        anyhow::bail!("not built")
    }
}
