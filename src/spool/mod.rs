//! The spool: a crash-safe, bounded, append-only overflow for one sink's queue. When the
//! queue is full (typically because the sink is down), events go to segment files in
//! `{spool.dir}/{pipeline}/{sink}/`; the queue's replayer reads them back in order as room
//! frees, and at the next start before any new event.
//!
//! Guarantees: every record carries its length and a checksum; a torn or damaged region is
//! skipped and counted (`ingestd_spool_corrupt_records_total`), never a crash. A segment is
//! deleted only when every event read from it has been written or dead-lettered (each
//! replayed event holds the segment's [`AckToken`]), so a crash at any point replays
//! instead of losing: delivery is at-least-once, and the sinks' idempotent writes absorb a
//! replay. When the spool reaches `max_bytes`, new events for that sink are dropped and
//! counted (`ingestd_spool_dropped_events_total{reason="full"}`): the spooled ones are kept,
//! since dropping a segment that is being replayed would break the order and the accounting.
//! Disk I/O runs on blocking threads: the source only waits when the writer is a whole
//! queue of events behind.
//!
//! What can still be lost, honestly: records not yet fsynced at a power loss (`fsync =
//! "interval"` or `"never"`; a process crash loses nothing written); events refused by a
//! full spool or a failing disk (counted by reason); and at a shutdown past its deadline, a
//! batch whose write to the store still hangs after the evacuation grace (everything else
//! in memory is moved to the spool first). Across such a shutdown, the order of the
//! evacuated events is not kept: they are appended after what was already spooled. A
//! spool directory of a sink no longer configured is left alone (not replayed).

pub mod record;
pub mod segment;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::config::{FsyncPolicy, SpoolConfig};
use crate::event::{self, Event};
use crate::pipeline::ack::AckToken;
use crate::telemetry::metrics::SpoolMetrics;

pub use record::Record;
pub use segment::{DirContents, SegmentReader, SegmentWriter, read_dir, sink_dir};

/// Events waiting for the writer; beyond this the producer waits (the disk is too slow).
const WRITER_QUEUE: usize = 2048;
/// Events written with one blocking call.
const WRITER_BATCH: usize = 512;
/// How long [`Spool::close`] waits for the writer's last flush.
const CLOSE_WRITER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Spool::close`] waits for settled segments to be deleted.
const CLOSE_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one "spilling" or error log line per sink this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

struct SegmentState {
    path: PathBuf,
    /// Bytes the reader may read: published by the writer, or the file size at start.
    len: u64,
    /// The writer will never append to it again.
    sealed: bool,
    /// The reader is past it: nothing more will be read from it.
    reader_done: bool,
    /// The token every event read from this segment holds; `None` until read.
    token: Option<Weak<AckToken>>,
}

struct Shared {
    segments: BTreeMap<u64, SegmentState>,
    /// Events reserved by a producer and not yet in a segment.
    in_transit_records: u64,
    in_transit_bytes: u64,
    /// Bytes of the segment files on disk.
    disk_bytes: u64,
    /// The reader's position: (segment, offset).
    cursor: Option<(u64, u64)>,
    /// Shutdown past its deadline: keep every segment for the next start.
    frozen: bool,
    closed: bool,
    full: bool,
}

/// The reader's open segment.
struct ReaderState {
    sequence: u64,
    reader: SegmentReader,
    token: Arc<AckToken>,
    /// The last channel name, shared by consecutive events (usually all of them).
    channel: Option<Arc<str>>,
}

/// The spool of one sink.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    shared: Mutex<Shared>,
    writer: Mutex<Option<mpsc::Sender<Arc<Event>>>>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    settle_task: Mutex<Option<JoinHandle<()>>>,
    /// Given to segment tokens; a dropped token sends its segment's sequence.
    acks: Mutex<Option<mpsc::UnboundedSender<String>>>,
    reader: tokio::sync::Mutex<Option<ReaderState>>,
    /// Wakes the queue's replayer: records published, room made, spill started, closing.
    wake: Notify,
    last_log: Mutex<Option<Instant>>,
    metrics: SpoolMetrics,
}

impl Spool {
    /// Opens the spool of `pipeline.sink`: takes the directory's lock if it exists and
    /// lists the segments an earlier run left (replayed first). Creates nothing until the
    /// first event is spooled.
    pub async fn open(
        config: &SpoolConfig,
        pipeline: &str,
        sink: &str,
    ) -> anyhow::Result<Arc<Spool>> {
        let dir = sink_dir(&config.dir, pipeline, sink);
        let scan_dir = dir.clone();
        let scanned = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            if !scan_dir.is_dir() {
                return Ok((None, Vec::new()));
            }
            let lock = segment::lock_dir(&scan_dir)?;
            Ok((Some(lock), segment::list_segments(&scan_dir)?))
        })
        .await
        .context("spool scan task failed")?;
        let (lock, existing) = scanned.with_context(|| {
            format!(
                "spool.dir: cannot use {} for {pipeline}.{sink} (check that it is a writable directory)",
                dir.display()
            )
        })?;
        let metrics = SpoolMetrics::new(pipeline, sink);
        let next_sequence = existing.last().map_or(1, |segment| segment.sequence + 1);
        let disk_bytes: u64 = existing.iter().map(|segment| segment.len).sum();
        metrics.bytes.set(disk_bytes as f64);
        if !existing.is_empty() {
            tracing::info!(
                pipeline,
                sink,
                segments = existing.len(),
                bytes = disk_bytes,
                dir = %dir.display(),
                "spool holds events from an earlier run: replaying them before new events"
            );
        }
        let segments = existing
            .into_iter()
            .map(|segment| {
                let state = SegmentState {
                    path: segment.path,
                    len: segment.len,
                    sealed: true,
                    reader_done: false,
                    token: None,
                };
                (segment.sequence, state)
            })
            .collect();
        let (sender, receiver) = mpsc::channel(WRITER_QUEUE);
        let (ack_sender, ack_receiver) = mpsc::unbounded_channel();
        let writer = SegmentWriter::new(
            dir.clone(),
            config.segment_bytes.as_u64(),
            config.fsync,
            next_sequence,
            lock,
        );
        let spool = Arc::new(Spool {
            dir,
            max_bytes: config.max_bytes.as_u64(),
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            shared: Mutex::new(Shared {
                segments,
                in_transit_records: 0,
                in_transit_bytes: 0,
                disk_bytes,
                cursor: None,
                frozen: false,
                closed: false,
                full: false,
            }),
            writer: Mutex::new(Some(sender)),
            writer_task: Mutex::new(None),
            settle_task: Mutex::new(None),
            acks: Mutex::new(Some(ack_sender)),
            reader: tokio::sync::Mutex::new(None),
            wake: Notify::new(),
            last_log: Mutex::new(None),
            metrics,
        });
        let writer_task = tokio::spawn(Arc::clone(&spool).write_loop(receiver, writer));
        let settle_task = tokio::spawn(Arc::clone(&spool).settle_loop(ack_receiver));
        *spool.writer_task.lock().expect("spool lock") = Some(writer_task);
        *spool.settle_task.lock().expect("spool lock") = Some(settle_task);
        Ok(spool)
    }

    /// Whether segments from an earlier run wait to be replayed.
    pub fn has_backlog(&self) -> bool {
        !self.lock().segments.is_empty()
    }

    /// Bytes of segment files on disk (what `ingestd_spool_bytes` shows).
    pub fn disk_bytes(&self) -> u64 {
        self.lock().disk_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("spool lock")
    }

    /// Wakes the replayer.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`Spool::wake`] (or at once if one happened since the last).
    pub fn woken(&self) -> impl Future<Output = ()> + '_ {
        self.wake.notified()
    }

    /// Takes room in the budget for `event`: false (counted) when the spool is full or
    /// closed. The queue calls this under its own lock, so the replayer cannot find the
    /// spool drained while a reserved event is still on its way to the writer.
    pub fn reserve(&self, event: &Event) -> bool {
        let len = record_len(event);
        let mut shared = self.lock();
        if shared.closed {
            drop(shared);
            self.metrics.dropped("shutdown", 1);
            return false;
        }
        // One segment header of slack: the writer may have to start a new segment.
        let needed =
            shared.disk_bytes + shared.in_transit_bytes + len + segment::SEGMENT_HEADER_BYTES;
        if needed > self.max_bytes {
            let first = !shared.full;
            shared.full = true;
            drop(shared);
            if first {
                tracing::warn!(
                    pipeline = %self.metrics.pipeline,
                    sink = %self.metrics.sink,
                    max_bytes = self.max_bytes,
                    "spool full: new events for this sink are dropped until it drains (raise spool.max_bytes or fix the sink)"
                );
            }
            self.metrics.dropped("full", 1);
            return false;
        }
        if shared.full {
            shared.full = false;
            tracing::info!(pipeline = %self.metrics.pipeline, sink = %self.metrics.sink, "spool has room again");
        }
        shared.in_transit_records += 1;
        shared.in_transit_bytes += len;
        true
    }

    /// Hands a reserved event to the writer; waits only if the writer is far behind.
    pub async fn send(&self, event: Arc<Event>) {
        let sender = self.writer.lock().expect("spool lock").clone();
        let len = record_len(&event);
        let sent = match sender {
            Some(sender) => sender.send(event).await.is_ok(),
            None => false,
        };
        if sent {
            return;
        }
        let mut shared = self.lock();
        shared.in_transit_records = shared.in_transit_records.saturating_sub(1);
        shared.in_transit_bytes = shared.in_transit_bytes.saturating_sub(len);
        drop(shared);
        self.metrics.dropped("shutdown", 1);
        self.wake();
    }

    /// Reserves and sends: for events whose order no longer matters (shutdown).
    pub async fn append(&self, event: Arc<Event>) {
        if self.reserve(&event) {
            self.send(event).await;
        }
    }

    /// Whether `event` was read from one of this spool's segments that is still on disk
    /// (so spooling it again would only duplicate it).
    pub fn holds(&self, event: &Event) -> bool {
        let Some(token) = &event.ack else {
            return false;
        };
        let shared = self.lock();
        shared.segments.values().any(|segment| {
            segment
                .token
                .as_ref()
                .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(token)))
        })
    }

    /// Logs the start of a spill, at most once per [`LOG_EVERY`].
    pub fn note_spill_started(&self) {
        if !self.log_allowed() {
            return;
        }
        tracing::info!(
            pipeline = %self.metrics.pipeline,
            sink = %self.metrics.sink,
            dir = %self.dir.display(),
            "queue full: spilling events to the spool until the sink catches up"
        );
    }

    fn log_allowed(&self) -> bool {
        let mut last = self.last_log.lock().expect("spool lock");
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Reads up to `max` events and, past the first, up to `max_resident` bytes of them
    /// ([`Event::resident_bytes`]), in order, from where the reader is. Empty when nothing
    /// more is readable now (the writer may still publish more).
    pub async fn read(self: &Arc<Self>, max: usize, max_resident: usize) -> Vec<Arc<Event>> {
        let mut guard = self.reader.lock().await;
        let mut state = guard.take();
        let spool = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let events = spool.read_blocking(&mut state, max, max_resident);
            (state, events)
        })
        .await;
        match joined {
            Ok((state, events)) => {
                *guard = state;
                events
            }
            Err(error) => {
                tracing::error!(%error, sink = %self.metrics.sink, "spool reader task failed");
                Vec::new()
            }
        }
    }

    fn read_blocking(
        &self,
        current: &mut Option<ReaderState>,
        max: usize,
        max_resident: usize,
    ) -> Vec<Arc<Event>> {
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut resident = 0usize;
        let mut corrupt_regions = 0u64;
        let mut skipped_bytes = 0u64;
        while events.len() < max && (events.is_empty() || resident < max_resident) {
            if !self.open_next_segment(current, &mut corrupt_regions) {
                break;
            }
            let state = current.as_mut().expect("a segment is open");
            let (limit, finished) = {
                let shared = self.lock();
                match shared.segments.get(&state.sequence) {
                    Some(segment) => (segment.len, segment.sealed || segment.reader_done),
                    None => (0, true),
                }
            };
            match state.reader.next(limit) {
                Ok(Some(segment::Item::Record(record))) => match rebuild(record, state) {
                    Some(event) => {
                        resident += event.resident_bytes();
                        events.push(event);
                    }
                    None => corrupt_regions += 1,
                },
                Ok(Some(segment::Item::Skipped { bytes })) => {
                    corrupt_regions += 1;
                    skipped_bytes += bytes;
                    tracing::warn!(
                        pipeline = %self.metrics.pipeline,
                        sink = %self.metrics.sink,
                        segment = state.sequence,
                        offset = state.reader.offset() - bytes,
                        bytes,
                        "spool: skipped a damaged region (torn write or corruption); the events in it are lost"
                    );
                }
                Ok(None) if finished => self.finish_segment(current),
                Ok(None) => break,
                Err(error) => {
                    let lost = limit.saturating_sub(state.reader.offset());
                    corrupt_regions += 1;
                    skipped_bytes += lost;
                    tracing::error!(
                        %error,
                        pipeline = %self.metrics.pipeline,
                        sink = %self.metrics.sink,
                        segment = state.sequence,
                        bytes = lost,
                        "spool: cannot read a segment, skipping the rest of it"
                    );
                    self.finish_segment(current);
                }
            }
        }
        let mut shared = self.lock();
        if let Some(state) = current.as_ref() {
            shared.cursor = Some((state.sequence, state.reader.offset()));
        }
        drop(shared);
        self.metrics.replayed.increment(events.len() as u64);
        self.metrics.corrupt_records.increment(corrupt_regions);
        self.metrics.skipped_bytes.increment(skipped_bytes);
        events
    }

    /// Makes sure `current` is a segment with something possibly left to read; false when
    /// there is none.
    fn open_next_segment(
        &self,
        current: &mut Option<ReaderState>,
        corrupt_regions: &mut u64,
    ) -> bool {
        if let Some(state) = current.as_ref() {
            let done = self
                .lock()
                .segments
                .get(&state.sequence)
                .is_none_or(|segment| segment.reader_done);
            if !done {
                return true;
            }
            *current = None;
        }
        loop {
            let Some(acks) = self.acks.lock().expect("spool lock").clone() else {
                return false;
            };
            let mut shared = self.lock();
            let Some((&sequence, segment)) = shared
                .segments
                .iter_mut()
                .find(|(_, segment)| !segment.reader_done)
            else {
                return false;
            };
            let path = segment.path.clone();
            match SegmentReader::open(&path) {
                Ok(reader) => {
                    let token = Arc::new(AckToken::new(sequence.to_string(), acks));
                    segment.token = Some(Arc::downgrade(&token));
                    shared.cursor = Some((sequence, 0));
                    *current = Some(ReaderState {
                        sequence,
                        reader,
                        token,
                        channel: None,
                    });
                    return true;
                }
                Err(error) => {
                    segment.reader_done = true;
                    drop(shared);
                    *corrupt_regions += 1;
                    tracing::error!(%error, path = %path.display(), "spool: cannot open a segment, skipping it");
                    // Nothing was read from it: let the settle task forget it.
                    let _ = acks.send(sequence.to_string());
                }
            }
        }
    }

    /// The reader is past the current segment: drop its token so the segment is deleted
    /// once its last event settles.
    fn finish_segment(&self, current: &mut Option<ReaderState>) {
        let Some(state) = current.take() else {
            return;
        };
        if let Some(segment) = self.lock().segments.get_mut(&state.sequence) {
            segment.reader_done = true;
        }
        // The reader's hold on the token ends here, after the segment is marked done.
        drop(state);
    }

    /// Called by the replayer under the queue's lock when a read found nothing: true if
    /// the spool is drained (nothing readable, nothing in transit). Then every segment is
    /// done for the reader, so the next spill starts a new segment, and segments never
    /// read are released.
    pub fn finish_spill(&self) -> bool {
        let mut shared = self.lock();
        if shared.in_transit_records > 0 {
            return false;
        }
        let cursor = shared.cursor;
        let unread = shared.segments.iter().any(|(sequence, segment)| {
            if segment.reader_done {
                return false;
            }
            let read = match cursor {
                Some((at, offset)) if at == *sequence => offset,
                _ => 0,
            };
            segment.len > read
        });
        if unread {
            return false;
        }
        let acks = self.acks.lock().expect("spool lock").clone();
        for (sequence, segment) in shared.segments.iter_mut() {
            if segment.reader_done {
                continue;
            }
            segment.reader_done = true;
            if segment.token.is_none()
                && let Some(acks) = &acks
            {
                // Empty and never opened: no event will ever release it.
                let _ = acks.send(sequence.to_string());
            }
        }
        true
    }

    /// Drops the reader's hold on a segment [`Spool::finish_spill`] marked done.
    pub async fn release_reader(&self) {
        let mut guard = self.reader.lock().await;
        let done = guard.as_ref().is_some_and(|state| {
            self.lock()
                .segments
                .get(&state.sequence)
                .is_none_or(|segment| segment.reader_done)
        });
        if done {
            *guard = None;
        }
    }

    /// Keeps every segment on disk from now on, whatever settles: at a shutdown past its
    /// deadline, events dropped unwritten must not release their segments.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// Stops intake, writes and fsyncs what the writer holds, releases the directory, and
    /// (unless frozen) waits a little for settled segments to be deleted.
    pub async fn close(&self) {
        let frozen = {
            let mut shared = self.lock();
            shared.closed = true;
            shared.frozen
        };
        drop(self.writer.lock().expect("spool lock").take());
        let writer_task = self.writer_task.lock().expect("spool lock").take();
        if let Some(task) = writer_task
            && tokio::time::timeout(CLOSE_WRITER_TIMEOUT, task)
                .await
                .is_err()
        {
            tracing::error!(sink = %self.metrics.sink, "spool writer did not finish in time");
        }
        drop(self.reader.lock().await.take());
        drop(self.acks.lock().expect("spool lock").take());
        let settle_task = self.settle_task.lock().expect("spool lock").take();
        if let Some(task) = settle_task {
            if frozen {
                task.abort();
            } else if tokio::time::timeout(CLOSE_SETTLE_TIMEOUT, task)
                .await
                .is_err()
            {
                // Events still held somewhere: their segments stay and are replayed.
                tracing::warn!(sink = %self.metrics.sink, "spool: some segments are not settled, keeping them for the next start");
            }
        }
    }

    async fn write_loop(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<Arc<Event>>,
        writer: SegmentWriter,
    ) {
        let mut slot = Some(writer);
        let mut batch: Vec<Arc<Event>> = Vec::with_capacity(WRITER_BATCH);
        let tick_every = match self.fsync {
            FsyncPolicy::Interval => self.fsync_interval,
            FsyncPolicy::Always | FsyncPolicy::Never => Duration::from_secs(1),
        };
        let mut ticks = tokio::time::interval(tick_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = receiver.recv_many(&mut batch, WRITER_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.write_batch(&mut slot, &mut batch).await;
                }
                _ = ticks.tick() => self.housekeeping(&mut slot, false).await,
            }
        }
        self.housekeeping(&mut slot, true).await;
    }

    async fn write_batch(&self, slot: &mut Option<SegmentWriter>, batch: &mut Vec<Arc<Event>>) {
        let mut encoded = Vec::new();
        let mut lens = Vec::with_capacity(batch.len());
        let mut reserved_bytes = 0u64;
        let mut too_large = 0u64;
        for event in batch.iter() {
            reserved_bytes += record_len(event);
            match record::encode_parts_into(
                &event.channel,
                &event.payload,
                event.received_at,
                event.rate_limited,
                &mut encoded,
            ) {
                Ok(len) => lens.push(len),
                Err(error) => {
                    too_large += 1;
                    tracing::warn!(%error, sink = %self.metrics.sink, event_id = %event.event_id, "cannot spool an event");
                }
            }
        }
        let roll_first = self.active_is_done(slot);
        let count = lens.len();
        let outcome = with_writer(slot, move |writer| {
            writer.append(&encoded, &lens, roll_first)
        })
        .await;
        let (written, failed) = match &outcome {
            Some(outcome) => (outcome.written, outcome.failed),
            None => (0, count),
        };
        {
            let mut shared = self.lock();
            if let Some(outcome) = &outcome {
                apply_changes(&mut shared, &outcome.changes);
            }
            shared.in_transit_records =
                shared.in_transit_records.saturating_sub(batch.len() as u64);
            shared.in_transit_bytes = shared.in_transit_bytes.saturating_sub(reserved_bytes);
            self.metrics.bytes.set(shared.disk_bytes as f64);
        }
        self.metrics.written.increment(written as u64);
        if too_large > 0 {
            self.metrics.dropped("too_large", too_large);
        }
        if failed > 0 {
            self.metrics.dropped("write_error", failed as u64);
        }
        if let Some(error) = outcome.and_then(|outcome| outcome.error)
            && self.log_allowed()
        {
            tracing::error!(%error, dir = %self.dir.display(), dropped = failed, "spool write failed (disk full or not writable?)");
        }
        // Only now, with the events in a segment, may their holders (e.g. a Streams
        // source waiting to XACK) let go of them.
        batch.clear();
        self.wake();
    }

    /// Periodic: fsync (interval policy) and close a segment the reader is done with.
    /// `last`: at close, fsync (unless `never`) and close whatever is open.
    async fn housekeeping(&self, slot: &mut Option<SegmentWriter>, last: bool) {
        let close = last || self.active_is_done(slot);
        let sync = match self.fsync {
            FsyncPolicy::Interval => slot.as_ref().is_some_and(SegmentWriter::needs_sync),
            FsyncPolicy::Always | FsyncPolicy::Never => false,
        };
        if !close && !sync {
            return;
        }
        let has_active = slot
            .as_ref()
            .and_then(SegmentWriter::active_sequence)
            .is_some();
        if !has_active {
            return;
        }
        let outcome = with_writer(slot, move |writer| {
            if close {
                writer.close_active()
            } else {
                writer.sync().map(|()| None)
            }
        })
        .await;
        match outcome {
            Some(Ok(Some(change))) => {
                let mut shared = self.lock();
                apply_changes(&mut shared, &[change]);
                drop(shared);
                self.wake();
            }
            Some(Ok(None)) | None => {}
            Some(Err(error)) => {
                if self.log_allowed() {
                    tracing::error!(%error, dir = %self.dir.display(), "spool fsync failed");
                }
            }
        }
    }

    /// Whether the writer's open segment is one the reader is done with (or deleted): then
    /// the next append must start a new segment.
    fn active_is_done(&self, slot: &Option<SegmentWriter>) -> bool {
        let Some(active) = slot.as_ref().and_then(SegmentWriter::active_sequence) else {
            return false;
        };
        self.lock()
            .segments
            .get(&active)
            .is_none_or(|segment| segment.reader_done)
    }

    /// Deletes a segment once its token is released: every event read from it is settled.
    async fn settle_loop(self: Arc<Self>, mut acks: mpsc::UnboundedReceiver<String>) {
        while let Some(id) = acks.recv().await {
            let Ok(sequence) = id.parse::<u64>() else {
                continue;
            };
            let removed = {
                let mut shared = self.lock();
                if shared.frozen {
                    continue;
                }
                shared.segments.remove(&sequence)
            };
            let Some(segment) = removed else {
                continue;
            };
            if let Err(error) = tokio::fs::remove_file(&segment.path).await
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, path = %segment.path.display(), "spool: cannot delete a replayed segment");
            }
            let mut shared = self.lock();
            shared.disk_bytes = shared.disk_bytes.saturating_sub(segment.len);
            self.metrics.bytes.set(shared.disk_bytes as f64);
        }
    }
}

/// Bytes an event takes in a segment (what the budget counts).
fn record_len(event: &Event) -> u64 {
    record::encoded_len(event.channel.len(), event.payload.len()) as u64
}

fn apply_changes(shared: &mut Shared, changes: &[segment::SegmentChange]) {
    for change in changes {
        match shared.segments.get_mut(&change.sequence) {
            Some(segment) => {
                shared.disk_bytes = (shared.disk_bytes + change.len).saturating_sub(segment.len);
                segment.len = change.len;
                segment.sealed |= change.sealed;
            }
            // A segment deleted meanwhile is not brought back.
            None if !change.created => {}
            None => {
                shared.disk_bytes += change.len;
                shared.segments.insert(
                    change.sequence,
                    SegmentState {
                        path: change.path.clone(),
                        len: change.len,
                        sealed: change.sealed,
                        reader_done: false,
                        token: None,
                    },
                );
            }
        }
    }
}

/// Runs `work` on a blocking thread with the writer, then puts the writer back.
async fn with_writer<R, F>(slot: &mut Option<SegmentWriter>, work: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(&mut SegmentWriter) -> R + Send + 'static,
{
    let mut writer = slot.take()?;
    let joined = tokio::task::spawn_blocking(move || {
        let result = work(&mut writer);
        (writer, result)
    })
    .await;
    match joined {
        Ok((writer, result)) => {
            *slot = Some(writer);
            Some(result)
        }
        Err(error) => {
            tracing::error!(%error, "spool writer task failed; spooling stops for this sink");
            None
        }
    }
}

/// The event a record was made from; `None` if the payload no longer decodes.
fn rebuild(record: Record, state: &mut ReaderState) -> Option<Arc<Event>> {
    let channel = match &state.channel {
        Some(channel) if **channel == *record.channel => Arc::clone(channel),
        _ => {
            let channel: Arc<str> = Arc::from(record.channel.as_str());
            state.channel = Some(Arc::clone(&channel));
            channel
        }
    };
    // It was valid when spooled: no size limit applies on the way back.
    match event::decode(record.payload, channel, usize::MAX, record.received_at) {
        Ok(mut event) => {
            event.rate_limited = record.rate_limited;
            event.ack = Some(Arc::clone(&state.token));
            Some(Arc::new(event))
        }
        Err(invalid) => {
            tracing::warn!(reason = %invalid, segment = state.sequence, "spool: a record no longer decodes, skipping it");
            None
        }
    }
}
