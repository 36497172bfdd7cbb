//! The history's batches: the same rows through the push pass and the
//! iterator, batches of bounded size, the replay's stop points and errors,
//! and the zero-copy page view.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use mmsb::history::replay::{replay_dir, replay_to, Until};
use mmsb::vfs::StdVfs;
use mmsb::{Config, Error, Limits, Lsn, Mmsb, PageSpec, Payload, Result, SparseDelta};
use mmsb_arrow::{history, visit, Options, Table};
use std::path::Path;

fn add(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i]));
    }
}

/// A state with user writes of every payload kind, a batch and a derived page.
fn make_state(dir: &Path, writes: u64) -> Result<()> {
    let state = Mmsb::start(Config::at(dir))?;
    state.register_function("add", 3, add)?;
    mmsb::mmsb! { state;
        page a(64);
        page b(64);
        derived sum(64) = add(a, b);
    }
    for i in 0..writes {
        let v = (i % 251) as u8;
        let p = match i % 3 {
            0 => Payload::Full(vec![v; 64]),
            1 => Payload::Sparse(SparseDelta::from_pairs([(3, &[v, v][..]), (40, &[v][..])])?),
            _ => Payload::Dense(
                Payload::Sparse(SparseDelta::from_pairs([(5, &[v ^ 1; 9][..])])?).to_dense(64)?,
            ),
        };
        state.update_page(if i % 2 == 0 { a } else { b }, p)?;
    }
    state.update_batch(vec![
        mmsb::Update::new(a, Payload::Full(vec![7; 64])),
        mmsb::Update::new(b, Payload::Full(vec![9; 64])),
    ])?;
    state.stop()
}

fn collect(dir: &Path, opts: &Options) -> Result<(Vec<(Table, RecordBatch)>, mmsb_arrow::Summary)> {
    let mut out = Vec::new();
    let s = visit(&StdVfs, dir, opts, &mut |t, b| {
        out.push((t, b));
        Ok(())
    })?;
    Ok((out, s))
}

fn rows(batches: &[(Table, RecordBatch)], t: Table) -> usize {
    batches.iter().filter(|(x, _)| *x == t).map(|(_, b)| b.num_rows()).sum()
}

#[test]
fn the_iterator_gives_the_push_pass_batches_and_batches_stay_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    make_state(dir.path(), 300)?;
    let opts = Options { batch_rows: 50, with_bytes: true, ..Options::default() };
    let (pushed, summary) = collect(dir.path(), &opts)?;
    let mut it = history(dir.path().to_path_buf(), opts.clone());
    let pulled: Vec<(Table, RecordBatch)> =
        it.by_ref().map(|b| b.map(|b| (b.table, b.batch))).collect::<Result<_>>()?;
    assert_eq!(it.summary(), Some(&summary));
    assert_eq!(pushed.len(), pulled.len());
    for ((t1, b1), (t2, b2)) in pushed.iter().zip(&pulled) {
        assert_eq!((t1, b1), (t2, b2));
    }
    // 300 user writes, each recomputing `sum` but the first (zeros over
    // zeros: the recompute changes nothing and logs no delta), and the
    // batch of two with its propagation.
    assert_eq!(rows(&pushed, Table::Deltas), 300 + 299 + 3);
    assert_eq!(summary.rows_of(Table::Deltas), 602);
    // Every batch is cut at 50 rows (no commit here has more than 3).
    let deltas: Vec<usize> =
        pushed.iter().filter(|(t, _)| *t == Table::Deltas).map(|(_, b)| b.num_rows()).collect();
    assert!(deltas.len() >= 12 && deltas.iter().all(|&n| n <= 52), "{deltas:?}");
    // The state at the end is replay's.
    let img = replay_dir(dir.path(), Until::End)?.image;
    assert_eq!(summary.state_hash, img.state_hash());
    assert_eq!(summary.lsn.0, img.lsn);
    assert_eq!(rows(&pushed, Table::Pages), 3);
    assert_eq!(rows(&pushed, Table::GraphEdges), 2);
    // Epochs chain: each page's deltas go 0→1→2… in time order.
    let mut last = std::collections::HashMap::new();
    for (_, b) in pushed.iter().filter(|(t, _)| *t == Table::Deltas) {
        let col = |n: &str| b.column_by_name(n).unwrap().as_primitive::<UInt64Type>().clone();
        let (page, before, after) = (col("page_id"), col("epoch_before"), col("epoch_after"));
        for i in 0..b.num_rows() {
            let prev = last.insert(page.value(i), after.value(i)).unwrap_or(0);
            assert_eq!((before.value(i), after.value(i)), (prev, prev + 1));
        }
    }
    for (id, p) in &img.pages {
        assert_eq!(last.get(&id.0).copied().unwrap_or(0), p.epoch.0);
    }
    // The derived deltas name their function, version and parents.
    let (_, b) = pushed.iter().find(|(t, _)| *t == Table::Deltas).unwrap();
    let source = b.column_by_name("source").unwrap().as_string::<i32>();
    let function = b.column_by_name("function").unwrap().as_string::<i32>();
    let version = b.column_by_name("function_version").unwrap().as_primitive::<UInt32Type>();
    let parents = b.column_by_name("parents").unwrap().as_list::<i32>();
    let i = (0..b.num_rows()).find(|&i| source.value(i) == "derived").unwrap();
    assert_eq!((function.value(i), version.value(i), parents.value(i).len()), ("add", 3, 2));
    assert!(parents.is_null((0..b.num_rows()).find(|&i| source.value(i) == "user").unwrap()));
    // The commits: page creations, graph changes, single deltas (with the
    // propagation each caused), one batch.
    let kinds: std::collections::BTreeSet<String> = pushed
        .iter()
        .filter(|(t, _)| *t == Table::Commits)
        .flat_map(|(_, b)| {
            let k = b.column_by_name("kind").unwrap().as_string::<i32>().clone();
            (0..k.len()).map(move |i| k.value(i).to_string())
        })
        .collect();
    for k in ["create_page", "graph", "delta", "batch"] {
        assert!(kinds.contains(k), "{kinds:?}");
    }
    Ok(())
}

#[test]
fn a_pass_to_a_point_stops_where_replay_stops() -> Result<()> {
    let dir = tempfile::tempdir()?;
    make_state(dir.path(), 40)?;
    for until in [Until::Lsn(Lsn(30)), Until::Lsn(Lsn(31)), Until::Time(25), Until::Time(0), Until::End] {
        let (batches, s) = collect(dir.path(), &Options { until, ..Options::default() })?;
        let img = replay_to(&StdVfs, dir.path(), until, &Limits::default())?.image;
        assert_eq!(
            (s.lsn.0, s.timestamp, s.state_hash),
            (img.lsn, img.timestamp, img.state_hash()),
            "{until:?}"
        );
        let last_time: u64 = batches
            .iter()
            .filter(|(t, _)| *t == Table::Commits)
            .flat_map(|(_, b)| {
                b.column_by_name("time_last").unwrap().as_primitive::<UInt64Type>().values().to_vec()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(last_time, img.timestamp);
    }
    Ok(())
}

#[test]
fn damage_stops_the_pass_with_replays_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    make_state(dir.path(), 100)?;
    let log = dir.path().join("log");
    let seg = std::fs::read_dir(&log)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let mut bytes = std::fs::read(&seg)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&seg, bytes)?;
    let replay = replay_to(&StdVfs, dir.path(), Until::End, &Limits::default()).unwrap_err();
    let mut delivered = 0;
    let err = visit(&StdVfs, dir.path(), &Options::default(), &mut |_, b| {
        delivered += b.num_rows();
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(err.to_string(), replay.to_string());
    // The iterator ends with the same error.
    let last = history(dir.path().to_path_buf(), Options::default()).last().unwrap();
    assert_eq!(last.unwrap_err().to_string(), replay.to_string());
    Ok(())
}

#[test]
fn dropping_the_iterator_early_stops_its_thread() -> Result<()> {
    let dir = tempfile::tempdir()?;
    make_state(dir.path(), 500)?;
    let mut it = history(dir.path().to_path_buf(), Options { batch_rows: 10, ..Options::default() });
    assert!(it.next().is_some());
    drop(it); // joins the thread: returns only when the pass has stopped
    Ok(())
}

#[test]
fn a_page_viewed_as_arrow_is_the_page_itself_and_holds_writes_off() -> Result<()> {
    let state = std::sync::Arc::new(Mmsb::start(Config::temporary())?);
    let p = state.create_page(PageSpec::new(64))?;
    let values: Vec<f64> = (0..8).map(|i| f64::from(i) * 1.5).collect();
    state.update_page(p, Payload::Full(bytemuck::cast_slice(&values).to_vec()))?;
    let array = mmsb_arrow::page_array::<Float64Type>(&state, p)?;
    assert_eq!(array.values().as_ref(), &values[..]);
    // Zero copy: the array's values are the page's bytes.
    let at = state.read_page(p)?.bytes().as_ptr();
    assert_eq!(array.values().as_ptr().cast::<u8>(), at);
    // A write is refused while the view lives, on this thread and on another.
    assert!(matches!(state.update_page(p, Payload::Full(vec![0; 64])), Err(Error::PageBorrowed { .. })));
    let s = std::sync::Arc::clone(&state);
    let other = std::thread::spawn(move || s.update_page(p, Payload::Full(vec![0; 64]))).join().unwrap();
    assert!(matches!(other, Err(Error::PageBorrowed { .. })));
    // The view may move to another thread and be dropped there.
    let sliced = array.slice(2, 3);
    drop(array);
    let sum = std::thread::spawn(move || sliced.values().iter().sum::<f64>()).join().unwrap();
    assert_eq!(sum, (2..5).map(|i| f64::from(i) * 1.5).sum::<f64>());
    state.update_page(p, Payload::Full(vec![0; 64]))?;
    // A page whose length is no multiple of the type's size is refused.
    let odd = state.create_page(PageSpec::new(12))?;
    assert!(matches!(mmsb_arrow::page_array::<Float64Type>(&state, odd), Err(Error::TypeLayout { .. })));
    let buf = mmsb_arrow::page_buffer(&state, odd)?;
    assert_eq!(buf.len(), 12);
    drop(buf);
    state.update_page(odd, Payload::Full(vec![1; 12]))?;
    Ok(())
}
