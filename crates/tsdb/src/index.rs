//! The block index file (`<block>/index`): which series a block holds, their chunks, and the
//! inverted index (label pair -> postings) that resolves matchers. Byte layout:
//! `docs/format/index.md`.
//!
//! ```text
//! header   "TMIX" version:u8 reserved:[u8;3]
//! section 0 symbols         count:u32, then count × (uvarint len, UTF-8 bytes), strictly sorted
//! section 1 series          per series: uvarint len, body (labels as symbol refs + chunk metas)
//! section 2 series index    num_series:u64, then the series-section offset of every 16th series (u64)
//! section 3 label names     count:u32, then count × (name symbol:u32, first entry:u32)
//! section 4 postings table  per (name, value) pair, grouped by name: value symbol:u32, offset:u64
//! section 5 postings        per pair: uvarint count, uvarint first id, uvarint deltas
//! toc      6 × (offset:u64, len:u64, crc32:u32), crc32 of the toc:u32
//! ```
//!
//! Series ids are ordinals (0..num_series) in label order, so "all series" needs no list and
//! postings are small deltas. Symbols are sorted, so comparing symbol refs compares strings.
//! Every section's CRC32 is checked on open; afterwards every read is still bounds-checked, so
//! arbitrary bytes give a [`IndexError::Corrupt`] naming the file and offset, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tidemark_model::Labels;

/// First bytes of every index file.
pub const INDEX_MAGIC: [u8; 4] = *b"TMIX";
/// The format version this code writes and reads.
pub const INDEX_VERSION: u8 = 1;

const HEADER_LEN: usize = 8;
const NUM_SECTIONS: usize = 6;
const TOC_ENTRY_LEN: usize = 20;
const TOC_LEN: usize = NUM_SECTIONS * TOC_ENTRY_LEN + 4;
/// Every `SERIES_STRIDE`-th series has its offset in the series index.
const SERIES_STRIDE: u64 = 16;
/// Every `SYMBOL_STRIDE`-th symbol's offset is kept in memory by the reader.
const SYMBOL_STRIDE: usize = 32;
const POSTINGS_ENTRY_LEN: usize = 12;
const LABEL_NAME_ENTRY_LEN: usize = 8;

const SEC_SYMBOLS: usize = 0;
const SEC_SERIES: usize = 1;
const SEC_SERIES_INDEX: usize = 2;
const SEC_LABEL_NAMES: usize = 3;
const SEC_POSTINGS_TABLE: usize = 4;
const SEC_POSTINGS: usize = 5;
const SECTION_NAMES: [&str; NUM_SECTIONS] = [
    "symbols",
    "series",
    "series index",
    "label names",
    "postings table",
    "postings",
];

/// Result with [`IndexError`].
pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Errors reading or writing an index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{}: {op}: {source}", file.display())]
    Io {
        file: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The file failed a check: names the file, the byte offset and what was wrong.
    #[error("{}: corrupt index at offset {offset}: {what}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    /// The writer was used wrongly (series out of order, too large).
    #[error("{}: {what}", file.display())]
    Invalid { file: PathBuf, what: String },
}

/// Where one chunk of a series lives and the time range it covers (both inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub min_time: i64,
    pub max_time: i64,
    /// Reference into the block's chunk segment files (`chunks::ChunkRef` value).
    pub chunk_ref: u64,
}

// ---------------------------------------------------------------------------------------------
// Varints

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A bounds-checked reader over a byte slice; `base` is the slice's offset in the file so that
/// errors can name absolute offsets.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Decoder<'a> {
        Decoder { buf, pos: 0, base }
    }

    /// Absolute file offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        (self.base + self.pos) as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn uvarint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }

    pub(crate) fn varint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

// ---------------------------------------------------------------------------------------------
// Writer

/// Where the writer keeps series entries until [`IndexWriter::finish`] knows every symbol.
#[derive(Debug)]
enum Spill {
    Mem(Vec<u8>),
    File {
        path: PathBuf,
        out: Option<BufWriter<File>>,
    },
}

/// Writes an index file. Series must be added in strictly increasing [`Labels`] order.
///
/// Memory stays small however many series and chunks a block has: each series entry goes to a
/// spill file next to the index (`index.series-tmp`) with its label strings replaced by
/// temporary ids; only the distinct strings and the postings (4 bytes per label of each series)
/// stay in memory. [`IndexWriter::finish`] sorts the symbols, then streams the final file,
/// converting each spilled entry to final symbol references.
#[derive(Debug)]
pub struct IndexWriter {
    path: PathBuf,
    spill: Spill,
    /// Distinct label strings and their temporary ids (insertion order).
    strings: HashMap<Box<str>, u32>,
    /// Series ids per (name, value) pair of temporary ids.
    postings: HashMap<(u32, u32), Vec<u32>>,
    last: Option<Labels>,
    num_series: u64,
    entry: Vec<u8>,
}

impl IndexWriter {
    /// A writer that will create `path` on [`IndexWriter::finish`] (spilling series entries to
    /// a temp file beside it).
    pub fn new(path: &Path) -> IndexWriter {
        let mut spill_path = path.as_os_str().to_owned();
        spill_path.push(".series-tmp");
        IndexWriter::with_spill(
            path,
            Spill::File {
                path: PathBuf::from(spill_path),
                out: None,
            },
        )
    }

    /// A writer that keeps everything in memory; get the file's bytes with
    /// [`IndexWriter::into_bytes`] (tests, tools).
    pub fn in_memory() -> IndexWriter {
        IndexWriter::with_spill(Path::new("<memory>"), Spill::Mem(Vec::new()))
    }

    fn with_spill(path: &Path, spill: Spill) -> IndexWriter {
        IndexWriter {
            path: path.to_path_buf(),
            spill,
            strings: HashMap::new(),
            postings: HashMap::new(),
            last: None,
            num_series: 0,
            entry: Vec::with_capacity(256),
        }
    }

    fn invalid(&self, what: String) -> IndexError {
        IndexError::Invalid {
            file: self.path.clone(),
            what,
        }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> IndexError + use<> {
        let file = self.path.clone();
        move |source| IndexError::Io { file, op, source }
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.insert(s.into(), id);
        id
    }

    /// Adds the next series (labels strictly greater than the previous series' labels) with
    /// its chunks sorted by `min_time`. Returns the series id (its ordinal).
    pub fn add_series(&mut self, labels: &Labels, chunks: Vec<ChunkMeta>) -> Result<u64> {
        if labels.is_empty() {
            return Err(self.invalid("series with an empty label set".into()));
        }
        if let Some(prev) = &self.last
            && prev >= labels
        {
            return Err(self.invalid(format!(
                "series {labels} added after {prev}: not in label order"
            )));
        }
        if chunks.windows(2).any(|w| w[1].min_time < w[0].min_time)
            || chunks.iter().any(|c| c.max_time < c.min_time)
        {
            return Err(self.invalid(format!("chunks of series {labels} are not sorted by time")));
        }
        if self.num_series >= u64::from(u32::MAX) || self.strings.len() >= u32::MAX as usize - 64 {
            return Err(self.invalid("more than 2^32-1 series or symbols in one block".into()));
        }
        let id = self.num_series as u32;
        let mut body = std::mem::take(&mut self.entry);
        body.clear();
        put_uvarint(&mut body, labels.len() as u64);
        for x in labels.iter() {
            let (n, v) = (self.intern(x.name), self.intern(x.value));
            put_uvarint(&mut body, u64::from(n));
            put_uvarint(&mut body, u64::from(v));
            self.postings.entry((n, v)).or_default().push(id);
        }
        put_chunk_metas(&mut body, &chunks);
        let res = self.spill_entry(&body);
        self.entry = body;
        res?;
        self.last = Some(labels.clone());
        self.num_series += 1;
        Ok(u64::from(id))
    }

    fn spill_entry(&mut self, body: &[u8]) -> Result<()> {
        let mut len = Vec::with_capacity(5);
        put_uvarint(&mut len, body.len() as u64);
        match &mut self.spill {
            Spill::Mem(v) => {
                v.extend_from_slice(&len);
                v.extend_from_slice(body);
            }
            Spill::File { path, out } => {
                if out.is_none() {
                    let f = File::create(&*path).map_err(|source| IndexError::Io {
                        file: path.clone(),
                        op: "create",
                        source,
                    })?;
                    *out = Some(BufWriter::with_capacity(1 << 16, f));
                }
                if let Some(w) = out {
                    w.write_all(&len)
                        .and_then(|()| w.write_all(body))
                        .map_err(|source| IndexError::Io {
                            file: path.clone(),
                            op: "write",
                            source,
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Number of series added so far.
    pub fn num_series(&self) -> usize {
        self.num_series as usize
    }

    /// Writes the whole file and fsyncs it. Returns its size in bytes.
    pub fn finish(mut self) -> Result<u64> {
        let f = File::create(&self.path).map_err(self.io("create"))?;
        let w = BufWriter::with_capacity(1 << 16, f);
        let (w, n) = self.write_to(w)?;
        let f = w
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(self.io("write"))?;
        f.sync_all().map_err(self.io("fsync"))?;
        Ok(n)
    }

    /// The complete file contents (for [`IndexWriter::in_memory`] writers).
    pub fn into_bytes(mut self) -> Result<Vec<u8>> {
        let (v, _) = self.write_to(Vec::new())?;
        Ok(v)
    }

    /// Streams the file to `w`; returns `w` and the number of bytes written.
    fn write_to<W: Write>(&mut self, w: W) -> Result<(W, u64)> {
        // Final symbol order and the map from temporary ids.
        let mut syms: Vec<(&str, u32)> = self.strings.iter().map(|(s, &id)| (&**s, id)).collect();
        syms.sort_unstable();
        let mut final_ref = vec![0u32; syms.len()];
        for (i, (_, tmp)) in syms.iter().enumerate() {
            final_ref[*tmp as usize] = i as u32;
        }
        let mut out = SectionWriter::new(w, self.path.clone());
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&INDEX_MAGIC);
        header[4] = INDEX_VERSION;
        out.write(&header)?;

        // 0: symbols
        out.begin();
        out.write(&(syms.len() as u32).to_le_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (s, _) in &syms {
            put_uvarint(&mut buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
            if buf.len() >= 1 << 16 {
                out.write(&buf)?;
                buf.clear();
            }
        }
        out.write(&buf)?;
        out.end(SEC_SYMBOLS);
        drop(syms);

        // 1: series, re-read from the spill with symbol refs made final.
        out.begin();
        let mut stride_offsets = Vec::with_capacity((self.num_series / SERIES_STRIDE) as usize + 1);
        let mut reader: Box<dyn Read + '_> = match &mut self.spill {
            Spill::Mem(v) => Box::new(std::io::Cursor::new(std::mem::take(v))),
            Spill::File {
                path,
                out: spill_out,
            } => match spill_out.take() {
                None => Box::new(std::io::empty()),
                Some(bw) => {
                    let f = bw
                        .into_inner()
                        .map_err(|e| e.into_error())
                        .map_err(|source| IndexError::Io {
                            file: path.clone(),
                            op: "write",
                            source,
                        })?;
                    drop(f);
                    let f = File::open(&*path).map_err(|source| IndexError::Io {
                        file: path.clone(),
                        op: "open",
                        source,
                    })?;
                    Box::new(BufReader::with_capacity(1 << 16, f))
                }
            },
        };
        let spill_name = match &self.spill {
            Spill::File { path, .. } => path.clone(),
            Spill::Mem(_) => self.path.clone(),
        };
        let spill_err = |what: &str| IndexError::Invalid {
            file: spill_name.clone(),
            what: what.to_string(),
        };
        let mut body = Vec::with_capacity(256);
        let mut conv = Vec::with_capacity(256);
        let mut len_buf = Vec::with_capacity(5);
        for id in 0..self.num_series {
            if id % SERIES_STRIDE == 0 {
                stride_offsets.push(out.section_len());
            }
            let n = read_uvarint_from(&mut reader)
                .ok_or_else(|| spill_err("series spill file truncated"))?;
            body.resize(n as usize, 0);
            reader
                .read_exact(&mut body)
                .map_err(|_| spill_err("series spill file truncated"))?;
            let mut d = Decoder::new(&body, 0);
            conv.clear();
            let nl = d.uvarint().ok_or_else(|| spill_err("bad spilled series"))?;
            put_uvarint(&mut conv, nl);
            for _ in 0..nl * 2 {
                let tmp = d.uvarint().ok_or_else(|| spill_err("bad spilled series"))?;
                let r = final_ref
                    .get(tmp as usize)
                    .ok_or_else(|| spill_err("bad spilled symbol"))?;
                put_uvarint(&mut conv, u64::from(*r));
            }
            conv.extend_from_slice(body.get(d.pos..).unwrap_or(&[]));
            len_buf.clear();
            put_uvarint(&mut len_buf, conv.len() as u64);
            out.write(&len_buf)?;
            out.write(&conv)?;
        }
        drop(reader);
        if let Spill::File { path, .. } = &self.spill {
            let _ = std::fs::remove_file(path);
        }
        out.end(SEC_SERIES);

        // 2: series index
        out.begin();
        out.write(&self.num_series.to_le_bytes())?;
        for o in &stride_offsets {
            out.write(&o.to_le_bytes())?;
        }
        out.end(SEC_SERIES_INDEX);

        // Postings in final (name, value) order.
        let mut pairs: Vec<((u32, u32), Vec<u32>)> = std::mem::take(&mut self.postings)
            .into_iter()
            .map(|((n, v), ids)| ((final_ref[n as usize], final_ref[v as usize]), ids))
            .collect();
        pairs.sort_unstable_by_key(|(k, _)| *k);

        // 3: label names
        out.begin();
        let mut names: Vec<(u32, u32)> = Vec::new();
        for (i, ((n, _), _)) in pairs.iter().enumerate() {
            if names.last().is_none_or(|&(last, _)| last != *n) {
                names.push((*n, i as u32));
            }
        }
        out.write(&(names.len() as u32).to_le_bytes())?;
        for (n, first) in &names {
            out.write(&n.to_le_bytes())?;
            out.write(&first.to_le_bytes())?;
        }
        out.end(SEC_LABEL_NAMES);

        // 4: postings table (offsets computed from the encoded list sizes)
        out.begin();
        let mut off = 0u64;
        let mut list = Vec::new();
        for ((_, v), ids) in &pairs {
            out.write(&v.to_le_bytes())?;
            out.write(&off.to_le_bytes())?;
            list.clear();
            encode_postings(&mut list, ids);
            off += list.len() as u64;
        }
        out.end(SEC_POSTINGS_TABLE);

        // 5: postings
        out.begin();
        for (_, ids) in &pairs {
            list.clear();
            encode_postings(&mut list, ids);
            out.write(&list)?;
        }
        out.end(SEC_POSTINGS);

        out.finish()
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        if let Spill::File { path, out } = &mut self.spill
            && out.take().is_some()
        {
            let _ = std::fs::remove_file(&*path);
        }
    }
}

fn put_chunk_metas(body: &mut Vec<u8>, chunks: &[ChunkMeta]) {
    put_uvarint(body, chunks.len() as u64);
    let mut prev: Option<&ChunkMeta> = None;
    for c in chunks {
        match prev {
            None => {
                put_varint(body, c.min_time);
                put_uvarint(body, c.max_time.wrapping_sub(c.min_time) as u64);
                put_uvarint(body, c.chunk_ref);
            }
            Some(p) => {
                put_varint(body, c.min_time.wrapping_sub(p.max_time));
                put_uvarint(body, c.max_time.wrapping_sub(c.min_time) as u64);
                put_varint(body, c.chunk_ref.wrapping_sub(p.chunk_ref) as i64);
            }
        }
        prev = Some(c);
    }
}

fn encode_postings(out: &mut Vec<u8>, ids: &[u32]) {
    put_uvarint(out, ids.len() as u64);
    let mut prev = 0u32;
    for (j, &id) in ids.iter().enumerate() {
        put_uvarint(out, u64::from(if j == 0 { id } else { id - prev }));
        prev = id;
    }
}

fn read_uvarint_from(r: &mut dyn Read) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).ok()?;
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Writes sections sequentially, tracking offsets and each section's CRC for the TOC.
struct SectionWriter<W: Write> {
    w: W,
    file: PathBuf,
    pos: u64,
    start: u64,
    crc: crc32fast::Hasher,
    toc: [(u64, u64, u32); NUM_SECTIONS],
}

impl<W: Write> SectionWriter<W> {
    fn new(w: W, file: PathBuf) -> Self {
        SectionWriter {
            w,
            file,
            pos: 0,
            start: 0,
            crc: crc32fast::Hasher::new(),
            toc: [(0, 0, 0); NUM_SECTIONS],
        }
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|source| IndexError::Io {
            file: self.file.clone(),
            op: "write",
            source,
        })?;
        self.crc.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    fn begin(&mut self) {
        self.start = self.pos;
        self.crc = crc32fast::Hasher::new();
    }

    fn section_len(&self) -> u64 {
        self.pos - self.start
    }

    fn end(&mut self, i: usize) {
        let crc = std::mem::take(&mut self.crc).finalize();
        self.toc[i] = (self.start, self.pos - self.start, crc);
    }

    fn finish(mut self) -> Result<(W, u64)> {
        let mut toc = Vec::with_capacity(TOC_LEN);
        for (off, len, crc) in self.toc {
            toc.extend_from_slice(&off.to_le_bytes());
            toc.extend_from_slice(&len.to_le_bytes());
            toc.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&toc);
        toc.extend_from_slice(&crc.to_le_bytes());
        self.write(&toc)?;
        Ok((self.w, self.pos))
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

/// The bytes of an index: memory-mapped from a file, or owned (tests, fuzzing).
enum Bytes {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One label name of the index and its range of entries in the postings table.
#[derive(Debug, Clone)]
struct LabelName {
    name: String,
    entries: Range<usize>,
}

/// Reads an index file through mmap. Opening checks the header, the TOC and every section's
/// CRC and keeps only small tables in memory (every 32nd symbol offset, the label names).
pub struct IndexReader {
    path: PathBuf,
    bytes: Bytes,
    sections: [Range<usize>; NUM_SECTIONS],
    num_symbols: u32,
    /// Absolute offset of every `SYMBOL_STRIDE`-th symbol.
    symbol_offsets: Vec<usize>,
    num_series: u64,
    label_names: Vec<LabelName>,
}

impl std::fmt::Debug for IndexReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexReader")
            .field("path", &self.path)
            .field("size", &self.bytes.as_slice().len())
            .field("num_series", &self.num_series)
            .field("num_symbols", &self.num_symbols)
            .finish()
    }
}

/// One series as stored in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesEntry {
    pub labels: Labels,
    pub chunks: Vec<ChunkMeta>,
}

impl IndexReader {
    /// Opens and validates `path` (memory-mapped).
    pub fn open(path: &Path) -> Result<IndexReader> {
        let io = |op: &'static str| {
            let file = path.to_path_buf();
            move |source| IndexError::Io { file, op, source }
        };
        let f = File::open(path).map_err(io("open"))?;
        let len = f.metadata().map_err(io("stat"))?.len();
        if len < (HEADER_LEN + TOC_LEN) as u64 {
            return Err(IndexError::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                what: format!(
                    "file too short: expected at least {} bytes, got {len}",
                    HEADER_LEN + TOC_LEN
                ),
            });
        }
        // SAFETY: the block's files are immutable once written (blocks are written into a temp
        // dir and renamed); nothing in this process truncates or rewrites them while mapped.
        let mmap = unsafe { Mmap::map(&f) }.map_err(io("mmap"))?;
        IndexReader::from_bytes(path, Bytes::Mmap(mmap))
    }

    /// Parses an index held in memory (`path` only names it in errors).
    pub fn from_vec(path: &Path, bytes: Vec<u8>) -> Result<IndexReader> {
        IndexReader::from_bytes(path, Bytes::Owned(bytes))
    }

    fn from_bytes(path: &Path, bytes: Bytes) -> Result<IndexReader> {
        let corrupt = |offset: usize, what: String| IndexError::Corrupt {
            file: path.to_path_buf(),
            offset: offset as u64,
            what,
        };
        let b = bytes.as_slice();
        if b.len() < HEADER_LEN + TOC_LEN {
            return Err(corrupt(
                0,
                format!(
                    "file too short: expected at least {} bytes, got {}",
                    HEADER_LEN + TOC_LEN,
                    b.len()
                ),
            ));
        }
        if b[..4] != INDEX_MAGIC {
            return Err(corrupt(
                0,
                format!("bad magic: expected {:?}, found {:?}", INDEX_MAGIC, &b[..4]),
            ));
        }
        if b[4] != INDEX_VERSION {
            return Err(corrupt(
                4,
                format!(
                    "unsupported version: expected {INDEX_VERSION}, found {}",
                    b[4]
                ),
            ));
        }
        if b[5..8] != [0, 0, 0] {
            return Err(corrupt(
                5,
                format!("reserved header bytes must be zero, found {:?}", &b[5..8]),
            ));
        }
        let toc_start = b.len() - TOC_LEN;
        let toc = &b[toc_start..];
        let stored = le_u32(toc, TOC_LEN - 4).unwrap_or(0);
        let computed = crc32fast::hash(&toc[..TOC_LEN - 4]);
        if stored != computed {
            return Err(corrupt(
                toc_start,
                format!(
                    "table of contents checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                ),
            ));
        }
        let mut sections: [Range<usize>; NUM_SECTIONS] = Default::default();
        for (i, sec) in sections.iter_mut().enumerate() {
            let at = i * TOC_ENTRY_LEN;
            let off = le_u64(toc, at).unwrap_or(u64::MAX);
            let len = le_u64(toc, at + 8).unwrap_or(u64::MAX);
            let crc = le_u32(toc, at + 16).unwrap_or(0);
            let end = off
                .checked_add(len)
                .filter(|&e| off >= HEADER_LEN as u64 && e <= toc_start as u64);
            let Some(end) = end else {
                return Err(corrupt(
                    toc_start + at,
                    format!(
                        "{} section [{off}, +{len}) lies outside the file's data [{HEADER_LEN}, {toc_start})",
                        SECTION_NAMES[i]
                    ),
                ));
            };
            let r = off as usize..end as usize;
            let computed = crc32fast::hash(&b[r.clone()]);
            if computed != crc {
                return Err(corrupt(
                    r.start,
                    format!(
                        "{} section (bytes {}..{}) checksum mismatch: stored {crc:#010x}, computed {computed:#010x}",
                        SECTION_NAMES[i], r.start, r.end
                    ),
                ));
            }
            *sec = r;
        }

        // Symbols: validate all (UTF-8, strictly sorted) once, keep every 32nd offset.
        let sr = sections[SEC_SYMBOLS].clone();
        let mut d = Decoder::new(&b[sr.clone()], sr.start);
        let num_symbols = d
            .u32()
            .ok_or_else(|| corrupt(sr.start, "symbol count truncated".into()))?;
        let mut symbol_offsets = Vec::with_capacity(num_symbols as usize / SYMBOL_STRIDE + 1);
        let mut prev: Option<&str> = None;
        for i in 0..num_symbols as usize {
            if i % SYMBOL_STRIDE == 0 {
                symbol_offsets.push(d.offset() as usize);
            }
            let at = d.offset() as usize;
            let s = read_str(&mut d)
                .ok_or_else(|| corrupt(at, format!("symbol {i} truncated or not UTF-8")))?;
            if prev.is_some_and(|p| p >= s) {
                return Err(corrupt(
                    at,
                    format!("symbol {i} {s:?} is not greater than the previous symbol"),
                ));
            }
            prev = Some(s);
        }
        if !d.is_empty() {
            return Err(corrupt(
                d.offset() as usize,
                "trailing bytes after the last symbol".into(),
            ));
        }

        // Series index.
        let xr = sections[SEC_SERIES_INDEX].clone();
        let num_series = le_u64(&b[xr.clone()], 0)
            .ok_or_else(|| corrupt(xr.start, "series count truncated".into()))?;
        let want = num_series
            .div_ceil(SERIES_STRIDE)
            .checked_mul(8)
            .and_then(|n| n.checked_add(8));
        if want != Some(xr.len() as u64) || num_series > u64::from(u32::MAX) {
            return Err(corrupt(
                xr.start,
                format!(
                    "series index of {} bytes does not fit {num_series} series",
                    xr.len()
                ),
            ));
        }

        let mut r = IndexReader {
            path: path.to_path_buf(),
            bytes,
            sections,
            num_symbols,
            symbol_offsets,
            num_series,
            label_names: Vec::new(),
        };

        // Label names.
        let nr = r.sections[SEC_LABEL_NAMES].clone();
        let table_len = r.sections[SEC_POSTINGS_TABLE].len();
        if !table_len.is_multiple_of(POSTINGS_ENTRY_LEN) {
            return Err(r.corrupt(
                r.sections[SEC_POSTINGS_TABLE].start,
                "postings table length is not a multiple of 12".into(),
            ));
        }
        let num_entries = table_len / POSTINGS_ENTRY_LEN;
        let nb = &r.bytes.as_slice()[nr.clone()];
        let count = le_u32(nb, 0)
            .ok_or_else(|| r.corrupt(nr.start, "label name count truncated".into()))?
            as usize;
        if nb.len() != 4 + count.saturating_mul(LABEL_NAME_ENTRY_LEN) {
            return Err(r.corrupt(
                nr.start,
                format!(
                    "label names section of {} bytes does not fit {count} names",
                    nb.len()
                ),
            ));
        }
        let mut names = Vec::with_capacity(count);
        let mut prev_name: Option<u32> = None;
        for i in 0..count {
            let at = 4 + i * LABEL_NAME_ENTRY_LEN;
            let (sym, first) = (
                le_u32(nb, at).unwrap_or(0),
                le_u32(nb, at + 4).unwrap_or(0) as usize,
            );
            let next = if i + 1 < count {
                le_u32(nb, at + 12).unwrap_or(0) as usize
            } else {
                num_entries
            };
            if prev_name.is_some_and(|p| p >= sym) || first >= next || next > num_entries {
                return Err(r.corrupt(
                    nr.start + at,
                    format!("label name entry {i} out of order or out of range"),
                ));
            }
            prev_name = Some(sym);
            let name = r.symbol(sym)?.to_string();
            names.push(LabelName {
                name,
                entries: first..next,
            });
        }
        if count == 0 && num_entries != 0 {
            return Err(r.corrupt(
                nr.start,
                "postings table entries without label names".into(),
            ));
        }
        r.label_names = names;
        Ok(r)
    }

    fn corrupt(&self, offset: usize, what: String) -> IndexError {
        IndexError::Corrupt {
            file: self.path.clone(),
            offset: offset as u64,
            what,
        }
    }

    fn data(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The file this index was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the index file in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.data().len() as u64
    }

    /// Number of series (ids are `0..num_series`).
    pub fn num_series(&self) -> u64 {
        self.num_series
    }

    /// Number of distinct strings in the symbol table.
    pub fn num_symbols(&self) -> u32 {
        self.num_symbols
    }

    /// The symbol with ordinal `r`.
    pub fn symbol(&self, r: u32) -> Result<&str> {
        if r >= self.num_symbols {
            return Err(self.corrupt(
                self.sections[SEC_SYMBOLS].start,
                format!(
                    "symbol reference {r} out of range (table has {})",
                    self.num_symbols
                ),
            ));
        }
        let at = self
            .symbol_offsets
            .get(r as usize / SYMBOL_STRIDE)
            .copied()
            .unwrap_or(0);
        let end = self.sections[SEC_SYMBOLS].end;
        let mut d = Decoder::new(self.data().get(at..end).unwrap_or(&[]), at);
        for _ in 0..r as usize % SYMBOL_STRIDE {
            read_str(&mut d);
        }
        let off = d.offset() as usize;
        read_str(&mut d).ok_or_else(|| self.corrupt(off, format!("symbol {r} unreadable")))
    }

    /// The ordinal of symbol `s`, if the table holds it.
    pub fn lookup_symbol(&self, s: &str) -> Option<u32> {
        // Last sampled symbol <= s, then a short scan.
        let mut lo = 0usize;
        let mut hi = self.symbol_offsets.len();
        while lo < hi {
            let mid = (lo + hi) / 2;
            let sym = self.symbol((mid * SYMBOL_STRIDE) as u32).ok()?;
            if sym <= s {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let block = lo.checked_sub(1)?;
        let first = block * SYMBOL_STRIDE;
        let at = self.symbol_offsets[block];
        let end = self.sections[SEC_SYMBOLS].end;
        let mut d = Decoder::new(self.data().get(at..end)?, at);
        for i in first..(first + SYMBOL_STRIDE).min(self.num_symbols as usize) {
            let sym = read_str(&mut d)?;
            match sym.cmp(s) {
                std::cmp::Ordering::Equal => return Some(i as u32),
                std::cmp::Ordering::Greater => return None,
                std::cmp::Ordering::Less => {}
            }
        }
        None
    }

    /// The series with id `id`.
    pub fn series(&self, id: u64) -> Result<SeriesEntry> {
        let mut e = SeriesEntry {
            labels: Labels::empty(),
            chunks: Vec::new(),
        };
        self.series_into(id, &mut e, true)?;
        Ok(e)
    }

    /// Only the labels of series `id` (skips the chunk metas).
    pub fn series_labels(&self, id: u64) -> Result<Labels> {
        let mut e = SeriesEntry {
            labels: Labels::empty(),
            chunks: Vec::new(),
        };
        self.series_into(id, &mut e, false)?;
        Ok(e.labels)
    }

    /// Reads series `id` into `out` (reusing its chunk vector); chunk metas only when `chunks`.
    pub fn series_into(&self, id: u64, out: &mut SeriesEntry, chunks: bool) -> Result<()> {
        if id >= self.num_series {
            return Err(self.corrupt(
                self.sections[SEC_SERIES].start,
                format!(
                    "series id {id} out of range (index has {} series)",
                    self.num_series
                ),
            ));
        }
        let xr = &self.sections[SEC_SERIES_INDEX];
        let slot = xr.start + 8 + (id / SERIES_STRIDE) as usize * 8;
        let rel = le_u64(self.data(), slot)
            .ok_or_else(|| self.corrupt(slot, "series index entry truncated".into()))?;
        let sr = self.sections[SEC_SERIES].clone();
        let start = usize::try_from(rel)
            .ok()
            .filter(|&r| r < sr.len())
            .map(|r| sr.start + r);
        let Some(start) = start else {
            return Err(self.corrupt(
                slot,
                format!("series offset {rel} outside the series section"),
            ));
        };
        let mut d = Decoder::new(&self.data()[start..sr.end], start);
        for _ in 0..id % SERIES_STRIDE {
            let at = d.offset() as usize;
            let n = d
                .uvarint()
                .ok_or_else(|| self.corrupt(at, "series length truncated".into()))?;
            d.bytes(n as usize)
                .ok_or_else(|| self.corrupt(at, format!("series entry of {n} bytes truncated")))?;
        }
        let at = d.offset() as usize;
        let n = d
            .uvarint()
            .ok_or_else(|| self.corrupt(at, "series length truncated".into()))?;
        let body_at = d.offset() as usize;
        let body = d
            .bytes(n as usize)
            .ok_or_else(|| self.corrupt(at, format!("series entry of {n} bytes truncated")))?;
        let mut d = Decoder::new(body, body_at);
        let bad = |d: &Decoder<'_>, what: &str| {
            self.corrupt(d.offset() as usize, format!("series {id}: {what}"))
        };
        let nl = d
            .uvarint()
            .ok_or_else(|| bad(&d, "label count truncated"))?;
        if nl == 0 || nl > body.len() as u64 {
            return Err(bad(&d, &format!("implausible label count {nl}")));
        }
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(nl as usize);
        let mut prev: Option<u64> = None;
        for _ in 0..nl {
            let n = d.uvarint().ok_or_else(|| bad(&d, "label name truncated"))?;
            let v = d
                .uvarint()
                .ok_or_else(|| bad(&d, "label value truncated"))?;
            if prev.is_some_and(|p| p >= n) {
                return Err(bad(&d, "label names not sorted"));
            }
            prev = Some(n);
            let (n, v) = (
                u32::try_from(n).unwrap_or(u32::MAX),
                u32::try_from(v).unwrap_or(u32::MAX),
            );
            let name = self.symbol(n)?;
            if name.is_empty() {
                return Err(bad(&d, "empty label name"));
            }
            pairs.push((name, self.symbol(v)?));
        }
        out.labels = Labels::from_sorted(pairs);
        out.chunks.clear();
        if !chunks {
            return Ok(());
        }
        let nc = d
            .uvarint()
            .ok_or_else(|| bad(&d, "chunk count truncated"))?;
        if nc > body.len() as u64 {
            return Err(bad(&d, &format!("implausible chunk count {nc}")));
        }
        out.chunks.reserve(nc as usize);
        let mut prev: Option<ChunkMeta> = None;
        for _ in 0..nc {
            let c = match prev {
                None => {
                    let min_time = d
                        .varint()
                        .ok_or_else(|| bad(&d, "chunk min time truncated"))?;
                    let span = d
                        .uvarint()
                        .ok_or_else(|| bad(&d, "chunk time span truncated"))?;
                    let chunk_ref = d
                        .uvarint()
                        .ok_or_else(|| bad(&d, "chunk reference truncated"))?;
                    ChunkMeta {
                        min_time,
                        max_time: min_time.wrapping_add(span as i64),
                        chunk_ref,
                    }
                }
                Some(p) => {
                    let gap = d
                        .varint()
                        .ok_or_else(|| bad(&d, "chunk min time truncated"))?;
                    let span = d
                        .uvarint()
                        .ok_or_else(|| bad(&d, "chunk time span truncated"))?;
                    let dref = d
                        .varint()
                        .ok_or_else(|| bad(&d, "chunk reference truncated"))?;
                    let min_time = p.max_time.wrapping_add(gap);
                    ChunkMeta {
                        min_time,
                        max_time: min_time.wrapping_add(span as i64),
                        chunk_ref: p.chunk_ref.wrapping_add(dref as u64),
                    }
                }
            };
            if c.max_time < c.min_time || prev.is_some_and(|p| c.min_time < p.min_time) {
                return Err(bad(&d, "chunk times out of order"));
            }
            out.chunks.push(c);
            prev = Some(c);
        }
        if !d.is_empty() {
            return Err(bad(&d, "trailing bytes in series entry"));
        }
        Ok(())
    }

    /// Sorted label names of all series.
    pub fn label_names(&self) -> Vec<String> {
        self.label_names.iter().map(|n| n.name.clone()).collect()
    }

    fn label_name(&self, name: &str) -> Option<&LabelName> {
        self.label_names
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.label_names[i])
    }

    fn table_entry(&self, i: usize) -> Result<(u32, Range<usize>)> {
        let tr = &self.sections[SEC_POSTINGS_TABLE];
        let pr = &self.sections[SEC_POSTINGS];
        let at = tr.start + i * POSTINGS_ENTRY_LEN;
        let b = self.data();
        let value = le_u32(b, at)
            .ok_or_else(|| self.corrupt(at, "postings table entry truncated".into()))?;
        let off = le_u64(b, at + 4)
            .ok_or_else(|| self.corrupt(at, "postings table entry truncated".into()))?;
        let next = if at + POSTINGS_ENTRY_LEN < tr.end {
            le_u64(b, at + 16).unwrap_or(u64::MAX)
        } else {
            pr.len() as u64
        };
        if off > next || next > pr.len() as u64 {
            return Err(self.corrupt(
                at,
                format!("postings offset {off}..{next} outside the postings section"),
            ));
        }
        Ok((value, pr.start + off as usize..pr.start + next as usize))
    }

    /// Sorted values of label `name` (empty when no series has it).
    pub fn label_values(&self, name: &str) -> Result<Vec<String>> {
        let Some(n) = self.label_name(name) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(n.entries.len());
        for i in n.entries.clone() {
            let (v, _) = self.table_entry(i)?;
            out.push(self.symbol(v)?.to_string());
        }
        Ok(out)
    }

    /// Every (name, value) pair with the number of series that have it, in sorted order.
    pub fn label_pairs(&self) -> Result<Vec<(String, String, u64)>> {
        let mut out = Vec::new();
        for n in &self.label_names {
            for i in n.entries.clone() {
                let (v, range) = self.table_entry(i)?;
                let at = range.start;
                let count = Decoder::new(&self.data()[range], at)
                    .uvarint()
                    .ok_or_else(|| self.corrupt(at, "postings count truncated".into()))?;
                out.push((n.name.clone(), self.symbol(v)?.to_string(), count));
            }
        }
        Ok(out)
    }

    /// Sorted ids of the series with label `name="value"` (empty if none).
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u64>> {
        let Some(n) = self.label_name(name) else {
            return Ok(Vec::new());
        };
        let Some(v) = self.lookup_symbol(value) else {
            return Ok(Vec::new());
        };
        // Entries of a name are sorted by value symbol: binary search.
        let (mut lo, mut hi) = (n.entries.start, n.entries.end);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (mv, range) = self.table_entry(mid)?;
            match mv.cmp(&v) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.decode_postings(range),
            }
        }
        Ok(Vec::new())
    }

    fn decode_postings(&self, range: Range<usize>) -> Result<Vec<u64>> {
        let start = range.start;
        let mut d = Decoder::new(&self.data()[range], start);
        let count = d
            .uvarint()
            .ok_or_else(|| self.corrupt(start, "postings count truncated".into()))?;
        if count > self.num_series {
            return Err(self.corrupt(
                start,
                format!(
                    "postings list of {count} entries, index has {} series",
                    self.num_series
                ),
            ));
        }
        let mut out = Vec::with_capacity(count as usize);
        let mut prev = 0u64;
        for j in 0..count {
            let at = d.offset() as usize;
            let delta = d
                .uvarint()
                .ok_or_else(|| self.corrupt(at, "postings list truncated".into()))?;
            let id = if j == 0 {
                delta
            } else {
                prev.checked_add(delta)
                    .filter(|_| delta > 0)
                    .unwrap_or(u64::MAX)
            };
            if id >= self.num_series {
                return Err(
                    self.corrupt(at, format!("posting {id} out of range or not increasing"))
                );
            }
            out.push(id);
            prev = id;
        }
        if !d.is_empty() {
            return Err(self.corrupt(
                d.offset() as usize,
                "trailing bytes after postings list".into(),
            ));
        }
        Ok(out)
    }

    /// Every series id.
    pub fn all_postings(&self) -> Vec<u64> {
        (0..self.num_series).collect()
    }

    /// Reads the whole index and cross-checks it: every series entry decodes with its labels in
    /// order and ascending, every postings list decodes, and each series is listed under exactly
    /// its own label pairs. Returns the number of postings entries checked.
    pub fn verify(&self) -> Result<u64> {
        let mut entry = SeriesEntry {
            labels: Labels::empty(),
            chunks: Vec::new(),
        };
        let mut prev: Option<Labels> = None;
        let mut label_refs = 0u64;
        for id in 0..self.num_series {
            self.series_into(id, &mut entry, true)?;
            if prev.as_ref().is_some_and(|p| *p >= entry.labels) {
                return Err(self.corrupt(
                    self.sections[SEC_SERIES].start,
                    format!(
                        "series {id} {} is not after the previous series",
                        entry.labels
                    ),
                ));
            }
            label_refs += entry.labels.len() as u64;
            prev = Some(entry.labels.clone());
        }
        let mut listed = 0u64;
        for n in &self.label_names {
            for i in n.entries.clone() {
                let (v, range) = self.table_entry(i)?;
                let value = self.symbol(v)?;
                let at = range.start;
                for id in self.decode_postings(range)? {
                    if self.series_labels(id)?.get(&n.name) != Some(value) {
                        return Err(self.corrupt(
                            at,
                            format!(
                                "postings of {}={value:?} list series {id}, which lacks that label",
                                n.name
                            ),
                        ));
                    }
                    listed += 1;
                }
            }
        }
        if listed != label_refs {
            return Err(self.corrupt(
                self.sections[SEC_POSTINGS].start,
                format!("postings hold {listed} entries, the series {label_refs} labels"),
            ));
        }
        Ok(listed)
    }
}

/// Opens `bytes` as an index and, if that succeeds, calls every reader method on it. Never
/// panics, whatever the bytes; used by the fuzz target and the mutation tests.
#[doc(hidden)]
pub fn exercise_reader(bytes: &[u8]) -> Result<()> {
    let r = IndexReader::from_vec(Path::new("fuzz"), bytes.to_vec())?;
    let _ = r.verify();
    for id in 0..r.num_series().min(10_000) {
        let _ = r.series(id);
    }
    for name in r.label_names() {
        for v in r.label_values(&name).unwrap_or_default() {
            let _ = r.postings(&name, &v);
        }
        let _ = r.postings(&name, "");
    }
    let _ = r.label_pairs();
    for i in 0..r.num_symbols().min(10_000) {
        if let Ok(s) = r.symbol(i).map(str::to_string) {
            let _ = r.lookup_symbol(&s);
        }
    }
    Ok(())
}

/// Recomputes every section CRC and the TOC CRC of an index image in place (tests use it to
/// get mutated bytes past the checksums into the decoders). Does nothing when the image is too
/// short or its TOC points outside it.
#[doc(hidden)]
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN + TOC_LEN {
        return;
    }
    let toc_start = bytes.len() - TOC_LEN;
    for i in 0..NUM_SECTIONS {
        let at = toc_start + i * TOC_ENTRY_LEN;
        let (Some(off), Some(len)) = (le_u64(bytes, at), le_u64(bytes, at + 8)) else {
            return;
        };
        let Some(end) = off.checked_add(len).filter(|&e| e <= toc_start as u64) else {
            return;
        };
        let crc = crc32fast::hash(&bytes[off as usize..end as usize]);
        bytes[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes[toc_start..bytes.len() - 4]);
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

fn read_str<'a>(d: &mut Decoder<'a>) -> Option<&'a str> {
    let n = d.uvarint()?;
    let b = d.bytes(usize::try_from(n).ok()?)?;
    std::str::from_utf8(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    fn sample_index() -> (Vec<SeriesEntry>, Vec<u8>) {
        let mut series = Vec::new();
        for i in 0..40 {
            let labels = ls(&[
                ("__name__", "up"),
                ("job", if i % 2 == 0 { "a" } else { "b" }),
                ("i", &format!("{i:03}")),
            ]);
            let chunks = (0..i % 4)
                .map(|c| ChunkMeta {
                    min_time: -5000 + c * 1000,
                    max_time: -5000 + c * 1000 + 999,
                    chunk_ref: (c as u64) << 20 | 8,
                })
                .collect();
            series.push(SeriesEntry { labels, chunks });
        }
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut w = IndexWriter::in_memory();
        for s in &series {
            w.add_series(&s.labels, s.chunks.clone()).unwrap();
        }
        (series, w.into_bytes().unwrap())
    }

    #[test]
    fn round_trip() {
        let (series, bytes) = sample_index();
        let r = IndexReader::from_vec(Path::new("mem"), bytes).unwrap();
        assert_eq!(r.num_series(), 40);
        for (i, s) in series.iter().enumerate() {
            assert_eq!(&r.series(i as u64).unwrap(), s);
        }
        assert_eq!(r.label_names(), vec!["__name__", "i", "job"]);
        assert_eq!(r.label_values("job").unwrap(), vec!["a", "b"]);
        let a = r.postings("job", "a").unwrap();
        assert_eq!(a.len(), 20);
        for id in &a {
            assert_eq!(r.series(*id).unwrap().labels.get("job"), Some("a"));
        }
        assert!(r.postings("job", "c").unwrap().is_empty());
        assert!(r.postings("nope", "a").unwrap().is_empty());
        assert_eq!(r.postings("i", "007").unwrap().len(), 1);
        for i in 0..r.num_symbols() {
            let s = r.symbol(i).unwrap().to_string();
            assert_eq!(r.lookup_symbol(&s), Some(i));
        }
        assert_eq!(r.lookup_symbol("zzz"), None);
        assert_eq!(r.lookup_symbol(""), None);
        assert!(r.series(40).is_err());
        assert_eq!(r.verify().unwrap(), 120);
    }

    #[test]
    fn file_writer_spills_and_matches_memory_writer() {
        let (series, bytes) = sample_index();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let mut w = IndexWriter::new(&path);
        for s in &series {
            w.add_series(&s.labels, s.chunks.clone()).unwrap();
        }
        assert!(
            dir.path().join("index.series-tmp").exists(),
            "series entries are spilled"
        );
        assert_eq!(w.finish().unwrap(), bytes.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(
            !dir.path().join("index.series-tmp").exists(),
            "spill removed"
        );
        let r = IndexReader::open(&path).unwrap();
        assert_eq!(r.series(3).unwrap(), series[3]);
        // An abandoned writer removes its spill file too.
        let mut w = IndexWriter::new(&dir.path().join("other"));
        w.add_series(&series[0].labels, vec![]).unwrap();
        drop(w);
        assert!(!dir.path().join("other.series-tmp").exists());
    }

    #[test]
    fn empty_index() {
        let w = IndexWriter::in_memory();
        let r = IndexReader::from_vec(Path::new("mem"), w.into_bytes().unwrap()).unwrap();
        assert_eq!(r.num_series(), 0);
        assert!(r.label_names().is_empty());
        assert!(r.postings("a", "b").unwrap().is_empty());
    }

    #[test]
    fn writer_rejects_out_of_order() {
        let mut w = IndexWriter::in_memory();
        w.add_series(&ls(&[("a", "2")]), vec![]).unwrap();
        assert!(w.add_series(&ls(&[("a", "1")]), vec![]).is_err());
        assert!(w.add_series(&ls(&[("a", "2")]), vec![]).is_err());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (_, bytes) = sample_index();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            match IndexReader::from_vec(Path::new("idx"), b) {
                Err(IndexError::Corrupt { file, .. }) => assert_eq!(file, Path::new("idx")),
                Err(e) => panic!("byte {i}: unexpected error {e}"),
                Ok(_) => panic!("flip at byte {i} not detected"),
            }
        }
    }
}
