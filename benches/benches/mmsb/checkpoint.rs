//! Checkpoint write and restore of 64 MiB of random pages, next to raw
//! sequential write+fdatasync and read of the same number of bytes.

use criterion::{Criterion, Throughput};
use mmsb::Durability;
use mmsb::{Config, Mmsb, PageSpec, Payload};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;

pub fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let page = 1usize << 20;
    let s = Mmsb::start(Config::at(&dir).durability(Durability::None)).expect("start");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..64 {
        let id = s.create_page(PageSpec::new(page as u64)).expect("page");
        let mut data = vec![0u8; page];
        rng.fill_bytes(&mut data);
        s.update_page(id, Payload::Full(data)).expect("update");
    }
    let info = s.checkpoint().expect("checkpoint");
    let bytes = info.bytes;
    let mut g = c.benchmark_group("checkpoint");
    g.throughput(Throughput::Bytes(bytes)).sample_size(10);
    g.bench_function("write_64m", |b| b.iter(|| s.checkpoint().expect("checkpoint")));
    let raw = tmp.path().join("raw.bin");
    let buf = vec![0x5Au8; page];
    g.bench_function("raw_write_fdatasync_64m", |b| {
        b.iter(|| {
            let mut f = std::fs::File::create(&raw).expect("file");
            let mut left = bytes as usize;
            while left > 0 {
                let n = left.min(page);
                f.write_all(&buf[..n]).expect("write");
                left -= n;
            }
            f.sync_data().expect("sync")
        })
    });
    s.stop().expect("stop");
    drop(s);
    g.bench_function("restore_64m", |b| {
        b.iter(|| {
            let s = Mmsb::start(Config::at(&dir).durability(Durability::None)).expect("start");
            s.stop().expect("stop");
        })
    });
    let path = mmsb::internals::checkpoint::list(&mmsb::vfs::StdVfs, &mmsb::internals::files::log_dir(&dir))
        .expect("list")
        .first()
        .map(|(_, p)| p.clone())
        .expect("a checkpoint");
    g.bench_function("raw_read_64m", |b| b.iter(|| std::fs::read(&path).expect("read")));
    g.finish();
}
