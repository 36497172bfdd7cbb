//! Packing many deltas into one staging buffer for one `mmsb_apply_batch`
//! launch.
//!
//! The staging image is laid out as
//!
//! ```text
//! [ApplyDesc; descs] [RunDesc; runs] [blob: masks and data, 16-aligned pieces]
//! ```
//!
//! and uploaded with one copy; every address in it is `base + offset`.
//! Items are packed in parts of a fixed number of items, each part's blob
//! share starting on a 16-byte boundary, so that a large image is written
//! straight into the pinned staging buffer by several threads at once. The
//! kernel runs one block per descriptor, so the packer bounds each
//! descriptor's work: dense and full deltas are cut into [`SEGMENT`]-byte
//! pieces (a multiple of 32, so each piece's mask starts on a word), long
//! runs into pieces of at most [`RUN_CHUNK`] bytes cut on 16-byte page
//! offsets (`gpu_kernels::body::piece_len`) and sparse deltas into groups of at
//! most [`RUNS_PER_DESC`] runs. Each run's bytes are placed at an offset
//! congruent modulo 16 to their page address, so full windows of a run take
//! the kernel's 16-byte path whatever the run's offset.
//!
//! Two items must never target overlapping page bytes (the queue merges
//! deltas to the same page first): descriptors run concurrently.

use crate::delta::Payload;
use gpu_kernels::body::{piece_len, pieces as pieces_of, BLOCK, GROUP, RUN_CHUNK, WARP};
use shared_types::{kind, ApplyDesc, InlineApply, RunDesc, INLINE_BYTES, INLINE_RUNS};
use std::mem::size_of;

/// Page bytes per dense or full descriptor.
pub const SEGMENT: u64 = 64 << 10;
/// Runs per sparse descriptor: one group of [`GROUP`] runs per warp of the
/// batch kernel's block.
pub const RUNS_PER_DESC: u64 = GROUP * (BLOCK as u64 / WARP as u64);

/// One delta to pack: the target's device address and length, and the payload
/// (already validated against `len`).
///
/// The packer only writes `page` into the image as a number; launching an
/// image (`Gpu::apply_items`, `Gpu::apply_batch`) is what relies on it,
/// and those functions are `unsafe`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item<'a> {
    pub page: u64,
    pub len: u64,
    pub payload: &'a Payload,
}

/// Sizes of a staging image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Number of descriptors.
    pub descs: u64,
    /// Number of run descriptors.
    pub runs: u64,
    /// Bytes of masks and data (with alignment padding).
    pub blob: u64,
}

impl Layout {
    /// Offset of the run descriptors.
    pub fn runs_at(&self) -> u64 {
        self.descs * size_of::<ApplyDesc>() as u64
    }

    /// Offset of the blob (16-aligned).
    pub fn blob_at(&self) -> u64 {
        (self.runs_at() + self.runs * size_of::<RunDesc>() as u64).next_multiple_of(16)
    }

    /// Total bytes of the image, a multiple of 16: the sparse kernels read
    /// run bytes in whole 16-aligned blocks, so the last block is part of
    /// the image (and uploaded, so it is initialised).
    pub fn total(&self) -> u64 {
        (self.blob_at() + self.blob).next_multiple_of(16)
    }
}

/// Items per packing part. Parts are laid out one after the other, each
/// starting its share of the blob on a 16-byte boundary, so they can be
/// packed independently (in parallel for large images).
const PART_ITEMS: usize = 1024;

/// Images at least this large are packed on several threads.
const PARALLEL_BYTES: u64 = 8 << 20;

/// Padding that makes `cur` congruent to `addr` modulo 16.
fn pad_to(cur: u64, addr: u64) -> u64 {
    addr.wrapping_sub(cur) & 15
}

/// Bytes of mask words stored for a dense delta over `len` bytes.
fn mask_bytes(len: u64) -> u64 {
    len.div_ceil(64) * 8
}

/// Descriptors, runs, blob bytes and work items of a part (or a prefix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    descs: u64,
    runs: u64,
    blob: u64,
    work: u64,
}

/// Sizes of one part, its blob starting 16-aligned and padded to 16.
fn part_counts(items: &[Item<'_>]) -> Counts {
    let mut c = Counts::default();
    for it in items {
        match it.payload {
            Payload::Dense(_) => {
                c.descs += it.len.div_ceil(SEGMENT);
                c.work += it.len.div_ceil(16);
                c.blob = c.blob.next_multiple_of(16) + mask_bytes(it.len);
                c.blob += pad_to(c.blob, it.page) + it.len;
            }
            Payload::Full(_) => {
                c.descs += it.len.div_ceil(SEGMENT);
                c.work += it.len.div_ceil(16);
                c.blob += pad_to(c.blob, it.page) + it.len;
            }
            Payload::Sparse(s) => {
                let mut pieces = 0;
                for r in s.runs() {
                    pieces += pieces_of(r.offset, r.len, RUN_CHUNK);
                    c.blob += pad_to(c.blob, it.page + r.offset) + r.len;
                }
                c.runs += pieces;
                c.work += pieces;
                c.descs += pieces.div_ceil(RUNS_PER_DESC);
            }
        }
    }
    c.blob = c.blob.next_multiple_of(16);
    c
}

/// Where each part of an image goes: computed once, used by [`pack_planned`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Sizes of the whole image.
    pub lay: Layout,
    /// Start (prefix) and size of each part of [`PART_ITEMS`] items.
    parts: Vec<(Counts, Counts)>,
}

/// The plan of the image for `items`.
pub(crate) fn plan(items: &[Item<'_>]) -> Plan {
    let mut at = Counts::default();
    let mut parts = Vec::with_capacity(items.len().div_ceil(PART_ITEMS));
    for chunk in items.chunks(PART_ITEMS) {
        let c = part_counts(chunk);
        parts.push((at, c));
        at = Counts {
            descs: at.descs + c.descs,
            runs: at.runs + c.runs,
            blob: at.blob + c.blob,
            work: at.work + c.work,
        };
    }
    Plan { lay: Layout { descs: at.descs, runs: at.runs, blob: at.blob }, parts }
}

/// Sizes of the image for `items`.
#[cfg(test)]
pub(crate) fn layout(items: &[Item<'_>]) -> Layout {
    plan(items).lay
}

/// Write the image for `items` into `out` (at least `layout.total()` bytes)
/// whose device address will be `base` (16-aligned). Returns the layout.
#[cfg(test)]
pub(crate) fn pack(items: &[Item<'_>], out: &mut [u8], base: u64) -> Layout {
    let p = plan(items);
    pack_planned(&p, items, out, base);
    p.lay
}

/// One part's share of the image: its items and its three output slices.
struct Job<'i, 'o> {
    items: &'i [Item<'i>],
    descs: &'o mut [u8],
    runs: &'o mut [u8],
    blob: &'o mut [u8],
    at: Counts,
}

/// Write the image planned by `p` for `items` into `out` (at least
/// `p.lay.total()` bytes) whose device address will be `base` (16-aligned).
/// Large images are packed on several threads.
pub(crate) fn pack_planned(p: &Plan, items: &[Item<'_>], out: &mut [u8], base: u64) {
    let lay = p.lay;
    debug_assert!(out.len() as u64 >= lay.total());
    debug_assert_eq!(base % 16, 0);
    let (runs_at, blob_at) = (lay.runs_at(), lay.blob_at());
    let out = &mut out[..lay.total() as usize];
    let (mut descs, rest) = out.split_at_mut(runs_at as usize);
    let (mut runs, mut blob) = rest.split_at_mut((blob_at - runs_at) as usize);
    let mut jobs = Vec::with_capacity(p.parts.len());
    for (chunk, &(at, c)) in items.chunks(PART_ITEMS).zip(&p.parts) {
        let (d, dr) = std::mem::take(&mut descs).split_at_mut(c.descs as usize * size_of::<ApplyDesc>());
        let (r, rr) = std::mem::take(&mut runs).split_at_mut(c.runs as usize * size_of::<RunDesc>());
        let (b, br) = std::mem::take(&mut blob).split_at_mut(c.blob as usize);
        (descs, runs, blob) = (dr, rr, br);
        jobs.push(Job { items: chunk, descs: d, runs: r, blob: b, at });
    }
    let threads = if lay.total() >= PARALLEL_BYTES {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len()).min(16)
    } else {
        1
    };
    let addr = Addr { runs: base + runs_at, blob: base + blob_at };
    if threads <= 1 {
        for j in &mut jobs {
            pack_part(j, addr);
        }
        return;
    }
    let per = jobs.len().div_ceil(threads);
    std::thread::scope(|s| {
        for group in jobs.chunks_mut(per) {
            s.spawn(move || {
                for j in group {
                    pack_part(j, addr);
                }
            });
        }
    });
}

/// Device addresses of the image's run and blob areas.
#[derive(Clone, Copy, Debug)]
struct Addr {
    runs: u64,
    blob: u64,
}

fn pack_part(j: &mut Job<'_, '_>, addr: Addr) {
    let at = j.at;
    let mut d = 0usize; // descriptors written
    let mut r = 0u64; // runs written
    let mut b = 0u64; // blob bytes used (part-local)
    let mut work = at.work;
    let descs = &mut *j.descs;
    let runs_out = &mut *j.runs;
    let blob = &mut *j.blob;
    let blob_base = addr.blob + at.blob; // 16-aligned
    let mut desc = |a: ApplyDesc, items: u64| {
        let a = ApplyDesc { work_start: work, ..a };
        work += items;
        descs[d * size_of::<ApplyDesc>()..(d + 1) * size_of::<ApplyDesc>()]
            .copy_from_slice(bytemuck::bytes_of(&a));
        d += 1;
    };
    for it in j.items {
        match it.payload {
            Payload::Dense(dd) => {
                b = b.next_multiple_of(16);
                let mask_off = b;
                let mw: &[u8] = bytemuck::cast_slice(dd.mask_words());
                blob[b as usize..b as usize + mw.len()].copy_from_slice(mw);
                b += mask_bytes(it.len);
                b += pad_to(b, it.page);
                let data_off = b;
                blob[b as usize..(b + it.len) as usize].copy_from_slice(dd.data());
                b += it.len;
                let mut o = 0;
                while o < it.len {
                    let n = SEGMENT.min(it.len - o);
                    let a = ApplyDesc {
                        page: it.page + o,
                        len: n,
                        data: blob_base + data_off + o,
                        mask: blob_base + mask_off + o / 8,
                        kind: kind::DENSE,
                        ..ApplyDesc::default()
                    };
                    desc(a, n.div_ceil(16));
                    o += n;
                }
            }
            Payload::Full(bytes) => {
                b += pad_to(b, it.page);
                let data_off = b;
                blob[b as usize..(b + it.len) as usize].copy_from_slice(bytes);
                b += it.len;
                let mut o = 0;
                while o < it.len {
                    let n = SEGMENT.min(it.len - o);
                    let a = ApplyDesc {
                        page: it.page + o,
                        len: n,
                        data: blob_base + data_off + o,
                        kind: kind::FULL,
                        ..ApplyDesc::default()
                    };
                    desc(a, n.div_ceil(16));
                    o += n;
                }
            }
            Payload::Sparse(s) => {
                // Data offsets are relative to the part's blob start, so one
                // `data` base serves every group of this delta.
                let first_run = r;
                for (run, bytes) in s.iter() {
                    b += pad_to(b, it.page + run.offset);
                    blob[b as usize..b as usize + bytes.len()].copy_from_slice(bytes);
                    let mut o = 0;
                    while o < run.len {
                        let n = piece_len(run.offset, run.len, o, RUN_CHUNK);
                        let rd = RunDesc { offset: run.offset + o, len: n, data_offset: b + o };
                        let k = r as usize * size_of::<RunDesc>();
                        runs_out[k..k + size_of::<RunDesc>()].copy_from_slice(bytemuck::bytes_of(&rd));
                        r += 1;
                        o += n;
                    }
                    b += run.len;
                }
                let mut g = first_run;
                while g < r {
                    let n = RUNS_PER_DESC.min(r - g);
                    let a = ApplyDesc {
                        page: it.page,
                        len: it.len,
                        data: blob_base,
                        runs: addr.runs + (at.runs + g) * size_of::<RunDesc>() as u64,
                        run_count: n,
                        kind: kind::SPARSE,
                        ..ApplyDesc::default()
                    };
                    desc(a, n);
                    g += n;
                }
            }
        }
    }
    // Padding bytes are left as they are: the image is uploaded whole, so
    // every byte the kernels may read is initialised on the device.
    debug_assert_eq!(
        (d as u64, r, b.next_multiple_of(16)),
        (j.descs.len() as u64 / 64, j.runs.len() as u64 / 24, j.blob.len() as u64)
    );
}

/// `items` as one [`InlineApply`], when they fit one: sparse and full
/// payloads only, at most [`INLINE_RUNS`] runs (a full payload is one run)
/// and [`INLINE_BYTES`] bytes in all, at least one byte. Such a flush
/// needs no staging copy: the launch carries the bytes.
pub(crate) fn inline(items: &[Item<'_>]) -> Option<InlineApply> {
    let mut a: InlineApply = bytemuck::Zeroable::zeroed();
    let (mut r, mut b) = (0usize, 0usize);
    let mut push = |at: u64, bytes: &[u8]| -> Option<()> {
        if r == INLINE_RUNS || INLINE_BYTES - b < bytes.len() {
            return None;
        }
        a.runs[r] = RunDesc { offset: at, len: bytes.len() as u64, data_offset: b as u64 };
        a.data[b..b + bytes.len()].copy_from_slice(bytes);
        r += 1;
        b += bytes.len();
        Some(())
    };
    for it in items {
        match it.payload {
            Payload::Dense(_) => return None,
            Payload::Full(d) => push(it.page, d)?,
            Payload::Sparse(s) => {
                for (run, bytes) in s.iter() {
                    push(it.page + run.offset, bytes)?;
                }
            }
        }
    }
    if b == 0 {
        return None;
    }
    a.count = r as u64;
    a.bytes = b as u64;
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{DenseDelta, Run, SparseDelta};
    use gpu_kernels::body::{apply_desc, MemLanes, BLOCK};

    /// 16-aligned host buffer.
    fn aligned(n: usize) -> Vec<u128> {
        vec![0u128; n.div_ceil(16) + 1]
    }

    fn bytes_mut(v: &mut [u128]) -> &mut [u8] {
        bytemuck::cast_slice_mut(v)
    }

    /// Run the batch kernel's body on the CPU over a packed image.
    fn emulate(image: &[u8], descs: u64) {
        for k in 0..descs as usize {
            let a: ApplyDesc = bytemuck::pod_read_unaligned(&image[k * 64..k * 64 + 64]);
            for tid in 0..u64::from(BLOCK) {
                // SAFETY: the packer wrote addresses into live host buffers.
                unsafe { apply_desc(&a, tid, u64::from(BLOCK), &MemLanes) };
            }
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
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn random_payload(rng: &mut Rng, len: u64) -> Payload {
        match rng.below(3) {
            0 => {
                let bits: Vec<Option<u8>> =
                    (0..len).map(|_| if rng.below(3) == 0 { Some(rng.next() as u8) } else { None }).collect();
                Payload::Dense(DenseDelta::from_options(&bits).unwrap_or_else(|e| panic!("{e}")))
            }
            1 => Payload::Full((0..len).map(|_| rng.next() as u8).collect()),
            _ => {
                let mut runs = Vec::new();
                let mut at = rng.below(len.min(40));
                while at < len {
                    let cap = if rng.below(4) == 0 { 5000 } else { 40 };
                    let l = 1 + rng.below((len - at).min(cap));
                    runs.push(Run { offset: at, len: l });
                    at += l + 1 + rng.below(60);
                }
                let total: u64 = runs.iter().map(|r| r.len).sum();
                let data = (0..total).map(|_| rng.next() as u8).collect();
                Payload::Sparse(SparseDelta::new(runs, data).unwrap_or_else(|e| panic!("{e}")))
            }
        }
    }

    #[test]
    fn packed_batches_apply_like_the_cpu() {
        let mut rng = Rng(0x5EED);
        let lens = [1u64, 3, 16, 17, 100, 4096, 4099, 70_000, 200_003];
        for round in 0..6 {
            let mut pages: Vec<Vec<u128>> = Vec::new();
            let mut want: Vec<Vec<u8>> = Vec::new();
            let mut payloads = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let mut p = aligned(len as usize + 32);
                let off = if round % 2 == 1 { (i % 16) as u64 } else { 0 };
                for x in bytes_mut(&mut p).iter_mut() {
                    *x = rng.next() as u8;
                }
                let mut w = bytes_mut(&mut p)[off as usize..(off + len) as usize].to_vec();
                let pl = random_payload(&mut rng, len);
                pl.apply_to(&mut w).unwrap_or_else(|e| panic!("{e}"));
                want.push(w);
                payloads.push((off, pl));
                pages.push(p);
            }
            let items: Vec<Item<'_>> = pages
                .iter_mut()
                .zip(&payloads)
                .zip(&lens)
                .map(|((p, (off, pl)), &len)| Item {
                    page: bytes_mut(p).as_mut_ptr() as u64 + off,
                    len,
                    payload: pl,
                })
                .collect();
            let lay = layout(&items);
            let mut image = aligned(lay.total() as usize);
            let base = bytes_mut(&mut image).as_ptr() as u64;
            let got = pack(&items, bytes_mut(&mut image), base);
            assert_eq!(got, lay);
            emulate(bytes_mut(&mut image), lay.descs);
            for (i, ((p, (off, _)), w)) in pages.iter_mut().zip(&payloads).zip(&want).enumerate() {
                let len = lens[i] as usize;
                assert_eq!(
                    &bytes_mut(p)[*off as usize..*off as usize + len],
                    &w[..],
                    "round {round} page {i}"
                );
            }
        }
    }

    #[test]
    fn small_flushes_go_inline_and_apply_like_the_cpu() {
        let mut rng = Rng(0x1A1);
        let (mut inlined, mut refused) = (0, 0);
        for round in 0..400 {
            // One to three small pages, any payload.
            let n = 1 + rng.below(3) as usize;
            let lens: Vec<u64> =
                (0..n).map(|_| 1 + rng.below(if round % 4 == 0 { 3000 } else { 300 })).collect();
            let mut pages: Vec<Vec<u8>> =
                lens.iter().map(|&l| (0..l).map(|_| rng.next() as u8).collect()).collect();
            let payloads: Vec<Payload> = lens.iter().map(|&l| random_payload(&mut rng, l)).collect();
            let mut want = pages.clone();
            for (w, pl) in want.iter_mut().zip(&payloads) {
                pl.apply_to(w).unwrap_or_else(|e| panic!("{e}"));
            }
            let items: Vec<Item<'_>> = pages
                .iter_mut()
                .zip(&payloads)
                .zip(&lens)
                .map(|((p, pl), &len)| Item { page: p.as_mut_ptr() as u64, len, payload: pl })
                .collect();
            let fits = payloads.iter().all(|p| !matches!(p, Payload::Dense(_)))
                && payloads
                    .iter()
                    .map(|p| match p {
                        Payload::Sparse(s) => s.runs().len(),
                        _ => 1,
                    })
                    .sum::<usize>()
                    <= INLINE_RUNS
                && payloads
                    .iter()
                    .map(|p| match p {
                        Payload::Sparse(s) => s.data().len(),
                        Payload::Full(d) => d.len(),
                        Payload::Dense(_) => 0,
                    })
                    .sum::<usize>()
                    <= INLINE_BYTES;
            let Some(a) = inline(&items) else {
                assert!(!fits, "round {round}: fits but was refused");
                refused += 1;
                continue;
            };
            assert!(fits, "round {round}: does not fit but was inlined");
            inlined += 1;
            // The kernel's body, one byte at a time.
            for k in 0..gpu_kernels::body::inline_len(&a) {
                let dst = gpu_kernels::body::inline_dst(&a, k);
                // SAFETY: dst is a byte of one of the live pages above.
                unsafe { (dst as *mut u8).write(a.data[k as usize]) };
            }
            assert_eq!(pages, want, "round {round}");
        }
        assert!(inlined > 100 && refused > 50, "{inlined} inlined, {refused} refused");
    }

    #[test]
    fn large_images_pack_in_parallel_like_the_cpu() {
        // More than PART_ITEMS items and more than PARALLEL_BYTES of image.
        let mut rng = Rng(0xB16);
        let (count, len) = (3000usize, 4096u64);
        let stride = len as usize + 16;
        let mut pages = aligned(count * stride);
        for x in bytes_mut(&mut pages).iter_mut() {
            *x = rng.next() as u8;
        }
        let base_page = bytes_mut(&mut pages).as_mut_ptr() as u64;
        let offs: Vec<u64> = (0..count).map(|k| (k * stride) as u64 + (k % 16) as u64).collect();
        let payloads: Vec<Payload> = (0..count).map(|_| random_payload(&mut rng, len)).collect();
        let mut want = bytes_mut(&mut pages).to_vec();
        for (o, p) in offs.iter().zip(&payloads) {
            p.apply_to(&mut want[*o as usize..(*o + len) as usize]).unwrap_or_else(|e| panic!("{e}"));
        }
        let items: Vec<Item<'_>> =
            offs.iter().zip(&payloads).map(|(o, p)| Item { page: base_page + o, len, payload: p }).collect();
        let p = plan(&items);
        assert!(p.lay.total() >= PARALLEL_BYTES && items.len() > PART_ITEMS);
        let mut image = aligned(p.lay.total() as usize);
        let base = bytes_mut(&mut image).as_ptr() as u64;
        pack_planned(&p, &items, bytes_mut(&mut image), base);
        emulate(bytes_mut(&mut image), p.lay.descs);
        assert!(bytes_mut(&mut pages) == &want[..]);
    }

    /// The host half of the 100,000-delta batch: plan and pack into a
    /// staging-sized buffer. `cargo test --release -p mmsb pack_throughput
    /// -- --ignored --nocapture` prints the rate.
    #[test]
    #[ignore = "timing harness"]
    fn pack_throughput() {
        let (count, len) = (100_000usize, 4096u64);
        let mut rng = Rng(9);
        let payloads: Vec<Payload> = (0..count)
            .map(|_| {
                let words: Vec<u64> = (0..len / 64).map(|_| rng.next()).collect();
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                Payload::Dense(DenseDelta::from_words(words, data).unwrap_or_else(|e| panic!("{e}")))
            })
            .collect();
        let items: Vec<Item<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(k, p)| Item { page: 1 << 40 | (k as u64) << 12, len, payload: p })
            .collect();
        let lay = layout(&items);
        let mut image = aligned(lay.total() as usize);
        for round in 0..4 {
            let t = std::time::Instant::now();
            let p = plan(&items);
            let planned = t.elapsed();
            pack_planned(&p, &items, bytes_mut(&mut image), 1 << 44);
            let all = t.elapsed();
            println!(
                "round {round}: plan {:.2} ms, plan+pack {:.1} ms for {} MB: {:.2} M deltas/s, {:.1} GB/s",
                planned.as_secs_f64() * 1e3,
                all.as_secs_f64() * 1e3,
                lay.total() >> 20,
                count as f64 / all.as_secs_f64() / 1e6,
                lay.total() as f64 / all.as_secs_f64() / 1e9
            );
        }
    }

    #[test]
    fn layout_bounds_descriptor_work() {
        let big = Payload::Full(vec![1; 200_000]);
        let items = [Item { page: 0, len: 200_000, payload: &big }];
        let l = layout(&items);
        assert_eq!(l.descs, 200_000u64.div_ceil(SEGMENT));
        let runs: Vec<(u64, &[u8])> = vec![(3, &[7u8; 3000][..])];
        let sp = Payload::Sparse(SparseDelta::from_pairs(runs).unwrap_or_else(|e| panic!("{e}")));
        let items = [Item { page: 0, len: 4000, payload: &sp }];
        let l = layout(&items);
        // Pieces of at most RUN_CHUNK bytes, inner cuts on 16-byte offsets.
        assert_eq!(l.runs, 1 + (3000 - (RUN_CHUNK - 3)).div_ceil(RUN_CHUNK));
        assert_eq!(l.descs, 1);
    }
}
