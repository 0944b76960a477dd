//! PLACEHOLDER: to be written (see issues). Keeps the registry compiling meanwhile.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::Event;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderboardConfig {}

impl LeaderboardConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub struct LeaderboardSink {}

impl LeaderboardSink {
    pub fn new(
        _config: &LeaderboardConfig,
        _context: &SinkContext,
    ) -> anyhow::Result<LeaderboardSink> {
        anyhow::bail!("the leaderboard sink is not built yet")
    }
}

impl Sink for LeaderboardSink {
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

/// Reads boards for `ingestd top` and `GET /leaderboards/{board}`.
pub struct LeaderboardReader {}

impl LeaderboardReader {
    pub fn from_config(
        _config: &crate::config::Config,
        _redis: redis::aio::ConnectionManager,
    ) -> Option<LeaderboardReader> {
        None
    }

    pub async fn top(
        &self,
        _board: &str,
        _day: Option<&str>,
        _n: usize,
    ) -> anyhow::Result<serde_json::Value> {
        anyhow::bail!("not built")
    }
}
