//! Codecs: page images (v2), delta bodies, and dense masks against the
//! `roaring` crate encoding the same mask.

use criterion::{BenchmarkId, Criterion, Throughput};
use mmsb::internals::codec::delta::{decode_payload, encode_payload};
use mmsb::internals::codec::page::{decode_page, encode_page};
use mmsb::Limits;
use mmsb::{Epoch, Location, Metadata, PageId, Payload};
use mmsb_benches::{dense_payload, sparse_payload};
use roaring::RoaringBitmap;
use std::hint::black_box;

/// A page that is 7/8 zero with random bytes in the rest.
fn sparse_page(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (0..len).step_by(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[i] = x as u8 | 1;
    }
    v
}

pub fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let len = 1usize << 20;
    let mut g = c.benchmark_group("codec_page");
    g.throughput(Throughput::Bytes(len as u64));
    let page = sparse_page(len);
    let meta = Metadata::default();
    let mut out = Vec::with_capacity(2 * len);
    g.bench_function(BenchmarkId::new("encode_v2", len), |b| {
        b.iter(|| {
            out.clear();
            encode_page(PageId(1), Epoch(1), Location::Cpu, &meta, black_box(&page), &mut out)
                .expect("encode")
        })
    });
    let encoded = out.clone();
    g.bench_function(BenchmarkId::new("decode_v2", len), |b| {
        b.iter(|| decode_page(black_box(&encoded), 0, &limits).expect("decode"))
    });
    g.finish();

    let mut g = c.benchmark_group("codec_delta");
    g.throughput(Throughput::Bytes(len as u64));
    for (name, p) in [("dense", dense_payload(len, 1)), ("sparse64", sparse_payload(len, 64, 128, 2))] {
        let mut buf = Vec::new();
        g.bench_function(BenchmarkId::new(format!("encode_{name}"), len), |b| {
            b.iter(|| {
                buf.clear();
                encode_payload(black_box(&p), &mut buf)
            })
        });
        let enc = buf.clone();
        g.bench_function(BenchmarkId::new(format!("decode_{name}"), len), |b| {
            b.iter(|| decode_payload(black_box(&enc), &limits).expect("decode"))
        });
    }
    g.finish();

    // Masks: a dense delta's bit-per-byte mask (half the bits set, random)
    // against a roaring bitmap of the same set bits, serialized.
    let mut g = c.benchmark_group("codec_mask");
    g.throughput(Throughput::Bytes(len as u64));
    let Payload::Dense(d) = dense_payload(len, 5) else { unreachable!("dense_payload is dense") };
    let words = d.mask_words().to_vec();
    let mut buf = Vec::new();
    g.bench_function(BenchmarkId::new("mmsb_dense_encode", len), |b| {
        let p = Payload::Dense(d.clone());
        b.iter(|| {
            buf.clear();
            encode_payload(black_box(&p), &mut buf)
        })
    });
    let build = |out: &mut Vec<u8>| {
        let mut rb = RoaringBitmap::new();
        for (w, &bits) in words.iter().enumerate() {
            let mut x = bits;
            while x != 0 {
                rb.insert((w * 64) as u32 + x.trailing_zeros());
                x &= x - 1;
            }
        }
        out.clear();
        rb.serialize_into(out).expect("serialize");
    };
    // Built once up front: the deserialize benchmark needs the bytes even
    // when a filter skips the build benchmark.
    let mut rb_buf = Vec::new();
    build(&mut rb_buf);
    let mut scratch = Vec::new();
    g.bench_function(BenchmarkId::new("roaring_build_serialize", len), |b| b.iter(|| build(&mut scratch)));
    let rb = RoaringBitmap::deserialize_from(&rb_buf[..]).expect("deserialize");
    eprintln!(
        "codec_mask: 1 MiB page, 50% mask: bit mask {} bytes, roaring {} bytes",
        len / 8,
        rb.serialized_size()
    );
    g.bench_function(BenchmarkId::new("roaring_deserialize", len), |b| {
        b.iter(|| RoaringBitmap::deserialize_from(black_box(&rb_buf[..])).expect("deserialize"))
    });
    g.finish();
}
