//! One bounded queue per sink, so a slow sink never stalls another.
//!
//! When full, `block` makes the producer wait and `drop_oldest` discards the oldest event
//! (counted). Closing the queue lets the consumer drain what is left, then stop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::{BatchConfig, WhenFull};
use crate::event::Event;
use crate::telemetry::metrics::SinkMetrics;

struct State {
    events: VecDeque<Arc<Event>>,
    closed: bool,
}

pub struct SinkQueue {
    state: Mutex<State>,
    capacity: usize,
    when_full: WhenFull,
    /// Wakes the consumer when events arrive or the queue closes.
    not_empty: Notify,
    /// Wakes blocked producers when room is made.
    not_full: Notify,
    metrics: SinkMetrics,
}

impl SinkQueue {
    pub fn new(capacity: usize, when_full: WhenFull, metrics: SinkMetrics) -> SinkQueue {
        debug_assert!(capacity > 0);
        metrics.set_capacity(capacity);
        SinkQueue {
            state: Mutex::new(State {
                events: VecDeque::with_capacity(capacity.min(65_536)),
                closed: false,
            }),
            capacity,
            when_full,
            not_empty: Notify::new(),
            not_full: Notify::new(),
            metrics,
        }
    }

    /// Queues one event, applying the `when_full` policy. Returns false once closed.
    pub async fn push(&self, event: Arc<Event>) -> bool {
        let mut pending = Some(event);
        loop {
            // Register interest before checking, so a pop between check and wait is not missed.
            let room = self.not_full.notified();
            {
                let mut state = self.state.lock().expect("queue lock");
                if state.closed {
                    return false;
                }
                if state.events.len() < self.capacity {
                    state
                        .events
                        .push_back(pending.take().expect("event present"));
                    self.metrics.queue_depth.set(state.events.len() as f64);
                    drop(state);
                    self.not_empty.notify_one();
                    return true;
                }
                if self.when_full == WhenFull::DropOldest {
                    state.events.pop_front();
                    state
                        .events
                        .push_back(pending.take().expect("event present"));
                    drop(state);
                    self.metrics.dropped.increment(1);
                    self.not_empty.notify_one();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Stops intake; the consumer still drains what is queued.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.not_empty.notify_waiters();
        self.not_empty.notify_one();
        self.not_full.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next batch: waits for a first event, then up to `linger` for more, closing at
    /// `max_events` or `max_bytes`. `None` once closed and empty.
    pub async fn next_batch(&self, batch: &BatchConfig) -> Option<Vec<Arc<Event>>> {
        let max_bytes = batch.max_bytes.as_u64() as usize;
        let mut taken: Vec<Arc<Event>> = Vec::new();
        let mut taken_bytes = 0usize;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let arrival = self.not_empty.notified();
            let closed = {
                let mut state = self.state.lock().expect("queue lock");
                while taken.len() < batch.max_events {
                    let Some(front) = state.events.front() else {
                        break;
                    };
                    let size = front.size_bytes();
                    // A single event larger than max_bytes still forms a batch of its own.
                    if !taken.is_empty() && taken_bytes + size > max_bytes {
                        break;
                    }
                    taken_bytes += size;
                    taken.push(state.events.pop_front().expect("front exists"));
                    if taken_bytes >= max_bytes {
                        break;
                    }
                }
                self.metrics.queue_depth.set(state.events.len() as f64);
                state.closed
            };
            if !taken.is_empty() {
                self.not_full.notify_waiters();
            }
            let full = taken.len() >= batch.max_events || taken_bytes >= max_bytes;
            if full || (closed && !taken.is_empty()) {
                return Some(taken);
            }
            if closed {
                // Closed and nothing left: but a racing push may have landed; check once more.
                if self.is_empty() {
                    return None;
                }
                continue;
            }
            if !taken.is_empty() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + batch.linger);
            }
            match deadline {
                None => arrival.await,
                Some(deadline) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Some(taken);
                    }
                    if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                        // Linger is over; take whatever else arrived meanwhile, then go.
                        continue_after_linger(self, &mut taken, &mut taken_bytes, batch, max_bytes);
                        return Some(taken);
                    }
                }
            }
        }
    }
}

fn continue_after_linger(
    queue: &SinkQueue,
    taken: &mut Vec<Arc<Event>>,
    taken_bytes: &mut usize,
    batch: &BatchConfig,
    max_bytes: usize,
) {
    let mut state = queue.state.lock().expect("queue lock");
    while taken.len() < batch.max_events {
        let Some(front) = state.events.front() else {
            break;
        };
        if *taken_bytes + front.size_bytes() > max_bytes {
            break;
        }
        *taken_bytes += front.size_bytes();
        taken.push(state.events.pop_front().expect("front exists"));
    }
    queue.metrics.queue_depth.set(state.events.len() as f64);
    drop(state);
    queue.not_full.notify_waiters();
}
