//! One bounded queue per sink, so a slow sink never stalls another.
//!
//! When full, `spool` spills to the sink's [`Spool`] and a replayer task brings spooled
//! events back in order as room frees; once spilling, new events go to the spool too until
//! it is drained, so order holds and memory stays bounded by `capacity` and `max_bytes`
//! (whichever is reached first; see [`Event::resident_bytes`]). `block` makes
//! the producer wait; `drop_oldest` discards the oldest event (counted). Closing lets the
//! consumer drain what is left, spool included, then stop; a shutdown past its deadline
//! evacuates what is only in memory to the spool instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{BatchConfig, QueueConfig, SpoolConfig, WhenFull};
use crate::event::Event;
use crate::spool::Spool;
use crate::telemetry::metrics::SinkMetrics;

/// Events the replayer moves from the spool to the queue at a time, at most.
const REPLAY_CHUNK: usize = 4096;

struct State {
    events: VecDeque<Arc<Event>>,
    /// Sum of `size_bytes` of `events`.
    bytes: usize,
    /// Sum of `resident_bytes` of `events`: what `queue.max_bytes` bounds.
    resident: usize,
    /// The waiting consumer wants a wake-up once this many events are queued (0: it is
    /// not waiting). Producers notify only then, not on every event: a lingering batch
    /// is woken when it can be filled, not once per arrival.
    wake_at_events: usize,
    /// Same, in bytes.
    wake_at_bytes: usize,
    closed: bool,
    /// New events go to the spool until the replayer has drained it.
    spilling: bool,
    /// Shutdown past its deadline: memory was moved to the spool, nothing more is served.
    evacuating: bool,
}

pub struct SinkQueue {
    state: Mutex<State>,
    capacity: usize,
    /// `queue.max_bytes`: full once the events held are estimated to take this much.
    max_bytes: usize,
    when_full: WhenFull,
    /// Wakes the consumer when events arrive or the queue closes.
    not_empty: Notify,
    /// Wakes blocked producers when room is made.
    not_full: Notify,
    metrics: SinkMetrics,
    /// Set with `when_full = "spool"`.
    spool: Option<Arc<Spool>>,
    evacuated: CancellationToken,
    replayer: Mutex<Option<JoinHandle<()>>>,
}

impl SinkQueue {
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        when_full: WhenFull,
        metrics: SinkMetrics,
    ) -> SinkQueue {
        debug_assert!(capacity > 0);
        metrics.set_capacity(capacity);
        SinkQueue {
            state: Mutex::new(State {
                events: VecDeque::with_capacity(capacity.min(65_536)),
                bytes: 0,
                resident: 0,
                wake_at_events: 0,
                wake_at_bytes: 0,
                closed: false,
                spilling: false,
                evacuating: false,
            }),
            capacity,
            max_bytes,
            when_full,
            not_empty: Notify::new(),
            not_full: Notify::new(),
            metrics,
            spool: None,
            evacuated: CancellationToken::new(),
            replayer: Mutex::new(None),
        }
    }

    /// The queue of `pipeline.sink` as configured; with `when_full = "spool"` it opens the
    /// sink's spool and starts the replayer, which first replays what an earlier run left.
    pub async fn open(
        queue: &QueueConfig,
        spool: &SpoolConfig,
        pipeline: &str,
        sink: &str,
        metrics: SinkMetrics,
    ) -> anyhow::Result<Arc<SinkQueue>> {
        if queue.when_full != WhenFull::Spool {
            return Ok(Arc::new(SinkQueue::new(
                queue.capacity,
                queue.max_bytes.as_u64() as usize,
                queue.when_full,
                metrics,
            )));
        }
        let spool = Spool::open(spool, pipeline, sink).await?;
        let mut sink_queue = SinkQueue::new(
            queue.capacity,
            queue.max_bytes.as_u64() as usize,
            WhenFull::Spool,
            metrics,
        );
        // Spooled events are older than anything the source will read now.
        sink_queue.state.get_mut().expect("queue lock").spilling = spool.has_backlog();
        sink_queue.spool = Some(spool);
        let sink_queue = Arc::new(sink_queue);
        let replayer = tokio::spawn(Arc::clone(&sink_queue).replay());
        *sink_queue.replayer.lock().expect("queue lock") = Some(replayer);
        Ok(sink_queue)
    }

    /// Queues one event, applying the `when_full` policy. Returns false once closed.
    pub async fn push(&self, event: Arc<Event>) -> bool {
        if let (WhenFull::Spool, Some(spool)) = (self.when_full, &self.spool) {
            return self.push_or_spill(spool, event).await;
        }
        let mut pending = Some(event);
        loop {
            // Register interest before checking, so a pop between check and wait is not missed.
            let room = self.not_full.notified();
            {
                let mut state = self.state.lock().expect("queue lock");
                if state.closed {
                    return false;
                }
                if self.has_room(&state) {
                    state.append(pending.take().expect("event present"));
                    self.metrics.queue_depth.set(state.events.len() as f64);
                    self.wake_if_wanted(state);
                    return true;
                }
                if self.when_full == WhenFull::DropOldest {
                    let mut dropped = 0;
                    while !self.has_room(&state) && state.pop().is_some() {
                        dropped += 1;
                    }
                    state.append(pending.take().expect("event present"));
                    self.metrics.dropped.increment(dropped);
                    self.metrics.queue_depth.set(state.events.len() as f64);
                    self.wake_if_wanted(state);
                    return true;
                }
            }
            room.await;
        }
    }

    /// Queues events in order, as [`SinkQueue::push`] would one by one, but under one
    /// lock and with at most one wake-up while they fit; the rest go through `push`.
    pub async fn push_many(&self, events: Vec<Arc<Event>>) -> bool {
        let mut events = events.into_iter();
        {
            let mut state = self.state.lock().expect("queue lock");
            if !state.closed && !state.spilling && !state.evacuating {
                while self.has_room(&state) {
                    let Some(event) = events.next() else {
                        break;
                    };
                    state.append(event);
                }
                self.metrics.queue_depth.set(state.events.len() as f64);
                self.wake_if_wanted(state);
            }
        }
        for event in events {
            if !self.push(event).await {
                return false;
            }
        }
        true
    }

    /// Wakes the consumer if it waits for what is now queued; releases the lock first.
    fn wake_if_wanted(&self, mut state: std::sync::MutexGuard<'_, State>) {
        let wanted = state.wake_at_events != 0
            && (state.events.len() >= state.wake_at_events || state.bytes >= state.wake_at_bytes);
        if wanted {
            state.wake_at_events = 0;
        }
        drop(state);
        if wanted {
            self.not_empty.notify_one();
        }
    }

    async fn push_or_spill(&self, spool: &Spool, event: Arc<Event>) -> bool {
        let (admitted, started) = {
            let mut state = self.state.lock().expect("queue lock");
            // After an evacuation, late events (a gate forwarding) still go to the spool.
            if state.closed && !state.evacuating {
                return false;
            }
            if !state.spilling && !state.evacuating && self.has_room(&state) {
                state.append(event);
                self.metrics.queue_depth.set(state.events.len() as f64);
                self.wake_if_wanted(state);
                return true;
            }
            let started = !state.spilling;
            state.spilling = true;
            (spool.reserve(&event), started)
        };
        if started {
            spool.note_spill_started();
            spool.wake();
        }
        if admitted {
            spool.send(event).await;
        }
        true
    }

    /// Moves spooled events back into the queue as room frees, in order, and ends the
    /// spill once the spool is drained. Runs while the queue has a spool.
    async fn replay(self: Arc<Self>) {
        let spool = Arc::clone(self.spool.as_ref().expect("the replayer has a spool"));
        loop {
            let (spilling, room, byte_room, stop) = {
                let state = self.state.lock().expect("queue lock");
                let room = if self.has_room(&state) {
                    self.capacity - state.events.len()
                } else {
                    0
                };
                (
                    state.spilling,
                    room,
                    self.max_bytes.saturating_sub(state.resident),
                    state.evacuating || (state.closed && !state.spilling),
                )
            };
            if stop {
                return;
            }
            if !spilling || room == 0 {
                spool.woken().await;
                continue;
            }
            let events = spool.read(room.min(REPLAY_CHUNK), byte_room).await;
            if !events.is_empty() {
                let mut state = self.state.lock().expect("queue lock");
                if state.evacuating {
                    // Their segments are frozen on disk: the next start replays them.
                    return;
                }
                for event in events {
                    state.append(event);
                }
                self.metrics.queue_depth.set(state.events.len() as f64);
                self.wake_if_wanted(state);
                continue;
            }
            let drained = {
                let mut state = self.state.lock().expect("queue lock");
                if state.evacuating {
                    return;
                }
                // Under the queue lock: no producer can reserve between the check and the switch.
                let drained = spool.finish_spill();
                if drained {
                    state.spilling = false;
                }
                drained
            };
            if drained {
                spool.release_reader().await;
                // A consumer waiting to finish a closed queue may stop now.
                self.not_empty.notify_waiters();
                self.not_empty.notify_one();
                continue;
            }
            spool.woken().await;
        }
    }

    /// Stops intake; the consumer still drains what is queued (and spooled).
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.not_empty.notify_waiters();
        self.not_empty.notify_one();
        self.not_full.notify_waiters();
        if let Some(spool) = &self.spool {
            spool.wake();
        }
    }

    /// Shutdown past its deadline, spool queues only: keeps what would otherwise be lost.
    /// The spool's segments are frozen (events read from them but not settled are replayed
    /// at the next start), what is only in memory is spooled, the replayer and the consumer
    /// stop, and runners hand back the batches they are retrying ([`SinkQueue::hand_back`]).
    /// Order is not kept for these events: they are appended after what is spooled.
    pub async fn evacuate(&self) {
        let Some(spool) = &self.spool else {
            return;
        };
        spool.freeze();
        let taken: Vec<Arc<Event>> = {
            let mut state = self.state.lock().expect("queue lock");
            state.closed = true;
            state.evacuating = true;
            self.metrics.queue_depth.set(0.0);
            state.bytes = 0;
            state.resident = 0;
            state.events.drain(..).collect()
        };
        self.evacuated.cancel();
        self.not_empty.notify_waiters();
        self.not_empty.notify_one();
        self.not_full.notify_waiters();
        spool.wake();
        self.hand_back(taken).await;
    }

    /// Spools events that will not be written now (shutdown past its deadline), except
    /// those already kept in this sink's spool. Without a spool they are lost, as before.
    pub async fn hand_back(&self, events: Vec<Arc<Event>>) {
        let Some(spool) = &self.spool else {
            return;
        };
        for event in events {
            if spool.holds(&event) {
                continue;
            }
            spool.append(event).await;
        }
    }

    /// Sleeps `delay` (a retry backoff); true if the queue was evacuated meanwhile.
    pub async fn sleep_unless_evacuated(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.evacuated.cancelled() => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }

    /// After the queue is drained or evacuated: stops the replayer and closes the spool
    /// (flushed, fsynced, directory released).
    pub async fn close_spool(&self) {
        let Some(spool) = &self.spool else {
            return;
        };
        let unfinished = {
            let mut state = self.state.lock().expect("queue lock");
            state.closed = true;
            state.spilling || !state.events.is_empty()
        };
        if unfinished {
            // Whatever is still queued was not written: keep its segments.
            spool.freeze();
        }
        spool.wake();
        let replayer = self.replayer.lock().expect("queue lock").take();
        if let Some(mut replayer) = replayer
            && tokio::time::timeout(Duration::from_secs(1), &mut replayer)
                .await
                .is_err()
        {
            replayer.abort();
        }
        spool.close().await;
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
        let mut no_room = false;
        loop {
            let arrival = self.not_empty.notified();
            let done = {
                let mut state = self.state.lock().expect("queue lock");
                while taken.len() < batch.max_events {
                    let Some(front) = state.events.front() else {
                        break;
                    };
                    let size = front.size_bytes();
                    // A single event larger than max_bytes still forms a batch of its own.
                    if !taken.is_empty() && taken_bytes + size > max_bytes {
                        // The next event does not fit: this batch is as full as it gets.
                        no_room = true;
                        break;
                    }
                    taken_bytes += size;
                    taken.push(state.pop().expect("front exists"));
                    if taken_bytes >= max_bytes {
                        break;
                    }
                }
                self.metrics.queue_depth.set(state.events.len() as f64);
                // Woken once the batch can be completed (or, empty-handed, at the first event).
                if taken.is_empty() {
                    state.wake_at_events = 1;
                    state.wake_at_bytes = 1;
                } else {
                    state.wake_at_events = batch.max_events.saturating_sub(taken.len()).max(1);
                    state.wake_at_bytes = max_bytes.saturating_sub(taken_bytes).max(1);
                }
                // Nothing more will arrive: closed with the spool drained, or evacuated.
                state.evacuating || (state.closed && !state.spilling)
            };
            if !taken.is_empty() {
                self.room_made();
            }
            let full = no_room || taken.len() >= batch.max_events || taken_bytes >= max_bytes;
            if full || (done && !taken.is_empty()) {
                return Some(taken);
            }
            if done {
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

impl State {
    fn append(&mut self, event: Arc<Event>) {
        self.bytes += event.size_bytes();
        self.resident += event.resident_bytes();
        self.events.push_back(event);
    }

    fn pop(&mut self) -> Option<Arc<Event>> {
        let event = self.events.pop_front()?;
        self.bytes -= event.size_bytes();
        self.resident -= event.resident_bytes();
        Some(event)
    }
}

impl SinkQueue {
    /// Below both bounds: `capacity` events and `max_bytes` estimated bytes (so a single
    /// event larger than `max_bytes` still fits in an empty queue).
    fn has_room(&self, state: &State) -> bool {
        state.events.len() < self.capacity && state.resident < self.max_bytes
    }

    fn room_made(&self) {
        self.not_full.notify_waiters();
        if let Some(spool) = &self.spool {
            spool.wake();
        }
    }
}

/// After a shutdown deadline: evacuates every spool queue (see [`SinkQueue::evacuate`]).
/// Returns whether any queue has a spool (only then is it worth waiting for runners).
pub async fn evacuate_all(queues: &[Arc<SinkQueue>]) -> bool {
    let mut any = false;
    for queue in queues {
        any |= queue.spool.is_some();
        queue.evacuate().await;
    }
    any
}

/// At the end of a run: closes every queue's spool (see [`SinkQueue::close_spool`]).
pub async fn close_spools(queues: &[Arc<SinkQueue>]) {
    for queue in queues {
        queue.close_spool().await;
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
        taken.push(state.pop().expect("front exists"));
    }
    state.wake_at_events = 0;
    queue.metrics.queue_depth.set(state.events.len() as f64);
    drop(state);
    queue.room_made();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: usize) -> Arc<Event> {
        let payload = format!(
            r#"{{"event_id":"e{id}","user_id":"u","event_type":"t","timestamp":1,"data":{{"pad":"{}"}}}}"#,
            "x".repeat(200)
        );
        Arc::new(
            crate::event::decode(
                bytes::Bytes::from(payload),
                Arc::from("c"),
                64 * 1024,
                chrono::Utc::now(),
            )
            .unwrap(),
        )
    }

    fn ids(queue: &SinkQueue) -> Vec<String> {
        let state = queue.state.lock().unwrap();
        state
            .events
            .iter()
            .map(|event| event.event_id.clone())
            .collect()
    }

    #[tokio::test]
    async fn max_bytes_bounds_the_queue_before_capacity_does() {
        let resident = event(0).resident_bytes();
        let queue = SinkQueue::new(
            1_000,
            3 * resident,
            WhenFull::DropOldest,
            SinkMetrics::new("p", "s", "blackhole"),
        );
        queue.push_many((0..4).map(event).collect()).await;
        queue.push(event(4)).await;
        assert_eq!(
            ids(&queue),
            ["e2", "e3", "e4"],
            "held by bytes, oldest dropped"
        );
        assert_eq!(queue.state.lock().unwrap().resident, 3 * resident);

        let batch = BatchConfig {
            max_events: 2,
            ..BatchConfig::default()
        };
        let taken = queue.next_batch(&batch).await.unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!(queue.state.lock().unwrap().resident, resident);
        // A single event larger than max_bytes still gets into an empty queue.
        let small = SinkQueue::new(
            10,
            resident / 2,
            WhenFull::DropOldest,
            SinkMetrics::new("p", "s2", "blackhole"),
        );
        small.push(event(9)).await;
        assert_eq!(ids(&small), ["e9"]);
    }
}
