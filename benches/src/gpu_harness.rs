//! The GPU benchmark harness: every kernel on large pages, a
//! 100,000-delta batch and the end-to-end latency of one small delta, each
//! next to the device-to-device copy bandwidth measured in the same run;
//! and the pooled device allocation next to the driver's own allocate and
//! free. Used by [`crate::gpu`] (`mmsb bench`), the criterion `gpu` group
//! and the `gpu_bench` example.
//!
//! Bandwidth counts bytes read plus bytes written, like the copy reference
//! (a copy of `n` bytes moves `2 n`). Every timing ends with a stream
//! synchronize before the clock stops.
//!
//! The device work goes through `mmsb::internals` (the `internals` feature
//! of `mmsb`): pooled blocks, typed ranges and checked launches inside a
//! scope that waits for the device.

use mmsb::gpu::{open, Gpu};
use mmsb::internals::gpu::{
    self as internals, BatchImage, DeviceBlock, DeviceRange, Launches, RunTable, Updates,
};
use mmsb::{Config, DenseDelta, Error, Location, Mmsb, PageSpec, Payload, Result, Run, Update};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest run piece the host's packer hands to the sparse kernel.
pub use mmsb::internals::gpu::RUN_CHUNK;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Size of the large pages in bytes.
    pub large: u64,
    /// Timed repetitions per kernel figure.
    pub iters: u32,
    /// Deltas in the batched figure.
    pub batch: u64,
    /// Page size of the batched figure.
    pub batch_page: u64,
    /// Longest run piece of the sparse figures (the host's packer uses
    /// [`RUN_CHUNK`]; other values measure the choice).
    pub run_chunk: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self { large: 256 << 20, iters: 20, batch: 100_000, batch_page: 4096, run_chunk: RUN_CHUNK }
    }
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Name, like `gpu_apply_dense_256m`.
    pub name: String,
    /// Bytes read plus written per repetition.
    pub bytes: u64,
    /// Seconds per repetition.
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gbps: f64,
    /// `gbps` over the device copy's, or `None` for latency rows.
    pub ratio: Option<f64>,
    /// Free-form note (latency in µs, deltas per second, ...).
    pub note: String,
    /// For a latency row measured against a limit of its own: what the
    /// limit is and its seconds per repetition (the allocation rows: the
    /// driver's allocate and free of the same size).
    pub limit: Option<(String, f64)>,
}

/// All figures of one run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The device's name.
    pub device: String,
    /// Device-to-device copy bandwidth (GB/s, read + written).
    pub copy_gbps: f64,
    /// Every figure.
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "device: {}\nreference: cuMemcpyDtoD {:.1} GB/s (read + written)\n{:<34} {:>10} {:>8}  {}\n",
            self.device, self.copy_gbps, "name", "GB/s", "ratio", "note"
        );
        for r in &self.rows {
            let ratio = r.ratio.map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
            s += &format!("{:<34} {:>10.1} {:>8}  {}\n", r.name, r.gbps, ratio, r.note);
        }
        s
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let w = self.next().to_le_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
    }
}

/// Seconds per launch of `f`: one untimed launch and wait, then `iters`
/// launches and a wait under the clock.
fn time<'s>(dev: &'s Gpu, iters: u32, f: impl Fn(&Launches<'s>) -> Result<()>) -> Result<f64> {
    internals::launches(dev, &f)?;
    let t = Instant::now();
    internals::launches(dev, |l| {
        for _ in 0..iters {
            f(l)?;
        }
        Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64() / f64::from(iters.max(1)))
}

fn suffix(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{}m", bytes >> 20)
    } else {
        format!("{}k", bytes >> 10)
    }
}

fn upload_random(dev: &Gpu, block: &DeviceBlock, rng: &mut Rng) -> Result<Vec<u8>> {
    let mut v = vec![0u8; block.len() as usize];
    rng.fill(&mut v);
    internals::upload(dev, block.range(), &v)?;
    Ok(v)
}

/// One kernel workload of [`Kernels`]: what it does and the bytes it
/// counts per launch (read plus written).
#[derive(Clone, Debug)]
pub struct Workload {
    /// Name, like `gpu_apply_dense_256m`.
    pub name: String,
    /// Bytes counted per launch.
    pub bytes: u64,
    /// What is counted, or the run layout.
    pub note: String,
}

enum Op {
    MemcpyDtoD,
    Copy,
    Zero,
    Dense,
    Compare,
    Sparse { runs: RunTable },
}

/// The large-page kernel workloads on device 0, inputs uploaded once: the
/// device-to-device copy they are measured against, page copy and zero,
/// dense masked apply, compare, and sparse apply over the run layouts of
/// the PyTorch peer. [`Kernels::time`] has the contract of criterion's
/// `iter_custom`: launch `iters` times, synchronize, return the elapsed time.
pub struct Kernels {
    gpu: Arc<Gpu>,
    n: u64,
    a: DeviceBlock,
    b: DeviceBlock,
    data: DeviceBlock,
    mask: DeviceBlock,
    count: DeviceBlock,
    ops: Vec<(Workload, Op)>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("device", &self.device()).field("page_bytes", &self.n).finish()
    }
}

impl Kernels {
    /// Upload the inputs for pages of `large` bytes (at least 1 MiB), sparse
    /// runs cut into pieces of at most `run_chunk` bytes.
    ///
    /// # Errors
    /// [`Error::NoDevice`] without a GPU; device errors otherwise.
    pub fn open(large: u64, run_chunk: u64) -> Result<Self> {
        let dev = open(0)?;
        let n = large.max(1 << 20);
        let mut rng = Rng(0x00C0_FFEE);
        let a = internals::alloc(&dev, n)?;
        let b = internals::alloc(&dev, n)?;
        let data = internals::alloc(&dev, n)?;
        // One mask bit per byte, in whole u32 words (n / 8 bytes when n is
        // a multiple of 32, as every size in MiB is).
        let mask = internals::alloc(&dev, n.div_ceil(32) * 4)?;
        let count = internals::alloc(&dev, 8)?;
        upload_random(&dev, &a, &mut rng)?;
        upload_random(&dev, &b, &mut rng)?;
        upload_random(&dev, &data, &mut rng)?;
        upload_random(&dev, &mask, &mut rng)?; // about half the bits set
        let sz = suffix(n);
        let w = |name: String, bytes: u64, note: &str| Workload { name, bytes, note: note.to_string() };
        let mut ops = vec![
            (w(format!("cuda_memcpy_dtod_{sz}"), 2 * n, "reference"), Op::MemcpyDtoD),
            (w(format!("gpu_page_copy_{sz}"), 2 * n, ""), Op::Copy),
            (w(format!("gpu_page_zero_{sz}"), n, "write only"), Op::Zero),
            (
                w(
                    format!("gpu_apply_dense_{sz}"),
                    3 * n + n / 8,
                    "50% mask; reads page+data+mask, writes page",
                ),
                Op::Dense,
            ),
            (w(format!("gpu_page_compare_{sz}"), 2 * n + n / 8, "reads both, writes mask"), Op::Compare),
        ];
        // Sparse: the same run layouts as scripts/torch_peer.py (same
        // generator, same seeds). The data buffer mirrors the page, so a
        // run's bytes sit at its own offset (the alignment the host packer
        // gives). Bytes counted: 2 per covered byte (run bytes read, page
        // bytes written), exactly the formula of the peer's sparse rows; run
        // descriptors (24 B per run piece) and the peer's indices (8 B per
        // byte) are metadata and counted by neither.
        for shape in SPARSE_SHAPES {
            let runs = sparse_runs(n, shape);
            let covered: u64 = runs.iter().map(|r| r.len).sum();
            let mut descs = internals::run_descs(&runs, run_chunk);
            for d in &mut descs {
                d.data_offset = d.offset; // mirror layout
            }
            let table = RunTable::new(&dev, &descs, n, n)?;
            let note = format!(
                "{} runs, {:.0}% of the page, 2 B per covered byte (as torch_sparse_{})",
                runs.len(),
                100.0 * covered as f64 / n as f64,
                shape.name
            );
            ops.push((
                w(format!("gpu_apply_sparse_{}_{sz}", shape.name), 2 * covered, &note),
                Op::Sparse { runs: table },
            ));
        }
        Ok(Self { gpu: dev, n, a, b, data, mask, count, ops })
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.gpu.info().name
    }

    /// The workloads, in the order [`Kernels::time`] indexes them (the
    /// device copy first).
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.ops.iter().map(|(w, _)| w)
    }

    /// Launch workload `i` once (asynchronously) in `l`'s scope.
    fn launch<'s>(&'s self, l: &Launches<'s>, i: usize) -> Result<()> {
        let Some((_, op)) = self.ops.get(i) else {
            return Err(Error::Config(format!("no GPU workload {i}")));
        };
        let (a, b) = (self.a.range(), self.b.range());
        match op {
            Op::MemcpyDtoD => l.memcpy_dtod(b, a),
            Op::Copy => l.copy(b, a),
            Op::Zero => l.zero(b),
            Op::Dense => l.apply_dense(b, self.data.range(), self.mask.range()),
            Op::Compare => {
                l.fill(self.count.range(), 0)?;
                l.compare(a, b, self.mask.range(), self.count.range())
            }
            Op::Sparse { runs } => l.apply_sparse(b, self.data.range(), runs),
        }
    }

    /// Wall time of `iters` launches of workload `i` on an idle stream,
    /// stopped after a stream synchronize.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown workload; device errors.
    pub fn time(&self, i: usize, iters: u64) -> Result<Duration> {
        internals::sync(&self.gpu)?;
        let t = Instant::now();
        internals::launches(&self.gpu, |l| {
            for _ in 0..iters {
                self.launch(l, i)?;
            }
            Ok(())
        })?;
        Ok(t.elapsed())
    }
}

/// Run every benchmark on device 0.
///
/// # Errors
/// [`Error::NoDevice`] without a GPU; device errors otherwise.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let it = cfg.iters.max(1);
    let kernels = Kernels::open(cfg.large, cfg.run_chunk)?;
    let dev = Arc::clone(&kernels.gpu);
    let mut rows = Vec::new();
    let mut copy_gbps = f64::NAN;
    for (i, w) in kernels.workloads().enumerate() {
        kernels.time(i, 1)?; // warm-up
        let seconds = kernels.time(i, u64::from(it))?.as_secs_f64() / f64::from(it);
        let gbps = w.bytes as f64 / seconds / 1e9;
        if i == 0 {
            copy_gbps = gbps;
        }
        rows.push(BenchRow {
            name: w.name.clone(),
            bytes: w.bytes,
            seconds,
            gbps,
            ratio: Some(gbps / copy_gbps),
            note: w.note.clone(),
            limit: None,
        });
    }
    drop(kernels);
    let mut row = |name: String, bytes: u64, seconds: f64, note: String| {
        let gbps = bytes as f64 / seconds / 1e9;
        rows.push(BenchRow { name, bytes, seconds, gbps, ratio: Some(gbps / copy_gbps), note, limit: None });
    };
    batch_rows(&dev, cfg, it, &mut row)?;
    alloc_rows(&dev, &mut rows)?;
    latency_rows(&dev, &mut rows)?;
    Ok(BenchReport { device: dev.info().name.clone(), copy_gbps, rows })
}

/// A sparse benchmark layout: runs of `min_len .. min_len + len_span`
/// bytes separated by gaps of `1 ..= max_gap` bytes, the first at byte 3.
#[derive(Clone, Copy, Debug)]
struct SparseShape {
    name: &'static str,
    seed: u64,
    min_len: u64,
    len_span: u64,
    max_gap: u64,
}

/// Mirrored in scripts/torch_peer.py and scripts/sparse_bound.cu: keep them in step.
const SPARSE_SHAPES: [SparseShape; 4] = [
    SparseShape { name: "mixed", seed: 0x5EED_0001, min_len: 16, len_span: 2048, max_gap: 200 },
    SparseShape { name: "64b", seed: 0x5EED_0002, min_len: 64, len_span: 1, max_gap: 32 },
    SparseShape { name: "256b", seed: 0x5EED_0003, min_len: 256, len_span: 1, max_gap: 128 },
    SparseShape { name: "4k", seed: 0x5EED_0004, min_len: 4096, len_span: 1, max_gap: 2048 },
];

/// The runs of `shape` over a page of `n` bytes (xorshift64 13/7/17; the
/// peer script draws the same numbers).
fn sparse_runs(n: u64, shape: SparseShape) -> Vec<Run> {
    let mut rng = Rng(shape.seed);
    let mut runs = Vec::new();
    let mut at = 3u64;
    while at < n {
        let len = (shape.min_len + rng.next() % shape.len_span).min(n - at);
        runs.push(Run { offset: at, len });
        at += len + 1 + rng.next() % shape.max_gap;
    }
    runs
}

fn batch_rows(
    dev: &Gpu,
    cfg: &BenchConfig,
    it: u32,
    row: &mut impl FnMut(String, u64, f64, String),
) -> Result<()> {
    let (count, plen) = (cfg.batch.max(1), cfg.batch_page.max(1));
    let mut rng = Rng(7);
    let pages = internals::alloc(dev, count * plen.next_multiple_of(256))?;
    let stride = plen.next_multiple_of(256);
    let mut payloads = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut words = vec![0u64; plen.div_ceil(64) as usize];
        for w in &mut words {
            *w = rng.next();
        }
        let mut d = vec![0u8; plen as usize];
        rng.fill(&mut d);
        payloads.push(Payload::Dense(DenseDelta::from_words(words, d)?));
    }
    let whole = pages.range();
    let targets = payloads
        .iter()
        .enumerate()
        .map(|(k, p)| Ok((whole.slice(k as u64 * stride, plen)?, p)))
        .collect::<Result<Vec<(DeviceRange<'_>, &Payload)>>>()?;
    let updates = Updates::new(targets)?;
    let mut image = vec![0u8; updates.image_len() as usize];
    let batch: BatchImage<'_> = updates.upload(dev, &mut image)?;
    let s = time(dev, it, |l| l.apply_batch(&batch))?;
    let per = 3 * plen + plen.div_ceil(8) + 64;
    row(
        format!("gpu_apply_batch_dense_{}x{}", count, suffix(plen)),
        count * per,
        s,
        format!("one launch, {:.1} M deltas/s (kernel only)", count as f64 / s / 1e6),
    );
    // The same batch end to end: pack (straight into pinned staging, on
    // several threads) + one upload + one launch + sync. The first call
    // allocates the staging buffers; it is not timed.
    updates.apply(dev)?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        updates.apply(dev)?;
    }
    let s = t.elapsed().as_secs_f64() / f64::from(reps);
    let t = Instant::now();
    for _ in 0..reps {
        updates.pack(&mut image, &batch)?;
    }
    let pack_s = t.elapsed().as_secs_f64() / f64::from(reps);
    row(
        format!("gpu_apply_batch_dense_{}x{}_e2e", count, suffix(plen)),
        count * per,
        s,
        format!(
            "pack+upload+launch+sync, {:.2} M deltas/s; pack alone (pageable) {:.1} ms of {:.1} ms",
            count as f64 / s / 1e6,
            pack_s * 1e3,
            s * 1e3
        ),
    );
    Ok(())
}

/// Seconds for one pooled device allocation and free of a page buffer of
/// 4 KiB and of 1 MiB (the pool warm, as on a running state: the block
/// comes off its class's free list), and for `cuMemAlloc` + `cuMemFree` of
/// the same size, the driver calls the pool saves. Blocks are not zeroed
/// (a page's creation then queues a memset on the stream).
fn alloc_rows(dev: &Gpu, rows: &mut Vec<BenchRow>) -> Result<()> {
    for len in [4096u64, 1 << 20] {
        drop(internals::alloc(dev, len)?);
        let n = 100_000u32;
        let t = Instant::now();
        for _ in 0..n {
            drop(std::hint::black_box(internals::alloc(dev, std::hint::black_box(len))?));
        }
        let pooled = t.elapsed().as_secs_f64() / f64::from(n);
        let m = 500u32;
        let t = Instant::now();
        for _ in 0..m {
            internals::driver_alloc_free(dev, len)?;
        }
        let plain = t.elapsed().as_secs_f64() / f64::from(m);
        rows.push(BenchRow {
            name: format!("gpu_alloc_pooled_{}", suffix(len)),
            bytes: len,
            seconds: pooled,
            gbps: len as f64 / pooled / 1e9,
            ratio: None,
            note: format!(
                "pooled device block alloc + free, {:.0} ns; cuMemAlloc + cuMemFree {:.0} ns",
                pooled * 1e9,
                plain * 1e9
            ),
            limit: Some(("cuMemAlloc + cuMemFree of the same size".into(), plain)),
        });
    }
    Ok(())
}

/// One part of a latency, run with the iteration's number.
type Part<'a> = Box<dyn FnMut(u64) -> Result<()> + 'a>;

/// p50 and p99 (seconds) of 500 timed runs of `f` after 20 warm-ups.
fn percentiles(mut f: impl FnMut(u64) -> Result<()>) -> Result<(f64, f64)> {
    let mut times: Vec<Duration> = Vec::with_capacity(500);
    for i in 0..520u64 {
        let t = Instant::now();
        f(i)?;
        let e = t.elapsed();
        if i >= 20 {
            times.push(e);
        }
    }
    times.sort();
    Ok((times[times.len() / 2].as_secs_f64(), times[times.len() * 99 / 100].as_secs_f64()))
}

fn latency_rows(dev: &Arc<Gpu>, rows: &mut Vec<BenchRow>) -> Result<()> {
    let state = Mmsb::start(Config::temporary())?;
    let page = state.create_page(PageSpec::new(4096).on(Location::Gpu(0)))?;
    let bytes = [0x5Au8; 1024];
    let delta = |i: u64| mmsb::SparseDelta::from_pairs([((i * 97) % 3072, &bytes[..])]);
    // The update, then what its latency is made of, each part alone, p50
    // and p99: the commit on the host (the same update of a CPU page of
    // the same state: validation, the log, the registry), a wait on an
    // idle stream, one small kernel launched and waited for, and 1 KiB
    // copied up and waited for.
    let cpu_page = state.create_page(PageSpec::new(4096))?;
    let block = internals::alloc(dev, 1024)?;
    let parts: [(&str, &str, Part<'_>); 5] = [
        (
            "gpu_update_1k_delta_latency",
            "update_page + flush",
            Box::new(|i| {
                state.update_batch(vec![Update::new(page, Payload::Sparse(delta(i)?))])?;
                state.flush_gpu()
            }),
        ),
        (
            "gpu_update_1k_part_host_commit",
            "the same update of a CPU page",
            Box::new(|i| {
                state.update_batch(vec![Update::new(cpu_page, Payload::Sparse(delta(i)?))]).map(drop)
            }),
        ),
        (
            "gpu_update_1k_part_sync_idle",
            "cuStreamSynchronize of an idle stream",
            Box::new(|_| internals::sync(dev)),
        ),
        (
            "gpu_update_1k_part_launch",
            "one 1 KiB fill kernel launched and waited for",
            Box::new(|i| {
                internals::launches(dev, |l| l.fill(block.range(), i as u8))?;
                internals::sync(dev)
            }),
        ),
        (
            "gpu_update_1k_part_upload",
            "1 KiB copied up through pinned memory and waited for",
            Box::new(|_| internals::upload(dev, block.range(), &bytes)),
        ),
    ];
    for (name, what, f) in parts {
        let (p50, p99) = percentiles(f)?;
        rows.push(BenchRow {
            name: name.into(),
            bytes: 1024,
            seconds: p50,
            gbps: 1024.0 / p50 / 1e9,
            ratio: None,
            note: format!("{what}, p50 {:.1} us, p99 {:.1} us", p50 * 1e6, p99 * 1e6),
            limit: None,
        });
    }
    let t = Instant::now();
    let q = 200;
    for _ in 0..q {
        state.query_page(page)?;
    }
    let s = t.elapsed().as_secs_f64() / f64::from(q);
    rows.push(BenchRow {
        name: "gpu_query_4k_latency".into(),
        bytes: 4096,
        seconds: s,
        gbps: 4096.0 / s / 1e9,
        ratio: None,
        note: format!("query_page through pinned memory, mean {:.1} us", s * 1e6),
        limit: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_layouts_match_the_peer_script() {
        // The first runs and the count that scripts/torch_peer.py draws for
        // the "mixed" shape over 1 MiB.
        let runs = sparse_runs(1 << 20, SPARSE_SHAPES[0]);
        assert_eq!(runs.len(), 937);
        let first: Vec<(u64, u64)> = runs.iter().take(3).map(|r| (r.offset, r.len)).collect();
        assert_eq!(first, vec![(3, 593), (754, 122), (967, 1224)]);
        for shape in &SPARSE_SHAPES[1..] {
            let runs = sparse_runs(1 << 20, *shape);
            assert!(runs.iter().rev().skip(1).all(|r| r.len == shape.min_len), "{}", shape.name);
            assert!(runs.windows(2).all(|w| w[0].offset + w[0].len < w[1].offset));
        }
    }
}
