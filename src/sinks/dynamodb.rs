//! PLACEHOLDER: to be written (see issues). Keeps the registry compiling meanwhile.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{BatchFailure, Sink, SinkContext, SinkError, Written};
use crate::event::Event;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoConfig {}

impl DynamoConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub struct DynamoSink {}

impl DynamoSink {
    pub async fn connect(
        _config: &DynamoConfig,
        _context: &SinkContext,
    ) -> anyhow::Result<DynamoSink> {
        anyhow::bail!("the dynamodb sink is not built yet")
    }
}

impl Sink for DynamoSink {
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
