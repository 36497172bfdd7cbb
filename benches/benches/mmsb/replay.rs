//! Offline replay of a log of 1,000,000 small deltas (every change
//! re-validated), next to reading the same segment files.

use criterion::{Criterion, Throughput};
use mmsb::vfs::StdVfs;
use mmsb::Durability;
use mmsb::Limits;
use mmsb::{Config, Mmsb, PageId, PageSpec, Update};
use mmsb_benches::small_sparse;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let n = 1_000_000u64;
    {
        // The log alone: no checkpoint at the stop, which replay would
        // start from.
        let s = Mmsb::start(Config::at(&dir).durability(Durability::None).stop_checkpoint_bytes(u64::MAX))
            .expect("start");
        let ids: Vec<PageId> = (0..64).map(|_| s.create_page(PageSpec::new(64)).expect("page")).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..n / 1000 {
            let batch = (0..1000).map(|k| Update::new(ids[k % 64], small_sparse(&mut rng, 64, 8))).collect();
            s.update_batch(batch).expect("commit");
        }
        s.stop().expect("stop");
    }
    let segments: Vec<_> = std::fs::read_dir(mmsb::internals::files::log_dir(&dir))
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    let mut g = c.benchmark_group("replay_small_deltas");
    g.throughput(Throughput::Elements(n)).sample_size(10);
    g.bench_function("replay_1m", |b| {
        b.iter(|| {
            mmsb::history::replay::replay_to_lsn(&StdVfs, &dir, None, &Limits::default()).expect("replay")
        })
    });
    g.bench_function("read_segments_same_bytes", |b| {
        b.iter(|| segments.iter().map(|p| std::fs::read(p).expect("read").len()).sum::<usize>())
    });
    g.finish();
}
