//! File-system helpers of the log: directory fsync, atomic small files, the directory lock and
//! the failure points used by crash-safety tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::LogError;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let d = File::open(dir).map_err(io_err(dir))?;
    d.sync_all().map_err(io_err(dir))
}

/// Takes an exclusive advisory lock on `dir/LOCK` so that two processes never write one log.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a valid, open file descriptor owned by `f`; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Err(LogError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(LogError::Io { path, source: err });
    }
    Ok(f)
}

const SMALL_FILE_HEADER: usize = 16;

/// Writes `payload` to `dir/name` atomically: `name.tmp` is written with a magic, length and
/// CRC32, fsynced, renamed over `name`, and the directory is fsynced.
pub(crate) fn write_small_file(
    dir: &Path,
    name: &str,
    magic: &[u8; 8],
    payload: &[u8],
) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut buf = Vec::with_capacity(SMALL_FILE_HEADER + payload.len());
    buf.extend_from_slice(magic);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&buf).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

/// Reads a file written by [`write_small_file`]; `None` when it does not exist.
pub(crate) fn read_small_file(path: &Path, magic: &[u8; 8]) -> Result<Option<Vec<u8>>, LogError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let corrupt = |offset: u64, reason: String| LogError::Corruption {
        segment: path.to_path_buf(),
        offset,
        reason,
    };
    if data.len() < SMALL_FILE_HEADER {
        return Err(corrupt(
            0,
            format!(
                "expected at least {SMALL_FILE_HEADER} bytes, got {}",
                data.len()
            ),
        ));
    }
    if &data[0..8] != magic {
        return Err(corrupt(
            0,
            format!("bad magic {:02x?}, expected {:02x?}", &data[0..8], magic),
        ));
    }
    let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let stored = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let payload = &data[SMALL_FILE_HEADER..];
    if payload.len() != len {
        return Err(corrupt(
            8,
            format!(
                "length field says {len} bytes, file holds {}",
                payload.len()
            ),
        ));
    }
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(corrupt(
            12,
            format!("crc32 mismatch, stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(Some(payload.to_vec()))
}

/// True when the file holds only zero bytes in `[from, to)`.
pub(crate) fn all_zero(file: &File, path: &Path, from: u64, to: u64) -> Result<bool, LogError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = from;
    while off < to {
        let n = ((to - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)
            .map_err(io_err(path))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// A path under `dir` named `name`, with `.1`, `.2`, … appended if it already exists.
pub(crate) fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let base = dir.join(name);
    if !base.exists() {
        return base;
    }
    let mut n = 1u32;
    loop {
        let p = dir.join(format!("{name}.{n}"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// Failure points for crash-safety tests: arming a point makes the next operation that reaches it
/// on this thread stop right there with [`LogError::InjectedFailure`], leaving the files exactly
/// as a crash at that step would (the data written so far is in the page cache).
#[doc(hidden)]
pub mod failpoint {
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// Arms `name` (or disarms with `None`) for the current thread.
    pub fn arm(name: Option<&'static str>) {
        ARMED.with(|a| a.set(name));
    }

    pub(crate) fn hit(name: &'static str) -> Result<(), super::LogError> {
        ARMED.with(|a| {
            if a.get() == Some(name) {
                a.set(None);
                Err(super::LogError::InjectedFailure(name))
            } else {
                Ok(())
            }
        })
    }
}
