//! Appends each event as one JSON line to a local file: for debugging and for tests of
//! the binary. Written lines are flushed before a batch is reported written.

use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{BatchFailure, Sink, SinkError, Written};
use crate::event::Event;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// File to append JSON lines to (created if missing).
    pub path: PathBuf,
}

pub struct FileSink {
    path: PathBuf,
    file: Mutex<tokio::fs::File>,
}

impl FileSink {
    pub async fn open(config: &FileConfig) -> anyhow::Result<FileSink> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .await
            .map_err(|error| anyhow::anyhow!("cannot open {}: {error}", config.path.display()))?;
        Ok(FileSink {
            path: config.path.clone(),
            file: Mutex::new(file),
        })
    }
}

/// The JSON form of an event as the file sink writes it.
pub fn event_json(event: &Event) -> serde_json::Value {
    serde_json::json!({
        "event_id": event.event_id,
        "user_id": event.user_id,
        "event_type": event.event_type,
        "timestamp": event.timestamp_rfc3339(),
        "amount": event.amount,
        "data": event.stored_data(),
        "channel": &*event.channel,
    })
}

impl Sink for FileSink {
    fn write<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Result<Written, BatchFailure>> {
        async move {
            let mut buffer = Vec::with_capacity(batch.len() * 256);
            for event in batch {
                serde_json::to_writer(&mut buffer, &event_json(event)).map_err(|error| {
                    BatchFailure::All(SinkError::permanent("invalid", error.to_string()))
                })?;
                buffer.push(b'\n');
            }
            let mut file = self.file.lock().await;
            let io_error = |error: std::io::Error| {
                BatchFailure::All(SinkError::retryable(
                    "io",
                    format!("{}: {error}", self.path.display()),
                ))
            };
            file.write_all(&buffer).await.map_err(io_error)?;
            file.flush().await.map_err(io_error)?;
            Ok(Written::default())
        }
        .boxed()
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}
