//! Monitoring: a [`Stats`] snapshot of a running state ([`Mmsb::stats`](crate::Mmsb::stats)),
//! a log-bucketed latency [`Histogram`], an offline summary of a state
//! directory ([`dir_stats`], for `mmsb stats DIR`), and with the `metrics`
//! feature, publication through the [`metrics`](https://docs.rs/metrics)
//! facade so that any exporter (Prometheus, StatsD, ...) can serve them.
//!
//! Counting costs one relaxed atomic add per applied delta and one
//! histogram record per propagation; nothing is collected per byte. The
//! snapshot itself visits every page's header (one read lock each).
//!
//! ```
//! use mmsb::{Config, Mmsb, PageSpec, Payload};
//! # fn main() -> mmsb::Result<()> {
//! let state = Mmsb::start(Config::temporary())?;
//! let p = state.create_page(PageSpec::new(4096))?;
//! state.update_page(p, Payload::Full(vec![1; 4096]))?;
//! let s = state.stats();
//! assert_eq!(s.deltas_applied, 1);
//! assert_eq!(s.location(mmsb::Location::Cpu).bytes, 4096);
//! println!("{s}");
//! # Ok(())
//! # }
//! ```

use crate::alloc::AllocStats;
use crate::gpu::GpuPoolStats;
use crate::storage::codec::Limits;
use crate::storage::log::LogStats;
use crate::storage::vfs::{StdVfs, Vfs};
use crate::types::page::Location;
use crate::Result;
use parking_lot::Mutex;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Sub-buckets per power of two: 2^3 = 8, so a recorded value lands in a
/// bucket at most 12.5 % wider than its lower bound.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets covering every `u64`.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) - SUB;
    (SUB + u64::from(e - SUB_BITS) * SUB + sub) as usize
}

/// Smallest value of bucket `i`.
fn bucket_low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    (SUB + sub) << (e - u64::from(SUB_BITS))
}

/// A concurrent histogram of `u64` values (nanoseconds, here) in
/// logarithmic buckets, 8 per power of two (relative error at most 12.5 %),
/// like HdrHistogram with 1 significant binary digit of 3 bits. Recording
/// is a few relaxed atomic adds and never allocates.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    max: AtomicU64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Record one value.
    pub fn record(&self, v: u64) {
        self.counts[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Record a duration in nanoseconds.
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            sum: self.sum.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Histogram`] at one moment.
#[derive(Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
    sum: u64,
    max: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Histogram::default().snapshot()
    }
}

impl fmt::Debug for HistogramSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistogramSnapshot")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max)
            .finish()
    }
}

impl HistogramSnapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the values (saturating at `u64::MAX` in practice never reached).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean value, 0 when empty.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count()).unwrap_or(0)
    }

    /// The value below which a fraction `q` (0 to 1) of the recorded values
    /// lie, as the lower bound of its bucket (within 12.5 % below the true
    /// value); never above [`HistogramSnapshot::max`]. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_low(i).min(self.max);
            }
        }
        self.max
    }

    /// Non-empty buckets as `(lower bound, count)`, ascending.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (bucket_low(i), c))
    }
}

/// Counters kept by a running state (owned by [`Mmsb`](crate::Mmsb)).
#[derive(Debug)]
pub(crate) struct Monitor {
    started: Instant,
    deltas: AtomicU64,
    derived: AtomicU64,
    propagation: Histogram,
    last_checkpoint: Mutex<Option<Instant>>,
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            deltas: AtomicU64::new(0),
            derived: AtomicU64::new(0),
            propagation: Histogram::default(),
            last_checkpoint: Mutex::new(None),
        }
    }
}

impl Monitor {
    /// `n` user deltas were applied.
    #[inline]
    pub(crate) fn deltas_applied(&self, n: u64) {
        if n > 0 {
            self.deltas.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` derived deltas were applied.
    #[inline]
    pub(crate) fn derived_applied(&self, n: u64) {
        if n > 0 {
            self.deltas.fetch_add(n, Ordering::Relaxed);
            self.derived.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A propagation was committed after `d`.
    pub(crate) fn propagated(&self, d: Duration) {
        self.propagation.record_duration(d);
    }

    /// A checkpoint was made durable.
    pub(crate) fn checkpointed(&self) {
        *self.last_checkpoint.lock() = Some(Instant::now());
    }

    /// The snapshot, given what the state gathered.
    pub(crate) fn snapshot(
        &self,
        locations: Vec<(Location, PageCounts)>,
        alloc: AllocStats,
        log: LogStats,
    ) -> Stats {
        let uptime = self.started.elapsed();
        let deltas_applied = self.deltas.load(Ordering::Relaxed);
        let secs = uptime.as_secs_f64();
        Stats {
            uptime,
            locations,
            alloc,
            deltas_applied,
            derived_deltas: self.derived.load(Ordering::Relaxed),
            deltas_per_second: if secs > 0.0 { deltas_applied as f64 / secs } else { 0.0 },
            propagation: self.propagation.snapshot(),
            log,
            since_checkpoint: self.last_checkpoint.lock().map(|t| t.elapsed()),
            gpus: gpu_pools(),
        }
    }
}

/// Pool statistics of every device opened so far.
fn gpu_pools() -> Vec<(u32, GpuPoolStats)> {
    let Ok(n) = crate::gpu::device_count() else { return Vec::new() };
    (0..n).filter_map(|i| crate::gpu::opened_device(i).map(|g| (i, g.pool_stats()))).collect()
}

/// Pages and bytes at one location.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Pages.
    pub pages: u64,
    /// Their bytes (page lengths).
    pub bytes: u64,
}

/// A snapshot of a running state's counters: [`Mmsb::stats`](crate::Mmsb::stats).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Stats {
    /// Time since the handle started.
    pub uptime: Duration,
    /// Pages and bytes per location, in location order.
    pub locations: Vec<(Location, PageCounts)>,
    /// Host page allocator: live and pooled bytes, pool hits and misses.
    pub alloc: AllocStats,
    /// Deltas applied since start (user writes and derived deltas).
    pub deltas_applied: u64,
    /// Of those, deltas produced by propagation.
    pub derived_deltas: u64,
    /// `deltas_applied` per second of uptime.
    pub deltas_per_second: f64,
    /// Duration of each committed propagation (plan, recompute, commit), ns.
    pub propagation: HistogramSnapshot,
    /// Log counters since start: records, bytes, commits, fsyncs and their time.
    pub log: LogStats,
    /// Time since this handle last wrote a checkpoint (`None`: not yet).
    pub since_checkpoint: Option<Duration>,
    /// Memory pools of the GPUs opened by this process (all states share them).
    pub gpus: Vec<(u32, GpuPoolStats)>,
}

impl Stats {
    /// Pages and bytes at `loc` (zero when none).
    pub fn location(&self, loc: Location) -> PageCounts {
        self.locations.iter().find(|(l, _)| *l == loc).map(|(_, c)| *c).unwrap_or_default()
    }

    /// Pages and bytes over all locations.
    pub fn total(&self) -> PageCounts {
        self.locations.iter().fold(PageCounts::default(), |a, (_, c)| PageCounts {
            pages: a.pages + c.pages,
            bytes: a.bytes + c.bytes,
        })
    }

    /// Publish the snapshot through the `metrics` facade: gauges and
    /// absolute counters named `mmsb_*` (listed in docs/ARCHITECTURE.md),
    /// to whatever recorder is installed (a no-op without one).
    #[cfg(feature = "metrics")]
    pub fn publish(&self) {
        use metrics::{counter, gauge};
        for (loc, c) in &self.locations {
            let l = loc.to_string();
            gauge!("mmsb_pages", "location" => l.clone()).set(c.pages as f64);
            gauge!("mmsb_page_bytes", "location" => l).set(c.bytes as f64);
        }
        gauge!("mmsb_alloc_live_bytes").set(self.alloc.live_bytes as f64);
        gauge!("mmsb_alloc_pooled_bytes").set(self.alloc.pooled_bytes as f64);
        counter!("mmsb_alloc_pool_hits_total").absolute(self.alloc.pool_hits);
        counter!("mmsb_alloc_pool_misses_total").absolute(self.alloc.pool_misses);
        counter!("mmsb_deltas_applied_total").absolute(self.deltas_applied);
        counter!("mmsb_derived_deltas_total").absolute(self.derived_deltas);
        gauge!("mmsb_deltas_per_second").set(self.deltas_per_second);
        counter!("mmsb_propagations_total").absolute(self.propagation.count());
        for (q, name) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (1.0, "1")] {
            gauge!("mmsb_propagation_seconds", "quantile" => name)
                .set(self.propagation.quantile(q) as f64 * 1e-9);
        }
        counter!("mmsb_log_records_total").absolute(self.log.records);
        counter!("mmsb_log_bytes_total").absolute(self.log.bytes);
        counter!("mmsb_log_fsyncs_total").absolute(self.log.syncs);
        gauge!("mmsb_log_fsync_seconds_total").set(self.log.sync_nanos as f64 * 1e-9);
        gauge!("mmsb_log_fsync_max_seconds").set(self.log.max_sync_nanos as f64 * 1e-9);
        if let Some(d) = self.since_checkpoint {
            gauge!("mmsb_seconds_since_checkpoint").set(d.as_secs_f64());
        }
        for (dev, g) in &self.gpus {
            gauge!("mmsb_gpu_pool_live_bytes", "device" => dev.to_string()).set(g.live_bytes as f64);
            gauge!("mmsb_gpu_pool_cached_bytes", "device" => dev.to_string()).set(g.cached_bytes as f64);
            counter!("mmsb_gpu_h2d_bytes_total", "device" => dev.to_string()).absolute(g.h2d_bytes);
            counter!("mmsb_gpu_d2h_bytes_total", "device" => dev.to_string()).absolute(g.d2h_bytes);
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 * 1e-6
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "uptime: {:.3} s", self.uptime.as_secs_f64())?;
        writeln!(f, "pages:")?;
        for (loc, c) in &self.locations {
            writeln!(f, "  {:<8} {:>10} pages {:>16} bytes", loc.to_string(), c.pages, c.bytes)?;
        }
        let t = self.total();
        writeln!(f, "  {:<8} {:>10} pages {:>16} bytes", "total", t.pages, t.bytes)?;
        let a = &self.alloc;
        writeln!(
            f,
            "allocator: {} live buffers, {} live bytes, {} pooled bytes, {} hits, {} misses",
            a.live_buffers, a.live_bytes, a.pooled_bytes, a.pool_hits, a.pool_misses
        )?;
        writeln!(
            f,
            "deltas applied: {} ({} derived), {:.1}/s",
            self.deltas_applied, self.derived_deltas, self.deltas_per_second
        )?;
        let p = &self.propagation;
        writeln!(
            f,
            "propagations: {} (ms: p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.3})",
            p.count(),
            ms(p.quantile(0.5)),
            ms(p.quantile(0.9)),
            ms(p.quantile(0.99)),
            ms(p.max())
        )?;
        let l = &self.log;
        writeln!(
            f,
            "log: {} records, {} bytes, {} commits, {} writes, {} fsyncs ({:.3} ms total, {:.3} ms max), {} segments",
            l.records,
            l.bytes,
            l.commits,
            l.writes,
            l.syncs,
            ms(l.sync_nanos),
            ms(l.max_sync_nanos),
            l.segments
        )?;
        match self.since_checkpoint {
            Some(d) => writeln!(f, "last checkpoint: {:.3} s ago", d.as_secs_f64())?,
            None => writeln!(f, "last checkpoint: none since start")?,
        }
        for (dev, g) in &self.gpus {
            writeln!(
                f,
                "gpu {dev}: {} live bytes in {} blocks, {} reserved, {} cached; transferred {} bytes to and {} from the device",
                g.live_bytes, g.live_blocks, g.reserved_bytes, g.cached_bytes, g.h2d_bytes, g.d2h_bytes
            )?;
        }
        Ok(())
    }
}

/// What [`dir_stats`] found in a state directory.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DirStats {
    /// Pages and bytes per location of the recovered state.
    pub locations: Vec<(Location, PageCounts)>,
    /// Derived pages.
    pub derived_pages: u64,
    /// Dependency edges.
    pub edges: u64,
    /// Logical time: changes accepted.
    pub timestamp: u64,
    /// LSN of the last record reflected.
    pub lsn: u64,
    /// The state hash.
    pub state_hash: u128,
    /// Log segments and their bytes.
    pub segments: (u64, u64),
    /// Log records replayed after the newest checkpoint.
    pub records: u64,
    /// Checkpoints and their bytes.
    pub checkpoints: (u64, u64),
    /// Age of the newest checkpoint file (by modification time), when known.
    pub checkpoint_age: Option<Duration>,
    /// Torn tails noted while reading.
    pub notes: Vec<String>,
}

impl fmt::Display for DirStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pages:")?;
        let mut t = PageCounts::default();
        for (loc, c) in &self.locations {
            writeln!(f, "  {:<8} {:>10} pages {:>16} bytes", loc.to_string(), c.pages, c.bytes)?;
            t.pages += c.pages;
            t.bytes += c.bytes;
        }
        writeln!(f, "  {:<8} {:>10} pages {:>16} bytes", "total", t.pages, t.bytes)?;
        writeln!(f, "graph: {} derived pages, {} edges", self.derived_pages, self.edges)?;
        writeln!(f, "logical time: {}, last LSN: {}", self.timestamp, self.lsn)?;
        writeln!(f, "state hash: {:032x}", self.state_hash)?;
        writeln!(
            f,
            "log: {} segments, {} bytes; {} records after the newest checkpoint",
            self.segments.0, self.segments.1, self.records
        )?;
        writeln!(f, "checkpoints: {}, {} bytes", self.checkpoints.0, self.checkpoints.1)?;
        match self.checkpoint_age {
            Some(d) => writeln!(f, "newest checkpoint: {:.1} s old", d.as_secs_f64())?,
            None => writeln!(f, "newest checkpoint: none")?,
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Summarise the state directory `state_dir` without opening it for
/// writing: replays the newest checkpoint and the log in memory (nothing
/// on disk changes) and reads the files' sizes. For `mmsb stats DIR`.
///
/// # Errors
/// As [`crate::history::replay::replay_to_lsn`]: [`crate::Error::Io`],
/// [`crate::Error::Corrupt`].
pub fn dir_stats(state_dir: &Path) -> Result<DirStats> {
    dir_stats_with(&StdVfs, state_dir, &Limits::default())
}

/// [`dir_stats`] over any [`Vfs`].
///
/// # Errors
/// As [`dir_stats`].
pub fn dir_stats_with(vfs: &dyn Vfs, state_dir: &Path, limits: &Limits) -> Result<DirStats> {
    let mut records = 0u64;
    let img = crate::history::replay::replay_observed(
        vfs,
        state_dir,
        None,
        limits,
        &mut |_, _| false,
        &mut |_, c| records += c.len() as u64,
    )?;
    let insp = crate::history::tools::inspect_with(vfs, state_dir, limits)?;
    let mut locations: Vec<(Location, PageCounts)> = Vec::new();
    for p in img.pages.values() {
        let i = match locations.binary_search_by_key(&p.location, |(l, _)| *l) {
            Ok(i) => i,
            Err(i) => {
                locations.insert(i, (p.location, PageCounts::default()));
                i
            }
        };
        locations[i].1.pages += 1;
        locations[i].1.bytes += p.bytes.len() as u64;
    }
    let checkpoint_age = insp.checkpoints.first().and_then(|c| {
        let modified = std::fs::metadata(&c.path).and_then(|m| m.modified()).ok()?;
        modified.elapsed().ok()
    });
    Ok(DirStats {
        locations,
        derived_pages: img.graph.derived.len() as u64,
        edges: img.graph.edges.len() as u64,
        timestamp: img.timestamp,
        lsn: img.lsn,
        state_hash: img.state_hash(),
        segments: (insp.segments.len() as u64, insp.segments.iter().map(|s| s.bytes).sum()),
        records,
        checkpoints: (insp.checkpoints.len() as u64, insp.checkpoints.iter().map(|c| c.bytes).sum()),
        checkpoint_age,
        notes: insp.notes.into_iter().filter(|n| n.starts_with("torn tail")).collect(),
    })
}

/// The writes one page received in the history on disk ([`page_writes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageWrites {
    /// The page.
    pub page: crate::PageId,
    /// Its `name` metadata entry, when it has one that is UTF-8 (the last
    /// creation's, for a page id created more than once).
    pub name: Option<String>,
    /// Deltas applied to it, user writes and derived alike.
    pub deltas: u64,
    /// Of those, deltas produced by propagation.
    pub derived: u64,
    /// Bytes the deltas selected ([`crate::Payload::touched`]: a dense
    /// payload's selected bytes, a sparse payload's run bytes, a full
    /// payload's length), summed.
    pub bytes_written: u64,
}

/// Bytes written per page in `state_dir`'s history on disk (the log after
/// the oldest checkpoint kept), one entry per page that received a delta,
/// in page order. For `mmsb stats DIR --pages`.
///
/// # Errors
/// As [`crate::history::replay::replay_observed`].
pub fn page_writes(state_dir: &Path) -> Result<Vec<PageWrites>> {
    page_writes_with(&StdVfs, state_dir, &Limits::default())
}

/// [`page_writes`] over any [`Vfs`].
///
/// # Errors
/// As [`page_writes`].
pub fn page_writes_with(vfs: &dyn Vfs, state_dir: &Path, limits: &Limits) -> Result<Vec<PageWrites>> {
    use crate::storage::log::reader::Record;
    let oldest = crate::history::replay::history_start(vfs, state_dir)?;
    let mut by_page: std::collections::BTreeMap<crate::PageId, PageWrites> = Default::default();
    let mut names: std::collections::BTreeMap<crate::PageId, Option<String>> = Default::default();
    let img = crate::history::replay::replay_observed(
        vfs,
        state_dir,
        Some(oldest),
        limits,
        &mut |_, _| false,
        &mut |_, c| {
            for (_, r) in c {
                match r {
                    Record::Create { id, meta, .. } => {
                        let name = meta.get("name").and_then(|n| std::str::from_utf8(n).ok());
                        names.insert(*id, name.map(str::to_owned));
                    }
                    Record::Delta(v) => {
                        let w = by_page
                            .entry(v.page)
                            .or_insert_with(|| PageWrites { page: v.page, ..Default::default() });
                        w.deltas += 1;
                        w.derived += u64::from(v.source == 1);
                        w.bytes_written += v.payload.touched();
                    }
                    _ => {}
                }
            }
        },
    )?;
    // Pages created before the history starts are named by the image.
    for (id, p) in &img.pages {
        names.entry(*id).or_insert_with(|| {
            p.meta.get("name").and_then(|n| std::str::from_utf8(n).ok()).map(str::to_owned)
        });
    }
    Ok(by_page
        .into_values()
        .map(|mut w| {
            w.name = names.get(&w.page).cloned().flatten();
            w
        })
        .collect())
}

impl fmt::Display for PageWrites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page {} {}: {} deltas ({} derived), {} bytes written",
            self.page,
            self.name.as_deref().unwrap_or("-"),
            self.deltas,
            self.derived,
            self.bytes_written
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Mmsb, PageSpec, Payload};

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        for i in 0..BUCKETS {
            assert_eq!(bucket_of(bucket_low(i)), i, "bucket {i}");
            if i + 1 < BUCKETS {
                assert_eq!(bucket_of(bucket_low(i + 1) - 1), i, "end of bucket {i}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for v in [0, 1, 7, 8, 9, 15, 16, 17, 1000, 123_456_789, u64::MAX / 3] {
            let low = bucket_low(bucket_of(v));
            assert!(low <= v && (v - low) as f64 <= v as f64 * 0.125, "{v} in bucket from {low}");
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10_000);
        assert_eq!(s.max(), 10_000_000);
        assert_eq!(s.mean(), 5_000_500);
        for (q, exact) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let got = s.quantile(q) as f64;
            assert!(got <= exact && got >= exact * 0.875, "q{q}: {got} vs {exact}");
        }
        assert_eq!(s.quantile(1.0), 10_000_000u64.min(bucket_low(bucket_of(10_000_000))));
        assert_eq!(HistogramSnapshot::default().quantile(0.5), 0);
    }

    #[test]
    fn a_state_counts_pages_deltas_propagations_and_checkpoints() -> Result<()> {
        let state = Mmsb::start(Config::temporary())?;
        crate::mmsb! { state;
            page a(100);
            page b(28);
            derived c(100) = copy@1(a) |ins, out| { out.copy_from_slice(ins[0]); };
        }
        let s0 = state.stats();
        assert_eq!(s0.since_checkpoint, None);
        state.update_page(a, Payload::Full(vec![3; 100]))?;
        state.update_page(b, Payload::Full(vec![4; 28]))?;
        state.checkpoint()?;
        let s = state.stats();
        assert_eq!(s.location(Location::Cpu), PageCounts { pages: 3, bytes: 228 });
        assert_eq!(s.total().pages, 3);
        assert_eq!(s.deltas_applied - s0.deltas_applied, 3);
        assert_eq!(s.derived_deltas - s0.derived_deltas, 1);
        assert!(s.propagation.count() > s0.propagation.count());
        assert!(s.log.records >= 6 && s.log.syncs >= 1);
        assert!(s.since_checkpoint.is_some());
        assert!(s.alloc.live_buffers >= 3);
        let text = s.to_string();
        assert!(text.contains("deltas applied") && text.contains("propagations"), "{text}");
        Ok(())
    }

    #[test]
    fn page_writes_count_the_history_after_the_oldest_checkpoint() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = {
            let state = Mmsb::start(Config::at(dir.path()))?;
            let a = state.create_page(PageSpec::new(64).named("a"))?;
            let b = state.create_page(PageSpec::new(16))?;
            state.update_page(a, Payload::Full(vec![1; 64]))?;
            state.checkpoint()?;
            // After the checkpoint: a full write, a sparse one of 3 bytes,
            // a dense one of 2 selected bytes.
            state.update_page(a, Payload::Full(vec![2; 64]))?;
            state
                .update_page(b, Payload::Sparse(crate::SparseDelta::from_pairs([(1, &[5u8, 6, 7][..])])?))?;
            let dense =
                Payload::Sparse(crate::SparseDelta::from_pairs([(9, &[1u8, 1][..])])?).to_dense(16)?;
            state.update_page(b, Payload::Dense(dense))?;
            state.stop()?;
            (a, b)
        };
        let w = page_writes(dir.path())?;
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!((w[0].page, w[0].name.as_deref(), w[0].deltas, w[0].bytes_written), (a, Some("a"), 1, 64));
        assert_eq!(
            (w[1].page, w[1].name.as_deref(), w[1].deltas, w[1].derived, w[1].bytes_written),
            (b, None, 2, 0, 5)
        );
        assert_eq!(w[1].to_string(), format!("page {b} -: 2 deltas (0 derived), 5 bytes written"));
        Ok(())
    }

    #[test]
    fn dir_stats_reads_a_stopped_state() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let hash = {
            let state = Mmsb::start(Config::at(dir.path()))?;
            let p = state.create_page(PageSpec::new(64))?;
            state.update_page(p, Payload::Full(vec![9; 64]))?;
            state.checkpoint()?;
            state.create_page(PageSpec::new(32))?;
            let hash = state.state_hash()?;
            state.stop()?;
            hash
        };
        let s = dir_stats(dir.path())?;
        assert_eq!(s.locations, vec![(Location::Cpu, PageCounts { pages: 2, bytes: 96 })]);
        assert_eq!(s.state_hash, hash);
        assert_eq!(s.checkpoints.0, 1);
        assert!(s.checkpoint_age.is_some());
        // The record's segment, and the empty one the stop closed the log with.
        assert_eq!((s.records, s.segments.0), (1, 2), "{s:?}");
        assert!(s.notes.is_empty(), "{s:?}");
        assert!(s.to_string().contains("state hash"));
        Ok(())
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn publish_reaches_a_metrics_recorder() -> Result<()> {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(16))?;
        state.update_page(p, Payload::Full(vec![1; 16]))?;
        metrics::with_local_recorder(&recorder, || state.publish_metrics());
        let found: Vec<(String, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k.key().name().to_owned(), v))
            .collect();
        let get = |n: &str| found.iter().find(|(k, _)| k == n).map(|(_, v)| v);
        assert_eq!(get("mmsb_deltas_applied_total"), Some(&DebugValue::Counter(1)));
        assert!(matches!(get("mmsb_pages"), Some(DebugValue::Gauge(g)) if g.into_inner() == 1.0));
        assert!(get("mmsb_log_bytes_total").is_some());
        Ok(())
    }
}
