//! Sequential readers of the log: [`LogReader`] (from an index) and [`Replay`] (checkpoint, then
//! log). They own handles to the segment files and do not borrow the `Log`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::LogError;
use super::segment::{RecordReader, Step};

#[derive(Debug)]
pub(crate) struct ReaderSegment {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) start_index: u64,
    pub(crate) start_offset: u64,
    pub(crate) end_offset: u64,
}

/// A sequential reader of log records, from [`Log::reader_from`](super::Log::reader_from). Yields `(index, payload)`;
/// after an error it yields nothing more.
#[derive(Debug)]
pub struct LogReader {
    pub(crate) segs: VecDeque<ReaderSegment>,
    pub(crate) cur: Option<RecordReader>,
    pub(crate) next: u64,
    pub(crate) end: u64,
    /// Checkpoint readers report every record with the checkpoint's `upto`.
    pub(crate) fixed_index: Option<u64>,
    pub(crate) failed: bool,
}

impl LogReader {
    /// Like `Iterator::next` but lends the payload instead of allocating it (fast replay).
    pub fn next_record(&mut self) -> Option<Result<(u64, &[u8]), LogError>> {
        if self.failed || self.next >= self.end {
            return None;
        }
        let idx = loop {
            if self.cur.is_none() {
                let Some(s) = self.segs.pop_front() else {
                    self.failed = true;
                    return Some(Err(LogError::OutOfRange {
                        index: self.next,
                        first: self.next,
                        next: self.next,
                    }));
                };
                self.cur = Some(RecordReader::new(
                    s.file,
                    s.path,
                    s.start_offset,
                    s.end_offset,
                    s.start_index,
                ));
            }
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            match cur.next_record() {
                Ok(Step::End) => self.cur = None,
                Ok(Step::Record { index, .. }) => {
                    self.next = index + 1;
                    break self.fixed_index.unwrap_or(index);
                }
                Ok(Step::Bad(b)) => {
                    self.failed = true;
                    return Some(Err(LogError::Corruption {
                        segment: cur.path.clone(),
                        offset: b.offset,
                        reason: b.reason,
                    }));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        };
        let cur = self.cur.as_ref()?;
        Some(Ok((idx, cur.payload())))
    }
}

impl Iterator for LogReader {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().map(|r| r.map(|(i, p)| (i, p.to_vec())))
    }
}

/// The records to replay on start, from [`Log::replay`](super::Log::replay): the checkpoint's records (index =
/// [`Replay::checkpoint_upto`]) and then the log's records.
#[derive(Debug)]
pub struct Replay {
    pub(crate) checkpoint_upto: Option<u64>,
    pub(crate) checkpoint: Option<LogReader>,
    pub(crate) log: LogReader,
}

impl Replay {
    /// `upto` of the checkpoint being replayed, if any.
    pub fn checkpoint_upto(&self) -> Option<u64> {
        self.checkpoint_upto
    }

    /// Like `Iterator::next` but lends the payload instead of allocating it.
    pub fn next_record(&mut self) -> Option<Result<(u64, &[u8]), LogError>> {
        let in_checkpoint = self
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.next < c.end && !c.failed);
        if in_checkpoint {
            return self.checkpoint.as_mut().and_then(LogReader::next_record);
        }
        self.checkpoint = None;
        self.log.next_record()
    }
}

impl Iterator for Replay {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().map(|r| r.map(|(i, p)| (i, p.to_vec())))
    }
}
