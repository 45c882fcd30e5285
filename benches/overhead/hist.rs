//! Latency figures: a log-linear (HDR-style) histogram of nanoseconds, 2,048 sub-buckets per power
//! of two above 4,096 ns, so every recorded value is kept within 1/4096 of its true value (≈ 12 µs
//! at 50 ms: fine enough to see a fraction of a millisecond added to a paced first token); and an
//! exact percentile of a few values.

use std::time::Duration;

const SUB_BITS: u32 = 12;
const HALF: u64 = 1 << (SUB_BITS - 1);

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Hist {
    pub fn new() -> Self {
        Self {
            counts: vec![0; (66 - SUB_BITS as usize) * HALF as usize],
            n: 0,
            max: 0,
        }
    }
    fn index(v: u64) -> usize {
        if v < (1 << SUB_BITS) {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb + 1 - SUB_BITS;
        (u64::from(shift) * HALF + (v >> shift)) as usize
    }
    fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < (1 << SUB_BITS) {
            return i;
        }
        let shift = i / HALF - 1;
        let top = i % HALF + HALF;
        (top << shift) + (1 << shift) / 2
    }
    pub fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
    }
    /// Percentile in milliseconds (`None` when empty).
    pub fn ms(&self, p: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let target = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::value(i).min(self.max) as f64 / 1e6);
            }
        }
        Some(self.max as f64 / 1e6)
    }
    pub fn max_ms(&self) -> Option<f64> {
        (self.n > 0).then(|| self.max as f64 / 1e6)
    }
}

pub fn exact_percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    Some(v[rank])
}
