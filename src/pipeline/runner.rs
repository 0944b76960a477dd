//! One runner per sink: takes batches from the sink's queue, writes up to `max_in_flight`
//! of them at once, retries only the events that failed with a retryable error, and
//! dead-letters permanent failures and events whose retries ran out. Nothing leaves a
//! runner unaccounted: every event is written, dead-lettered, (rate-limit drop) counted, or
//! at a shutdown past its deadline handed back to the sink's spool.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{BatchConfig, OnLimit, RetryConfig};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::event::Event;
use crate::pipeline::queue::SinkQueue;
use crate::pipeline::retry::RetrySchedule;
use crate::sinks::{BatchFailure, Sink, SinkError};
use crate::telemetry::metrics::SinkMetrics;

/// Where a rate-limit gate sends events once it has counted them.
#[derive(Clone)]
pub struct Forward {
    pub on_limit: OnLimit,
    pub downstream: Vec<Arc<SinkQueue>>,
}

pub struct SinkRunner {
    pub sink: Arc<dyn Sink>,
    pub queue: Arc<SinkQueue>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub max_in_flight: usize,
    pub metrics: SinkMetrics,
    pub dead_letters: DeadLetters,
    pub forward: Option<Forward>,
}

impl SinkRunner {
    /// Runs until the queue is closed and drained and every batch is settled.
    pub async fn run(self) {
        let runner = Arc::new(self);
        let permits = Arc::new(Semaphore::new(runner.max_in_flight));
        let mut in_flight = JoinSet::new();
        while let Some(batch) = runner.queue.next_batch(&runner.batch).await {
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            // Reap finished batches so the set does not grow.
            while in_flight.try_join_next().is_some() {}
            let batch_runner = Arc::clone(&runner);
            in_flight.spawn(async move {
                batch_runner.metrics.in_flight.increment(1.0);
                batch_runner.deliver(batch).await;
                batch_runner.metrics.in_flight.decrement(1.0);
                drop(permit);
            });
        }
        while let Some(result) = in_flight.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, sink = %runner.metrics.sink, "batch task failed");
            }
        }
        if let Some(forward) = &runner.forward {
            for queue in &forward.downstream {
                queue.close();
            }
        }
    }

    async fn deliver(&self, batch: Vec<Arc<Event>>) {
        self.metrics.batch_size.record(batch.len() as f64);
        let mut pending = batch;
        let mut schedule = RetrySchedule::new(&self.retry);
        loop {
            let started = Instant::now();
            let result = self.sink.write(&pending).await;
            self.metrics
                .write_duration
                .record(started.elapsed().as_secs_f64());
            let mut retry: Vec<Arc<Event>> = Vec::new();
            match result {
                Ok(written) => {
                    self.settle_written(&pending, &written.over_limit).await;
                }
                Err(BatchFailure::All(error)) => {
                    self.metrics.write_errors(error.kind, pending.len() as u64);
                    if error.retryable {
                        retry = pending;
                    } else {
                        self.dead_letter_all(&pending, "permanent_error", &error)
                            .await;
                    }
                }
                Err(BatchFailure::Some(failures)) => {
                    retry = self.settle_partial(pending, failures, &[]).await;
                }
                Err(BatchFailure::SomeWritten { failed, written }) => {
                    retry = self
                        .settle_partial(pending, failed, &written.over_limit)
                        .await;
                }
            }
            if retry.is_empty() {
                return;
            }
            match schedule.next_delay() {
                Some(delay) => {
                    self.metrics.retries.increment(1);
                    tracing::debug!(sink = %self.metrics.sink, events = retry.len(), ?delay, "retrying batch");
                    if self.queue.sleep_unless_evacuated(delay).await {
                        // Shutdown past its deadline: the spool keeps them for the next start.
                        self.queue.hand_back(retry).await;
                        return;
                    }
                    pending = retry;
                }
                None => {
                    let error = SinkError::retryable(
                        "exhausted",
                        "retries exhausted (retry.max_attempts or retry.max_elapsed)",
                    );
                    tracing::warn!(sink = %self.metrics.sink, events = retry.len(), "retries exhausted, dead-lettering");
                    self.dead_letter_all(&retry, "retries_exhausted", &error)
                        .await;
                    return;
                }
            }
        }
    }

    /// Settles a partly failed batch: the written events as written (with their
    /// over-limit verdicts, indices into `batch`), the permanent failures dead-lettered.
    /// Returns the events to retry.
    async fn settle_partial(
        &self,
        batch: Vec<Arc<Event>>,
        failures: Vec<(usize, SinkError)>,
        over_limit: &[usize],
    ) -> Vec<Arc<Event>> {
        let mut failed = vec![None; batch.len()];
        for (index, error) in failures {
            if let Some(slot) = failed.get_mut(index) {
                *slot = Some(error);
            }
        }
        let mut limited = vec![false; batch.len()];
        for &index in over_limit {
            if let Some(slot) = limited.get_mut(index) {
                *slot = true;
            }
        }
        let mut retry = Vec::new();
        let mut written = Vec::new();
        let mut written_over_limit = Vec::new();
        for ((event, failure), is_limited) in batch.into_iter().zip(failed).zip(limited) {
            let Some(error) = failure else {
                if is_limited {
                    written_over_limit.push(written.len());
                }
                written.push(event);
                continue;
            };
            self.metrics.write_errors(error.kind, 1);
            if error.retryable {
                retry.push(event);
            } else {
                self.dead_letter_all(&[event], "permanent_error", &error)
                    .await;
            }
        }
        self.settle_written(&written, &written_over_limit).await;
        retry
    }

    /// Counts written events, records their latency and, for a gate, forwards them.
    async fn settle_written(&self, written: &[Arc<Event>], over_limit: &[usize]) {
        if written.is_empty() {
            return;
        }
        self.metrics.written.increment(written.len() as u64);
        self.metrics.latency.record_batch(written, Utc::now());
        let Some(forward) = &self.forward else { return };
        let mut limited = vec![false; written.len()];
        for &index in over_limit {
            if let Some(slot) = limited.get_mut(index) {
                *slot = true;
            }
        }
        let mut forwarded = Vec::with_capacity(written.len());
        for (event, is_limited) in written.iter().zip(limited) {
            forwarded.push(match (is_limited, forward.on_limit) {
                (false, _) | (true, OnLimit::Count) => Arc::clone(event),
                (true, OnLimit::Drop) => continue,
                (true, OnLimit::Tag) => {
                    let mut tagged = Event::clone(event);
                    tagged.rate_limited = true;
                    Arc::new(tagged)
                }
            });
        }
        forward_all(&forward.downstream, forwarded).await;
    }

    async fn dead_letter_all(&self, events: &[Arc<Event>], reason: &str, error: &SinkError) {
        self.metrics.dead_lettered.increment(events.len() as u64);
        let stage = format!("{}.{}", self.metrics.pipeline, self.metrics.sink);
        let now = Utc::now();
        for event in events {
            // The dead letter holds the event's ack until it is stored (Streams source).
            self.dead_letters
                .send_acked(
                    DeadLetter {
                        reason: reason.to_string(),
                        stage: stage.clone(),
                        channel: event.channel.to_string(),
                        error: error.to_string(),
                        payload: event.payload.clone(),
                        at: now,
                    },
                    event.ack.clone(),
                )
                .await;
        }
        // A gate that gave up still lets the events through: the other stores must not
        // lose an event because a counter could not be updated.
        if let Some(forward) = &self.forward {
            forward_all(&forward.downstream, events.to_vec()).await;
        }
    }
}

/// Hands a gate's events to every downstream queue, in order, one push per queue.
async fn forward_all(downstream: &[Arc<SinkQueue>], events: Vec<Arc<Event>>) {
    if events.is_empty() {
        return;
    }
    for queue in downstream {
        queue.push_many(events.clone()).await;
    }
}
