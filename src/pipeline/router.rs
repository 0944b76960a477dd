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
        let Some(targets) = self.targets(&event, pattern) else {
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

    /// The pipelines an event goes to; `None` (counted as unrouted) if none.
    fn targets(&self, event: &Event, pattern: Option<&str>) -> Option<&Vec<usize>> {
        let targets = match pattern {
            Some(pattern) => self.by_pattern.get(pattern),
            None => self.by_channel.get(&*event.channel),
        };
        if targets.is_none() {
            metrics::event_unrouted();
        }
        targets
    }

    /// An empty [`Batch`] for events read together.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            router: self,
            per_pipeline: vec![Vec::new(); self.pipelines.len()],
            len: 0,
        }
    }
}

/// Events read together (one socket read), routed as they are added and pushed to each
/// queue at once on [`Batch::flush`]: one lock and at most one consumer wake-up per queue
/// per read instead of per event. Order is kept within each pipeline.
pub struct Batch<'r> {
    router: &'r Router,
    per_pipeline: Vec<Vec<Arc<Event>>>,
    len: usize,
}

impl Batch<'_> {
    /// Routes `event` (see [`Router::dispatch`]); false if no pipeline took it.
    pub fn add(&mut self, event: Event, pattern: Option<&str>) -> bool {
        let Some(targets) = self.router.targets(&event, pattern) else {
            return false;
        };
        let event = Arc::new(event);
        for &index in targets {
            self.per_pipeline[index].push(Arc::clone(&event));
        }
        self.len += 1;
        true
    }

    /// Events added since the last flush.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pushes what was added to every entry queue of its pipelines.
    pub async fn flush(&mut self) {
        self.len = 0;
        for (index, events) in self.per_pipeline.iter_mut().enumerate() {
            if events.is_empty() {
                continue;
            }
            let events = std::mem::take(events);
            let queues = &self.router.pipelines[index].entry_queues;
            let Some((last, others)) = queues.split_last() else {
                continue;
            };
            for queue in others {
                queue.push_many(events.clone()).await;
            }
            last.push_many(events).await;
        }
    }
}
