//! Opening the log: completing interrupted operations, verifying every segment, truncating a
//! torn tail and moving corrupted data aside; and the [`OpenReport`] that says what was done.

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::format::SegmentKind;
use super::fsutil::{self, io_err, read_small_file, sync_dir, unique_path, write_small_file};
use super::segment::{Segment, create_segment, parse_segment_name, scan_segment};
use super::{
    CHECKPOINT_PREFIX, CORRUPTED_DIR, Checkpoint, Log, LogError, LogOptions, PURGED_FILE,
    PURGED_MAGIC, TMP_SUFFIX, sync,
};

/// A torn (partially written) record at the end of the log, truncated by [`Log::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Byte offset in `segment` where the file was cut.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    pub reason: String,
}

/// Corruption found by [`Log::open`]: everything from `offset` in `segment` on (and every later
/// segment) was moved aside to `moved_to`, and the log continues with the records before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptionReport {
    pub segment: PathBuf,
    pub offset: u64,
    pub reason: String,
    /// Index of the first record lost (for a checkpoint: its ordinal inside the checkpoint).
    pub first_lost_index: u64,
    /// Bytes removed from the log (segment tail plus later segments).
    pub bytes_dropped: u64,
    /// Where the removed bytes went (under `dir/corrupted/`).
    pub moved_to: Vec<PathBuf>,
}

/// What [`Log::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub dir: PathBuf,
    /// Segments of the log after recovery.
    pub segments: usize,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// `upto` of the checkpoint in use.
    pub checkpoint: Option<u64>,
    pub torn_tail: Option<TornTail>,
    pub corruptions: Vec<CorruptionReport>,
    /// Leftovers of interrupted operations that were completed or removed (temporary files,
    /// segments of an interrupted purge, superseded checkpoints).
    pub cleaned: Vec<PathBuf>,
}

impl OpenReport {
    /// True when nothing was truncated or moved aside.
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.corruptions.is_empty()
    }
}

impl fmt::Display for OpenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log {}: {} segment(s)",
            self.dir.display(),
            self.segments
        )?;
        match (self.first_index, self.last_index) {
            (Some(a), Some(b)) => write!(f, ", records {a}..={b}")?,
            _ => write!(f, ", no records")?,
        }
        if let Some(c) = self.checkpoint {
            write!(f, ", checkpoint up to {c}")?;
        }
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; torn tail truncated: {} bytes at offset {} of {} ({})",
                t.bytes,
                t.offset,
                t.segment.display(),
                t.reason
            )?;
        }
        for c in &self.corruptions {
            write!(
                f,
                "; CORRUPTION in {} at offset {}: {}; {} bytes from index {} moved aside to [",
                c.segment.display(),
                c.offset,
                c.reason,
                c.bytes_dropped,
                c.first_lost_index
            )?;
            for (i, p) in c.moved_to.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{}", p.display())?;
            }
            write!(f, "]")?;
        }
        if !self.cleaned.is_empty() {
            write!(f, "; cleaned {} leftover(s)", self.cleaned.len())?;
        }
        Ok(())
    }
}

pub(crate) fn ckpt_dir_name(upto: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{upto:020}")
}

fn parse_ckpt_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix(CHECKPOINT_PREFIX)
        .and_then(parse_segment_name)
}

pub(crate) fn remove_path(path: &Path) -> Result<(), LogError> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The damaged file of a repair: cut at `offset` (> 0), its bytes `[offset, file_len)` saved.
struct Cut<'a> {
    path: &'a Path,
    file: &'a File,
    offset: u64,
    file_len: u64,
}

/// Moves the tail of a damaged file (`cut`) and every file in `whole` into `dir/corrupted/`,
/// then cuts the damaged file. Returns the new paths and the bytes moved.
fn move_aside(
    dir: &Path,
    cut: Option<Cut<'_>>,
    whole: &[PathBuf],
    prefix: &str,
) -> Result<(Vec<PathBuf>, u64), LogError> {
    let cdir = dir.join(CORRUPTED_DIR);
    fs::create_dir_all(&cdir).map_err(io_err(&cdir))?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut moved = Vec::new();
    let mut bytes = 0;
    if let Some(c) = &cut
        && c.offset < c.file_len
    {
        let name = file_name(c.path);
        let dst = unique_path(&cdir, &format!("{prefix}{name}@{}", c.offset));
        let mut src = c.file.try_clone().map_err(io_err(c.path))?;
        src.seek(SeekFrom::Start(c.offset))
            .map_err(io_err(c.path))?;
        let mut out = File::create(&dst).map_err(io_err(&dst))?;
        bytes +=
            std::io::copy(&mut src.take(c.file_len - c.offset), &mut out).map_err(io_err(&dst))?;
        out.sync_all().map_err(io_err(&dst))?;
        moved.push(dst);
    }
    // Whole files are moved last-first so that a crash leaves a contiguous prefix.
    let mut whole_moved = Vec::new();
    for p in whole.iter().rev() {
        let dst = unique_path(&cdir, &format!("{prefix}{}", file_name(p)));
        bytes += fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        fs::rename(p, &dst).map_err(io_err(p))?;
        whole_moved.push(dst);
    }
    whole_moved.reverse();
    moved.extend(whole_moved);
    sync_dir(&cdir)?;
    if let Some(c) = &cut {
        c.file.set_len(c.offset).map_err(io_err(c.path))?;
        c.file.sync_all().map_err(io_err(c.path))?;
    }
    if let Some(parent) = whole.first().and_then(|p| p.parent()) {
        sync_dir(parent)?;
    }
    Ok((moved, bytes))
}

/// Lists the numbered segment files of `dir`, sorted by first index.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the segments of a checkpoint directory, repairing (moving aside) damage.
fn load_checkpoint(
    dir: &Path,
    cdir: &Path,
    upto: u64,
    report: &mut OpenReport,
) -> Result<Checkpoint, LogError> {
    let files = list_segments(cdir)?;
    let mut segments: Vec<Segment> = Vec::new();
    let mut expect = 0u64;
    for (i, (first, path)) in files.iter().enumerate() {
        let problem = if *first != expect {
            Some((
                None,
                format!("checkpoint segment starts at record {first}, expected {expect}"),
            ))
        } else {
            let scan = scan_segment(path, SegmentKind::Checkpoint, expect)?;
            let bad = scan.bad.map(|b| (b.offset, b.reason));
            let seg = scan.segment;
            expect = seg.end();
            match bad {
                None => {
                    segments.push(seg);
                    None
                }
                Some((off, reason)) => Some((Some((seg, off, scan.file_len)), reason)),
            }
        };
        if let Some((damaged, reason)) = problem {
            let prefix = format!("{}-", ckpt_dir_name(upto));
            let later: Vec<PathBuf> = files[i + 1..].iter().map(|(_, p)| p.clone()).collect();
            let (offset, first_lost, moved) = match damaged {
                Some((seg, off, len)) if off > 0 => {
                    let lost = seg.end();
                    let cut = Cut {
                        path,
                        file: &seg.file,
                        offset: off,
                        file_len: len,
                    };
                    let m = move_aside(dir, Some(cut), &later, &prefix)?;
                    segments.push(seg);
                    (off, lost, m)
                }
                _ => {
                    let mut all = vec![path.clone()];
                    all.extend(later);
                    (0, expect, move_aside(dir, None, &all, &prefix)?)
                }
            };
            tracing::error!(segment = %path.display(), offset, %reason, "log checkpoint corruption; moved the rest aside");
            report.corruptions.push(CorruptionReport {
                segment: path.clone(),
                offset,
                reason,
                first_lost_index: first_lost,
                bytes_dropped: moved.1,
                moved_to: moved.0,
            });
            break;
        }
    }
    Ok(Checkpoint { upto, segments })
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, completing interrupted operations and
    /// repairing damage: a torn tail is truncated, corruption moves everything from the damaged
    /// record on aside. Both are reported, and neither makes `open` fail.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(Log, OpenReport), LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = fsutil::lock_dir(dir)?;
        let mut report = OpenReport {
            dir: dir.to_path_buf(),
            ..OpenReport::default()
        };

        // Leftovers of interrupted atomic writes and checkpoints.
        let mut checkpoints = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP_SUFFIX) {
                remove_path(&entry.path())?;
                report.cleaned.push(entry.path());
            } else if let Some(upto) = parse_ckpt_dir_name(&name)
                && entry.path().is_dir()
            {
                checkpoints.push((upto, entry.path()));
            }
        }
        checkpoints.sort();
        let mut checkpoint = None;
        if let Some((upto, cdir)) = checkpoints.pop() {
            for (_, old) in checkpoints {
                remove_path(&old)?;
                report.cleaned.push(old);
            }
            checkpoint = Some(load_checkpoint(dir, &cdir, upto, &mut report)?);
        }

        let mut purge_tag = Vec::new();
        let mut purged = match read_small_file(&dir.join(PURGED_FILE), PURGED_MAGIC) {
            Ok(Some(b)) if b.len() >= 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[..8]);
                purge_tag = b[8..].to_vec();
                Some(u64::from_le_bytes(a))
            }
            Ok(None) => None,
            Ok(Some(b)) => {
                report.corruptions.push(CorruptionReport {
                    segment: dir.join(PURGED_FILE),
                    offset: 0,
                    reason: format!("purge marker: expected at least 8 bytes, got {}", b.len()),
                    first_lost_index: 0,
                    bytes_dropped: 0,
                    moved_to: Vec::new(),
                });
                None
            }
            Err(LogError::Corruption {
                segment,
                offset,
                reason,
            }) => {
                report.corruptions.push(CorruptionReport {
                    segment,
                    offset,
                    reason,
                    first_lost_index: 0,
                    bytes_dropped: 0,
                    moved_to: Vec::new(),
                });
                None
            }
            Err(e) => return Err(e),
        };
        // A checkpoint is written before the purge it implies: finish that purge.
        if let Some(c) = &checkpoint
            && purged.is_none_or(|p| p < c.upto)
        {
            write_small_file(dir, PURGED_FILE, PURGED_MAGIC, &c.upto.to_le_bytes())?;
            purged = Some(c.upto);
            purge_tag.clear();
        }

        let mut files = list_segments(dir)?;
        // Finish an interrupted purge: drop segments whose successor starts at or below the
        // purge point (all their records are purged).
        if let Some(p) = purged {
            let mut keep_from = 0;
            while keep_from + 1 < files.len() && files[keep_from + 1].0 <= p + 1 {
                keep_from += 1;
            }
            for (_, path) in files.drain(..keep_from) {
                remove_path(&path)?;
                report.cleaned.push(path);
            }
        }

        // Without a purge the log starts at 0; after one, at the purge point + 1. A first segment
        // starting later means segments were lost: report it, keep what is there.
        let expected_first = purged.map_or(0, |p| p + 1);
        if let Some((first, path)) = files.first()
            && *first > expected_first
        {
            let reason = format!(
                "the log starts at index {first}, expected {expected_first}: the segments \
                 holding records {expected_first}..{first} are missing"
            );
            tracing::error!(segment = %path.display(), %reason, "log corruption");
            report.corruptions.push(CorruptionReport {
                segment: path.clone(),
                offset: 0,
                reason,
                first_lost_index: expected_first,
                bytes_dropped: 0,
                moved_to: Vec::new(),
            });
        }
        let mut segments: Vec<Segment> = Vec::new();
        let n = files.len();
        for (i, (first, path)) in files.iter().enumerate() {
            let last = i + 1 == n;
            if let Some(prev) = segments.last()
                && prev.end() != *first
            {
                // A gap or overlap: this segment and everything after it cannot be used.
                let reason = format!(
                    "segment starts at index {first}, expected {} (end of the previous segment)",
                    prev.end()
                );
                let lost = prev.end();
                let all: Vec<PathBuf> = files[i..].iter().map(|(_, p)| p.clone()).collect();
                let (moved, bytes) = move_aside(dir, None, &all, "")?;
                tracing::error!(segment = %path.display(), %reason, "log corruption; moved the rest aside");
                report.corruptions.push(CorruptionReport {
                    segment: path.clone(),
                    offset: 0,
                    reason,
                    first_lost_index: lost,
                    bytes_dropped: bytes,
                    moved_to: moved,
                });
                break;
            }
            let scan = scan_segment(path, SegmentKind::Log, *first)?;
            let Some(bad) = scan.bad else {
                segments.push(scan.segment);
                continue;
            };
            let seg = scan.segment;
            if last && bad.at_end {
                let bytes = scan.file_len - bad.offset;
                tracing::warn!(segment = %path.display(), offset = bad.offset, bytes, reason = %bad.reason, "log: truncating torn tail");
                if bad.offset == 0 {
                    remove_path(path)?;
                    sync_dir(dir)?;
                } else {
                    seg.file.set_len(bad.offset).map_err(io_err(path))?;
                    seg.file.sync_all().map_err(io_err(path))?;
                }
                report.torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: bad.offset,
                    bytes,
                    reason: bad.reason,
                });
                if bad.offset > 0 {
                    segments.push(seg);
                }
                break;
            }
            let mut later: Vec<PathBuf> = files[i + 1..].iter().map(|(_, p)| p.clone()).collect();
            let cut = if bad.offset > 0 {
                Some(Cut {
                    path,
                    file: &seg.file,
                    offset: bad.offset,
                    file_len: scan.file_len,
                })
            } else {
                later.insert(0, path.clone());
                None
            };
            let (moved, bytes) = move_aside(dir, cut, &later, "")?;
            tracing::error!(segment = %path.display(), offset = bad.offset, reason = %bad.reason, bytes, "log corruption; moved the rest aside");
            report.corruptions.push(CorruptionReport {
                segment: path.clone(),
                offset: bad.offset,
                reason: bad.reason,
                first_lost_index: seg.end(),
                bytes_dropped: bytes,
                moved_to: moved,
            });
            if bad.offset > 0 {
                segments.push(seg);
            }
            break;
        }

        // The next index: after the last record, and after the purge point.
        let mut next = segments.last().map_or(0, Segment::end);
        if let Some(p) = purged
            && next <= p
        {
            // Everything is purged (an interrupted purge beyond the end): start afresh.
            next = p + 1;
            for s in segments.drain(..) {
                remove_path(&s.path)?;
                report.cleaned.push(s.path.clone());
            }
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, SegmentKind::Log, next)?);
        }

        // Records of the active segment may not be durable yet (a process crash under a lax
        // sync policy); sealed segments were fsynced when they were sealed.
        let shared = {
            let active = &segments[segments.len() - 1];
            sync::Shared::new(
                Arc::clone(&active.file),
                active.path.clone(),
                next,
                active.first,
            )
        };
        let log = Log {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            segments,
            next,
            purged,
            purge_tag,
            checkpoint,
            buf: Vec::new(),
            last_sync: Instant::now(),
            shared,
        };
        report.segments = log.segments.len();
        report.first_index = log.first_index();
        report.last_index = log.last_index();
        report.checkpoint = log.checkpoint.as_ref().map(|c| c.upto);
        if report.is_clean() {
            tracing::info!(dir = %dir.display(), first = ?report.first_index, last = ?report.last_index, segments = report.segments, "log opened");
        } else {
            tracing::warn!(%report, "log opened after repair");
        }
        Ok((log, report))
    }
}
