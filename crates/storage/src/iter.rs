//! Series, series sets and sample iterators.

use std::sync::Arc;

use tidemark_model::{Labels, Sample};

use crate::{Error, Result};

/// Iterates the samples of one series in ascending timestamp order (Prometheus'
/// `chunkenc.Iterator`, floats only for now).
pub trait SampleIter: Send {
    /// Advances to the next sample; false at the end (or on error, see [`SampleIter::err`]).
    fn next(&mut self) -> bool;

    /// Advances to the first sample with timestamp `>= t`. Never moves backwards: if the
    /// current sample already satisfies it, stays. False when no such sample exists.
    fn seek(&mut self, t: i64) -> bool {
        if self.is_valid() && self.at().t >= t {
            return true;
        }
        while self.next() {
            if self.at().t >= t {
                return true;
            }
        }
        false
    }

    /// The current sample; only meaningful after `next`/`seek` returned true.
    fn at(&self) -> Sample;

    /// True when positioned on a sample (after a successful `next`/`seek`).
    fn is_valid(&self) -> bool;

    /// The error that ended iteration early, if any.
    fn err(&mut self) -> Option<Error> {
        None
    }
}

/// One series: its labels and a way to iterate its samples (any number of times).
pub trait Series: Send + Sync {
    fn labels(&self) -> &Labels;
    fn iter(&self) -> Box<dyn SampleIter + '_>;
}

/// A set of series, sorted by labels when the caller asked for it.
pub type SeriesSet = Box<dyn Iterator<Item = Result<Arc<dyn Series>>> + Send>;

/// A series held as a vector of samples (tests, remote read, small results).
#[derive(Debug, Clone)]
pub struct ListSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

impl ListSeries {
    pub fn new(labels: Labels, samples: Vec<Sample>) -> ListSeries {
        ListSeries { labels, samples }
    }
}

impl Series for ListSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn iter(&self) -> Box<dyn SampleIter + '_> {
        Box::new(VecSampleIter::new(&self.samples))
    }
}

/// Iterator over a slice of samples.
#[derive(Debug, Clone)]
pub struct VecSampleIter<'a> {
    samples: &'a [Sample],
    /// Index of the current sample + 1 (0 = before the first).
    pos: usize,
}

impl<'a> VecSampleIter<'a> {
    pub fn new(samples: &'a [Sample]) -> VecSampleIter<'a> {
        VecSampleIter { samples, pos: 0 }
    }
}

impl SampleIter for VecSampleIter<'_> {
    fn next(&mut self) -> bool {
        if self.pos <= self.samples.len() {
            self.pos += 1;
        }
        self.pos <= self.samples.len()
    }

    fn seek(&mut self, t: i64) -> bool {
        let from = self.pos.saturating_sub(1);
        let rest = self.samples.get(from..).unwrap_or(&[]);
        let i = rest.partition_point(|s| s.t < t);
        self.pos = from + i + 1;
        self.pos <= self.samples.len()
    }

    fn at(&self) -> Sample {
        self.samples
            .get(self.pos.wrapping_sub(1))
            .copied()
            .unwrap_or(Sample {
                t: i64::MIN,
                v: f64::NAN,
            })
    }

    fn is_valid(&self) -> bool {
        self.pos >= 1 && self.pos <= self.samples.len()
    }
}

/// A series set over already built series (sorted by the caller as needed).
pub fn series_set_from_vec(series: Vec<Arc<dyn Series>>) -> SeriesSet {
    Box::new(series.into_iter().map(Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_iter_seek_and_next() {
        let s: Vec<Sample> = (0..5).map(|i| Sample::new(i * 10, i as f64)).collect();
        let mut it = VecSampleIter::new(&s);
        assert!(!it.is_valid());
        assert!(it.seek(15));
        assert_eq!(it.at().t, 20);
        assert!(it.seek(5), "seek never moves backwards but succeeds");
        assert_eq!(it.at().t, 20);
        assert!(it.next());
        assert_eq!(it.at().t, 30);
        assert!(!it.seek(100));
        assert!(!it.next());
        let mut it = VecSampleIter::new(&s);
        let mut n = 0;
        while it.next() {
            n += 1;
        }
        assert_eq!(n, 5);
    }
}
