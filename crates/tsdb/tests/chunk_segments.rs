//! Chunk segment files: write, rotate, read back through mmap, detect corruption, stop at torn tails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::fs;

use tidemark_tsdb::chunk::{ChunkEncoder, ENCODING_XOR, decode_all};
use tidemark_tsdb::chunks::{
    ChunkRef, ChunksError, RecordFormat, SEGMENT_HEADER_LEN, SEGMENT_VERSION_BLOCK, SegmentReader,
    SegmentWriter, SegmentWriterOptions, list_segments,
};

fn chunk_bytes(series: u64, n: i64) -> Vec<u8> {
    let mut enc = ChunkEncoder::new();
    for i in 0..n {
        enc.append(i * 15_000 + (i % 3), (series as i64 * 1000 + i) as f64)
            .unwrap();
    }
    enc.bytes()
}

/// Writes `count` chunks (series i, 1 + i % 120 samples) and returns their refs and bytes.
fn write_many(w: &mut SegmentWriter, count: u64) -> Vec<(ChunkRef, u64, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let data = chunk_bytes(i, 1 + (i as i64 % 120));
            let r = w
                .write_chunk(i, i as i64 * 10, i as i64 * 10 + 5, ENCODING_XOR, &data)
                .unwrap();
            (r, i, data)
        })
        .collect()
}

#[test]
fn write_rotate_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::open(
        dir.path(),
        SegmentWriterOptions {
            max_segment_size: 4096,
            ..SegmentWriterOptions::default()
        },
    )
    .unwrap();
    let written = write_many(&mut w, 300);
    w.sync().unwrap();
    let segs = list_segments(dir.path()).unwrap();
    assert!(
        segs.len() > 5,
        "expected rotation at 4 KiB, got {} segments",
        segs.len()
    );
    for (_, path) in &segs {
        assert!(fs::metadata(path).unwrap().len() <= 4096);
    }

    let r = SegmentReader::open(dir.path()).unwrap();
    for (cref, i, data) in &written {
        let v = r.chunk(*cref).unwrap();
        assert_eq!(
            (v.series_ref, v.min_time, v.max_time, v.encoding),
            (*i, *i as i64 * 10, *i as i64 * 10 + 5, ENCODING_XOR)
        );
        assert_eq!(v.data, &data[..]);
        let mut out = Vec::new();
        decode_all(v.data, &mut out).unwrap();
        assert_eq!(out.len() as u64, 1 + i % 120);
    }

    // Replay sees every chunk in write order with the same refs.
    let mut replayed = Vec::new();
    for seq in r.segments() {
        let mut it = r.iter_segment(seq).unwrap();
        for m in it.by_ref() {
            let m = m.unwrap();
            replayed.push((m.chunk_ref, m.series_ref, m.len));
        }
        assert!(it.torn_tail().is_none());
    }
    let want: Vec<_> = written.iter().map(|(c, i, d)| (*c, *i, d.len())).collect();
    assert_eq!(replayed, want);
}

#[test]
fn reopen_starts_a_new_segment_and_old_refs_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let mut w = SegmentWriter::create(dir.path()).unwrap();
        let v = write_many(&mut w, 10);
        w.sync().unwrap();
        v
    };
    let mut w = SegmentWriter::create(dir.path()).unwrap();
    let second = write_many(&mut w, 10);
    w.flush().unwrap();
    assert_eq!(first[0].0.segment(), 1);
    assert_eq!(second[0].0.segment(), 2);
    let r = SegmentReader::open(dir.path()).unwrap();
    for (cref, _, data) in first.iter().chain(&second) {
        assert_eq!(r.chunk(*cref).unwrap().data, &data[..]);
    }
    assert_eq!(w.remove_segments_before(2).unwrap(), 1);
    let r = SegmentReader::open(dir.path()).unwrap();
    assert!(matches!(
        r.chunk(first[0].0),
        Err(ChunksError::UnknownSegment { segment: 1, .. })
    ));
    assert!(r.chunk(second[3].0).is_ok());
}

#[test]
fn reader_reload_sees_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path()).unwrap();
    let a = write_many(&mut w, 3);
    w.flush().unwrap();
    let mut r = SegmentReader::open(dir.path()).unwrap();
    assert!(r.chunk(a[2].0).is_ok());
    let b = w
        .write_chunk(99, 1, 2, ENCODING_XOR, &chunk_bytes(99, 5))
        .unwrap();
    w.flush().unwrap();
    assert!(r.chunk(b).is_err(), "not mapped yet");
    r.reload().unwrap();
    assert_eq!(r.chunk(b).unwrap().series_ref, 99);
}

#[test]
fn flipped_byte_is_detected_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path()).unwrap();
    let written = write_many(&mut w, 20);
    w.sync().unwrap();
    drop(w);
    let path = dir.path().join("00000001");
    let mut bytes = fs::read(&path).unwrap();
    let victim = written[7].0.offset() as usize + 30;
    bytes[victim] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let r = SegmentReader::open(dir.path()).unwrap();
    let err = r.chunk(written[7].0).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ChunksError::Corruption { offset, .. } if offset == u64::from(written[7].0.offset()))
    );
    assert!(msg.contains("00000001") && msg.contains("CRC32"), "{msg}");
    // The other chunks still serve.
    for (i, (cref, _, data)) in written.iter().enumerate() {
        if i != 7 {
            assert_eq!(r.chunk(*cref).unwrap().data, &data[..]);
        }
    }
    // Replay yields the 7 good records, then the corruption.
    let items: Vec<_> = r.iter_segment(1).unwrap().collect();
    assert_eq!(items.len(), 8);
    assert!(items[..7].iter().all(|m| m.is_ok()));
    assert!(matches!(&items[7], Err(ChunksError::Corruption { .. })));
}

#[test]
fn torn_tail_stops_replay_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path()).unwrap();
    let written = write_many(&mut w, 12);
    w.sync().unwrap();
    drop(w);
    let path = dir.path().join("00000001");
    let full = fs::read(&path).unwrap();
    let last = written[11].0.offset() as usize;
    for cut in [last + 1, last + 10, last + 27, full.len() - 1] {
        fs::write(&path, &full[..cut]).unwrap();
        let r = SegmentReader::open(dir.path()).unwrap();
        let mut it = r.iter_segment(1).unwrap();
        let got: Vec<_> = it.by_ref().map(|m| m.unwrap().chunk_ref).collect();
        assert_eq!(got.len(), 11, "cut at {cut}");
        assert_eq!(it.torn_tail().map(|t| t.0), Some(last as u64));
        assert!(r.chunk(written[11].0).is_err());
    }
    // A zero-filled tail (file extended, data never written) is a torn tail too.
    let mut zeroed = full.clone();
    zeroed.extend_from_slice(&[0u8; 100]);
    fs::write(&path, &zeroed).unwrap();
    let r = SegmentReader::open(dir.path()).unwrap();
    let mut it = r.iter_segment(1).unwrap();
    assert_eq!(it.by_ref().count(), 12);
    assert_eq!(it.torn_tail().map(|t| t.0), Some(full.len() as u64));
}

#[test]
fn bad_header_and_bad_refs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path()).unwrap();
    let written = write_many(&mut w, 3);
    w.sync().unwrap();
    drop(w);
    let r = SegmentReader::open(dir.path()).unwrap();
    for bad in [
        ChunkRef::new(1, 0),
        ChunkRef::new(1, 3),
        ChunkRef::new(1, u32::MAX),
        ChunkRef::new(1, 9),
        ChunkRef::new(7, 8),
    ] {
        assert!(r.chunk(bad).is_err(), "{bad:?}");
    }
    let path = dir.path().join("00000001");
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] = b'X';
    fs::write(&path, &bytes).unwrap();
    let r = SegmentReader::open(dir.path()).unwrap();
    let err = r.chunk(written[0].0).unwrap_err().to_string();
    assert!(err.contains("magic") && err.contains("00000001"), "{err}");
    assert!(r.iter_segment(1).is_err());
    assert_eq!(
        written[0].0.offset() as usize,
        SEGMENT_HEADER_LEN,
        "first record follows the header"
    );
}

fn block_writer(dir: &std::path::Path, max_segment_size: u64) -> SegmentWriter {
    SegmentWriter::open(
        dir,
        SegmentWriterOptions {
            max_segment_size,
            format: RecordFormat::Block,
        },
    )
    .unwrap()
}

#[test]
fn block_records_are_length_data_crc_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = block_writer(dir.path(), 4096);
    let written = write_many(&mut w, 300);
    w.sync().unwrap();
    drop(w);
    assert!(list_segments(dir.path()).unwrap().len() > 3, "rotation");
    let r = SegmentReader::open(dir.path()).unwrap();
    for (cref, _, data) in &written {
        let v = r.chunk(*cref).unwrap();
        assert_eq!(v.data, &data[..]);
        assert_eq!(v.encoding, ENCODING_XOR);
        assert_eq!((v.series_ref, v.min_time, v.max_time), (0, 0, 0));
    }
    // Byte layout: header with version 2, then `len uvarint | data | crc32` back to back.
    let bytes = fs::read(dir.path().join("00000001")).unwrap();
    assert_eq!(bytes[4], SEGMENT_VERSION_BLOCK);
    let data = &written[0].2;
    assert!(data.len() < 128);
    let at = SEGMENT_HEADER_LEN;
    assert_eq!(usize::from(bytes[at]), data.len());
    assert_eq!(&bytes[at + 1..at + 1 + data.len()], &data[..]);
    let crc = crc32fast::hash(&bytes[at..at + 1 + data.len()]);
    let end = at + 1 + data.len();
    assert_eq!(&bytes[end..end + 4], &crc.to_le_bytes());
    assert_eq!(written[1].0.offset() as usize, end + 4);
    // Replay walks block records too.
    let n: usize = r
        .segments()
        .iter()
        .map(|&seq| r.iter_segment(seq).unwrap().filter(|m| m.is_ok()).count())
        .sum();
    assert_eq!(n, 300);
}

#[test]
fn block_records_need_the_encoding_in_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = block_writer(dir.path(), 1 << 20);
    let data = chunk_bytes(1, 5);
    assert!(w.write_chunk(0, 0, 0, 0x02, &data).is_err());
    assert!(w.write_chunk(0, 0, 0, ENCODING_XOR, &[]).is_err());
    assert!(w.write_chunk(0, 0, 0, ENCODING_XOR, &data).is_ok());
}

#[test]
fn block_record_damage_is_detected_and_contained() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = block_writer(dir.path(), 1 << 20);
    let written = write_many(&mut w, 20);
    w.sync().unwrap();
    drop(w);
    let path = dir.path().join("00000001");
    let full = fs::read(&path).unwrap();
    // A flipped bit anywhere in record 7 (length, data or CRC) is an error naming the offset;
    // the other records still serve.
    let (start, end) = (
        written[7].0.offset() as usize,
        written[8].0.offset() as usize,
    );
    for victim in start..end {
        let mut bytes = full.clone();
        bytes[victim] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let r = SegmentReader::open(dir.path()).unwrap();
        match r.chunk(written[7].0) {
            Err(ChunksError::Corruption { offset, .. }) => assert_eq!(offset, start as u64),
            other => panic!("byte {victim}: expected corruption, got {other:?}"),
        }
        for (i, (cref, _, data)) in written.iter().enumerate() {
            if i != 7 && i != 8 {
                assert_eq!(r.chunk(*cref).unwrap().data, &data[..], "byte {victim}");
            }
        }
    }
    // Torn tails stop replay cleanly.
    let last = written[19].0.offset() as usize;
    for cut in [last + 1, last + 5, full.len() - 1] {
        fs::write(&path, &full[..cut]).unwrap();
        let r = SegmentReader::open(dir.path()).unwrap();
        let mut it = r.iter_segment(1).unwrap();
        assert_eq!(
            it.by_ref().filter(|m| m.is_ok()).count(),
            19,
            "cut at {cut}"
        );
        assert_eq!(it.torn_tail().map(|t| t.0), Some(last as u64));
    }
}

#[test]
fn garbage_block_segments_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().unwrap();
    let mut w = block_writer(dir.path(), 1 << 20);
    let written = write_many(&mut w, 30);
    w.sync().unwrap();
    drop(w);
    let path = dir.path().join("00000001");
    let full = fs::read(&path).unwrap();
    for round in 0..300 {
        let mut bytes = if round % 3 == 0 {
            let mut b = full[..SEGMENT_HEADER_LEN].to_vec();
            let n = rng.random_range(0..400);
            b.extend((0..n).map(|_| rng.random::<u8>()));
            b
        } else {
            full.clone()
        };
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(SEGMENT_HEADER_LEN..bytes.len().max(SEGMENT_HEADER_LEN + 1));
            if let Some(b) = bytes.get_mut(i) {
                *b = rng.random();
            }
        }
        if rng.random_bool(0.3) {
            let keep = rng.random_range(0..=bytes.len());
            bytes.truncate(keep);
        }
        fs::write(&path, &bytes).unwrap();
        let r = SegmentReader::open(dir.path()).unwrap();
        for (cref, _, _) in &written {
            if let Ok(v) = r.chunk(*cref) {
                let mut out = Vec::new();
                let _ = decode_all(v.data, &mut out);
            }
        }
        for off in (0..bytes.len() as u32 + 8).step_by(7) {
            let _ = r.chunk(ChunkRef::new(1, off));
        }
        if let Ok(it) = r.iter_segment(1) {
            for m in it {
                let _ = m;
            }
        }
    }
}
