//! Corrupt blocks: damage is detected, named (file and offset), and contained.
//!
//! - A flipped byte anywhere in a block's index, or a truncated index: `open_blocks` reports the
//!   block with the index path and offset, moves it to `<id>.corrupt`, and the other blocks
//!   keep serving all their data.
//! - A flipped byte in a chunk file: only the series owning that chunk fails, with an error
//!   naming the segment file and offset; every other series reads in full.
//! - Random and mutated bytes (with checksums recomputed so they reach the decoders) never make
//!   the index reader panic; this is the CI stand-in for the `index_read` fuzz target.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_model::{Labels, Sample};
use tidemark_tsdb::block::{Block, BlockMeta, BlockWriter, open_blocks};
use tidemark_tsdb::index::{IndexError, IndexReader, IndexWriter, exercise_reader, reseal};

fn series(i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", format!("metric_{}", i % 4)),
        ("instance", format!("host-{i:03}:9100")),
        ("job", "node".to_string()),
    ])
}

fn samples(i: usize, mint: i64) -> Vec<Sample> {
    (0..300)
        .map(|k| {
            Sample::new(
                mint + k * 15 + (i as i64 % 5),
                (i * 1000 + k as usize) as f64 * 0.5,
            )
        })
        .collect()
}

/// Three blocks of 20 series each: [0,5000), [5000,10000), [10000,15000).
fn three_blocks(dir: &Path) -> Vec<BlockMeta> {
    (0..3)
        .map(|b| {
            let mint = b * 5000;
            let mut w = BlockWriter::new(dir, mint, mint + 5000).unwrap();
            let mut ls: Vec<(Labels, usize)> = (0..20).map(|i| (series(i), i)).collect();
            ls.sort();
            for (l, i) in ls {
                w.add_samples(&l, &samples(i, mint)).unwrap();
            }
            w.finish().unwrap()
        })
        .collect()
}

/// All samples of a block, by series; panics if any series fails.
fn read_block(b: &Block) -> BTreeMap<Labels, Vec<Sample>> {
    let q = b.querier(i64::MIN, i64::MAX);
    q.select(true, None, &[])
        .map(|s| {
            let s = s.unwrap();
            let mut it = s.iter();
            let mut v = Vec::new();
            while it.next() {
                v.push(it.at());
            }
            assert!(it.err().is_none(), "{:?}", it.err());
            (s.labels().clone(), v)
        })
        .collect()
}

fn assert_block_complete(b: &Block) {
    let got = read_block(b);
    assert_eq!(got.len(), 20);
    for i in 0..20 {
        let want = samples(i, b.meta().min_time);
        let have = &got[&series(i)];
        assert_eq!(have.len(), want.len());
        assert!(have.iter().zip(&want).all(|(a, b)| a.bit_eq(b)));
    }
}

fn corrupt_index_case(damage: impl FnOnce(&Path)) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let metas = three_blocks(dir.path());
    let victim = &metas[1].id;
    let index = dir.path().join(victim).join("index");
    damage(&index);
    let (blocks, problems) = open_blocks(dir.path()).unwrap();
    assert_eq!(blocks.len(), 2, "{problems:?}");
    assert!(blocks.iter().all(|b| b.id() != victim));
    for b in &blocks {
        assert_block_complete(b);
    }
    assert!(!dir.path().join(victim).exists());
    assert!(
        dir.path()
            .join(format!("{victim}.corrupt"))
            .join("meta.json")
            .exists()
    );
    // Reopening again is clean: the corrupt block stays aside and is not re-reported.
    let (blocks, again) = open_blocks(dir.path()).unwrap();
    assert_eq!(blocks.len(), 2);
    assert!(again.is_empty(), "{again:?}");
    (problems, index.display().to_string())
}

#[test]
fn flipped_index_byte_moves_block_aside() {
    let mut rng = StdRng::seed_from_u64(7);
    let len = {
        let dir = tempfile::tempdir().unwrap();
        let metas = three_blocks(dir.path());
        std::fs::metadata(dir.path().join(&metas[1].id).join("index"))
            .unwrap()
            .len()
    };
    // Header, somewhere in every part of the file, and the TOC at the end.
    let mut offsets = vec![0, 4, 6, len / 3, len / 2, len - 30, len - 2];
    offsets.extend((0..6).map(|_| rng.random_range(0..len)));
    for off in offsets {
        let (problems, index) = corrupt_index_case(|p| {
            let mut b = std::fs::read(p).unwrap();
            b[off as usize] ^= 0x10;
            std::fs::write(p, b).unwrap();
        });
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains(&index),
            "problem should name {index}: {}",
            problems[0]
        );
        assert!(
            problems[0].contains("corrupt index at offset"),
            "{}",
            problems[0]
        );
        assert!(problems[0].contains(".corrupt"), "{}", problems[0]);
    }
}

#[test]
fn truncated_index_moves_block_aside() {
    for keep in [0u64, 5, 100, 1000] {
        let (problems, index) = corrupt_index_case(|p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(keep.min(len - 1)).unwrap();
        });
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains(&index), "{}", problems[0]);
    }
    // A missing index too.
    let (problems, _) = corrupt_index_case(|p| std::fs::remove_file(p).unwrap());
    assert!(problems[0].contains("index"), "{}", problems[0]);
}

#[test]
fn bad_meta_json_moves_block_aside() {
    let (problems, _) = corrupt_index_case(|p| {
        std::fs::write(p.parent().unwrap().join("meta.json"), b"{\"ulid\": 1").unwrap();
    });
    assert!(problems[0].contains("meta.json"), "{}", problems[0]);
}

#[test]
fn corrupt_chunk_fails_only_its_series() {
    let dir = tempfile::tempdir().unwrap();
    let metas = three_blocks(dir.path());
    let bdir = dir.path().join(&metas[0].id);
    let block = Block::open(&bdir).unwrap();
    // The second chunk of series 7.
    let idx = block.index();
    let id = (0..idx.num_series())
        .find(|&i| idx.series_labels(i).unwrap() == series(7))
        .unwrap();
    let entry = idx.series(id).unwrap();
    assert!(entry.chunks.len() >= 2);
    let r = entry.chunks[1].chunk_ref;
    let (seg, off) = ((r >> 32) as u32, r as u32 as usize);
    drop(block);
    let seg_path = bdir.join("chunks").join(format!("{seg:08}"));
    let mut bytes = std::fs::read(&seg_path).unwrap();
    bytes[off + 40] ^= 0x01; // inside the chunk data
    std::fs::write(&seg_path, bytes).unwrap();

    let (blocks, problems) = open_blocks(dir.path()).unwrap();
    assert!(
        problems.is_empty(),
        "a chunk error is not a block error: {problems:?}"
    );
    assert_eq!(blocks.len(), 3);
    let b = blocks.iter().find(|b| b.id() == metas[0].id).unwrap();
    let q = b.querier(i64::MIN, i64::MAX);
    let mut failed = Vec::new();
    for s in q.select(true, None, &[]) {
        let s = s.unwrap();
        let mut it = s.iter();
        let mut n = 0;
        while it.next() {
            n += 1;
        }
        match it.err() {
            Some(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&seg_path.display().to_string()),
                    "error should name the segment: {msg}"
                );
                assert!(
                    msg.contains(&format!("offset {off}")),
                    "error should name the offset: {msg}"
                );
                assert!(matches!(e, tidemark_storage::Error::Corruption(_)));
                // The 100 samples of the first (intact) chunk were read before the failure
                // (300 samples at most 120 per chunk: 100 + 100 + 100).
                assert_eq!(n, 100);
                failed.push(s.labels().clone());
            }
            None => assert_eq!(n, 300, "{}", s.labels()),
        }
    }
    assert_eq!(failed, vec![series(7)]);
    // Other blocks are untouched.
    for b in blocks.iter().filter(|b| b.id() != metas[0].id) {
        assert_block_complete(b);
    }
}

#[test]
fn truncated_chunk_file_fails_only_later_series() {
    let dir = tempfile::tempdir().unwrap();
    let metas = three_blocks(dir.path());
    let bdir = dir.path().join(&metas[2].id);
    let seg_path = bdir.join("chunks").join("00000001");
    let len = std::fs::metadata(&seg_path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg_path)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (blocks, problems) = open_blocks(dir.path()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let b = blocks.iter().find(|b| b.id() == metas[2].id).unwrap();
    let (mut ok, mut bad) = (0, 0);
    for s in b.querier(i64::MIN, i64::MAX).select(true, None, &[]) {
        let s = s.unwrap();
        let mut it = s.iter();
        while it.next() {}
        match it.err() {
            Some(e) => {
                assert!(e.to_string().contains("00000001"), "{e}");
                bad += 1;
            }
            None => ok += 1,
        }
    }
    assert_eq!(ok + bad, 20);
    assert!(ok >= 8 && bad >= 8, "ok {ok} bad {bad}");
}

fn valid_index() -> Vec<u8> {
    let mut w = IndexWriter::in_memory();
    let mut ls: Vec<Labels> = (0..60).map(series).collect();
    ls.sort();
    for (k, l) in ls.iter().enumerate() {
        let chunks = (0..(k % 3) as i64)
            .map(|c| tidemark_tsdb::index::ChunkMeta {
                min_time: c * 100,
                max_time: c * 100 + 50,
                chunk_ref: (1 << 32) | (8 + c as u64 * 40),
            })
            .collect();
        w.add_series(l, chunks).unwrap();
    }
    w.into_bytes().unwrap()
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..2000 {
        let n = rng.random_range(0..400);
        let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if n >= 8 && rng.random_bool(0.5) {
            b[..5].copy_from_slice(b"TMIX\x01");
            b[5..8].fill(0);
        }
        if rng.random_bool(0.5) {
            reseal(&mut b);
        }
        let _ = exercise_reader(&b);
    }
}

#[test]
fn mutated_indexes_never_panic() {
    let base = valid_index();
    assert!(exercise_reader(&base).is_ok());
    assert_eq!(
        IndexReader::from_vec(Path::new("mem"), base.clone())
            .unwrap()
            .verify()
            .unwrap(),
        180
    );
    let mut rng = StdRng::seed_from_u64(1234);
    let mut opened = 0;
    let mut caught_by_verify = 0;
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[i] ^= 1 << rng.random_range(0..8),
                1 => b[i] = rng.random(),
                _ => b[i] = [0, 0x7f, 0x80, 0xff][rng.random_range(0..4)],
            }
        }
        // Unsealed: the checksums must catch it.
        match IndexReader::from_vec(Path::new("mem"), b.clone()) {
            Err(IndexError::Corrupt { .. }) => {}
            Ok(_) if b == base => {}
            other => panic!("mutation not caught by checksums: {other:?}"),
        }
        // Resealed: the decoders see the damage; they may accept or refuse, never panic.
        reseal(&mut b);
        let _ = exercise_reader(&b);
        if let Ok(r) = IndexReader::from_vec(Path::new("mem"), b) {
            opened += 1;
            if r.verify().is_err() {
                caught_by_verify += 1;
            }
        }
    }
    assert!(
        opened > 100,
        "mutations should often get past the checksums once resealed ({opened})"
    );
    assert!(
        caught_by_verify > 10,
        "verify should catch some resealed damage ({caught_by_verify})"
    );
}
