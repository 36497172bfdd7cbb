//! Log append: small deltas per commit at each durability, next to raw
//! `write` / `write`+`fdatasync` of the same bytes and, for durable small
//! writes, the `redb` embedded database committing the same payloads.

use criterion::{BenchmarkId, Criterion, Throughput};
use mmsb::Durability;
use mmsb::{Config, Mmsb, PageId, PageSpec, Update};
use mmsb_benches::small_sparse;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use redb::{Database, TableDefinition};
use std::io::Write;
use std::time::Duration;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("deltas");

fn state(dir: &std::path::Path, d: Durability) -> (Mmsb, Vec<PageId>) {
    let s = Mmsb::start(Config::at(dir).durability(d)).expect("start");
    let ids = (0..64).map(|_| s.create_page(PageSpec::new(64)).expect("page")).collect();
    (s, ids)
}

pub fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(1);

    // Batches of 1000 small deltas, one write() per commit.
    let mut g = c.benchmark_group("log_append_flush");
    g.throughput(Throughput::Elements(1000));
    {
        let (s, ids) = state(&tmp.path().join("flush"), Durability::Flush);
        g.bench_function(BenchmarkId::new("mmsb_batch", 1000), |b| {
            b.iter_batched(
                || (0..1000).map(|k| Update::new(ids[k % 64], small_sparse(&mut rng, 64, 8))).collect(),
                |batch: Vec<Update>| s.update_batch(batch).expect("commit"),
                criterion::BatchSize::SmallInput,
            )
        });
        let st = s.log_stats();
        let per_write = (st.bytes / st.writes.max(1)) as usize;
        let mut f = std::fs::File::create(tmp.path().join("raw-flush")).expect("file");
        let buf = vec![7u8; per_write.max(1)];
        g.bench_function(BenchmarkId::new("raw_write_same_bytes", 1000), |b| {
            b.iter(|| f.write_all(&buf).expect("write"))
        });
    }
    g.finish();

    // Durable small writes: one delta, one fsync per commit.
    let mut g = c.benchmark_group("log_commit_durable");
    g.throughput(Throughput::Elements(1)).sample_size(20).measurement_time(Duration::from_secs(5));
    {
        let (s, ids) = state(&tmp.path().join("sync"), Durability::SYNC);
        let mut k = 0usize;
        g.bench_function("mmsb_fsync_each", |b| {
            b.iter(|| {
                k += 1;
                s.update_page(ids[k % 64], small_sparse(&mut rng, 64, 8)).expect("commit")
            })
        });
        let st = s.log_stats();
        let per_commit = (st.bytes / st.commits.max(1)) as usize;
        let mut f = std::fs::File::create(tmp.path().join("raw-sync")).expect("file");
        let buf = vec![7u8; per_commit.max(1)];
        g.bench_function("raw_write_fdatasync", |b| {
            b.iter(|| {
                f.write_all(&buf).expect("write");
                f.sync_data().expect("sync")
            })
        });
        // redb: one durable write transaction per small value.
        let db = Database::create(tmp.path().join("redb.db")).expect("redb");
        let mut key = 0u64;
        let value = [9u8; 8];
        g.bench_function("redb_commit_each", |b| {
            b.iter(|| {
                key += 1;
                let tx = db.begin_write().expect("begin");
                {
                    let mut t = tx.open_table(TABLE).expect("table");
                    t.insert(key, &value[..]).expect("insert");
                }
                tx.commit().expect("commit")
            })
        });
    }
    g.finish();
}
