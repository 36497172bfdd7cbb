//! Packing many deltas into one staging buffer for one `mmsb_apply_batch`
//! launch.
//!
//! The staging image is laid out as
//!
//! ```text
//! [ApplyDesc; descs] [RunDesc; runs] [blob: masks and data, 16-aligned pieces]
//! ```
//!
//! and uploaded with one copy; every address in it is `base + offset`. The
//! kernel runs one block per descriptor, so the packer bounds each
//! descriptor's work: dense and full deltas are cut into [`SEGMENT`]-byte
//! pieces (a multiple of 32, so each piece's mask starts on a word), long
//! runs into [`RUN_CHUNK`]-byte pieces and sparse deltas into groups of at
//! most [`RUNS_PER_DESC`] runs. Each run's bytes are placed at an offset
//! congruent modulo 16 to their page address, so full windows of a run take
//! the kernel's 16-byte path whatever the run's offset.
//!
//! Two items must never target overlapping page bytes (the queue merges
//! deltas to the same page first): descriptors run concurrently.

use crate::delta::Payload;
use gpu_kernels::body::RUN_CHUNK;
use shared_types::{kind, ApplyDesc, RunDesc};
use std::mem::size_of;

/// Page bytes per dense or full descriptor.
pub const SEGMENT: u64 = 64 << 10;
/// Runs per sparse descriptor.
pub const RUNS_PER_DESC: u64 = 64;

/// One delta to pack: the target's device address and length, and the payload
/// (already validated against `len`).
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

    /// Total bytes of the image.
    pub fn total(&self) -> u64 {
        self.blob_at() + self.blob
    }
}

/// Padding that makes `cur` congruent to `addr` modulo 16.
fn pad_to(cur: u64, addr: u64) -> u64 {
    addr.wrapping_sub(cur) & 15
}

/// Bytes of mask words stored for a dense delta over `len` bytes.
fn mask_bytes(len: u64) -> u64 {
    len.div_ceil(64) * 8
}

/// Sizes of the image for `items`.
pub(crate) fn layout(items: &[Item<'_>]) -> Layout {
    let mut l = Layout::default();
    for it in items {
        match it.payload {
            Payload::Dense(_) => {
                l.descs += it.len.div_ceil(SEGMENT);
                l.blob = l.blob.next_multiple_of(16) + mask_bytes(it.len);
                l.blob += pad_to(l.blob, it.page) + it.len;
            }
            Payload::Full(_) => {
                l.descs += it.len.div_ceil(SEGMENT);
                l.blob += pad_to(l.blob, it.page) + it.len;
            }
            Payload::Sparse(s) => {
                let mut pieces = 0;
                for r in s.runs() {
                    pieces += r.len.div_ceil(RUN_CHUNK);
                    l.blob += pad_to(l.blob, it.page + r.offset) + r.len;
                }
                l.runs += pieces;
                l.descs += pieces.div_ceil(RUNS_PER_DESC);
            }
        }
    }
    l
}

fn put(out: &mut [u8], at: u64, bytes: &[u8]) {
    out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// Write the image for `items` into `out` (at least `layout.total()` bytes)
/// whose device address will be `base` (16-aligned). Returns the layout.
pub(crate) fn pack(items: &[Item<'_>], out: &mut [u8], base: u64) -> Layout {
    let lay = layout(items);
    debug_assert!(out.len() as u64 >= lay.total());
    debug_assert_eq!(base % 16, 0);
    let (runs_at, blob_at) = (lay.runs_at(), lay.blob_at());
    let mut d = 0u64; // descriptors written
    let mut r = 0u64; // runs written
    let mut b = 0u64; // blob bytes used
    let mut work = 0u64;
    let mut desc = |out: &mut [u8], mut a: ApplyDesc, items: u64| {
        a.work_start = work;
        work += items;
        put(out, d * size_of::<ApplyDesc>() as u64, bytemuck::bytes_of(&a));
        d += 1;
    };
    for it in items {
        match it.payload {
            Payload::Dense(dd) => {
                b = b.next_multiple_of(16);
                let mask_off = b;
                put(out, blob_at + b, bytemuck::cast_slice(dd.mask_words()));
                b += mask_bytes(it.len);
                b += pad_to(blob_at + b, it.page);
                let data_off = b;
                put(out, blob_at + b, dd.data());
                b += it.len;
                let mut o = 0;
                while o < it.len {
                    let n = SEGMENT.min(it.len - o);
                    let a = ApplyDesc {
                        page: it.page + o,
                        len: n,
                        data: base + blob_at + data_off + o,
                        mask: base + blob_at + mask_off + o / 8,
                        kind: kind::DENSE,
                        ..ApplyDesc::default()
                    };
                    desc(out, a, n.div_ceil(16));
                    o += n;
                }
            }
            Payload::Full(bytes) => {
                b += pad_to(blob_at + b, it.page);
                let data_off = b;
                put(out, blob_at + b, bytes);
                b += it.len;
                let mut o = 0;
                while o < it.len {
                    let n = SEGMENT.min(it.len - o);
                    let a = ApplyDesc {
                        page: it.page + o,
                        len: n,
                        data: base + blob_at + data_off + o,
                        kind: kind::FULL,
                        ..ApplyDesc::default()
                    };
                    desc(out, a, n.div_ceil(16));
                    o += n;
                }
            }
            Payload::Sparse(s) => {
                // Data offsets are relative to the blob start, so one `data`
                // base serves every group of this delta.
                let first_run = r;
                for (run, bytes) in s.iter() {
                    b += pad_to(blob_at + b, it.page + run.offset);
                    put(out, blob_at + b, bytes);
                    let mut o = 0;
                    while o < run.len {
                        let n = RUN_CHUNK.min(run.len - o);
                        let rd = RunDesc { offset: run.offset + o, len: n, data_offset: b + o };
                        put(out, runs_at + r * size_of::<RunDesc>() as u64, bytemuck::bytes_of(&rd));
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
                        data: base + blob_at,
                        runs: base + runs_at + g * size_of::<RunDesc>() as u64,
                        run_count: n,
                        kind: kind::SPARSE,
                        ..ApplyDesc::default()
                    };
                    desc(out, a, n);
                    g += n;
                }
            }
        }
    }
    debug_assert_eq!((d, r, b), (lay.descs, lay.runs, lay.blob));
    lay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{DenseDelta, Run, SparseDelta};
    use gpu_kernels::body::{apply_desc, BLOCK};

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
                unsafe { apply_desc(&a, tid, u64::from(BLOCK)) };
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
    fn layout_bounds_descriptor_work() {
        let big = Payload::Full(vec![1; 200_000]);
        let items = [Item { page: 0, len: 200_000, payload: &big }];
        let l = layout(&items);
        assert_eq!(l.descs, 200_000u64.div_ceil(SEGMENT));
        let runs: Vec<(u64, &[u8])> = vec![(3, &[7u8; 3000][..])];
        let sp = Payload::Sparse(SparseDelta::from_pairs(runs).unwrap_or_else(|e| panic!("{e}")));
        let items = [Item { page: 0, len: 4000, payload: &sp }];
        let l = layout(&items);
        assert_eq!(l.runs, 3);
        assert_eq!(l.descs, 1);
    }
}
