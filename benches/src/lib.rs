//! Workloads and the quick runner behind `mmsb bench`.
//!
//! Every figure is real work next to a physical limit measured in the same
//! run (memcpy of the same bytes, plain allocation, raw disk write), reported
//! as a ratio oriented so that higher is better. The criterion suite in
//! `benches/mmsb.rs` measures the same workloads with more samples.

use mmsb::{DenseDelta, Payload, SparseDelta};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::{Duration, Instant};

pub mod cpu;
pub mod disk;
pub mod gpu;
pub mod gpu_harness;
#[cfg(feature = "peers")]
pub mod peers;
pub mod plot;
pub mod prop;

/// One line of the benchmark table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Benchmark name, e.g. `cpu_apply_dense_1m`.
    pub name: String,
    /// The measured figure.
    pub value: f64,
    /// Its unit (`GB/s`, `ns`, `deltas/s`, …).
    pub unit: String,
    /// What the figure is compared with.
    pub limit_name: String,
    /// The limit, measured in the same run, in the same unit.
    pub limit_value: f64,
    /// value / limit, or limit / value for times: higher is better.
    pub ratio: f64,
    /// The target ratio, when the target is a ratio.
    pub target: Option<f64>,
    /// An absolute target in `unit`, when there is one: at most this much
    /// when `lower_is_better` (a time), at least this much otherwise (a rate).
    pub target_value: Option<f64>,
    /// Whether a lower `value` is better (times); rates are higher-is-better.
    pub lower_is_better: bool,
    /// Whether the target (ratio or absolute) is met; `None` without a target.
    pub meets_target: Option<bool>,
    /// The CPU model or GPU name that produced the figure.
    pub device: String,
    /// For the rows of `mmsb bench --peers`: the other system the figure
    /// is compared with (then the limit is that system's figure on the same
    /// work). Absent from the JSON of every other row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
}

/// The other system of a `--peers` row.
#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    /// Its name (`redb`, `fjall`, `SQLite`, `salsa`).
    pub name: String,
    /// Its version as built into this binary.
    pub version: String,
    /// The setting it ran with (durability level, mode), or what stands in
    /// for a feature it lacks.
    pub setting: String,
    /// Set when the peer cannot do the row's work at all: what it lacks
    /// (then the limit is NaN, `null` in the JSON, and the row has no
    /// target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

impl Row {
    /// A throughput row: higher value is better; ratio = value / limit.
    pub fn throughput(
        name: &str,
        value: f64,
        unit: &str,
        limit_name: &str,
        limit: f64,
        target: Option<f64>,
    ) -> Row {
        let ratio = value / limit;
        Row {
            name: name.into(),
            value,
            unit: unit.into(),
            limit_name: limit_name.into(),
            limit_value: limit,
            ratio,
            target,
            target_value: None,
            lower_is_better: false,
            meets_target: target.map(|t| ratio >= t),
            device: cpu_model(),
            peer: None,
        }
    }

    /// A rate row with an absolute target: at least `min` `unit`.
    pub fn rate(name: &str, value: f64, unit: &str, limit_name: &str, limit: f64, min: Option<f64>) -> Row {
        Row {
            target_value: min,
            meets_target: min.map(|m| value >= m),
            ..Row::throughput(name, value, unit, limit_name, limit, None)
        }
    }

    /// A cost row (bytes, seconds) against a peer's cost of the same work:
    /// lower value is better; ratio = limit / value, against `target`.
    pub fn cost(
        name: &str,
        value: f64,
        unit: &str,
        limit_name: &str,
        limit: f64,
        target: Option<f64>,
    ) -> Row {
        Row { lower_is_better: true, ..Row::throughput(name, limit, unit, limit_name, value, target) }
            .swapped()
    }

    /// The row with value and limit exchanged (ratio unchanged).
    fn swapped(mut self) -> Row {
        std::mem::swap(&mut self.value, &mut self.limit_value);
        self
    }

    /// Attach the device that produced the figure.
    #[must_use]
    pub fn on(mut self, device: &str) -> Row {
        self.device = device.into();
        self
    }

    /// Attach the peer the row compares with.
    #[must_use]
    pub fn against(mut self, peer: Peer) -> Row {
        if peer.unsupported.is_some() {
            self.limit_value = f64::NAN;
            self.ratio = f64::NAN;
            self.target = None;
            self.target_value = None;
            self.meets_target = None;
        }
        self.peer = Some(peer);
        self
    }

    /// A latency row: lower value is better; ratio = limit / value;
    /// `max` is an absolute target (at most this many `unit`).
    pub fn latency(
        name: &str,
        value: f64,
        unit: &str,
        limit_name: &str,
        limit: f64,
        max: Option<f64>,
    ) -> Row {
        Row {
            name: name.into(),
            value,
            unit: unit.into(),
            limit_name: limit_name.into(),
            limit_value: limit,
            ratio: limit / value,
            target: None,
            target_value: max,
            lower_is_better: true,
            meets_target: max.map(|m| value <= m),
            device: cpu_model(),
            peer: None,
        }
    }
}

/// The CPU model name (from /proc/cpuinfo on Linux).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// How long each measurement runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Time per sample.
    pub sample: Duration,
    /// Samples per measurement (the median is reported).
    pub samples: usize,
}

impl Budget {
    /// The `--quick` budget.
    pub const QUICK: Budget = Budget { sample: Duration::from_millis(60), samples: 9 };
    /// The full budget.
    pub const FULL: Budget = Budget { sample: Duration::from_millis(300), samples: 9 };
}

/// Median seconds per call of `f`, over `budget.samples` samples that each
/// run `f` repeatedly for about `budget.sample`.
pub fn time_per_iter(budget: Budget, mut f: impl FnMut()) -> f64 {
    let n = calls_per_sample(budget.sample, &mut f);
    let mut samples: Vec<f64> = (0..budget.samples.max(1)).map(|_| sample(n, &mut f)).collect();
    median(&mut samples)
}

/// Median seconds per call of `f` and of `g`, their samples taken in turn
/// (each about half of `budget.sample`): a figure and its limit measured
/// under the same conditions, so that a machine whose speed drifts (other
/// tenants, frequency changes) moves both alike.
pub fn paired_per_iter(budget: Budget, f: impl FnMut(), g: impl FnMut()) -> (f64, f64) {
    let (a, b, _) = in_turn_per_iter(budget, f, g, None);
    (a, b)
}

/// [`paired_per_iter`] with a third function `h` sampled in the same turns
/// when given (a bound measured beside the figure and its limit); its
/// median is the third value.
pub fn in_turn_per_iter(
    budget: Budget,
    mut f: impl FnMut(),
    mut g: impl FnMut(),
    mut h: Option<&mut dyn FnMut()>,
) -> (f64, f64, Option<f64>) {
    let part = budget.sample / if h.is_some() { 3 } else { 2 };
    let (nf, ng) = (calls_per_sample(part, &mut f), calls_per_sample(part, &mut g));
    let nh = h.as_mut().map(|h| calls_per_sample(part, h));
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..budget.samples.max(1) {
        a.push(sample(nf, &mut f));
        b.push(sample(ng, &mut g));
        if let (Some(h), Some(n)) = (h.as_mut(), nh) {
            c.push(sample(n, h));
        }
    }
    (median(&mut a), median(&mut b), nh.map(|_| median(&mut c)))
}

/// How many calls of `f` fill about `span`.
fn calls_per_sample(span: Duration, f: &mut impl FnMut()) -> u64 {
    f();
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let e = t.elapsed();
        if e >= span / 4 || n >= 1 << 30 {
            return ((n as f64) * span.as_secs_f64() / e.as_secs_f64().max(1e-9)).ceil().max(1.0) as u64;
        }
        n *= 4;
    }
}

/// Seconds per call of `f` over `n` calls.
fn sample(n: u64, f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// The median of `v` (the upper one of an even count; NaN when empty).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A dense payload for a `len`-byte page selecting about half the bytes.
pub fn dense_payload(len: usize, seed: u64) -> Payload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words: Vec<u64> = (0..len.div_ceil(64)).map(|_| rng.next_u64()).collect();
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Payload::Dense(DenseDelta::from_words(words, data).expect("one word per 64 bytes"))
}

/// A sparse payload: runs of `run` bytes every `stride` bytes, built with
/// `SparseDelta::from_pairs` as the README builds one (its bytes then start
/// on a cache line, as they do from the log, a diff or a merge; a delta
/// from `SparseDelta::new` keeps the caller's vector where the allocator
/// put it).
pub fn sparse_payload(len: usize, run: usize, stride: usize, seed: u64) -> Payload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut offsets = Vec::new();
    let mut at = 0usize;
    while at + run <= len {
        offsets.push(at as u64);
        at += stride.max(run + 1);
    }
    let mut data = vec![0u8; offsets.len() * run];
    rng.fill_bytes(&mut data);
    let pairs = offsets.into_iter().zip(data.chunks_exact(run));
    Payload::Sparse(SparseDelta::from_pairs(pairs).expect("runs are sorted and apart"))
}

/// A full payload of random bytes.
pub fn full_payload(len: usize, seed: u64) -> Payload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Payload::Full(data)
}

/// A small random sparse payload (one run of 1..=`max` bytes, at most 64)
/// for a page of `len`, built as an application would write a small field.
pub fn small_sparse(rng: &mut ChaCha8Rng, len: usize, max: usize) -> Payload {
    let run = rng.random_range(1..=max.min(len).min(64));
    let off = rng.random_range(0..=len - run);
    let mut data = [0u8; 64];
    rng.fill_bytes(&mut data[..run]);
    Payload::Sparse(SparseDelta::from_pairs([(off as u64, &data[..run])]).expect("in range"))
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else {
        format!("{v}")
    }
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1e5 {
        format!("{v:.4e}")
    } else {
        format!("{v:.3}")
    }
}

/// One line on the rows' targets: how many are met, and which are missed.
pub fn target_summary(rows: &[Row]) -> String {
    let judged = rows.iter().filter(|r| r.meets_target.is_some()).count();
    let missed: Vec<&str> =
        rows.iter().filter(|r| r.meets_target == Some(false)).map(|r| r.name.as_str()).collect();
    match (judged, missed.len()) {
        (0, _) => "targets: none among these rows".into(),
        (n, 0) => format!("targets: all {n} met"),
        (n, m) => format!("targets: {} of {n} met; missed: {}", n - m, missed.join(", ")),
    }
}

/// Format rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<34} {:>14} {:<9} {:>8} {:>8}{:<5}  {}\n",
        "benchmark", "value", "unit", "ratio", "target", "", "limit (same run)"
    );
    for r in rows {
        let target = match (r.target, r.target_value) {
            (Some(t), _) => format!("{t:.2}"),
            (None, Some(v)) if r.lower_is_better => format!("<={}", short(v)),
            (None, Some(v)) => format!(">={}", short(v)),
            _ => "-".into(),
        };
        let mark = match r.meets_target {
            Some(true) => " ok",
            Some(false) => " MISS",
            None => "",
        };
        let limit = match r.peer.as_ref().and_then(|p| p.unsupported.as_ref()) {
            Some(why) => format!("{}: {why}", r.limit_name),
            None => format!("{} = {} {}", r.limit_name, num(r.limit_value), r.unit),
        };
        out.push_str(&format!(
            "{:<34} {:>14} {:<9} {:>8} {:>8}{mark:<5}  {limit}\n",
            r.name,
            num(r.value),
            r.unit,
            num(r.ratio),
            target,
        ));
    }
    out.push_str(
        "ratio: value / limit, or limit / value for times (higher is better); target: a bare number is \
         a ratio the row's ratio must reach, <=N or >=N a bound on the value itself, in its unit\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_line_counts_met_and_names_missed() {
        let met = Row::throughput("fast", 2.0, "GB/s", "memcpy", 2.0, Some(0.8));
        let missed = Row::throughput("slow", 1.0, "GB/s", "memcpy", 2.0, Some(0.8));
        let late = Row::latency("late", 200.0, "ns", "call", 10.0, Some(150.0));
        let free = Row::throughput("free", 1.0, "GB/s", "memcpy", 2.0, None);
        assert_eq!(target_summary(&[]), "targets: none among these rows");
        assert_eq!(target_summary(std::slice::from_ref(&free)), "targets: none among these rows");
        assert_eq!(target_summary(&[met.clone(), free.clone()]), "targets: all 1 met");
        assert_eq!(target_summary(&[met, missed, free, late]), "targets: 1 of 3 met; missed: slow, late");
    }
}
