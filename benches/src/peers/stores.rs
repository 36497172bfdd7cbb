//! The state stores of the `--peers` rows, behind one small trait: pages of
//! 4 KiB held as values under their page id, each commit changing some
//! bytes of one or more pages.
//!
//! MMSB commits the changed bytes as sparse deltas. Every peer holds a page
//! as one value, so a change reads the value, patches the bytes and writes
//! the whole value back in a transaction: the work its users do.

use super::{peer_error, Change, Setting};
use crate::Peer;
use mmsb::{Config, Durability, Mmsb, PageId, PageSpec, Payload, Result, SparseDelta, Update};
use redb::{ReadableDatabase, ReadableTable};
use std::path::{Path, PathBuf};

/// A system holding `n` pages of [`super::PAGE`] bytes.
pub(crate) trait PageStore {
    /// Commit one transaction changing the pages `changes` names.
    fn commit(&mut self, changes: &[Change]) -> Result<()>;
    /// The bytes of page `k`.
    fn read(&mut self, k: usize) -> Result<Vec<u8>>;
    /// Make everything committed so far durable and close the store.
    fn close(self: Box<Self>) -> Result<()>;

    /// Load `pages` pages, page `k` being `init(k)`: one commit per 100
    /// pages of their full bytes.
    fn load(&mut self, pages: usize, init: &dyn Fn(usize) -> Vec<u8>) -> Result<()> {
        let mut k = 0;
        while k < pages {
            let end = (k + 100).min(pages);
            let changes: Vec<Change> = (k..end).map(|p| Change::whole(p, init(p))).collect();
            self.commit(&changes)?;
            k = end;
        }
        Ok(())
    }

    /// MMSB only: the state directory and the LSN of the last commit.
    fn mmsb_lsn(&self) -> Option<(PathBuf, mmsb::Lsn)> {
        None
    }

    /// redb only: a persistent savepoint of the state now, by id.
    fn savepoint(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// redb only: every page as of savepoint `id`, the database left as it
    /// is (the restore happens in a write transaction that is aborted).
    fn read_at_savepoint(&mut self, _id: u64, _pages: usize) -> Result<Option<Vec<Vec<u8>>>> {
        Ok(None)
    }
}

/// The systems compared, in the order of the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    /// MMSB itself.
    Mmsb,
    /// redb (a copy-on-write B-tree in one file).
    Redb,
    /// fjall (an LSM tree with a journal).
    Fjall,
    /// SQLite in WAL mode (rusqlite, bundled library).
    Sqlite,
}

impl System {
    /// The peers, MMSB excluded.
    pub(crate) const PEERS: [System; 3] = [System::Redb, System::Fjall, System::Sqlite];

    /// Short name, used in row names.
    pub(crate) fn key(self) -> &'static str {
        match self {
            System::Mmsb => "mmsb",
            System::Redb => "redb",
            System::Fjall => "fjall",
            System::Sqlite => "sqlite",
        }
    }

    /// The peer's description at `setting` (for MMSB too, though its rows
    /// carry none).
    pub(crate) fn peer(self, setting: Setting) -> Peer {
        let (name, version) = match self {
            System::Mmsb => ("MMSB", env!("CARGO_PKG_VERSION").to_string()),
            System::Redb => ("redb", super::version_of("redb").to_string()),
            System::Fjall => ("fjall", super::version_of("fjall").to_string()),
            System::Sqlite => (
                "SQLite",
                format!("{} (rusqlite {}, bundled)", rusqlite::version(), super::version_of("rusqlite")),
            ),
        };
        Peer { name: name.into(), version, setting: self.setting_name(setting).into(), unsupported: None }
    }

    /// What `setting` is for this system.
    pub(crate) fn setting_name(self, setting: Setting) -> &'static str {
        match (self, setting) {
            (System::Mmsb, Setting::PowerCut) => "Durability::SYNC (fdatasync every commit)",
            (System::Mmsb, Setting::ProcessCrash) => "Durability::Flush (a write() per commit)",
            (System::Redb, Setting::PowerCut) => "Durability::Immediate",
            (System::Redb, Setting::ProcessCrash) => {
                "Durability::Immediate (its Durability::None commits are lost by a process crash too)"
            }
            (System::Fjall, Setting::PowerCut) => "PersistMode::SyncData per batch",
            (System::Fjall, Setting::ProcessCrash) => "PersistMode::Buffer per batch",
            (System::Sqlite, Setting::PowerCut) => "journal_mode=WAL, synchronous=FULL",
            (System::Sqlite, Setting::ProcessCrash) => "journal_mode=WAL, synchronous=NORMAL",
            (System::Mmsb, Setting::Bulk) => {
                "history loaded with Durability::None, synced at the stop (which writes no checkpoint: stop_checkpoint_bytes = u64::MAX)"
            }
            (System::Redb, Setting::Bulk) => {
                "history loaded with Durability::None, every 1,000th commit and the close Immediate"
            }
            (System::Fjall, Setting::Bulk) => {
                "history loaded without a persist per batch, SyncAll at the close"
            }
            (System::Sqlite, Setting::Bulk) => "history loaded with journal_mode=WAL, synchronous=OFF",
        }
    }

    /// Open a fresh store in `dir` holding `pages` copies of `init`'s pages
    /// (page `k` is `init(k)`), loaded before any timing.
    pub(crate) fn open(
        self,
        dir: &Path,
        setting: Setting,
        pages: usize,
        init: &dyn Fn(usize) -> Vec<u8>,
    ) -> Result<Box<dyn PageStore>> {
        std::fs::create_dir_all(dir)?;
        let mut store: Box<dyn PageStore> = match self {
            System::Mmsb => Box::new(MmsbStore::open(dir, setting)?),
            System::Redb => Box::new(RedbStore::open(dir, setting)?),
            System::Fjall => Box::new(FjallStore::open(dir, setting)?),
            System::Sqlite => Box::new(SqliteStore::open(dir, setting)?),
        };
        store.load(pages, init)?;
        Ok(store)
    }

    /// Reopen the store left in `dir` by an earlier [`PageStore::close`].
    pub(crate) fn reopen(self, dir: &Path, setting: Setting, pages: usize) -> Result<Box<dyn PageStore>> {
        Ok(match self {
            System::Mmsb => Box::new(MmsbStore::reopen(dir, setting, pages)?),
            System::Redb => Box::new(RedbStore::open(dir, setting)?),
            System::Fjall => Box::new(FjallStore::open(dir, setting)?),
            System::Sqlite => Box::new(SqliteStore::open(dir, setting)?),
        })
    }
}

/// Patch `value` with the runs of `c`.
fn patch(value: &mut [u8], c: &Change) -> Result<()> {
    for (at, bytes) in &c.runs {
        let end = at + bytes.len();
        let dst = value.get_mut(*at..end).ok_or_else(|| {
            mmsb::Error::Config(format!(
                "a change of page {} ends at {end}, past its {} bytes",
                c.page,
                super::PAGE
            ))
        })?;
        dst.copy_from_slice(bytes);
    }
    Ok(())
}

/// MMSB: one page per value, sparse deltas of the changed bytes.
struct MmsbStore {
    state: Mmsb,
    ids: Vec<PageId>,
    dir: PathBuf,
}

fn mmsb_durability(setting: Setting) -> Durability {
    match setting {
        Setting::PowerCut => Durability::SYNC,
        Setting::ProcessCrash => Durability::Flush,
        Setting::Bulk => Durability::None,
    }
}

impl MmsbStore {
    fn open(dir: &Path, setting: Setting) -> Result<MmsbStore> {
        let mut cfg = Config::at(dir).durability(mmsb_durability(setting));
        if setting == Setting::Bulk {
            // The reopen after the history reads the log alone; the
            // reopened handle's default stop then writes the checkpoint the
            // `_checkpointed` rows start from.
            cfg = cfg.stop_checkpoint_bytes(u64::MAX);
        }
        let state = Mmsb::start(cfg)?;
        Ok(MmsbStore { state, ids: Vec::new(), dir: dir.to_path_buf() })
    }

    fn reopen(dir: &Path, setting: Setting, pages: usize) -> Result<MmsbStore> {
        let state = Mmsb::start(Config::existing(dir).durability(mmsb_durability(setting)))?;
        // Pages are created in order, so their ids are those of the first
        // `pages` pages of the state.
        let mut ids: Vec<PageId> = state.page_ids();
        ids.sort();
        if ids.len() != pages {
            return Err(mmsb::Error::Invariant(format!("reopened {} pages, expected {pages}", ids.len())));
        }
        Ok(MmsbStore { state, ids, dir: dir.to_path_buf() })
    }
}

impl PageStore for MmsbStore {
    fn commit(&mut self, changes: &[Change]) -> Result<()> {
        while self.ids.len() < changes.iter().map(|c| c.page + 1).max().unwrap_or(0) {
            self.ids.push(self.state.create_page(PageSpec::new(super::PAGE as u64))?);
        }
        let payload = |c: &Change| -> Result<Payload> {
            Ok(if c.runs.len() == 1 && c.runs[0].1.len() == super::PAGE {
                Payload::Full(c.runs[0].1.clone())
            } else {
                Payload::Sparse(SparseDelta::from_pairs(c.runs.iter().map(|(at, b)| (*at as u64, &b[..])))?)
            })
        };
        match changes {
            [one] => self.state.update_page(self.ids[one.page], payload(one)?).map(drop),
            _ => {
                let updates = changes
                    .iter()
                    .map(|c| Ok(Update::new(self.ids[c.page], payload(c)?)))
                    .collect::<Result<Vec<_>>>()?;
                self.state.update_batch(updates).map(drop)
            }
        }
    }

    fn read(&mut self, k: usize) -> Result<Vec<u8>> {
        let id = *self.ids.get(k).ok_or(mmsb::Error::Config(format!("no page {k}")))?;
        Ok(self.state.read_page(id)?.bytes().to_vec())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.state.stop()
    }

    fn mmsb_lsn(&self) -> Option<(PathBuf, mmsb::Lsn)> {
        Some((self.dir.clone(), self.state.lsn()))
    }
}

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("pages");

/// redb: a table of page id → 4 KiB value.
struct RedbStore {
    db: redb::Database,
    /// Durable every this many commits (1: every commit).
    every: u64,
    commits: u64,
}

impl RedbStore {
    fn open(dir: &Path, setting: Setting) -> Result<RedbStore> {
        let db = redb::Database::create(dir.join("pages.redb")).map_err(peer_error("redb"))?;
        // redb has no setting that survives a process crash without an
        // fsync: `Durability::None` commits are not written until a later
        // durable commit. Both of the commit rows' settings use `Immediate`.
        let every = match setting {
            Setting::PowerCut | Setting::ProcessCrash => 1,
            Setting::Bulk => 1_000,
        };
        Ok(RedbStore { db, every, commits: 0 })
    }

    fn write(&mut self, f: impl FnOnce(&mut redb::WriteTransaction) -> Result<()>) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(peer_error("redb"))?;
        self.commits += 1;
        let durability = if self.commits.is_multiple_of(self.every) {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        tx.set_durability(durability).map_err(peer_error("redb"))?;
        f(&mut tx)?;
        tx.commit().map_err(peer_error("redb"))
    }
}

impl PageStore for RedbStore {
    fn commit(&mut self, changes: &[Change]) -> Result<()> {
        self.write(|tx| {
            let mut t = tx.open_table(REDB_TABLE).map_err(peer_error("redb"))?;
            for c in changes {
                let mut value = match t.get(c.page as u64).map_err(peer_error("redb"))? {
                    Some(v) => v.value().to_vec(),
                    None => vec![0u8; super::PAGE],
                };
                patch(&mut value, c)?;
                t.insert(c.page as u64, &value[..]).map_err(peer_error("redb"))?;
            }
            Ok(())
        })
    }

    fn read(&mut self, k: usize) -> Result<Vec<u8>> {
        let tx = self.db.begin_read().map_err(peer_error("redb"))?;
        let t = tx.open_table(REDB_TABLE).map_err(peer_error("redb"))?;
        let v = t.get(k as u64).map_err(peer_error("redb"))?;
        v.map(|v| v.value().to_vec()).ok_or(mmsb::Error::Config(format!("redb: no page {k}")))
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        // An empty durable commit makes the non-durable ones before it
        // durable.
        self.every = 1;
        self.write(|_| Ok(()))?;
        drop(self.db);
        Ok(())
    }

    fn savepoint(&mut self) -> Result<Option<u64>> {
        let tx = self.db.begin_write().map_err(peer_error("redb"))?;
        let id = tx.persistent_savepoint().map_err(peer_error("redb"))?;
        tx.commit().map_err(peer_error("redb"))?;
        Ok(Some(id))
    }

    fn read_at_savepoint(&mut self, id: u64, pages: usize) -> Result<Option<Vec<Vec<u8>>>> {
        let mut tx = self.db.begin_write().map_err(peer_error("redb"))?;
        let sp = tx.get_persistent_savepoint(id).map_err(peer_error("redb"))?;
        tx.restore_savepoint(&sp).map_err(peer_error("redb"))?;
        let mut out = Vec::with_capacity(pages);
        {
            let t = tx.open_table(REDB_TABLE).map_err(peer_error("redb"))?;
            for k in 0..pages {
                let v = t.get(k as u64).map_err(peer_error("redb"))?;
                out.push(v.map(|v| v.value().to_vec()).unwrap_or_default());
            }
        }
        tx.abort().map_err(peer_error("redb"))?;
        Ok(Some(out))
    }
}

/// fjall: a keyspace of page id (big endian) → 4 KiB value, each commit a
/// write batch persisted as `setting` says.
struct FjallStore {
    db: fjall::Database,
    pages: fjall::Keyspace,
    mode: Option<fjall::PersistMode>,
}

impl FjallStore {
    fn open(dir: &Path, setting: Setting) -> Result<FjallStore> {
        let db = fjall::Database::builder(dir.join("fjall")).open().map_err(peer_error("fjall"))?;
        let pages =
            db.keyspace("pages", fjall::KeyspaceCreateOptions::default).map_err(peer_error("fjall"))?;
        let mode = match setting {
            Setting::PowerCut => Some(fjall::PersistMode::SyncData),
            Setting::ProcessCrash => Some(fjall::PersistMode::Buffer),
            Setting::Bulk => None,
        };
        Ok(FjallStore { db, pages, mode })
    }
}

impl PageStore for FjallStore {
    fn commit(&mut self, changes: &[Change]) -> Result<()> {
        let mut batch = self.db.batch().durability(self.mode);
        for c in changes {
            let key = (c.page as u64).to_be_bytes();
            let mut value = match self.pages.get(key).map_err(peer_error("fjall"))? {
                Some(v) => v.to_vec(),
                None => vec![0u8; super::PAGE],
            };
            patch(&mut value, c)?;
            batch.insert(&self.pages, key, &value[..]);
        }
        batch.commit().map_err(peer_error("fjall"))
    }

    fn read(&mut self, k: usize) -> Result<Vec<u8>> {
        let v = self.pages.get((k as u64).to_be_bytes()).map_err(peer_error("fjall"))?;
        v.map(|v| v.to_vec()).ok_or(mmsb::Error::Config(format!("fjall: no page {k}")))
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.persist(fjall::PersistMode::SyncAll).map_err(peer_error("fjall"))
    }
}

/// SQLite in WAL mode: a table of page id → 4 KiB blob.
struct SqliteStore {
    conn: rusqlite::Connection,
}

impl SqliteStore {
    fn open(dir: &Path, setting: Setting) -> Result<SqliteStore> {
        let conn = rusqlite::Connection::open(dir.join("pages.sqlite")).map_err(peer_error("SQLite"))?;
        let sync = match setting {
            Setting::PowerCut => "FULL",
            Setting::ProcessCrash => "NORMAL",
            Setting::Bulk => "OFF",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
             CREATE TABLE IF NOT EXISTS pages (id INTEGER PRIMARY KEY, data BLOB NOT NULL);"
        ))
        .map_err(peer_error("SQLite"))?;
        Ok(SqliteStore { conn })
    }
}

impl PageStore for SqliteStore {
    fn commit(&mut self, changes: &[Change]) -> Result<()> {
        let tx = self.conn.transaction().map_err(peer_error("SQLite"))?;
        {
            let mut get =
                tx.prepare_cached("SELECT data FROM pages WHERE id = ?1").map_err(peer_error("SQLite"))?;
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO pages (id, data) VALUES (?1, ?2)")
                .map_err(peer_error("SQLite"))?;
            for c in changes {
                let old: Option<Vec<u8>> = match get.query_row([c.page as i64], |r| r.get(0)) {
                    Ok(v) => Some(v),
                    Err(rusqlite::Error::QueryReturnedNoRows) => None,
                    Err(e) => return Err(peer_error("SQLite")(e)),
                };
                let mut value = old.unwrap_or_else(|| vec![0u8; super::PAGE]);
                patch(&mut value, c)?;
                put.execute(rusqlite::params![c.page as i64, value]).map_err(peer_error("SQLite"))?;
            }
        }
        tx.commit().map_err(peer_error("SQLite"))
    }

    fn read(&mut self, k: usize) -> Result<Vec<u8>> {
        self.conn
            .query_row("SELECT data FROM pages WHERE id = ?1", [k as i64], |r| r.get(0))
            .map_err(peer_error("SQLite"))
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.conn.close().map_err(|(_, e)| peer_error("SQLite")(e))
    }
}
