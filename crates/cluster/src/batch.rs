//! Write batches: the samples of one Raft entry (or one forwarded write).
//!
//! ```text
//! batch  := version:u8(=1) nseries:uvarint series*
//! series := labels_len:uvarint labels:[u8; labels_len] (canonical Labels encoding)
//!           nsamples:uvarint (t_delta:zigzag-varint value_bits:u64le)*
//! ```
//! The first sample's time delta is against 0, later ones against the previous sample.
//! Decoding validates every length (the bytes come from the network) and the label encoding.
//!
//! An entry may instead carry an admin command that every replica runs on its data at the
//! same point of the log (so replicas stay identical):
//!
//! ```text
//! command := 2:u8 json(Command)
//! ```
//!
//! Or what a write carries besides samples, for series of the entry's shard: metric metadata
//! (HELP/TYPE/UNIT, from scrapes and remote write) and exemplars. Every replica keeps them
//! (`extras.rs`), so that every node answers the metadata and exemplar APIs:
//!
//! ```text
//! extras   := 3:u8 nmeta:uvarint meta* nexemplars:uvarint exemplar*
//! meta     := labels_len:uvarint labels type:u8 help_len:uvarint help unit_len:uvarint unit
//! exemplar := labels_len:uvarint labels ex_labels_len:uvarint ex_labels value_bits:u64le
//!             has_ts:u8 (ts:zigzag-varint, present when has_ts = 1)
//! ```
//! `labels` are the series' (canonical encoding); `type` is the index in [`METRIC_TYPES`].

use tidemark_model::{Exemplar, Labels, MatchType, Matcher, Metadata, MetricType};

const VERSION: u8 = 1;
/// First byte of a command entry.
const COMMAND: u8 = 2;
/// First byte of an extras entry.
const EXTRAS: u8 = 3;

/// Metric types by their number in an extras entry.
pub const METRIC_TYPES: [MetricType; 8] = [
    MetricType::Unknown,
    MetricType::Counter,
    MetricType::Gauge,
    MetricType::Histogram,
    MetricType::GaugeHistogram,
    MetricType::Summary,
    MetricType::Info,
    MetricType::StateSet,
];

/// Metadata and exemplars of series of one shard (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    /// Metadata with the labels of the series it came with (remote write's per-family metadata
    /// comes with `{__name__="<family>"}`).
    pub metadata: Vec<(Labels, Metadata)>,
    /// Exemplars with the labels of their series.
    pub exemplars: Vec<(Labels, Exemplar)>,
}

impl Extras {
    pub fn is_empty(&self) -> bool {
        self.metadata.is_empty() && self.exemplars.is_empty()
    }

    /// The entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![EXTRAS];
        put_uvarint(&mut b, self.metadata.len() as u64);
        for (l, m) in &self.metadata {
            put_str(&mut b, l.encoded());
            let t = METRIC_TYPES.iter().position(|x| *x == m.kind).unwrap_or(0);
            b.push(t as u8);
            put_str(&mut b, m.help.as_bytes());
            put_str(&mut b, m.unit.as_bytes());
        }
        put_uvarint(&mut b, self.exemplars.len() as u64);
        for (l, e) in &self.exemplars {
            put_str(&mut b, l.encoded());
            put_str(&mut b, e.labels.encoded());
            b.extend_from_slice(&e.value.to_bits().to_le_bytes());
            match e.ts {
                Some(t) => {
                    b.push(1);
                    put_varint(&mut b, t);
                }
                None => b.push(0),
            }
        }
        b
    }
}

/// The extras in an entry payload (`None`: the payload is something else).
pub fn decode_extras(data: &[u8]) -> Option<Result<Extras, BatchError>> {
    match data.first() {
        Some(&EXTRAS) => Some(decode_extras_body(data)),
        _ => None,
    }
}

fn decode_extras_body(data: &[u8]) -> Result<Extras, BatchError> {
    let mut r = Reader { data, pos: 1 };
    let labels = |r: &mut Reader<'_>| -> Result<Labels, BatchError> {
        let n = r.len()?;
        let at = r.pos;
        Labels::from_encoded(r.bytes(n)?).map_err(|e| BatchError::Labels {
            at,
            reason: e.to_string(),
        })
    };
    let string = |r: &mut Reader<'_>| -> Result<String, BatchError> {
        let n = r.len()?;
        let at = r.pos;
        String::from_utf8(r.bytes(n)?.to_vec()).map_err(|_| BatchError::Labels {
            at,
            reason: "invalid UTF-8".into(),
        })
    };
    let mut out = Extras::default();
    let n = r.len()?;
    for _ in 0..n {
        let l = labels(&mut r)?;
        let t = r.u8()?;
        let kind = *METRIC_TYPES
            .get(t as usize)
            .ok_or_else(|| BatchError::Command(format!("unknown metric type {t}")))?;
        let help = string(&mut r)?;
        let unit = string(&mut r)?;
        out.metadata.push((l, Metadata { kind, help, unit }));
    }
    let n = r.len()?;
    for _ in 0..n {
        let l = labels(&mut r)?;
        let el = labels(&mut r)?;
        let b = r.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        let value = f64::from_bits(u64::from_le_bytes(a));
        let ts = match r.u8()? {
            0 => None,
            _ => Some(r.varint()?),
        };
        out.exemplars.push((
            l,
            Exemplar {
                labels: el,
                value,
                ts,
            },
        ));
    }
    if r.pos != data.len() {
        return Err(BatchError::Trailing(data.len() - r.pos));
    }
    Ok(out)
}

fn put_str(buf: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// An admin operation replicated through a shard's log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// `delete_series`: samples of series matching any matcher set, in `[min_time, max_time]`.
    /// A matcher is (kind: 0 `=`, 1 `!=`, 2 `=~`, 3 `!~`, name, value).
    Delete {
        matchers: Vec<Vec<(u8, String, String)>>,
        min_time: i64,
        max_time: i64,
    },
    /// `clean_tombstones`.
    CleanTombstones,
}

impl Command {
    /// A delete of `sets` within `[min_time, max_time]`.
    pub fn delete(sets: &[Vec<Matcher>], min_time: i64, max_time: i64) -> Command {
        let kind = |m: &Matcher| match m.kind {
            MatchType::Equal => 0,
            MatchType::NotEqual => 1,
            MatchType::Regex => 2,
            MatchType::NotRegex => 3,
        };
        Command::Delete {
            matchers: sets
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|m| (kind(m), m.name.clone(), m.value.clone()))
                        .collect()
                })
                .collect(),
            min_time,
            max_time,
        }
    }

    /// The matcher sets of a delete.
    pub fn matcher_sets(
        sets: &[Vec<(u8, String, String)>],
    ) -> Result<Vec<Vec<Matcher>>, BatchError> {
        sets.iter()
            .map(|set| {
                set.iter()
                    .map(|(k, n, v)| {
                        let kind = match k {
                            0 => MatchType::Equal,
                            1 => MatchType::NotEqual,
                            2 => MatchType::Regex,
                            3 => MatchType::NotRegex,
                            k => return Err(BatchError::Command(format!("matcher kind {k}"))),
                        };
                        Matcher::new(kind, n, v).map_err(|e| BatchError::Command(e.to_string()))
                    })
                    .collect()
            })
            .collect()
    }

    /// The entry payload.
    pub fn encode(&self) -> Result<Vec<u8>, BatchError> {
        let mut v = vec![COMMAND];
        serde_json::to_writer(&mut v, self).map_err(|e| BatchError::Command(e.to_string()))?;
        Ok(v)
    }
}

/// The command in an entry payload (`None`: the payload is a write batch).
pub fn decode_command(data: &[u8]) -> Option<Result<Command, BatchError>> {
    match data.split_first() {
        Some((&COMMAND, json)) => {
            Some(serde_json::from_slice(json).map_err(|e| BatchError::Command(e.to_string())))
        }
        _ => None,
    }
}

/// Checks an entry payload from the network: a write batch or a command.
pub fn validate(data: &[u8]) -> Result<(), BatchError> {
    if let Some(e) = decode_extras(data) {
        return e.map(|_| ());
    }
    match decode_command(data) {
        Some(c) => c.map(|_| ()),
        None => for_each_raw(data, |_, _, _| {}),
    }
}
/// Upper bound on the number of series or samples a decoder pre-allocates for.
const PREALLOC_CAP: usize = 1 << 16;

/// Errors decoding a batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("write batch truncated at byte {0}")]
    Truncated(usize),
    #[error("write batch has unknown version {0}")]
    Version(u8),
    #[error("write batch has invalid labels at byte {at}: {reason}")]
    Labels { at: usize, reason: String },
    #[error("write batch has {0} trailing bytes")]
    Trailing(usize),
    #[error("invalid command entry: {0}")]
    Command(String),
}

/// Builds a batch series by series.
#[derive(Debug, Default, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    series: u64,
    samples: u64,
}

/// One series of a decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSeries {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    pub fn add(&mut self, labels: &Labels, samples: &[(i64, f64)]) {
        let enc = labels.encoded();
        put_uvarint(&mut self.buf, enc.len() as u64);
        self.buf.extend_from_slice(enc);
        put_uvarint(&mut self.buf, samples.len() as u64);
        let mut prev = 0i64;
        for &(t, v) in samples {
            put_varint(&mut self.buf, t.wrapping_sub(prev));
            prev = t;
            self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        self.series += 1;
        self.samples += samples.len() as u64;
    }

    pub fn num_series(&self) -> u64 {
        self.series
    }

    pub fn num_samples(&self) -> u64 {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// The encoded batch.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 11);
        out.push(VERSION);
        put_uvarint(&mut out, self.series);
        out.extend_from_slice(&self.buf);
        out
    }
}

/// Whether `data` is a sample batch (not a command or extras entry).
pub fn is_samples(data: &[u8]) -> bool {
    data.first() == Some(&VERSION)
}

/// One sample batch holding the series of `batches`, in order (each a sample batch).
pub fn concat(batches: &[&[u8]]) -> Result<Vec<u8>, BatchError> {
    let mut series = 0u64;
    let mut bodies = Vec::with_capacity(batches.len());
    for b in batches {
        let mut r = Reader { data: b, pos: 0 };
        let v = r.u8()?;
        if v != VERSION {
            return Err(BatchError::Version(v));
        }
        series = series.saturating_add(r.uvarint()?);
        bodies.push(b.get(r.pos..).unwrap_or_default());
    }
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len()).sum::<usize>() + 11);
    out.push(VERSION);
    put_uvarint(&mut out, series);
    for b in bodies {
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Decodes a whole batch.
pub fn decode(data: &[u8]) -> Result<Vec<BatchSeries>, BatchError> {
    let mut out = Vec::new();
    for_each(data, |s| out.push(s))?;
    Ok(out)
}

/// Decodes a batch series by series.
pub fn for_each(data: &[u8], mut f: impl FnMut(BatchSeries)) -> Result<(), BatchError> {
    let mut err = None;
    for_each_raw(data, |at, lb, samples| match Labels::from_encoded(lb) {
        Ok(labels) => f(BatchSeries {
            labels,
            samples: samples.to_vec(),
        }),
        Err(e) => {
            if err.is_none() {
                err = Some(BatchError::Labels {
                    at,
                    reason: e.to_string(),
                });
            }
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Decodes a batch series by series without decoding the labels: `f` gets the byte offset of
/// the labels, their canonical encoding (not validated: see [`Labels::from_encoded`]) and the
/// samples. For callers that cache decoded label sets by their bytes.
pub fn for_each_raw(
    data: &[u8],
    mut f: impl FnMut(usize, &[u8], &[(i64, f64)]),
) -> Result<(), BatchError> {
    let mut r = Reader { data, pos: 0 };
    let v = r.u8()?;
    if v != VERSION {
        return Err(BatchError::Version(v));
    }
    let n = r.uvarint()?;
    let mut samples = Vec::new();
    for _ in 0..n {
        let len = r.len()?;
        let at = r.pos;
        let lb = r.bytes(len)?;
        let ns = r.len()?;
        samples.clear();
        samples.reserve(ns.min(PREALLOC_CAP));
        let mut prev = 0i64;
        for _ in 0..ns {
            let t = prev.wrapping_add(r.varint()?);
            prev = t;
            let b = r.bytes(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            samples.push((t, f64::from_bits(u64::from_le_bytes(a))));
        }
        f(at, lb, &samples);
    }
    if r.pos != data.len() {
        return Err(BatchError::Trailing(data.len() - r.pos));
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, BatchError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(BatchError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn uvarint(&mut self) -> Result<u64, BatchError> {
        let start = self.pos;
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8().map_err(|_| BatchError::Truncated(start))?;
            x |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(BatchError::Truncated(start))
    }

    fn varint(&mut self) -> Result<i64, BatchError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A length that must fit in the remaining bytes (each counted item takes at least 1 byte).
    fn len(&mut self) -> Result<usize, BatchError> {
        let at = self.pos;
        let n = self.uvarint()?;
        if n > (self.data.len() - self.pos) as u64 {
            return Err(BatchError::Truncated(at));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(BatchError::Truncated(self.pos))?;
        let b = self
            .data
            .get(self.pos..end)
            .ok_or(BatchError::Truncated(self.pos))?;
        self.pos = end;
        Ok(b)
    }
}

fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, ((x << 1) ^ (x >> 63)) as u64);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn labels(i: u64) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("i", &*i.to_string())])
    }

    #[test]
    fn round_trip_keeps_bits() {
        let mut b = BatchBuilder::new();
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        b.add(&labels(1), &[(1000, 1.5), (-5, stale), (i64::MAX, -0.0)]);
        b.add(&labels(2), &[]);
        let enc = b.finish();
        let dec = decode(&enc).unwrap();
        assert_eq!(dec.len(), 2);
        assert_eq!(dec[0].labels, labels(1));
        let bits: Vec<(i64, u64)> = dec[0]
            .samples
            .iter()
            .map(|&(t, v)| (t, v.to_bits()))
            .collect();
        assert_eq!(
            bits,
            vec![
                (1000, 1.5f64.to_bits()),
                (-5, stale.to_bits()),
                (i64::MAX, (-0.0f64).to_bits())
            ]
        );
        assert!(dec[1].samples.is_empty());
    }

    #[test]
    fn concatenated_batches_decode_as_their_series_in_order() {
        let mut a = BatchBuilder::new();
        a.add(&labels(1), &[(1, 1.0)]);
        a.add(&labels(2), &[(2, 2.0), (3, 3.0)]);
        let mut b = BatchBuilder::new();
        b.add(&labels(1), &[(4, 4.0)]);
        let (a, b) = (a.finish(), b.finish());
        let joined = concat(&[&a, &b, &BatchBuilder::new().finish()]).unwrap();
        let mut want = decode(&a).unwrap();
        want.extend(decode(&b).unwrap());
        assert_eq!(decode(&joined).unwrap(), want);
        assert!(is_samples(&joined));
        assert!(!is_samples(&Extras::default().encode()));
        assert_eq!(concat(&[&a, &[9]]), Err(BatchError::Version(9)));
        assert!(concat(&[&a[..1]]).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut b = BatchBuilder::new();
        b.add(&labels(7), &[(1, 1.0), (2, 2.0)]);
        let enc = b.finish();
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(BatchError::Trailing(1)));
    }

    #[test]
    fn extras_round_trip_and_truncations_are_errors() {
        let e = Extras {
            metadata: vec![
                (
                    labels(1),
                    Metadata {
                        kind: MetricType::Counter,
                        help: "Requests.".into(),
                        unit: "seconds".into(),
                    },
                ),
                (labels(2), Metadata::default()),
            ],
            exemplars: vec![
                (
                    labels(1),
                    Exemplar {
                        labels: Labels::from_pairs([("trace_id", "abc")]),
                        value: f64::from_bits(0x7ff0_0000_0000_0002),
                        ts: Some(-5),
                    },
                ),
                (
                    labels(3),
                    Exemplar {
                        labels: Labels::default(),
                        value: 1.5,
                        ts: None,
                    },
                ),
            ],
        };
        let enc = e.encode();
        assert_eq!(validate(&enc), Ok(()));
        let dec = decode_extras(&enc).unwrap().unwrap();
        assert_eq!(dec.metadata, e.metadata);
        assert_eq!(dec.exemplars.len(), 2);
        assert_eq!(dec.exemplars[0].1.value.to_bits(), 0x7ff0_0000_0000_0002);
        assert_eq!(dec.exemplars[0].1.ts, Some(-5));
        assert_eq!(dec.exemplars[1], e.exemplars[1]);
        for n in 1..enc.len() {
            assert!(
                decode_extras(&enc[..n]).unwrap().is_err(),
                "prefix of {n} bytes decoded"
            );
        }
        assert!(decode_command(&enc).is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_extras_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut d = vec![EXTRAS];
            d.extend(data);
            let _ = validate(&d);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&data);
        }

        #[test]
        fn round_trip(series in proptest::collection::vec(
            (0u64..1000, proptest::collection::vec((any::<i64>(), any::<u64>()), 0..20)), 0..10)) {
            let mut b = BatchBuilder::new();
            for (i, s) in &series {
                let samples: Vec<(i64, f64)> = s.iter().map(|&(t, v)| (t, f64::from_bits(v))).collect();
                b.add(&labels(*i), &samples);
            }
            let dec = decode(&b.finish()).unwrap();
            prop_assert_eq!(dec.len(), series.len());
            for (d, (i, s)) in dec.iter().zip(&series) {
                prop_assert_eq!(&d.labels, &labels(*i));
                let got: Vec<(i64, u64)> = d.samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
                prop_assert_eq!(&got, s);
            }
        }
    }
}
