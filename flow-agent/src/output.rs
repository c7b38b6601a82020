//! Local sinks for flow records and aggregates.

use std::io::{self, Write};

use serde::Serialize;

use crate::{aggregate::AggregateRecord, record::FlowRecord};

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
}

impl<W: Write> JsonLines<W> {
    /// Writes `content` to `writer`.
    pub fn new(writer: W, content: JsonContent) -> Self {
        Self { writer, content }
    }

    fn write<T: Serialize>(&mut self, items: &[T]) -> io::Result<()> {
        let Self { writer, .. } = self;
        for item in items {
            serde_json::to_writer(&mut *writer, item)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()
    }
}

impl<W: Write> RecordSink for JsonLines<W> {
    fn flows(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        match self.content {
            JsonContent::Flows => self.write(records),
            JsonContent::Aggregates => Ok(()),
        }
    }

    fn aggregates(&mut self, aggregates: &[AggregateRecord]) -> io::Result<()> {
        match self.content {
            JsonContent::Aggregates => self.write(aggregates),
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
