//! PLACEHOLDER: to be written (see issues). Keeps the registry compiling meanwhile.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::Event;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {}

impl MongoConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub struct MongoSink {}

impl MongoSink {
    pub async fn connect(
        _config: &MongoConfig,
        _context: &SinkContext,
    ) -> anyhow::Result<MongoSink> {
        anyhow::bail!("the mongodb sink is not built yet")
    }
}

impl Sink for MongoSink {
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
