//! Byte layout of log segments and records (see docs/format/log.md). Pure functions over byte
//! slices: no I/O, so the decoder can be fuzzed directly.

/// Magic at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TIDEMLOG";
/// Current segment format version.
pub(crate) const SEGMENT_VERSION: u8 = 1;
/// Size of the segment header in bytes.
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a record header (length u32, type u8, crc32 u32).
pub(crate) const RECORD_HEADER_LEN: usize = 9;
/// Largest accepted record payload (1 GiB).
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

/// Record type: a complete record. 0 is never valid (zeroed space), 2..=4 are reserved for
/// fragmented records (first/middle/last) should they ever be needed.
pub(crate) const RECORD_FULL: u8 = 1;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentKind {
    /// A segment of the log proper: records numbered from the header's first index.
    Log = 0,
    /// A segment of a checkpoint: records numbered from 0 across the checkpoint's segments.
    Checkpoint = 1,
}

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) kind: SegmentKind,
    pub(crate) first_index: u64,
}

pub(crate) fn encode_segment_header(h: SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8] = SEGMENT_VERSION;
    b[9] = h.kind as u8;
    b[16..24].copy_from_slice(&h.first_index.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a segment header; the error text says what was expected and what was found.
pub(crate) fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, String> {
    if b.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header: expected {SEGMENT_HEADER_LEN} bytes, got {}",
            b.len()
        ));
    }
    if b[0..8] != SEGMENT_MAGIC {
        return Err(format!(
            "segment header: bad magic {:02x?}, expected {:02x?}",
            &b[0..8],
            SEGMENT_MAGIC
        ));
    }
    let stored = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
    let computed = crc32fast::hash(&b[0..28]);
    if stored != computed {
        return Err(format!(
            "segment header: crc32 mismatch, stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    if b[8] != SEGMENT_VERSION {
        return Err(format!(
            "segment header: unsupported version {}, expected {SEGMENT_VERSION}",
            b[8]
        ));
    }
    let kind = match b[9] {
        0 => SegmentKind::Log,
        1 => SegmentKind::Checkpoint,
        k => return Err(format!("segment header: unknown segment kind {k}")),
    };
    let mut fi = [0u8; 8];
    fi.copy_from_slice(&b[16..24]);
    Ok(SegmentHeader {
        kind,
        first_index: u64::from_le_bytes(fi),
    })
}

/// The CRC of a record covers its index (not stored), length, type and payload, so a record that
/// ends up at the wrong position (e.g. stale bytes after a lost truncation) fails the check.
fn record_crc(index: u64, header5: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(header5);
    h.update(payload);
    h.finalize()
}

/// Appends one framed record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4] = RECORD_FULL;
    let crc = record_crc(index, &header[0..5], payload);
    header[5..9].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Result of decoding the record at the start of a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A valid record; the payload is `buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]`.
    Record { len: usize },
    /// The slice ends inside the record: at least this many bytes in total are needed. At the end
    /// of a file this means a torn (partially written) record.
    Incomplete { needed: usize },
    /// The bytes are not a valid record.
    Invalid {
        reason: String,
        total_len: Option<usize>,
    },
}

/// Decodes the record numbered `index` at the start of `buf`.
pub(crate) fn decode_record(buf: &[u8], index: u64) -> Decoded {
    if buf.len() < RECORD_HEADER_LEN {
        return Decoded::Incomplete {
            needed: RECORD_HEADER_LEN,
        };
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let typ = buf[4];
    if typ != RECORD_FULL {
        return Decoded::Invalid {
            reason: format!("record header: unknown record type {typ}, expected {RECORD_FULL}"),
            total_len: None,
        };
    }
    if len > MAX_PAYLOAD {
        return Decoded::Invalid {
            reason: format!("record header: length {len} exceeds the maximum {MAX_PAYLOAD}"),
            total_len: None,
        };
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Decoded::Incomplete { needed: total };
    }
    let stored = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]);
    let computed = record_crc(index, &buf[0..5], &buf[RECORD_HEADER_LEN..total]);
    if stored != computed {
        return Decoded::Invalid {
            reason: format!(
                "record {index}: crc32 mismatch, stored {stored:#010x}, computed {computed:#010x} \
                 over {len} payload bytes"
            ),
            total_len: Some(total),
        };
    }
    Decoded::Record { len }
}

/// Framed size of a record with a payload of `len` bytes.
pub(crate) const fn framed_len(len: usize) -> usize {
    RECORD_HEADER_LEN + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = SegmentHeader {
            kind: SegmentKind::Checkpoint,
            first_index: 123_456_789,
        };
        let b = encode_segment_header(h);
        assert_eq!(decode_segment_header(&b), Ok(h));
        let mut bad = b;
        bad[17] ^= 1;
        assert!(decode_segment_header(&bad).unwrap_err().contains("crc32"));
        assert!(
            decode_segment_header(&b[..5])
                .unwrap_err()
                .contains("got 5")
        );
    }

    #[test]
    fn record_round_trip_and_index_binding() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, b"hello");
        assert_eq!(out.len(), framed_len(5));
        assert_eq!(decode_record(&out, 7), Decoded::Record { len: 5 });
        // The same bytes at another index fail the CRC.
        assert!(matches!(decode_record(&out, 8), Decoded::Invalid { .. }));
        assert_eq!(
            decode_record(&out[..6], 7),
            Decoded::Incomplete {
                needed: RECORD_HEADER_LEN
            }
        );
        assert_eq!(
            decode_record(&out[..10], 7),
            Decoded::Incomplete { needed: 14 }
        );
        let zeros = [0u8; 20];
        assert!(matches!(
            decode_record(&zeros, 0),
            Decoded::Invalid {
                total_len: None,
                ..
            }
        ));
    }
}
