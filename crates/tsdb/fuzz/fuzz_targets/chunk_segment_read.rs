//! Arbitrary bytes as a chunk segment file (head records, version 1, or block records, version
//! 2, chosen by the first input byte): replaying it and reading chunks at any offset never
//! panics; chunks that pass their CRC are decoded too.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tidemark_tsdb::chunks::{ChunkRef, SEGMENT_MAGIC, SegmentReader};

fuzz_target!(|data: &[u8]| {
    let dir: PathBuf = std::env::temp_dir().join(format!("tm-fuzz-seg-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let mut file = SEGMENT_MAGIC.to_be_bytes().to_vec();
    file.push(1 + data.first().map_or(0, |b| b & 1));
    file.extend_from_slice(&[0, 0, 0]);
    file.extend_from_slice(data.get(1..).unwrap_or(&[]));
    if std::fs::write(dir.join("00000001"), &file).is_err() {
        return;
    }
    let Ok(r) = SegmentReader::open(&dir) else {
        return;
    };
    if let Ok(it) = r.iter_segment(1) {
        for m in it.flatten() {
            if let Ok(v) = r.chunk(m.chunk_ref) {
                let mut out = Vec::new();
                let _ = tidemark_tsdb::chunk::decode_all(v.data, &mut out);
            }
        }
    }
    for off in 0..file.len().min(64) as u32 {
        let _ = r.chunk(ChunkRef::new(1, off));
    }
});
