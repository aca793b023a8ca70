//! Write a block from series (raw samples and pre-encoded chunks), open it and compare every
//! query (select with matchers and ranges, seek, label names/values) with `MemStorage`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidemark_model::{Labels, MatchType, Matcher, Sample};
use tidemark_storage::memory::MemStorage;
use tidemark_storage::{Querier, Queryable};
use tidemark_tsdb::block::{Block, BlockWriter, open_blocks};
use tidemark_tsdb::chunk::{ChunkEncoder, ENCODING_XOR};

type Model = BTreeMap<Labels, Vec<Sample>>;

fn collect(q: &dyn Querier, ms: &[Matcher]) -> Vec<(Labels, Vec<(i64, u64)>)> {
    q.select(true, None, ms)
        .map(|s| {
            let s = s.unwrap();
            let mut it = s.iter();
            let mut v = Vec::new();
            while it.next() {
                let x = it.at();
                v.push((x.t, x.v.to_bits()));
            }
            assert!(it.err().is_none());
            (s.labels().clone(), v)
        })
        .collect()
}

fn write_block(
    dir: &std::path::Path,
    model: &Model,
    mint: i64,
    maxt: i64,
    encoded_every: usize,
) -> Block {
    let mut w = BlockWriter::new(dir, mint, maxt).unwrap();
    for (i, (l, samples)) in model.iter().enumerate() {
        if encoded_every > 0 && i % encoded_every == 0 {
            // Pre-encoded chunks of 7 samples, as the head hands them over.
            let mut bufs = Vec::new();
            for part in samples.chunks(7) {
                let mut e = ChunkEncoder::new();
                for s in part {
                    e.append(s.t, s.v).unwrap();
                }
                bufs.push((part[0].t, part[part.len() - 1].t, e.bytes()));
            }
            let chunks: Vec<_> = bufs
                .iter()
                .map(|(a, b, d)| (*a, *b, ENCODING_XOR, d.as_slice()))
                .collect();
            w.add_series(l, &chunks).unwrap();
        } else {
            w.add_samples(l, samples).unwrap();
        }
    }
    let meta = w.finish().unwrap();
    assert_eq!(
        meta.stats.num_series,
        model.values().filter(|s| !s.is_empty()).count() as u64
    );
    assert_eq!(
        meta.stats.num_samples,
        model.values().map(|s| s.len() as u64).sum::<u64>()
    );
    Block::open(&dir.join(&meta.id)).unwrap()
}

fn mem(model: &Model) -> MemStorage {
    let m = MemStorage::new();
    for (l, s) in model {
        for x in s {
            m.insert(l.clone(), x.t, x.v);
        }
    }
    m
}

fn arb_model() -> impl Strategy<Value = Model> {
    let labels = (0u8..3, 0u8..4, proptest::option::of(0u8..3)).prop_map(|(n, a, b)| {
        let mut p = vec![
            ("__name__".to_string(), format!("m{n}")),
            ("a".to_string(), format!("v{a}")),
        ];
        if let Some(b) = b {
            p.push(("b".to_string(), format!("w{b}")));
        }
        Labels::from_pairs(p)
    });
    let value = prop_oneof![
        (-1000i64..1000).prop_map(|x| x as f64),
        any::<f64>(),
        Just(f64::from_bits(tidemark_model::STALE_NAN_BITS)),
    ];
    let samples = proptest::collection::btree_map(0i64..5000, value, 1..60).prop_map(|m| {
        m.into_iter()
            .map(|(t, v)| Sample::new(t, v))
            .collect::<Vec<_>>()
    });
    proptest::collection::btree_map(labels, samples, 0..12)
}

fn arb_matchers() -> impl Strategy<Value = Vec<Matcher>> {
    let m = prop_oneof![
        (0u8..4).prop_map(|n| Matcher::equal("__name__", format!("m{n}"))),
        (0u8..5).prop_map(|a| Matcher::not_equal("a", format!("v{a}"))),
        Just(Matcher::new(MatchType::Regex, "a", "v[12]").unwrap()),
        Just(Matcher::new(MatchType::NotRegex, "b", "w1|").unwrap()),
        Just(Matcher::equal("b", "")),
        Just(Matcher::new(MatchType::Regex, "b", ".+").unwrap()),
    ];
    proptest::collection::vec(m, 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn block_matches_model(model in arb_model(), ms in arb_matchers(), lo in -10i64..5000, len in 0i64..6000,
                           enc in 0usize..3, seek in 0i64..5000) {
        let dir = tempfile::tempdir().unwrap();
        let block = write_block(dir.path(), &model, -100, 5000, enc);
        let m = mem(&model);
        for (mint, maxt) in [(i64::MIN, i64::MAX), (lo, lo + len)] {
            let q = block.querier(mint, maxt);
            let mq = m.querier(mint, maxt).unwrap();
            prop_assert_eq!(collect(q.as_ref(), &ms), collect(mq.as_ref(), &ms));
            prop_assert_eq!(q.label_names(&ms, 0).unwrap(), mq.label_names(&ms, 0).unwrap());
            for name in ["__name__", "a", "b", "c"] {
                prop_assert_eq!(q.label_values(name, &ms, 0).unwrap(), mq.label_values(name, &ms, 0).unwrap());
            }
            // Seek then next against the model.
            for s in q.select(true, None, &ms) {
                let s = s.unwrap();
                let want: Vec<i64> = model[s.labels()].iter().map(|x| x.t).filter(|&t| t >= mint && t <= maxt && t >= seek).collect();
                let mut it = s.iter();
                let mut got = Vec::new();
                if it.seek(seek) {
                    got.push(it.at().t);
                    prop_assert!(it.seek(seek), "seek again stays");
                    while it.next() { got.push(it.at().t); }
                }
                prop_assert_eq!(got, want);
            }
        }
    }
}

#[test]
fn writer_rejects_out_of_range_and_unsorted() {
    let dir = tempfile::tempdir().unwrap();
    let a = Labels::from_pairs([("__name__", "a")]);
    let b = Labels::from_pairs([("__name__", "b")]);
    let mut w = BlockWriter::new(dir.path(), 0, 100).unwrap();
    assert!(
        w.add_samples(&a, &[Sample::new(100, 1.0)]).is_err(),
        "max time is exclusive"
    );
    assert!(w.add_samples(&a, &[Sample::new(-1, 1.0)]).is_err());
    w.add_samples(&b, &[Sample::new(5, 1.0)]).unwrap();
    assert!(
        w.add_samples(&a, &[Sample::new(5, 1.0)]).is_err(),
        "label order"
    );
    drop(w);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "an unfinished writer leaves nothing behind"
    );
}

#[test]
fn open_blocks_sorts_and_ignores_other_dirs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("log")).unwrap();
    let l = Labels::from_pairs([("__name__", "x")]);
    for start in [7200, 0] {
        let mut w = BlockWriter::new(dir.path(), start, start + 7200).unwrap();
        w.add_samples(&l, &[Sample::new(start + 1, 1.0)]).unwrap();
        w.finish().unwrap();
    }
    let (blocks, problems) = open_blocks(dir.path()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        blocks.iter().map(|b| b.meta().min_time).collect::<Vec<_>>(),
        vec![0, 7200]
    );
    assert!(blocks[0].size_bytes() > 0);
    let meta = std::fs::read_to_string(blocks[0].dir().join("meta.json")).unwrap();
    assert!(
        meta.contains("\"ulid\"") && meta.contains("\"minTime\": 0"),
        "{meta}"
    );
}

#[test]
fn select_limit_and_partial_range_label_queries() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    for i in 0..5 {
        let l = Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]);
        // Series i has samples only at 100 * i and 1000 + i.
        model.insert(
            l,
            vec![Sample::new(100 * i, 1.0), Sample::new(1000 + i, 2.0)],
        );
    }
    let block = write_block(dir.path(), &model, 0, 2000, 0);
    let hints = tidemark_storage::SelectHints {
        limit: 2,
        ..Default::default()
    };
    let q = block.querier(0, 1999);
    assert_eq!(q.select(true, Some(&hints), &[]).count(), 2);
    // [150, 450]: only series 2, 3, 4 have a sample in range although every chunk overlaps it.
    let q = block.querier(150, 450);
    let got: Vec<String> = q
        .select(true, None, &[])
        .map(|s| s.unwrap().labels().get("i").unwrap().to_string())
        .collect();
    assert_eq!(got, vec!["2", "3", "4"]);
    assert_eq!(q.label_values("i", &[], 0).unwrap(), vec!["2", "3", "4"]);
    assert!(
        block
            .querier(2000, 3000)
            .select(true, None, &[])
            .next()
            .is_none(),
        "max time is exclusive"
    );
}

#[test]
fn empty_block_and_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let meta = BlockWriter::new(dir.path(), 0, 10)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(meta.stats.num_series, 0);
    let b = Block::open(&dir.path().join(&meta.id)).unwrap();
    assert!(
        b.querier(i64::MIN, i64::MAX)
            .select(true, None, &[])
            .next()
            .is_none()
    );
    assert!(
        b.querier(i64::MIN, i64::MAX)
            .label_names(&[], 0)
            .unwrap()
            .is_empty()
    );
    let (blocks, problems) = open_blocks(&dir.path().join("absent")).unwrap();
    assert!(blocks.is_empty() && problems.is_empty());
}

/// Raw samples are cut into the fewest chunks of at most `samples_per_chunk`, of equal sizes
/// (±1), and read back intact; 480 per chunk is what blocks cut from the head use.
#[test]
fn samples_are_cut_into_equal_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(usize, usize, &[usize]); 5] = [
        (150, 120, &[75, 75]),
        (
            150,
            tidemark_tsdb::block::HEAD_BLOCK_SAMPLES_PER_CHUNK,
            &[150],
        ),
        (481, 480, &[241, 240]),
        (1000, 480, &[334, 333, 333]),
        (7, 1, &[1, 1, 1, 1, 1, 1, 1]),
    ];
    for (n, per_chunk, sizes) in cases {
        let mut w = BlockWriter::new(dir.path(), 0, 1 << 40).unwrap();
        w.set_samples_per_chunk(per_chunk);
        let samples: Vec<Sample> = (0..n as i64)
            .map(|i| Sample {
                t: i * 15_000,
                v: (i * i) as f64,
            })
            .collect();
        let labels = Labels::from_pairs([("__name__", "x")]);
        w.add_samples(&labels, &samples).unwrap();
        let meta = w.finish().unwrap();
        assert_eq!(meta.stats.num_chunks, sizes.len() as u64, "{n}/{per_chunk}");
        let b = Block::open(&dir.path().join(&meta.id)).unwrap();
        let e = b.index().series(0).unwrap();
        let got: Vec<usize> = e
            .chunks
            .iter()
            .map(|c| ((c.max_time - c.min_time) / 15_000 + 1) as usize)
            .collect();
        assert_eq!(got, sizes, "{n}/{per_chunk}");
        let mut out = Vec::new();
        b.read_series_samples(&e, &mut out).unwrap();
        assert_eq!(out.len(), n);
        assert!(
            out.iter()
                .zip(&samples)
                .all(|(a, b)| a.t == b.t && a.v == b.v)
        );
    }
}
