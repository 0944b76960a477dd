//! Channel and pattern -> pipelines -> sink queues. One event may go to several
//! pipelines; it is shared (`Arc`), never copied, between them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::Event;
use crate::pipeline::queue::SinkQueue;
use crate::telemetry::metrics;

/// The queues a pipeline's events enter: every sink's, or only the rate-limit gate's
/// when `on_limit` is `drop` or `tag` (the gate forwards to the others).
pub struct PipelineEntry {
    pub name: String,
    pub entry_queues: Vec<Arc<SinkQueue>>,
}

#[derive(Default)]
pub struct Router {
    pipelines: Vec<PipelineEntry>,
    by_channel: HashMap<String, Vec<usize>>,
    by_pattern: HashMap<String, Vec<usize>>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    pub fn add_pipeline(&mut self, entry: PipelineEntry, channels: &[String], patterns: &[String]) {
        let index = self.pipelines.len();
        self.pipelines.push(entry);
        for channel in channels {
            self.by_channel
                .entry(channel.clone())
                .or_default()
                .push(index);
        }
        for pattern in patterns {
            self.by_pattern
                .entry(pattern.clone())
                .or_default()
                .push(index);
        }
    }

    pub fn channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = self.by_channel.keys().cloned().collect();
        channels.sort();
        channels
    }

    pub fn patterns(&self) -> Vec<String> {
        let mut patterns: Vec<String> = self.by_pattern.keys().cloned().collect();
        patterns.sort();
        patterns
    }

    /// Every entry queue, for closing at shutdown.
    pub fn entry_queues(&self) -> Vec<Arc<SinkQueue>> {
        self.pipelines
            .iter()
            .flat_map(|pipeline| pipeline.entry_queues.iter().cloned())
            .collect()
    }

    /// Routes an event that arrived on `channel`, or through `pattern` when it was a
    /// PSUBSCRIBE match. Returns false if no pipeline took it.
    pub async fn dispatch(&self, event: Event, pattern: Option<&str>) -> bool {
        let targets = match pattern {
            Some(pattern) => self.by_pattern.get(pattern),
            None => self.by_channel.get(&*event.channel),
        };
        let Some(targets) = targets else {
            metrics::event_unrouted();
            return false;
        };
        let event = Arc::new(event);
        for &index in targets {
            for queue in &self.pipelines[index].entry_queues {
                queue.push(Arc::clone(&event)).await;
            }
        }
        true
    }
}
