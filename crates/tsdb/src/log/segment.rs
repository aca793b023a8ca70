//! One segment file: creation, sequential record reading and the sparse offset index.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LogError;
use super::format::{
    self, Decoded, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, SegmentKind,
};
use super::fsutil::{all_zero, io_err, sync_dir};

/// Every `SPARSE_EVERY`-th record's offset is kept in memory for random reads.
pub(crate) const SPARSE_EVERY: u64 = 16;
/// Read buffer size of sequential readers.
const READ_BUF: usize = 1 << 20;

/// File name of the segment whose first record is `first`.
pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}")
}

/// Parses a segment file name (exactly 20 decimal digits). Indexes above `i64::MAX` are
/// refused so that index arithmetic can never overflow.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok().filter(|&i| i <= i64::MAX as u64)
    } else {
        None
    }
}

/// An open segment. `size` is the end of its last valid record.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first: u64,
    pub(crate) count: u64,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// `sparse[k]` is the byte offset of record `first + k * SPARSE_EVERY`.
    pub(crate) sparse: Vec<u64>,
}

impl Segment {
    /// One past the last index held.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.count
    }

    /// Records that a record of `framed` bytes was appended at the current end.
    pub(crate) fn push(&mut self, framed: u64) {
        if self.count.is_multiple_of(SPARSE_EVERY) {
            self.sparse.push(self.size);
        }
        self.count += 1;
        self.size += framed;
    }

    /// Byte offset of record `index` (which must satisfy first <= index <= end()). Reads up to
    /// `SPARSE_EVERY - 1` record headers.
    pub(crate) fn offset_of(&self, index: u64) -> Result<u64, LogError> {
        let rel = index - self.first;
        if rel == self.count {
            return Ok(self.size);
        }
        let k = (rel / SPARSE_EVERY) as usize;
        let mut off = self
            .sparse
            .get(k)
            .copied()
            .ok_or_else(|| LogError::Corruption {
                segment: self.path.clone(),
                offset: 0,
                reason: format!("internal: no sparse offset for record {index}"),
            })?;
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        for _ in 0..(rel % SPARSE_EVERY) {
            self.file
                .read_exact_at(&mut hdr, off)
                .map_err(io_err(&self.path))?;
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as u64;
            off += RECORD_HEADER_LEN as u64 + len;
            if off > self.size {
                return Err(LogError::Corruption {
                    segment: self.path.clone(),
                    offset: off,
                    reason: format!("record length runs past the segment end {}", self.size),
                });
            }
        }
        Ok(off)
    }

    /// Reads and verifies the record `index` at byte `offset`.
    pub(crate) fn read_at(&self, index: u64, offset: u64) -> Result<Vec<u8>, LogError> {
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        self.file
            .read_exact_at(&mut hdr, offset)
            .map_err(io_err(&self.path))?;
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let total = format::framed_len(len);
        if offset + total as u64 > self.size {
            return Err(LogError::Corruption {
                segment: self.path.clone(),
                offset,
                reason: format!(
                    "record {index}: length {len} runs past the segment end {}",
                    self.size
                ),
            });
        }
        let mut buf = vec![0u8; total];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io_err(&self.path))?;
        match format::decode_record(&buf, index) {
            Decoded::Record { .. } => {
                buf.drain(..RECORD_HEADER_LEN);
                Ok(buf)
            }
            Decoded::Incomplete { needed } => Err(LogError::Corruption {
                segment: self.path.clone(),
                offset,
                reason: format!("record {index}: expected {needed} bytes, got {total}"),
            }),
            Decoded::Invalid { reason, .. } => Err(LogError::Corruption {
                segment: self.path.clone(),
                offset,
                reason,
            }),
        }
    }
}

/// Creates (or replaces) the segment file `dir/<first>` holding only its header; fsyncs the file
/// and the directory.
pub(crate) fn create_segment(
    dir: &Path,
    kind: SegmentKind,
    first: u64,
) -> Result<Segment, LogError> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let header = format::encode_segment_header(SegmentHeader {
        kind,
        first_index: first,
    });
    file.write_all_at(&header, 0).map_err(io_err(&path))?;
    file.sync_data().map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(Segment {
        first,
        count: 0,
        size: SEGMENT_HEADER_LEN as u64,
        path,
        file: Arc::new(file),
        sparse: Vec::new(),
    })
}

/// Why a scan stopped before the end of a file.
#[derive(Debug)]
pub(crate) struct Bad {
    pub(crate) offset: u64,
    pub(crate) reason: String,
    /// The damage reaches the end of the file (partial record, a bad last record, or zeros to
    /// the end): what a torn write leaves.
    pub(crate) at_end: bool,
}

/// Result of scanning a whole segment file.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) segment: Segment,
    pub(crate) file_len: u64,
    pub(crate) bad: Option<Bad>,
}

/// Opens `path` and verifies its header and every record. `expect_first` is the first index the
/// name (log) or the position (checkpoint) says the segment must have.
pub(crate) fn scan_segment(
    path: &Path,
    kind: SegmentKind,
    expect_first: u64,
) -> Result<Scan, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let file = Arc::new(file);
    let mut segment = Segment {
        first: expect_first,
        count: 0,
        size: 0,
        path: path.to_path_buf(),
        file: Arc::clone(&file),
        sparse: Vec::new(),
    };
    let bad_header = |reason: String, at_end: bool| Bad {
        offset: 0,
        reason,
        at_end,
    };
    if file_len < SEGMENT_HEADER_LEN as u64 {
        return Ok(Scan {
            segment,
            file_len,
            bad: Some(bad_header(
                format!("segment header: expected {SEGMENT_HEADER_LEN} bytes, file has {file_len}"),
                true,
            )),
        });
    }
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    file.read_exact_at(&mut hb, 0).map_err(io_err(path))?;
    let header_problem = match format::decode_segment_header(&hb) {
        Err(reason) => Some(reason),
        Ok(h) if h.kind != kind => Some(format!(
            "segment header: kind {:?}, expected {kind:?}",
            h.kind
        )),
        Ok(h) if h.first_index != expect_first => Some(format!(
            "segment header: first index {}, expected {expect_first}",
            h.first_index
        )),
        Ok(_) => None,
    };
    if let Some(reason) = header_problem {
        let at_end = all_zero(&file, path, 0, file_len)?;
        return Ok(Scan {
            segment,
            file_len,
            bad: Some(bad_header(reason, at_end)),
        });
    }
    segment.size = SEGMENT_HEADER_LEN as u64;
    let mut reader = RecordReader::new(
        file,
        path.to_path_buf(),
        SEGMENT_HEADER_LEN as u64,
        file_len,
        expect_first,
    );
    let bad = loop {
        match reader.next_record()? {
            Step::End => break None,
            Step::Record { len, .. } => segment.push(format::framed_len(len) as u64),
            Step::Bad(b) => break Some(b),
        }
    };
    // A record whose length field runs past the end looks torn; but if a valid record follows
    // it, the length was damaged in the middle of the file: that is corruption.
    let bad = match bad {
        Some(mut b) if b.at_end && b.offset < file_len => {
            let mut rest = vec![0u8; (file_len - b.offset) as usize];
            reader
                .file
                .read_exact_at(&mut rest, b.offset)
                .map_err(io_err(path))?;
            let next = segment.first + segment.count + 1;
            if let Some(pos) = find_record(&rest[1..], next) {
                b.at_end = false;
                b.reason = format!(
                    "{}; a valid record {next} follows at offset {}",
                    b.reason,
                    b.offset + 1 + pos as u64
                );
            }
            Some(b)
        }
        other => other,
    };
    Ok(Scan {
        segment,
        file_len,
        bad,
    })
}

/// Position of the first valid record numbered `index` in `data`, if any.
pub(crate) fn find_record(data: &[u8], index: u64) -> Option<usize> {
    (0..data.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&p| {
        data[p + 4] == format::RECORD_FULL
            && matches!(
                format::decode_record(&data[p..], index),
                Decoded::Record { .. }
            )
    })
}

/// One step of a [`RecordReader`].
#[derive(Debug)]
pub(crate) enum Step {
    /// A valid record; its payload is [`RecordReader::payload`].
    Record { index: u64, len: usize },
    /// The end of the range was reached cleanly.
    End,
    /// The bytes at `offset` are not a valid record.
    Bad(Bad),
}

/// Sequential reader of the records in `[start, end)` of one segment file, through a large
/// buffer filled with positioned reads (so several readers can share one `File`).
#[derive(Debug)]
pub(crate) struct RecordReader {
    file: Arc<File>,
    pub(crate) path: PathBuf,
    end: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
    pos: usize,
    filled: usize,
    next_index: u64,
    payload: (usize, usize),
    /// Bytes to read per refill: starts small (random reads of a few records), doubles up to
    /// `READ_BUF` for sequential scans.
    chunk: usize,
}

impl RecordReader {
    pub(crate) fn new(file: Arc<File>, path: PathBuf, start: u64, end: u64, index: u64) -> Self {
        RecordReader {
            file,
            path,
            end,
            buf: Vec::new(),
            buf_off: start,
            pos: 0,
            filled: 0,
            next_index: index,
            payload: (0, 0),
            chunk: 64 * 1024,
        }
    }

    /// The payload of the record last returned by [`Self::next_record`].
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[self.payload.0..self.payload.1]
    }

    fn offset(&self) -> u64 {
        self.buf_off + self.pos as u64
    }

    /// Makes at least `needed` bytes available at `pos` (the caller checked the file has them).
    fn fill(&mut self, needed: usize) -> Result<(), LogError> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.buf_off += self.pos as u64;
            self.pos = 0;
        }
        let remaining = (self.end - self.buf_off) as usize;
        let target = needed.max(self.chunk).min(remaining);
        self.chunk = (self.chunk * 2).min(READ_BUF);
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        while self.filled < target {
            let n = self
                .file
                .read_at(
                    &mut self.buf[self.filled..target],
                    self.buf_off + self.filled as u64,
                )
                .map_err(io_err(&self.path))?;
            if n == 0 {
                // The file shrank under us (a concurrent truncation): stop here.
                self.end = self.buf_off + self.filled as u64;
                break;
            }
            self.filled += n;
        }
        Ok(())
    }

    pub(crate) fn next_record(&mut self) -> Result<Step, LogError> {
        loop {
            let offset = self.offset();
            if offset >= self.end {
                return Ok(Step::End);
            }
            let remaining = self.end - offset;
            match format::decode_record(&self.buf[self.pos..self.filled], self.next_index) {
                Decoded::Record { len } => {
                    let start = self.pos + RECORD_HEADER_LEN;
                    self.payload = (start, start + len);
                    self.pos = start + len;
                    let index = self.next_index;
                    self.next_index += 1;
                    return Ok(Step::Record { index, len });
                }
                Decoded::Incomplete { needed } => {
                    if needed as u64 > remaining {
                        return Ok(Step::Bad(Bad {
                            offset,
                            reason: format!(
                                "record {}: expected {needed} bytes, only {remaining} remain \
                                 before the end of the file",
                                self.next_index
                            ),
                            at_end: true,
                        }));
                    }
                    self.fill(needed)?;
                    if self.filled - self.pos < needed {
                        // No progress (file shrank): report a torn end.
                        return Ok(Step::Bad(Bad {
                            offset,
                            reason: format!(
                                "record {}: file ended while reading {needed} bytes",
                                self.next_index
                            ),
                            at_end: true,
                        }));
                    }
                }
                Decoded::Invalid { reason, total_len } => {
                    let at_end = match total_len {
                        Some(t) if t as u64 == remaining => true,
                        _ => all_zero(&self.file, &self.path, offset, self.end)?,
                    };
                    return Ok(Step::Bad(Bad {
                        offset,
                        reason,
                        at_end,
                    }));
                }
            }
        }
    }
}
