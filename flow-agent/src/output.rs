//! Local sinks for flow records.

use std::io::{self, Write};

use crate::record::FlowRecord;

/// Receives the records of each drain.
pub trait RecordSink {
    /// Writes one drain's records.
    fn emit(&mut self, records: &[FlowRecord]) -> io::Result<()>;
}

/// One JSON object per record and line, flushed after each drain.
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    writer: W,
}

impl<W: Write> JsonLines<W> {
    /// Writes to `writer`.
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

impl<W: Write> RecordSink for JsonLines<W> {
    fn emit(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        let Self { writer } = self;
        for record in records {
            serde_json::to_writer(&mut *writer, record)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()
    }
}

/// Discards records (`--output none`).
#[derive(Debug, Default)]
pub struct Discard;

impl RecordSink for Discard {
    fn emit(&mut self, _records: &[FlowRecord]) -> io::Result<()> {
        Ok(())
    }
}

/// Keeps records in memory (tests, embedding).
#[derive(Debug, Default)]
pub struct Collect(pub Vec<FlowRecord>);

impl RecordSink for Collect {
    fn emit(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        let Self(all) = self;
        all.extend_from_slice(records);
        Ok(())
    }
}
