//! Chunk segment files: numbered files (`00000001`, `00000002`, ...) in one directory, each a
//! header followed by chunk records, every record with its own CRC32. Used for the head's
//! memory-mapped full chunks and for the chunk files of blocks. Byte layout:
//! `docs/format/chunks.md`.
//!
//! A chunk is addressed by a [`ChunkRef`]: `(segment number << 32) | byte offset of its record`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Magic number at the start of every segment file ("TMCK").
pub const SEGMENT_MAGIC: u32 = 0x544D_434B;
/// Format version in the header of segments written with [`RecordFormat::Head`].
pub const SEGMENT_VERSION: u8 = 1;
/// Format version in the header of segments written with [`RecordFormat::Block`].
pub const SEGMENT_VERSION_BLOCK: u8 = 2;
/// Bytes of the segment header: magic (4), version (1), reserved (3).
pub const SEGMENT_HEADER_LEN: usize = 8;
/// Default size at which the writer starts a new segment.
pub const DEFAULT_MAX_SEGMENT_SIZE: u64 = 512 << 20;
/// Fixed part of a record before the data: series ref (8), min time (8), max time (8), encoding (1).
const RECORD_FIXED: usize = 25;
/// Smallest block record: length (1), data (1), CRC (4).
const BLOCK_RECORD_MIN: usize = 6;
const CRC_LEN: usize = 4;
/// Writes are buffered up to this many bytes before they reach the file.
const WRITE_BUFFER: usize = 64 << 10;

/// Reference to a chunk in a segment directory: `(segment number << 32) | byte offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkRef(pub u64);

impl ChunkRef {
    pub fn new(segment: u32, offset: u32) -> Self {
        ChunkRef((u64::from(segment) << 32) | u64::from(offset))
    }
    pub fn segment(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn offset(self) -> u32 {
        self.0 as u32
    }
}

/// Errors of chunk segment files; corruption names the file and the offset.
#[derive(Debug, thiserror::Error)]
pub enum ChunksError {
    #[error("chunk segment I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt chunk segment {path} at offset {offset}: {reason}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("chunk reference {chunk_ref:#x}: segment {segment} does not exist in {dir}")]
    UnknownSegment {
        chunk_ref: u64,
        segment: u32,
        dir: PathBuf,
    },
    #[error("chunk of {len} bytes does not fit in a segment (at most {max} bytes)")]
    TooLarge { len: usize, max: u64 },
}

impl From<ChunksError> for tidemark_storage::Error {
    fn from(e: ChunksError) -> Self {
        match e {
            ChunksError::Io { source, .. } => tidemark_storage::Error::Io(source),
            other => tidemark_storage::Error::Corruption(other.to_string()),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ChunksError + '_ {
    move |source| ChunksError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// File name of segment `seq`.
pub fn segment_file_name(seq: u32) -> String {
    format!("{seq:08}")
}

/// The segment files of `dir`, by number (files whose names are not 8 digits are ignored).
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, ChunksError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 8
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(seq) = name.parse::<u32>()
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn segment_header(format: RecordFormat) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..4].copy_from_slice(&SEGMENT_MAGIC.to_be_bytes());
    h[4] = format.version();
    h
}

/// The kind of records a segment holds (its header's version byte says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// Version 1: `series_ref u64 | min_time i64 | max_time i64 | encoding u8 | len uvarint |
    /// data | crc32`. Self-describing records, so that the head can rebuild its chunk lists by
    /// replaying the segments.
    #[default]
    Head,
    /// Version 2: `len uvarint | data | crc32`, for the chunk files of blocks, whose index
    /// already holds the series, the times and the references (the encoding is the first byte
    /// of the chunk data). Saves 25 bytes per chunk.
    Block,
}

impl RecordFormat {
    fn version(self) -> u8 {
        match self {
            RecordFormat::Head => SEGMENT_VERSION,
            RecordFormat::Block => SEGMENT_VERSION_BLOCK,
        }
    }

    fn of_version(v: u8) -> Option<RecordFormat> {
        match v {
            SEGMENT_VERSION => Some(RecordFormat::Head),
            SEGMENT_VERSION_BLOCK => Some(RecordFormat::Block),
            _ => None,
        }
    }

    /// Bytes a record of `data_len` bytes of chunk data takes.
    fn record_len(self, data_len: usize) -> usize {
        let fixed = match self {
            RecordFormat::Head => RECORD_FIXED,
            RecordFormat::Block => 0,
        };
        fixed + uvarint_len(data_len as u64) + data_len + CRC_LEN
    }
}

fn uvarint_len(mut x: u64) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

/// Options of a [`SegmentWriter`].
#[derive(Debug, Clone)]
pub struct SegmentWriterOptions {
    /// A new segment is started when a record would grow the current one past this size
    /// (default 512 MiB; at most 4 GiB since offsets are 32-bit).
    pub max_segment_size: u64,
    /// Record format of the segments written (default [`RecordFormat::Head`]).
    pub format: RecordFormat,
}

impl Default for SegmentWriterOptions {
    fn default() -> Self {
        SegmentWriterOptions {
            max_segment_size: DEFAULT_MAX_SEGMENT_SIZE,
            format: RecordFormat::Head,
        }
    }
}

/// Appends chunk records to the segment files of a directory. It never appends to a segment
/// that existed before it was opened: the first chunk starts a new segment after the last one,
/// so a torn tail left by a crash stays behind, readable up to the tear.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    opts: SegmentWriterOptions,
    /// The segment being written, with its path, or none before the first chunk.
    file: Option<(File, PathBuf)>,
    seq: u32,
    /// Size of the current segment including buffered bytes.
    size: u64,
    buf: Vec<u8>,
}

impl SegmentWriter {
    /// Opens `dir` (created if missing) with default options.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, ChunksError> {
        Self::open(dir, SegmentWriterOptions::default())
    }

    /// Opens `dir` (created if missing) for appending; new chunks go to a new segment numbered
    /// after the existing ones.
    pub fn open(
        dir: impl AsRef<Path>,
        mut opts: SegmentWriterOptions,
    ) -> Result<Self, ChunksError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let seq = list_segments(&dir)?.last().map_or(0, |s| s.0);
        opts.max_segment_size = opts
            .max_segment_size
            .clamp(SEGMENT_HEADER_LEN as u64 + 64, u64::from(u32::MAX));
        Ok(SegmentWriter {
            dir,
            opts,
            file: None,
            seq,
            size: 0,
            buf: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of the segment being written (0 before the first chunk of a fresh directory).
    pub fn current_segment(&self) -> u32 {
        self.seq
    }

    /// Appends a chunk record and returns its reference. The record reaches the file on
    /// [`SegmentWriter::flush`], [`SegmentWriter::sync`], rotation, or when the buffer fills.
    /// With [`RecordFormat::Block`] only `data` is stored (`series_ref`, the times and
    /// `encoding` are the caller's to keep; `encoding` must be `data`'s first byte).
    pub fn write_chunk(
        &mut self,
        series_ref: u64,
        min_time: i64,
        max_time: i64,
        encoding: u8,
        data: &[u8],
    ) -> Result<ChunkRef, ChunksError> {
        let format = self.opts.format;
        if format == RecordFormat::Block && data.first() != Some(&encoding) {
            return Err(ChunksError::Corruption {
                path: self.dir.clone(),
                offset: self.size,
                reason: format!(
                    "block chunk records keep the encoding in the data: expected data starting with {encoding:#04x}, found {:02x?}",
                    data.first()
                ),
            });
        }
        let rec_len = format.record_len(data.len()) as u64;
        if rec_len + SEGMENT_HEADER_LEN as u64 > u64::from(u32::MAX) {
            return Err(ChunksError::TooLarge {
                len: data.len(),
                max: u64::from(u32::MAX),
            });
        }
        if self.file.is_none()
            || self.size + rec_len > self.opts.max_segment_size
                && self.size > SEGMENT_HEADER_LEN as u64
        {
            self.cut()?;
        }
        let offset = self.size as u32;
        let start = self.buf.len();
        if format == RecordFormat::Head {
            self.buf.extend_from_slice(&series_ref.to_le_bytes());
            self.buf.extend_from_slice(&min_time.to_le_bytes());
            self.buf.extend_from_slice(&max_time.to_le_bytes());
            self.buf.push(encoding);
        }
        let mut len = data.len() as u64;
        while len >= 0x80 {
            self.buf.push((len as u8) | 0x80);
            len >>= 7;
        }
        self.buf.push(len as u8);
        self.buf.extend_from_slice(data);
        let crc = crc32fast::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.size += rec_len;
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(ChunkRef::new(self.seq, offset))
    }

    /// Writes buffered records to the file (no fsync).
    pub fn flush(&mut self) -> Result<(), ChunksError> {
        if let Some((f, path)) = &mut self.file
            && !self.buf.is_empty()
        {
            f.write_all(&self.buf).map_err(io_err(path))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes and fsyncs the current segment.
    pub fn sync(&mut self) -> Result<(), ChunksError> {
        self.flush()?;
        if let Some((f, path)) = &self.file {
            f.sync_data().map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Finishes the current segment (flush + fsync) and starts the next one.
    pub fn cut(&mut self) -> Result<(), ChunksError> {
        self.sync()?;
        let seq = self.seq + 1;
        let path = self.dir.join(segment_file_name(seq));
        let mut f = File::options()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(&segment_header(self.opts.format))
            .map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        tracing::debug!(segment = seq, path = %path.display(), "new chunk segment");
        self.file = Some((f, path));
        self.seq = seq;
        self.size = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    /// Deletes every segment numbered below `seq` (never the one being written). Returns how many.
    pub fn remove_segments_before(&mut self, seq: u32) -> Result<usize, ChunksError> {
        let mut n = 0;
        for (s, path) in list_segments(&self.dir)? {
            if s < seq && !(self.file.is_some() && s == self.seq) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "chunk segment writer: flush on drop failed");
        }
    }
}

/// One chunk read from a segment (borrowing the memory map). Records of block segments
/// ([`RecordFormat::Block`]) carry no series reference or times: those fields are 0 there and
/// `encoding` is the first byte of `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkView<'a> {
    pub series_ref: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub encoding: u8,
    pub data: &'a [u8],
}

/// What replay learns about one chunk record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub chunk_ref: ChunkRef,
    pub series_ref: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub encoding: u8,
    /// Length of the chunk data in bytes.
    pub len: usize,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    map: Mmap,
    /// Size of the file when mapped.
    len: u64,
    header_error: Option<String>,
    format: RecordFormat,
}

/// Reads chunks from the segment files of a directory through memory maps.
#[derive(Debug)]
pub struct SegmentReader {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
}

/// How parsing a record at an offset went.
enum Parsed<'a> {
    Ok(ChunkView<'a>, usize),
    /// Not enough bytes (or only zero bytes) left: a torn tail.
    Torn(String),
    Corrupt(String),
}

/// Reads a uvarint of at most 5 bytes (a record's data length) at `pos` of `rest`.
fn record_len_varint(rest: &[u8], mut pos: usize) -> Result<(u64, usize), Parsed<'static>> {
    let mut len = 0u64;
    let mut shift = 0;
    loop {
        let Some(&b) = rest.get(pos) else {
            return Err(Parsed::Torn("record ends inside its length field".into()));
        };
        pos += 1;
        len |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok((len, pos));
        }
        shift += 7;
        if shift > 35 {
            return Err(Parsed::Corrupt(
                "expected a data length varint of at most 5 bytes, found a longer one".into(),
            ));
        }
    }
}

/// Checks that `pos + len` data bytes and the CRC fit in `rest`, and the CRC over
/// `rest[..pos + len]`. Returns the end of the data.
fn check_record(rest: &[u8], pos: usize, len: u64) -> Result<usize, Parsed<'static>> {
    let need = pos as u64 + len + CRC_LEN as u64;
    if need > rest.len() as u64 {
        return Err(Parsed::Torn(format!(
            "record needs {need} bytes but only {} remain",
            rest.len()
        )));
    }
    let end = pos + len as usize;
    let stored = rest
        .get(end..end + 4)
        .and_then(|s| s.first_chunk::<4>())
        .map_or(0, |b| u32::from_le_bytes(*b));
    let actual = crc32fast::hash(&rest[..end]);
    if stored != actual {
        return Err(Parsed::Corrupt(format!(
            "CRC32 mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    Ok(end)
}

fn parse_block_record(rest: &[u8]) -> Parsed<'_> {
    if rest.len() < BLOCK_RECORD_MIN {
        return Parsed::Torn(format!(
            "expected a record of at least {BLOCK_RECORD_MIN} bytes, found {}",
            rest.len()
        ));
    }
    let (len, pos) = match record_len_varint(rest, 0) {
        Ok(x) => x,
        Err(p) => return p,
    };
    if len == 0 {
        return Parsed::Corrupt("expected chunk data of at least 1 byte, found 0".into());
    }
    let end = match check_record(rest, pos, len) {
        Ok(end) => end,
        Err(p) => return p,
    };
    let data = &rest[pos..end];
    Parsed::Ok(
        ChunkView {
            series_ref: 0,
            min_time: 0,
            max_time: 0,
            encoding: data[0],
            data,
        },
        end + CRC_LEN,
    )
}

fn parse_record(data: &[u8], offset: usize, format: RecordFormat) -> Parsed<'_> {
    let Some(rest) = data.get(offset..) else {
        return Parsed::Torn(format!(
            "offset past the end of the {} byte file",
            data.len()
        ));
    };
    if rest.iter().all(|&b| b == 0) {
        return Parsed::Torn(format!("{} zero bytes at the end", rest.len()));
    }
    if format == RecordFormat::Block {
        return parse_block_record(rest);
    }
    if rest.len() < RECORD_FIXED + 1 + CRC_LEN {
        return Parsed::Torn(format!(
            "expected a record of at least {} bytes, found {}",
            RECORD_FIXED + 1 + CRC_LEN,
            rest.len()
        ));
    }
    let le8 = |at: usize| {
        rest.get(at..at + 8)
            .and_then(|s| s.first_chunk::<8>())
            .map_or(0, |b| u64::from_le_bytes(*b))
    };
    let series_ref = le8(0);
    let min_time = le8(8) as i64;
    let max_time = le8(16) as i64;
    let encoding = rest[24];
    let (len, pos) = match record_len_varint(rest, RECORD_FIXED) {
        Ok(x) => x,
        Err(p) => return p,
    };
    let end = match check_record(rest, pos, len) {
        Ok(end) => end,
        Err(p) => return p,
    };
    let data_bytes = &rest[pos..end];
    Parsed::Ok(
        ChunkView {
            series_ref,
            min_time,
            max_time,
            encoding,
            data: data_bytes,
        },
        end + CRC_LEN,
    )
}

impl SegmentReader {
    /// Maps every segment file of `dir`. Files with a bad header are kept and reported as
    /// corruption when read, so the other segments still serve.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ChunksError> {
        let mut r = SegmentReader {
            dir: dir.as_ref().to_path_buf(),
            segments: BTreeMap::new(),
        };
        r.reload()?;
        Ok(r)
    }

    /// Maps segments created since opening and re-maps those that grew.
    pub fn reload(&mut self) -> Result<(), ChunksError> {
        for (seq, path) in list_segments(&self.dir)? {
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            if self.segments.get(&seq).is_some_and(|s| s.len == len) {
                continue;
            }
            let f = File::open(&path).map_err(io_err(&path))?;
            // SAFETY: segment files are only ever appended to (by one writer) or deleted as a
            // whole; bytes that were mapped are never rewritten.
            let map = unsafe { Mmap::map(&f) }.map_err(io_err(&path))?;
            let format = map
                .get(4)
                .and_then(|&v| RecordFormat::of_version(v))
                .unwrap_or_default();
            let header_error = if map.len() < SEGMENT_HEADER_LEN {
                None // created but header not written yet: an empty segment
            } else if map[..4] != SEGMENT_MAGIC.to_be_bytes() {
                Some(format!(
                    "expected magic {SEGMENT_MAGIC:#010x}, found {:02x?}",
                    &map[..4]
                ))
            } else if RecordFormat::of_version(map[4]).is_none() {
                Some(format!(
                    "expected version {SEGMENT_VERSION} or {SEGMENT_VERSION_BLOCK}, found {}",
                    map[4]
                ))
            } else {
                None
            };
            if let Some(reason) = &header_error {
                tracing::warn!(path = %path.display(), reason = %reason, "corrupt chunk segment header");
            }
            self.segments.insert(
                seq,
                Segment {
                    path,
                    map,
                    len,
                    header_error,
                    format,
                },
            );
        }
        self.segments.retain(|_, s| s.path.exists());
        Ok(())
    }

    /// Numbers of the mapped segments, ascending.
    pub fn segments(&self) -> Vec<u32> {
        self.segments.keys().copied().collect()
    }

    /// Path of segment `seq`, if mapped.
    pub fn segment_path(&self, seq: u32) -> Option<&Path> {
        self.segments.get(&seq).map(|s| s.path.as_path())
    }

    fn segment(&self, r: ChunkRef) -> Result<&Segment, ChunksError> {
        let seg = self
            .segments
            .get(&r.segment())
            .ok_or_else(|| ChunksError::UnknownSegment {
                chunk_ref: r.0,
                segment: r.segment(),
                dir: self.dir.clone(),
            })?;
        if let Some(reason) = &seg.header_error {
            return Err(ChunksError::Corruption {
                path: seg.path.clone(),
                offset: 0,
                reason: reason.clone(),
            });
        }
        Ok(seg)
    }

    /// The chunk at `r`, its CRC checked.
    pub fn chunk(&self, r: ChunkRef) -> Result<ChunkView<'_>, ChunksError> {
        let seg = self.segment(r)?;
        let offset = r.offset() as usize;
        let corrupt = |reason: String| ChunksError::Corruption {
            path: seg.path.clone(),
            offset: offset as u64,
            reason,
        };
        if offset < SEGMENT_HEADER_LEN {
            return Err(corrupt(format!(
                "expected a record offset of at least {SEGMENT_HEADER_LEN}, found {offset}"
            )));
        }
        match parse_record(&seg.map, offset, seg.format) {
            Parsed::Ok(view, _) => Ok(view),
            Parsed::Torn(reason) | Parsed::Corrupt(reason) => Err(corrupt(reason)),
        }
    }

    /// Iterates the records of segment `seq` in file order. Stops cleanly at a torn tail
    /// (see [`SegmentChunks::torn_tail`]); a record failing its CRC is yielded as an error and
    /// ends the iteration.
    pub fn iter_segment(&self, seq: u32) -> Result<SegmentChunks<'_>, ChunksError> {
        let seg = self.segment(ChunkRef::new(seq, 0))?;
        Ok(SegmentChunks {
            seq,
            seg,
            offset: SEGMENT_HEADER_LEN,
            done: seg.map.len() < SEGMENT_HEADER_LEN,
            torn: None,
        })
    }
}

/// Iterator over the records of one segment.
#[derive(Debug)]
pub struct SegmentChunks<'a> {
    seq: u32,
    seg: &'a Segment,
    offset: usize,
    done: bool,
    torn: Option<(u64, String)>,
}

impl SegmentChunks<'_> {
    /// Offset and description of the torn tail the iteration stopped at, if any.
    pub fn torn_tail(&self) -> Option<(u64, &str)> {
        self.torn.as_ref().map(|(o, s)| (*o, s.as_str()))
    }
}

impl Iterator for SegmentChunks<'_> {
    type Item = Result<ChunkMeta, ChunksError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.seg.map.len() {
            return None;
        }
        let offset = self.offset;
        match parse_record(&self.seg.map, offset, self.seg.format) {
            Parsed::Ok(v, next) => {
                self.offset += next;
                Some(Ok(ChunkMeta {
                    chunk_ref: ChunkRef::new(self.seq, offset as u32),
                    series_ref: v.series_ref,
                    min_time: v.min_time,
                    max_time: v.max_time,
                    encoding: v.encoding,
                    len: v.data.len(),
                }))
            }
            Parsed::Torn(reason) => {
                tracing::warn!(path = %self.seg.path.display(), offset, reason = %reason, "torn tail in chunk segment");
                self.torn = Some((offset as u64, reason));
                self.done = true;
                None
            }
            Parsed::Corrupt(reason) => {
                self.done = true;
                Some(Err(ChunksError::Corruption {
                    path: self.seg.path.clone(),
                    offset: offset as u64,
                    reason,
                }))
            }
        }
    }
}
