//! Local sinks for flow records and aggregates.

mod json;

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

use flow_model::record::FlowRecord;

use self::json::FlowLines;
use crate::{aggregate::AggregateRecord, api::hub::Hub};

/// Receives each drain's records and each interval's aggregates.
pub trait RecordSink {
    /// Writes one drain's flow records.
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()>;

    /// Writes one interval's aggregates.
    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()>;
}

/// What a [`JsonLines`] sink prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonContent {
    /// Flow records.
    Flows,
    /// Per-interval aggregates.
    Aggregates,
}

/// One JSON object per line, flushed after each batch.
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    writer: W,
    content: JsonContent,
    /// Flow records' writers, this thread's and the helper's
    /// ([`JsonLines::write`]).
    flow_lines: [FlowLines; 2],
    /// The chunks they serialize into, kept from batch to batch.
    chunks: [Vec<u8>; 2],
}

impl<W: Write> JsonLines<W> {
    /// Writes `content` to `writer`.
    pub fn new(writer: W, content: JsonContent) -> Self {
        Self {
            writer,
            content,
            flow_lines: Default::default(),
            chunks: Default::default(),
        }
    }

    /// Writes `items` in order, [`PAIRED_CHUNK`] at a time on this thread
    /// while a helper serializes the next chunk: a large drain's JSON takes
    /// about half the time where a second core is free. Each chunk goes to
    /// the writer in one write.
    fn write<T: Sync>(
        &mut self,
        items: &[T],
        serialize: fn(&mut FlowLines, &[T], &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Self {
            writer,
            flow_lines: [own, helper],
            chunks: [first_chunk, second_chunk],
            ..
        } = self;
        let result = items.chunks(2 * PAIRED_CHUNK).try_for_each(|pair| {
            let (first, second) = pair.split_at(pair.len().min(PAIRED_CHUNK));
            first_chunk.clear();
            second_chunk.clear();
            std::thread::scope(|scope| {
                let helped = (!second.is_empty())
                    .then(|| scope.spawn(|| serialize(helper, second, second_chunk)));
                let written =
                    serialize(own, first, first_chunk).and_then(|()| writer.write_all(first_chunk));
                let helped = helped.map_or(Ok(()), |helped| {
                    helped
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                });
                written.and(helped)
            })?;
            writer.write_all(second_chunk)
        });
        own.forget();
        helper.forget();
        for chunk in [first_chunk, second_chunk] {
            chunk.clear();
            chunk.shrink_to(CHUNK_KEPT_BYTES);
        }
        result?;
        writer.flush()
    }
}

/// Records a [`JsonLines`] sink serializes on one thread while a helper does
/// as many: past this, a thread's start is a small part of the work.
const PAIRED_CHUNK: usize = 2_048;

/// A [`JsonLines`] sink keeps at most this much of each chunk's buffer
/// between batches: a chunk of records of the usual size fits.
const CHUNK_KEPT_BYTES: usize = 4 << 20;

/// `items` as JSON lines, through serde: for aggregates, which are few
/// (flow records have [`FlowLines`]).
fn serialize<T: Serialize>(_: &mut FlowLines, items: &[T], out: &mut Vec<u8>) -> io::Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, item)?;
        out.push(b'\n');
    }
    Ok(())
}

impl<W: Write> RecordSink for JsonLines<W> {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        match self.content {
            JsonContent::Flows => self.write(records, FlowLines::write),
            JsonContent::Aggregates => Ok(()),
        }
    }

    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()> {
        match self.content {
            JsonContent::Aggregates => self.write(aggregates, serialize),
            JsonContent::Flows => Ok(()),
        }
    }
}

/// Discards everything (`--output none`).
#[derive(Debug, Default)]
pub struct Discard;

impl RecordSink for Discard {
    fn flows(&mut self, _records: &[FlowRecord]) -> io::Result<()> {
        Ok(())
    }

    fn aggregates(&mut self, _aggregates: &[AggregateRecord]) -> io::Result<()> {
        Ok(())
    }
}

/// Every sink of a pair receives everything: `(stdout, file)`.
impl<A: RecordSink, B: RecordSink> RecordSink for (A, B) {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        let (first, second) = self;
        first.flows(records)?;
        second.flows(records)
    }

    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()> {
        let (first, second) = self;
        first.aggregates(aggregates)?;
        second.aggregates(aggregates)
    }
}

/// An optional sink: `None` discards.
impl<S: RecordSink> RecordSink for Option<S> {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |sink| sink.flows(records))
    }

    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |sink| sink.aggregates(aggregates))
    }
}

impl<S: RecordSink + ?Sized> RecordSink for Box<S> {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        (**self).flows(records)
    }

    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()> {
        (**self).aggregates(aggregates)
    }
}

/// The API hub stores and fans out everything it is given; it never blocks
/// and never fails (slow subscribers lose records, and are told).
impl RecordSink for Arc<Hub> {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        self.publish_flows(records);
        Ok(())
    }

    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()> {
        self.publish_aggregates(aggregates);
        Ok(())
    }
}

/// Where and how big the rotating output file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkSettings {
    /// The live file; rotated ones are `PATH.1` (newest) to `PATH.keep`.
    pub path: PathBuf,
    /// Rotate before the file would grow past this many bytes (a single line
    /// longer than this still goes in whole, into a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept; 0 keeps none (the file is truncated instead).
    pub keep: u32,
}

/// Serialized lines waiting for the writer thread, at most this many bytes:
/// beyond it batches are dropped (and counted) rather than holding the agent.
const FILE_PENDING_LIMIT: u64 = 64 << 20;

struct Batch {
    lines: Vec<u8>,
    records: u64,
    /// Records dropped since the previous batch was handed over: the writer
    /// tells of them before these lines, so the file keeps the order.
    lost_before: u64,
}

/// Counters of a [`FileSink`], shared with its writer thread.
#[derive(Debug, Default)]
pub struct FileSinkStats {
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped: the writer was behind or the file could not be written.
    pub dropped: AtomicU64,
    /// Files rotated.
    pub rotations: AtomicU64,
    pending_bytes: AtomicU64,
}

/// Flow records as JSON lines in a size-rotated file, for log shippers.
///
/// The agent only serializes and hands batches to a writer thread; when the
/// thread falls behind (slow disk) or cannot write, batches are dropped and
/// counted, and the next line written is `{"lost_records": N, "time": ...}`,
/// so a reader knows exactly how many it missed. Dropping the sink writes
/// everything queued and joins the thread.
pub struct FileSink {
    sender: Option<std::sync::mpsc::SyncSender<Batch>>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: Arc<FileSinkStats>,
    /// Dropped here and not yet handed to the writer to tell.
    unsent_drops: u64,
    /// Writes the records' lines.
    flow_lines: FlowLines,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Opens (appending to) the file and starts the writer thread. Fails if the
    /// file cannot be opened, so a wrong path is reported at start.
    pub fn open(settings: FileSinkSettings) -> io::Result<Self> {
        let file = RotatingFile::open(settings)?;
        let stats = Arc::new(FileSinkStats::default());
        // The byte limit bounds the queue; this only caps the number of batches.
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Batch>(1024);
        let thread_stats = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("flow-file-sink".into())
            .spawn(move || write_batches(file, &receiver, &thread_stats))?;
        Ok(Self {
            sender: Some(sender),
            writer: Some(writer),
            stats,
            unsent_drops: 0,
            flow_lines: FlowLines::default(),
        })
    }

    /// The sink's counters.
    pub fn stats(&self) -> Arc<FileSinkStats> {
        Arc::clone(&self.stats)
    }

    fn drop_batch(&mut self, records: u64) {
        self.unsent_drops += records;
        let before = self.stats.dropped.fetch_add(records, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(
                records,
                "output file writer is behind: dropping records (counted in the file's lost_records lines)"
            );
        }
    }
}

impl RecordSink for FileSink {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(records.len() * 512);
        let written = self.flow_lines.write(records, &mut lines);
        self.flow_lines.forget();
        written?;
        let size = lines.len() as u64;
        let count = records.len() as u64;
        let pending = self.stats.pending_bytes.load(Ordering::Relaxed);
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        // The limit is on what waits behind a slow writer: a batch larger
        // than the limit is still taken when nothing waits (one drain of a
        // large map), so that a busy interval is not dropped on a fast disk.
        if pending > 0 && pending + size > FILE_PENDING_LIMIT {
            self.drop_batch(count);
            return Ok(());
        }
        self.stats.pending_bytes.fetch_add(size, Ordering::Relaxed);
        let batch = Batch {
            lines,
            records: count,
            lost_before: self.unsent_drops,
        };
        match sender.try_send(batch) {
            Ok(()) => self.unsent_drops = 0,
            Err(error) => {
                let (std::sync::mpsc::TrySendError::Full(batch)
                | std::sync::mpsc::TrySendError::Disconnected(batch)) = error;
                self.stats.pending_bytes.fetch_sub(size, Ordering::Relaxed);
                self.drop_batch(batch.records);
            }
        }
        Ok(())
    }

    fn aggregates(&mut self, _aggregates: &[AggregateRecord]) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        // Drops since the last batch are told at the end of the file; then
        // closing the channel lets the writer finish what is queued and exit.
        if let Some(sender) = self.sender.take()
            && self.unsent_drops > 0
        {
            let _ = sender.send(Batch {
                lines: Vec::new(),
                records: 0,
                lost_before: self.unsent_drops,
            });
        }
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("output file writer panicked");
        }
    }
}

fn write_batches(
    mut file: RotatingFile,
    receiver: &std::sync::mpsc::Receiver<Batch>,
    stats: &FileSinkStats,
) {
    // Dropped records not yet told in the file, in the file's order.
    let mut unreported = 0;
    let mut failing = false;
    while let Ok(Batch {
        lines,
        records,
        lost_before,
    }) = receiver.recv()
    {
        stats
            .pending_bytes
            .fetch_sub(lines.len() as u64, Ordering::Relaxed);
        unreported += lost_before;
        let mut result = Ok(());
        if unreported > 0 {
            result = write_loss(&mut file, unreported, stats);
            if result.is_ok() {
                unreported = 0;
            }
        }
        if lines.is_empty() {
            continue;
        }
        let result = result.and_then(|()| file.write_lines(&lines, stats));
        match result {
            Ok(()) => {
                stats.written.fetch_add(records, Ordering::Relaxed);
                if failing {
                    tracing::info!(path = %file.settings.path.display(), "output file writable again");
                    failing = false;
                }
            }
            Err(error) => {
                stats.dropped.fetch_add(records, Ordering::Relaxed);
                unreported += records;
                if !failing {
                    tracing::error!(path = %file.settings.path.display(), %error, "cannot write the output file; dropping records until it works again");
                    failing = true;
                }
                file.close();
            }
        }
    }
    // Records of failed writes after the last good one are told at the end.
    if unreported > 0
        && let Err(error) = write_loss(&mut file, unreported, stats)
    {
        tracing::error!(path = %file.settings.path.display(), %error, "cannot write the final loss count to the output file");
    }
    if let Err(error) = file.flush() {
        tracing::error!(path = %file.settings.path.display(), %error, "cannot flush the output file");
    }
}

/// `{"lost_records":N,"time":...}`: N records are missing here.
fn write_loss(file: &mut RotatingFile, count: u64, stats: &FileSinkStats) -> io::Result<()> {
    let marker = serde_json::json!({
        "lost_records": count,
        "time": flow_model::record::Timestamp(std::time::SystemTime::now()),
    });
    let mut line = marker.to_string().into_bytes();
    line.push(b'\n');
    file.write_lines(&line, stats)
}

/// The live output file and its rotation.
struct RotatingFile {
    settings: FileSinkSettings,
    file: Option<io::BufWriter<std::fs::File>>,
    size: u64,
}

impl RotatingFile {
    fn open(settings: FileSinkSettings) -> io::Result<Self> {
        let mut file = Self {
            settings,
            file: None,
            size: 0,
        };
        file.reopen().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot open output file {}: {error}",
                    file.settings.path.display()
                ),
            )
        })?;
        Ok(file)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(io::BufWriter::with_capacity(256 << 10, file));
        Ok(())
    }

    fn close(&mut self) {
        if let Some(mut file) = self.file.take() {
            let _ = file.flush();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }

    /// `PATH.{keep-1}` → `PATH.{keep}`, ..., `PATH` → `PATH.1`; the oldest is
    /// overwritten. With `keep` 0 the file is removed.
    fn rotate(&mut self, stats: &FileSinkStats) -> io::Result<()> {
        self.close();
        let path = &self.settings.path;
        let numbered = |index: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{index}"));
            PathBuf::from(name)
        };
        let keep = self.settings.keep;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            for index in (1..keep).rev() {
                match std::fs::rename(numbered(index), numbered(index + 1)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        stats.rotations.fetch_add(1, Ordering::Relaxed);
        self.reopen()
    }

    /// Writes whole lines, rotating between lines so no file exceeds the limit
    /// (unless one line alone does).
    fn write_lines(&mut self, mut lines: &[u8], stats: &FileSinkStats) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let max = self.settings.max_bytes;
        while !lines.is_empty() {
            let room = usize::try_from(max.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let take = if lines.len() <= room {
                lines.len()
            } else {
                match lines[..room].iter().rposition(|&byte| byte == b'\n') {
                    Some(end) => end + 1,
                    None if self.size > 0 => {
                        self.rotate(stats)?;
                        continue;
                    }
                    // One line longer than the limit: alone in its file.
                    None => lines
                        .iter()
                        .position(|&byte| byte == b'\n')
                        .map_or(lines.len(), |end| end + 1),
                }
            };
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| io::Error::other("output file closed"))?;
            file.write_all(&lines[..take])?;
            self.size += take as u64;
            lines = &lines[take..];
            if !lines.is_empty() || self.size >= max {
                file.flush()?;
                self.rotate(stats)?;
            }
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use flow_model::record::{Endpoint, Hook, Protocol, Timestamp};

    fn record(port: u16) -> FlowRecord {
        let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        FlowRecord {
            time,
            first_seen: time,
            source: Endpoint::new("10.0.0.1".parse().unwrap(), port),
            destination: Endpoint::new("10.0.0.2".parse().unwrap(), 80),
            protocol: Protocol(6),
            icmp: None,
            packets: 1,
            bytes: 40,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "n".into(),
            cross_tenant: None,
            new_connection: false,
            violation: false,
        }
    }

    #[test]
    fn json_lines_keep_the_order_of_a_batch_serialized_in_paired_chunks() {
        // Two full pairs, then a first chunk and part of a second.
        let count = 5 * PAIRED_CHUNK + 7;
        let records: Vec<FlowRecord> = (0..count).map(|n| record(n as u16)).collect();
        let mut sink = JsonLines::new(Vec::new(), JsonContent::Flows);
        sink.flows(&records).unwrap();
        sink.flows(&records[..3]).unwrap();
        let mut expected = String::new();
        for record in records.iter().chain(&records[..3]) {
            expected.push_str(&serde_json::to_string(record).unwrap());
            expected.push('\n');
        }
        assert_eq!(String::from_utf8(sink.writer).unwrap(), expected);
    }

    fn ports(path: &std::path::Path) -> Vec<u16> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let record: FlowRecord = serde_json::from_str(line).unwrap();
                record.source.port
            })
            .collect()
    }

    #[test]
    fn the_file_rotates_between_lines_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let line_length = serde_json::to_string(&record(10_000)).unwrap().len() as u64 + 1;
        let settings = FileSinkSettings {
            path: path.clone(),
            max_bytes: line_length * 3,
            keep: 2,
        };
        let mut sink = FileSink::open(settings).unwrap();
        // Ten records of equal length, in batches of 4, 4 and 2.
        let records: Vec<FlowRecord> = (10_000..10_010).map(record).collect();
        for batch in records.chunks(4) {
            sink.flows(batch).unwrap();
        }
        let stats = sink.stats();
        drop(sink);
        assert_eq!(stats.written.load(Ordering::Relaxed), 10);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        // Files of 3, 3, 3 and 1 records: the oldest file (10000..10002) is gone.
        assert_eq!(stats.rotations.load(Ordering::Relaxed), 3);
        assert_eq!(ports(&path), [10_009]);
        assert_eq!(
            ports(&dir.path().join("flows.jsonl.1")),
            [10_006, 10_007, 10_008]
        );
        assert_eq!(
            ports(&dir.path().join("flows.jsonl.2")),
            [10_003, 10_004, 10_005]
        );
        assert!(!dir.path().join("flows.jsonl.3").exists());
        for file in ["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"] {
            let size = std::fs::metadata(dir.path().join(file)).unwrap().len();
            assert!(size <= line_length * 3, "{file}: {size}");
        }
    }

    #[test]
    fn reopening_appends_and_keep_zero_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let line_length = serde_json::to_string(&record(10_000)).unwrap().len() as u64 + 1;
        let settings = FileSinkSettings {
            path: path.clone(),
            max_bytes: line_length * 2,
            keep: 0,
        };
        let mut sink = FileSink::open(settings.clone()).unwrap();
        sink.flows(&[record(10_001)]).unwrap();
        drop(sink);
        let mut sink = FileSink::open(settings).unwrap();
        sink.flows(&[record(10_002)]).unwrap();
        sink.flows(&[record(10_003)]).unwrap();
        drop(sink);
        // 10001 and 10002 filled the file; it was truncated for 10003.
        assert_eq!(ports(&path), [10_003]);
        assert!(!dir.path().join("flows.jsonl.1").exists());
    }

    #[test]
    fn an_unopenable_file_is_an_error_at_start() {
        let error = FileSink::open(FileSinkSettings {
            path: "/nonexistent-dir/flows.jsonl".into(),
            max_bytes: 4096,
            keep: 1,
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent-dir/flows.jsonl"),
            "{error}"
        );
    }

    #[test]
    fn a_batch_larger_than_the_pending_limit_is_written_when_nothing_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut sink = FileSink::open(FileSinkSettings {
            path: path.clone(),
            max_bytes: 1 << 30,
            keep: 1,
        })
        .unwrap();
        // One drain's worth beyond the limit (here one oversized record).
        let mut big = record(10_001);
        big.interface = "x".repeat(FILE_PENDING_LIMIT as usize + 1);
        sink.flows(&[big]).unwrap();
        let stats = sink.stats();
        drop(sink);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(stats.written.load(Ordering::Relaxed), 1);
        assert!(std::fs::metadata(&path).unwrap().len() > FILE_PENDING_LIMIT);
    }

    #[test]
    fn losses_after_the_last_written_batch_are_told_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut sink = FileSink::open(FileSinkSettings {
            path: path.clone(),
            max_bytes: 1 << 30,
            keep: 1,
        })
        .unwrap();
        sink.flows(&[record(10_001)]).unwrap();
        // The writer falls behind for the last batch: it is dropped.
        sink.stats
            .pending_bytes
            .fetch_add(FILE_PENDING_LIMIT, Ordering::Relaxed);
        sink.flows(&[record(10_002), record(10_003)]).unwrap();
        sink.stats
            .pending_bytes
            .fetch_sub(FILE_PENDING_LIMIT, Ordering::Relaxed);
        drop(sink);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["source"]["port"], 10_001);
        assert_eq!(lines[1]["lost_records"], 2);
    }

    #[test]
    fn a_writer_that_cannot_keep_up_drops_and_the_file_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut sink = FileSink::open(FileSinkSettings {
            path: path.clone(),
            max_bytes: 1 << 30,
            keep: 1,
        })
        .unwrap();
        // Pretend the writer is far behind: the pending limit is reached.
        sink.stats
            .pending_bytes
            .fetch_add(FILE_PENDING_LIMIT, Ordering::Relaxed);
        sink.flows(&[record(10_001), record(10_002)]).unwrap();
        sink.stats
            .pending_bytes
            .fetch_sub(FILE_PENDING_LIMIT, Ordering::Relaxed);
        sink.flows(&[record(10_003)]).unwrap();
        let stats = sink.stats();
        drop(sink);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(stats.written.load(Ordering::Relaxed), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["lost_records"], 2);
        assert_eq!(lines[1]["source"]["port"], 10_003);
    }
}
