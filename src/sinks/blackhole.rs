//! Discards every batch after an optional delay: for benchmarks and dry runs.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{BatchFailure, Sink, SinkError, Written};
use crate::event::Event;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlackholeConfig {
    /// Pretend each batch takes this long to write.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

pub struct BlackholeSink {
    delay: Duration,
}

impl BlackholeSink {
    pub fn new(config: &BlackholeConfig) -> BlackholeSink {
        BlackholeSink {
            delay: config.delay,
        }
    }
}

impl Sink for BlackholeSink {
    fn write<'a>(
        &'a self,
        _batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            Ok(Written::default())
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}
