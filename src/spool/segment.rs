//! Segment files on disk, synchronously: naming, the directory lock, appending records
//! (rolling at `segment_bytes`, fsync by policy) and reading them back with corruption
//! handling. No async and no shared state here; [`super::Spool`] runs this on blocking
//! threads and decides what is visible to whom.
//!
//! A reader never trusts a byte it cannot checksum: a record that fails its check or
//! crosses the readable end is skipped up to the next record that passes (found by its
//! magic), or to the end when none does, and the skipped region is reported.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Decoded, RECORD_HEADER_BYTES, Record, SEGMENT_HEADER};
use crate::config::FsyncPolicy;

/// Segment files are `{sequence:020}.spool`, so a directory listing sorts them in order.
const SEGMENT_SUFFIX: &str = ".spool";
/// Held (flock) while a process uses the directory.
const LOCK_FILE: &str = "LOCK";
/// Bytes read from a segment at a time.
const READ_CHUNK_BYTES: usize = 256 * 1024;

pub const SEGMENT_HEADER_BYTES: u64 = SEGMENT_HEADER.len() as u64;

/// The directory of one sink's spool: `{base}/{pipeline}/{sink}`.
pub fn sink_dir(base: &Path, pipeline: &str, sink: &str) -> PathBuf {
    base.join(pipeline).join(sink)
}

pub fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}{SEGMENT_SUFFIX}"))
}

/// One segment file found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub sequence: u64,
    pub path: PathBuf,
    pub len: u64,
}

/// The segment files of `dir`, oldest first; an absent directory has none.
pub fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(sequence) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(SegmentFile {
            sequence,
            path: entry.path(),
            len: entry.metadata()?.len(),
        });
    }
    segments.sort_by_key(|segment| segment.sequence);
    Ok(segments)
}

/// Creates `dir` if needed and takes its lock, so two processes never share a spool.
pub fn lock_dir(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "spool directory {} is in use by another ingestd process (give each process its own spool.dir)",
                dir.display()
            ),
        )),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A change to one segment made by [`SegmentWriter::append`]: its length now, and
/// whether it is sealed (the writer moved on and will never append to it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentChange {
    pub sequence: u64,
    pub path: PathBuf,
    pub len: u64,
    pub sealed: bool,
    /// The segment was created by this append.
    pub created: bool,
}

/// What one [`SegmentWriter::append`] did.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub changes: Vec<SegmentChange>,
    /// Records now in a segment (the first ones of the batch, in order).
    pub written: usize,
    /// Records that could not be written (the rest of the batch after an error).
    pub failed: usize,
    pub error: Option<io::Error>,
}

struct ActiveSegment {
    sequence: u64,
    path: PathBuf,
    file: File,
    len: u64,
    /// Bytes written since the last fsync.
    dirty: bool,
}

/// Appends records to the segments of one directory.
pub struct SegmentWriter {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    next_sequence: u64,
    active: Option<ActiveSegment>,
    lock: Option<File>,
}

impl SegmentWriter {
    /// No I/O until the first append; `lock` is the directory lock if already taken.
    pub fn new(
        dir: PathBuf,
        segment_bytes: u64,
        fsync: FsyncPolicy,
        next_sequence: u64,
        lock: Option<File>,
    ) -> SegmentWriter {
        SegmentWriter {
            dir,
            segment_bytes,
            fsync,
            next_sequence,
            active: None,
            lock,
        }
    }

    /// The segment appends go to now, if one is open.
    pub fn active_sequence(&self) -> Option<u64> {
        self.active.as_ref().map(|active| active.sequence)
    }

    /// Appends `records` (encoded records back to back, `lens` their sizes). Rolls to a
    /// new segment when one would pass `segment_bytes`, or first if `roll_first`. With
    /// `fsync = always` the data is on disk when this returns.
    pub fn append(&mut self, encoded: &[u8], lens: &[usize], roll_first: bool) -> AppendOutcome {
        let mut outcome = AppendOutcome::default();
        if roll_first && let Err(error) = self.seal(&mut outcome) {
            outcome.failed = lens.len();
            outcome.error = Some(error);
            return outcome;
        }
        let mut start = 0usize;
        let mut index = 0usize;
        while index < lens.len() {
            if let Err(error) = self.ensure_room(lens[index] as u64, &mut outcome) {
                outcome.failed = lens.len() - index;
                outcome.error = Some(error);
                return outcome;
            }
            // As many records as fit in this segment, written with one call.
            let active_len = self.active.as_ref().expect("segment open").len;
            let mut end = start + lens[index];
            let mut count = 1;
            while index + count < lens.len()
                && active_len + (end - start + lens[index + count]) as u64 <= self.segment_bytes
            {
                end += lens[index + count];
                count += 1;
            }
            let active = self.active.as_mut().expect("segment open");
            if let Err(error) = active.file.write_all(&encoded[start..end]) {
                // How much landed is unknown: this segment ends at the last good record
                // (a reader stops there; after a restart the rest is a torn tail).
                let sealed = self.active.take().expect("segment open");
                outcome.changes.push(SegmentChange {
                    sequence: sealed.sequence,
                    path: sealed.path,
                    len: sealed.len,
                    sealed: true,
                    created: false,
                });
                outcome.failed = lens.len() - index;
                outcome.error = Some(error);
                return outcome;
            }
            active.len += (end - start) as u64;
            active.dirty = true;
            outcome.written += count;
            index += count;
            start = end;
        }
        if self.fsync == FsyncPolicy::Always
            && let Err(error) = self.sync()
        {
            outcome.error = Some(error);
        }
        if let Some(active) = &self.active {
            push_change(
                &mut outcome.changes,
                SegmentChange {
                    sequence: active.sequence,
                    path: active.path.clone(),
                    len: active.len,
                    sealed: false,
                    created: false,
                },
            );
        }
        outcome
    }

    /// Whether the open segment has bytes not yet fsynced.
    pub fn needs_sync(&self) -> bool {
        self.active.as_ref().is_some_and(|active| active.dirty)
    }

    /// fsyncs the open segment if it has unsynced bytes.
    pub fn sync(&mut self) -> io::Result<()> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if !active.dirty {
            return Ok(());
        }
        active.file.sync_data()?;
        active.dirty = false;
        Ok(())
    }

    /// Closes the open segment (fsync unless `never`); the next append starts a new one.
    pub fn close_active(&mut self) -> io::Result<Option<SegmentChange>> {
        let mut outcome = AppendOutcome::default();
        self.seal(&mut outcome)?;
        Ok(outcome.changes.pop())
    }

    fn ensure_room(&mut self, record_len: u64, outcome: &mut AppendOutcome) -> io::Result<()> {
        if let Some(active) = &self.active {
            // A record larger than a segment still gets a segment of its own.
            let empty = active.len <= SEGMENT_HEADER_BYTES;
            if empty || active.len + record_len <= self.segment_bytes {
                return Ok(());
            }
            self.seal(outcome)?;
        }
        self.open_next(outcome)
    }

    fn seal(&mut self, outcome: &mut AppendOutcome) -> io::Result<()> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let synced = if self.fsync != FsyncPolicy::Never && active.dirty {
            active.file.sync_data()
        } else {
            Ok(())
        };
        active.dirty = false;
        push_change(
            &mut outcome.changes,
            SegmentChange {
                sequence: active.sequence,
                path: active.path,
                len: active.len,
                sealed: true,
                created: false,
            },
        );
        synced
    }

    fn open_next(&mut self, outcome: &mut AppendOutcome) -> io::Result<()> {
        if self.lock.is_none() {
            self.lock = Some(lock_dir(&self.dir)?);
        }
        let sequence = self.next_sequence;
        let path = segment_path(&self.dir, sequence);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        self.next_sequence += 1;
        file.write_all(&SEGMENT_HEADER)?;
        if self.fsync != FsyncPolicy::Never {
            // The file must survive a crash, not only its bytes.
            file.sync_data()?;
            sync_dir(&self.dir)?;
        }
        let len = SEGMENT_HEADER_BYTES;
        push_change(
            &mut outcome.changes,
            SegmentChange {
                sequence,
                path: path.clone(),
                len,
                sealed: false,
                created: true,
            },
        );
        self.active = Some(ActiveSegment {
            sequence,
            path,
            file,
            len,
            dirty: false,
        });
        Ok(())
    }
}

/// Keeps one change per segment, the latest.
fn push_change(changes: &mut Vec<SegmentChange>, change: SegmentChange) {
    match changes
        .iter_mut()
        .find(|existing| existing.sequence == change.sequence)
    {
        Some(existing) => {
            let created = existing.created || change.created;
            *existing = SegmentChange { created, ..change };
        }
        None => changes.push(change),
    }
}

/// One step of reading a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Record(Record),
    /// Bytes that hold no valid record (corruption, a torn tail, a bad file header).
    Skipped {
        bytes: u64,
    },
}

/// Reads the records of one segment file in order, up to a limit the caller moves
/// forward as the writer publishes more.
pub struct SegmentReader {
    file: File,
    /// File bytes `[buffer_offset, buffer_offset + buffer.len())`.
    buffer: Vec<u8>,
    buffer_offset: u64,
    /// Index in `buffer` of the next unconsumed byte.
    cursor: usize,
    header_checked: bool,
    /// Where the file really ended if it is shorter than the limit we were given.
    end_of_file: Option<u64>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: File::open(path)?,
            buffer: Vec::new(),
            buffer_offset: 0,
            cursor: 0,
            header_checked: false,
            end_of_file: None,
        })
    }

    /// File offset of the next unconsumed byte.
    pub fn offset(&self) -> u64 {
        self.buffer_offset + self.cursor as u64
    }

    /// The next record or skipped region below `limit` (the published length: always a
    /// record boundary, so a record crossing it is damaged); `None` at the limit.
    pub fn next(&mut self, published: u64) -> io::Result<Option<Item>> {
        let limit = self.end_of_file.map_or(published, |end| end.min(published));
        if !self.header_checked {
            if limit < SEGMENT_HEADER_BYTES {
                return Ok(None);
            }
            self.fill_to(SEGMENT_HEADER_BYTES as usize, limit)?;
            self.header_checked = true;
            if self.available().starts_with(&SEGMENT_HEADER) {
                self.cursor += SEGMENT_HEADER.len();
            } else {
                return self.resync(limit, 0).map(Some);
            }
        }
        if self.offset() >= limit {
            return Ok(None);
        }
        loop {
            let remaining = limit - self.offset();
            match record::decode(self.available()) {
                Decoded::Record { record, len } => {
                    self.cursor += len;
                    return Ok(Some(Item::Record(record)));
                }
                Decoded::Incomplete => {
                    let needed = needed_len(self.available());
                    if needed as u64 > remaining {
                        // Crosses the readable end: torn tail or a damaged length.
                        return self.resync(limit, 1).map(Some);
                    }
                    let before = self.available().len();
                    self.fill_to(needed, limit)?;
                    if self.available().len() == before {
                        // The file is shorter than the limit said.
                        return self.resync(limit, 1).map(Some);
                    }
                }
                Decoded::Corrupt => return self.resync(limit, 1).map(Some),
            }
        }
    }

    fn available(&self) -> &[u8] {
        &self.buffer[self.cursor..]
    }

    /// Skips from the current offset to the next valid record, searching from
    /// `search_from` bytes ahead, or to `limit` when none follows.
    fn resync(&mut self, limit: u64, search_from: usize) -> io::Result<Item> {
        let mut skipped = 0u64;
        let mut search = search_from;
        loop {
            let readable_end = self.end_of_file.map_or(limit, |end| end.min(limit));
            let found = record::find_magic(self.available(), search);
            let Some(candidate) = found else {
                // Nothing here: drop what was searched (bounded memory) and read on.
                let searched = self.available().len();
                skipped += searched as u64;
                self.cursor += searched;
                search = 0;
                if self.offset() >= readable_end || !self.read_more(readable_end)? {
                    return Ok(Item::Skipped { bytes: skipped });
                }
                continue;
            };
            let remaining = readable_end - self.offset() - candidate as u64;
            match record::decode(&self.available()[candidate..]) {
                Decoded::Record { .. } => {
                    skipped += candidate as u64;
                    self.cursor += candidate;
                    return Ok(Item::Skipped { bytes: skipped });
                }
                Decoded::Incomplete => {
                    let needed = needed_len(&self.available()[candidate..]);
                    if needed as u64 <= remaining && self.read_more(readable_end)? {
                        continue;
                    }
                    search = candidate + 1;
                }
                Decoded::Corrupt => search = candidate + 1,
            }
        }
    }

    /// Reads until at least `wanted` bytes are available or `limit` is reached.
    fn fill_to(&mut self, wanted: usize, limit: u64) -> io::Result<()> {
        while self.available().len() < wanted {
            if !self.read_more(limit)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reads one more chunk below `limit`; false when there is nothing more to read.
    fn read_more(&mut self, limit: u64) -> io::Result<bool> {
        let read_to = self.buffer_offset + self.buffer.len() as u64;
        if read_to >= limit {
            return Ok(false);
        }
        if self.cursor > 0 && self.cursor >= self.buffer.len() / 2 {
            self.buffer.drain(..self.cursor);
            self.buffer_offset += self.cursor as u64;
            self.cursor = 0;
        }
        let chunk = READ_CHUNK_BYTES.min((limit - read_to) as usize);
        let start = self.buffer.len();
        self.buffer.resize(start + chunk, 0);
        let mut filled = 0;
        while filled < chunk {
            match self
                .file
                .read_at(&mut self.buffer[start + filled..], read_to + filled as u64)
            {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.buffer.truncate(start + filled);
                    return Err(error);
                }
            }
        }
        self.buffer.truncate(start + filled);
        if filled < chunk {
            self.end_of_file = Some(read_to + filled as u64);
        }
        Ok(filled > 0)
    }
}

/// Bytes needed to decide about the record starting `bytes` (its header, or all of it).
fn needed_len(bytes: &[u8]) -> usize {
    if bytes.len() < RECORD_HEADER_BYTES {
        return RECORD_HEADER_BYTES;
    }
    let body_len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    RECORD_HEADER_BYTES + body_len
}

/// Everything a directory holds, read to the end of each file: for tests and inspection.
#[derive(Debug, Default)]
pub struct DirContents {
    pub records: Vec<Record>,
    /// Damaged regions skipped (each one at least one lost record).
    pub corrupt_regions: u64,
    pub skipped_bytes: u64,
}

pub fn read_dir(dir: &Path) -> io::Result<DirContents> {
    let mut contents = DirContents::default();
    for segment in list_segments(dir)? {
        let mut reader = SegmentReader::open(&segment.path)?;
        while let Some(item) = reader.next(segment.len)? {
            match item {
                Item::Record(record) => contents.records.push(record),
                Item::Skipped { bytes } => {
                    contents.corrupt_regions += 1;
                    contents.skipped_bytes += bytes;
                }
            }
        }
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::{TimeZone, Utc};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ingestd-segment-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(index: usize) -> Record {
        Record {
            channel: "events".to_string(),
            payload: Bytes::from(format!(
                "{{\"n\":{index},\"pad\":\"{}\"}}",
                "x".repeat(index % 40)
            )),
            // The format keeps milliseconds.
            received_at: Utc
                .timestamp_millis_opt(1_764_000_000_000 + index as i64)
                .unwrap(),
            rate_limited: index.is_multiple_of(3),
        }
    }

    /// Writes `count` records; returns the records and their (path, offset, len) spans.
    fn write(
        dir: &Path,
        count: usize,
        segment_bytes: u64,
    ) -> (Vec<Record>, Vec<(PathBuf, u64, u64)>) {
        let mut writer = SegmentWriter::new(
            dir.to_path_buf(),
            segment_bytes,
            FsyncPolicy::Never,
            1,
            None,
        );
        let mut records = Vec::new();
        let mut spans = Vec::new();
        for index in 0..count {
            let record = record(index);
            let encoded = record::encode(&record).unwrap();
            let outcome = writer.append(&encoded, &[encoded.len()], false);
            assert_eq!(outcome.written, 1, "{:?}", outcome.error);
            let change = outcome.changes.last().unwrap();
            spans.push((
                change.path.clone(),
                change.len - encoded.len() as u64,
                encoded.len() as u64,
            ));
            records.push(record);
        }
        writer.close_active().unwrap();
        (records, spans)
    }

    #[test]
    fn written_records_read_back_in_order_across_segments() {
        let dir = temp_dir("order");
        let (records, _) = write(&dir, 500, 4096);
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() > 5, "rolled into several segments");
        assert!(segments.iter().all(|segment| segment.len <= 4096));
        let contents = read_dir(&dir).unwrap();
        assert_eq!(contents.records, records);
        assert_eq!(contents.corrupt_regions, 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn batch_append_rolls_inside_a_batch() {
        let dir = temp_dir("batch");
        let mut writer = SegmentWriter::new(dir.clone(), 2048, FsyncPolicy::Always, 7, None);
        let records: Vec<Record> = (0..100).map(record).collect();
        let mut encoded = Vec::new();
        let mut lens = Vec::new();
        for record in &records {
            let before = encoded.len();
            record::encode_into(record, &mut encoded).unwrap();
            lens.push(encoded.len() - before);
        }
        let outcome = writer.append(&encoded, &lens, false);
        assert_eq!(outcome.written, 100);
        assert!(
            outcome
                .changes
                .iter()
                .filter(|change| change.sealed)
                .count()
                >= 2
        );
        assert_eq!(list_segments(&dir).unwrap()[0].sequence, 7);
        writer.close_active().unwrap();
        assert_eq!(read_dir(&dir).unwrap().records, records);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_reading_resumes() {
        let dir = temp_dir("middle");
        let (records, spans) = write(&dir, 50, 1 << 20);
        let (path, offset, len) = spans[20].clone();
        let mut bytes = fs::read(&path).unwrap();
        bytes[(offset + len / 2) as usize] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let contents = read_dir(&dir).unwrap();
        let mut expected = records.clone();
        expected.remove(20);
        assert_eq!(contents.records, expected);
        assert_eq!(contents.corrupt_regions, 1);
        assert_eq!(contents.skipped_bytes, len);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_length_or_magic_is_resynced() {
        for field in [0usize, 5] {
            let dir = temp_dir("header");
            let (records, spans) = write(&dir, 30, 1 << 20);
            let (path, offset, _) = spans[10].clone();
            let mut bytes = fs::read(&path).unwrap();
            // Magic byte, or the length made huge so the record seems to cross the end.
            bytes[offset as usize + field] = 0x7F;
            fs::write(&path, &bytes).unwrap();
            let contents = read_dir(&dir).unwrap();
            assert_eq!(contents.records.len(), 29, "field {field}");
            assert_eq!(contents.records[10], records[11]);
            assert_eq!(contents.corrupt_regions, 1);
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_torn_tail_is_skipped_at_every_cut() {
        let dir = temp_dir("torn");
        let (records, spans) = write(&dir, 5, 1 << 20);
        let (path, offset, len) = spans[4].clone();
        let original = fs::read(&path).unwrap();
        for cut in 1..len {
            fs::write(&path, &original[..(offset + cut) as usize]).unwrap();
            let contents = read_dir(&dir).unwrap();
            assert_eq!(contents.records, records[..4], "cut {cut}");
            assert_eq!(contents.corrupt_regions, 1);
            assert_eq!(contents.skipped_bytes, cut);
        }
        fs::write(&path, &original[..offset as usize]).unwrap();
        let contents = read_dir(&dir).unwrap();
        assert_eq!((contents.records.len(), contents.corrupt_regions), (4, 0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_header_loses_no_record() {
        let dir = temp_dir("file-header");
        let (records, spans) = write(&dir, 10, 1 << 20);
        let path = spans[0].0.clone();
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] = b'#';
        fs::write(&path, &bytes).unwrap();
        let contents = read_dir(&dir).unwrap();
        assert_eq!(contents.records, records);
        assert_eq!(contents.corrupt_regions, 1);
        assert_eq!(contents.skipped_bytes, SEGMENT_HEADER_BYTES);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reader_follows_a_growing_segment() {
        let dir = temp_dir("follow");
        let mut writer = SegmentWriter::new(dir.clone(), 1 << 20, FsyncPolicy::Never, 1, None);
        let first = record(1);
        let encoded = record::encode(&first).unwrap();
        let outcome = writer.append(&encoded, &[encoded.len()], false);
        let change = outcome.changes[0].clone();
        let mut reader = SegmentReader::open(&change.path).unwrap();
        assert_eq!(reader.next(change.len).unwrap(), Some(Item::Record(first)));
        assert_eq!(reader.next(change.len).unwrap(), None);
        let second = record(2);
        let encoded = record::encode(&second).unwrap();
        let outcome = writer.append(&encoded, &[encoded.len()], false);
        let limit = outcome.changes[0].len;
        assert_eq!(reader.next(limit).unwrap(), Some(Item::Record(second)));
        assert_eq!(reader.next(limit).unwrap(), None);
        assert_eq!(reader.offset(), limit);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_directory_lock_is_exclusive() {
        let dir = temp_dir("lock");
        let held = lock_dir(&dir).unwrap();
        let error = lock_dir(&dir).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("in use by another ingestd process"),
            "{error}"
        );
        drop(held);
        lock_dir(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
