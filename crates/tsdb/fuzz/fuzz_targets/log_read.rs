//! Arbitrary bytes as a log segment: decoding never panics, and opening a log directory holding
//! those bytes as its segment succeeds and replays exactly a prefix of the decodable records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_tsdb::log::{Log, LogOptions, SyncPolicy, inspect_segment};

fuzz_target!(|data: &[u8]| {
    let insp = inspect_segment(data);
    for (_, range) in &insp.records {
        assert!(range.end <= data.len());
    }
    if data.len() > 1 << 16 {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tidemark-fuzz-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let first = insp.first_index.unwrap_or(0).min(i64::MAX as u64);
    if std::fs::write(dir.join(format!("{first:020}")), data).is_err() {
        return;
    }
    let opts = LogOptions {
        sync: SyncPolicy::Never,
        ..LogOptions::default()
    };
    if let Ok((log, _report)) = Log::open(&dir, opts) {
        if let Ok(replay) = log.replay() {
            let got: Vec<(u64, Vec<u8>)> = replay.map_while(Result::ok).collect();
            assert!(got.len() <= insp.records.len());
            for ((idx, payload), (want_idx, range)) in got.iter().zip(&insp.records) {
                assert_eq!(idx, want_idx);
                assert_eq!(payload.as_slice(), &data[range.clone()]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
