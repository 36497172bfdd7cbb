//! A directory's history as record batches: one pass of the replay
//! (`mmsb::history::replay`) from the oldest checkpoint that verifies at
//! or before the point asked for, through the log after it, turning each
//! commit into rows of the `commits` and `deltas` tables as it goes, then
//! the state it reached into the `pages`, `graph_nodes` and `graph_edges`
//! tables. No second log parser: the rows are made of the records the
//! replay validated and applied.

use crate::schema::Table;
use crate::tables::{self, Commits, Deltas, Edges, Nodes, Pages};
use arrow_array::RecordBatch;
use mmsb::history::replay::{StateImage, Until};
use mmsb::internals::log::reader::{Commit, Record};
use mmsb::vfs::{StdVfs, Vfs};
use mmsb::{Error, Limits, Lsn, PageId, Result, TornTail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What to read and how to cut it.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the history ends (as `mmsb replay --to` / `--to-time`).
    pub until: Until,
    /// Whether the `deltas` table carries the bytes each delta wrote
    /// (its `bytes` column; null otherwise).
    pub with_bytes: bool,
    /// A batch is cut once it holds this many rows (a commit's rows are
    /// never split, so one commit larger than this makes a larger batch).
    pub batch_rows: usize,
    /// Or once it holds about this many bytes (page bytes, delta bytes,
    /// ranges and masks), whichever comes first.
    pub batch_bytes: usize,
    /// Size limits of the log's reader.
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            until: Until::End,
            with_bytes: false,
            batch_rows: DEFAULT_BATCH_ROWS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            limits: Limits::default(),
        }
    }
}

/// Rows per batch by default.
pub const DEFAULT_BATCH_ROWS: usize = 64 * 1024;
/// Bytes per batch by default (about).
pub const DEFAULT_BATCH_BYTES: usize = 8 << 20;

/// What one pass read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// LSN of the checkpoint the history starts after (0: the log's start).
    pub from_lsn: u64,
    /// LSN of the last commit read: the export point.
    pub lsn: Lsn,
    /// Logical time at the export point.
    pub timestamp: u64,
    /// The state hash at the export point (as `mmsb replay` prints it).
    pub state_hash: u128,
    /// The torn tail the log ends in, left out as recovery leaves it out,
    /// when the pass read that far.
    pub torn: Option<TornTail>,
    /// Rows delivered per table, in [`Table::ALL`] order.
    pub rows: [(Table, u64); 5],
}

impl Summary {
    /// Rows delivered of `table`.
    pub fn rows_of(&self, table: Table) -> u64 {
        self.rows.iter().find(|(t, _)| *t == table).map_or(0, |r| r.1)
    }
}

/// The kind of a committed unit, for the `commits` table: what its
/// records other than derived deltas are (the propagation a write caused
/// is committed with it): one change's name (`delta`, `create_page`,
/// `delete_page`, `graph`, or an annotation: `settled`, `due`, `stale`,
/// `optional`), `batch` for several, `propagation` for derived deltas
/// alone.
fn commit_kind(c: &Commit<'_, '_>) -> &'static str {
    let mut own = c.records().iter().filter(|(_, r)| !matches!(r, Record::Delta(v) if v.source == 1));
    match (own.next(), own.next()) {
        (None, _) => "propagation",
        (Some(_), Some(_)) => "batch",
        (Some((_, r)), None) => match r {
            Record::Create { .. } => "create_page",
            Record::Delete { .. } => "delete_page",
            Record::Delta(_) => "delta",
            Record::Graph(_) => "graph",
            Record::Settled => "settled",
            Record::Due { .. } => "due",
            Record::Stale(_) => "stale",
            _ => "optional",
        },
    }
}

/// The oldest checkpoint that verifies and lies at or before the point
/// `until` names (its LSN), so that the history read is all the history
/// on disk up to that point; `0` when the log still begins at its first
/// record, or when there is none (the log from its start: the replay then
/// says why it cannot be read, as `mmsb replay`).
fn start_checkpoint(vfs: &dyn Vfs, state_dir: &Path, until: Until, limits: &Limits) -> Result<u64> {
    // The log from its first record: all of it is the history.
    if mmsb::history::replay::history_start(vfs, state_dir)? == 0 {
        return Ok(0);
    }
    let dir = mmsb::internals::files::log_dir(state_dir);
    let mut list = mmsb::internals::checkpoint::list(vfs, &dir)?;
    // Oldest first.
    list.reverse();
    for (lsn, path) in list {
        if let Until::Lsn(l) = until {
            if lsn > l.0 {
                break;
            }
        }
        let Ok(img) = mmsb::internals::checkpoint::read(vfs, &path, limits) else { continue };
        if img.lsn != lsn {
            continue;
        }
        if let Until::Time(t) = until {
            if img.timestamp > t {
                break;
            }
        }
        return Ok(lsn);
    }
    Ok(0)
}

/// Read `state_dir`'s history up to `opts.until` and hand every batch of
/// every table to `sink` as it fills: `commits` and `deltas` while the log
/// is read, then `pages`, `graph_nodes` and `graph_edges` for the state
/// reached. Memory: the replayed state (as `mmsb replay`), one commit, and
/// at most one batch per table being filled (`opts.batch_rows` rows or
/// about `opts.batch_bytes` bytes); never the history.
///
/// Damage is treated exactly as `mmsb replay` treats it: corruption is
/// an error (strict recovery: [`Error::Corrupt`] naming the file and
/// offset; the batches already delivered cover the commits before it),
/// and a torn tail ends the history where the valid log ends, reported in
/// [`Summary::torn`].
///
/// # Errors
/// As `mmsb::history::replay::replay_to`; whatever `sink` returns.
pub fn visit(
    vfs: &dyn Vfs,
    state_dir: &Path,
    opts: &Options,
    sink: &mut dyn FnMut(Table, RecordBatch) -> Result<()>,
) -> Result<Summary> {
    visit_cancellable(vfs, state_dir, opts, sink, &AtomicBool::new(false))
}

/// The rows being gathered by one pass.
struct Pass<'s> {
    deltas: Deltas,
    commits: Commits,
    counts: [u64; 5],
    failed: Option<Error>,
    sink: &'s mut dyn FnMut(Table, RecordBatch) -> Result<()>,
}

impl Pass<'_> {
    fn deliver(&mut self, table: Table, batch: Result<RecordBatch>) -> Result<()> {
        let batch = batch?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let i = Table::ALL.iter().position(|t| *t == table).unwrap_or(0);
        self.counts[i] += batch.num_rows() as u64;
        (self.sink)(table, batch)
    }

    /// Cut the history's batches that are full (`all`: every one).
    fn cut(&mut self, opts: &Options, all: bool) -> Result<()> {
        if all || self.deltas.rows() >= opts.batch_rows || self.deltas.held() >= opts.batch_bytes {
            let b = self.deltas.finish();
            self.deliver(Table::Deltas, b)?;
        }
        if all || self.commits.rows() >= opts.batch_rows {
            let b = self.commits.finish();
            self.deliver(Table::Commits, b)?;
        }
        Ok(())
    }
}

fn visit_cancellable(
    vfs: &dyn Vfs,
    state_dir: &Path,
    opts: &Options,
    sink: &mut dyn FnMut(Table, RecordBatch) -> Result<()>,
    cancel: &AtomicBool,
) -> Result<Summary> {
    let from_lsn = start_checkpoint(vfs, state_dir, opts.until, &opts.limits)?;
    let pass = std::cell::RefCell::new(Pass {
        deltas: Deltas::new(opts.with_bytes),
        commits: Commits::default(),
        counts: [0; 5],
        failed: None,
        sink,
    });
    // Epochs as the current commit walks them (from the image before it).
    let mut at: HashMap<PageId, u64> = HashMap::new();
    let until = opts.until;
    let replayed = mmsb::history::replay::replay_history(
        vfs,
        state_dir,
        Some(from_lsn),
        &opts.limits,
        &mut |img: &StateImage, c: Commit<'_, '_>| {
            let stop = match until {
                Until::End => false,
                Until::Lsn(l) => c.end_lsn() > l.0,
                Until::Time(t) => img.timestamp + c.len() as u64 > t,
            };
            let mut p = pass.borrow_mut();
            if stop || p.failed.is_some() || cancel.load(Ordering::Relaxed) {
                return true;
            }
            at.clear();
            for (lsn, r) in c {
                match r {
                    Record::Create { id, .. } => {
                        at.insert(*id, 0);
                    }
                    Record::Delta(v) => {
                        let e = at
                            .entry(v.page)
                            .or_insert_with(|| img.pages.get(&v.page).map_or(0, |p| p.epoch.0));
                        if let Err(err) = p.deltas.push(*lsn, v, *e) {
                            p.failed.get_or_insert(err);
                            return true;
                        }
                        *e += 1;
                    }
                    _ => {}
                }
            }
            let first = c.records().first().map_or(c.end_lsn(), |r| r.0);
            p.commits.push(first, c.end_lsn(), img.timestamp, c.len(), commit_kind(&c));
            false
        },
        &mut |_, _| {
            // The commit is applied (it validated): its rows may go.
            let mut p = pass.borrow_mut();
            if let Err(e) = p.cut(opts, false) {
                p.failed.get_or_insert(e);
            }
        },
    );
    let mut pass = pass.into_inner();
    let replayed = replayed?;
    if let Some(e) = pass.failed.take() {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Config("the history's reader was dropped".into()));
    }
    pass.cut(opts, true)?;
    let img = &replayed.image;
    let mut pages = Pages::default();
    for p in img.pages.values() {
        pages.push(p)?;
        if pages.rows() >= opts.batch_rows || pages.held() >= opts.batch_bytes {
            pass.deliver(Table::Pages, pages.finish())?;
        }
    }
    pass.deliver(Table::Pages, pages.finish())?;
    let mut nodes = Nodes::default();
    for p in img.pages.values() {
        let d = img.graph.derived.get(&p.id).map(|d| (d.function.as_str(), d.version));
        nodes.push(p.id.0, tables::name_of(&p.meta), d);
        if nodes.rows() >= opts.batch_rows {
            pass.deliver(Table::GraphNodes, nodes.finish())?;
        }
    }
    pass.deliver(Table::GraphNodes, nodes.finish())?;
    let mut edges = Edges::default();
    for (&(from, to), &kind) in &img.graph.edges {
        edges.push(from.0, to.0, kind);
        if edges.rows() >= opts.batch_rows {
            pass.deliver(Table::GraphEdges, edges.finish())?;
        }
    }
    pass.deliver(Table::GraphEdges, edges.finish())?;
    let mut rows = Table::ALL.map(|t| (t, 0));
    for (r, n) in rows.iter_mut().zip(pass.counts) {
        r.1 = n;
    }
    Ok(Summary {
        from_lsn,
        lsn: Lsn(img.lsn),
        timestamp: img.timestamp,
        state_hash: img.state_hash(),
        torn: replayed.torn,
        rows,
    })
}

/// One batch of one table.
#[derive(Clone, Debug)]
pub struct TableBatch {
    /// The table.
    pub table: Table,
    /// Its rows.
    pub batch: RecordBatch,
}

enum Message {
    Batch(TableBatch),
    Done(Result<Summary>),
}

/// The batches of a directory's history as an iterator ([`history`]): the
/// pass runs on a thread of its own, at most two batches ahead of the
/// consumer. Dropping it stops the pass.
#[derive(Debug)]
pub struct HistoryBatches {
    rx: std::sync::mpsc::Receiver<Message>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    summary: Option<Summary>,
    done: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Batch(b) => write!(f, "Batch({}, {} rows)", b.table.name(), b.batch.num_rows()),
            Message::Done(r) => write!(f, "Done({r:?})"),
        }
    }
}

impl HistoryBatches {
    /// What the pass read, once the iterator has returned `None`.
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// The remaining batches of one table only (the others are read and
    /// dropped: one pass makes them all).
    pub fn only(self, table: Table) -> impl Iterator<Item = Result<RecordBatch>> {
        self.filter_map(move |r| match r {
            Ok(b) if b.table == table => Some(Ok(b.batch)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    }
}

impl Iterator for HistoryBatches {
    type Item = Result<TableBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(Message::Batch(b)) => Some(Ok(b)),
            Ok(Message::Done(r)) => {
                self.done = true;
                match r {
                    Ok(s) => {
                        self.summary = Some(s);
                        None
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            Err(_) => {
                self.done = true;
                Some(Err(Error::Invariant("the history's reader thread ended without a result".into())))
            }
        }
    }
}

impl Drop for HistoryBatches {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Unblock a send waiting for room, then wait for the thread.
        while self.rx.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            // Each drain makes room for one more send; the cancelled pass
            // sends at most its final message after that.
            while !t.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = t.join();
        }
    }
}

/// The batches of `state_dir`'s history (read with `vfs`), as an iterator:
/// [`visit`] on a thread of its own.
pub fn history_with<V: Vfs + 'static>(vfs: V, state_dir: PathBuf, opts: Options) -> HistoryBatches {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(2);
    let cancel = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&cancel);
    let thread = std::thread::Builder::new()
        .name("mmsb-arrow-history".into())
        .spawn(move || {
            let r = visit_cancellable(
                &vfs,
                &state_dir,
                &opts,
                &mut |table, batch| {
                    tx.send(Message::Batch(TableBatch { table, batch }))
                        .map_err(|_| Error::Config("the history's reader was dropped".into()))
                },
                &c,
            );
            let _ = tx.send(Message::Done(r));
        })
        .ok();
    HistoryBatches { rx, cancel, thread, summary: None, done: false }
}

/// The batches of the state directory `state_dir`'s history on the real
/// file system.
///
/// ```no_run
/// use mmsb_arrow::{history, Options, Table};
/// # fn main() -> mmsb::Result<()> {
/// let mut rows = 0;
/// for batch in history("state".into(), Options::default()).only(Table::Deltas) {
///     rows += batch?.num_rows();
/// }
/// println!("{rows} deltas");
/// # Ok(())
/// # }
/// ```
pub fn history(state_dir: PathBuf, opts: Options) -> HistoryBatches {
    history_with(StdVfs, state_dir, opts)
}
