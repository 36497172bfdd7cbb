//! A follower: a read-only copy of a replicated state, kept in a local
//! state directory (the leader's records, byte for byte, in its own log)
//! and in memory (a [`StateImage`] serving reads), applying the stream
//! idempotently by LSN.

use crate::archive::{self, StoredCheckpoint};
use crate::link::{Link, HDR_EPOCH, HDR_FENCE, HDR_LSN, HDR_OBJECT};
use crate::{Error, Options, Result};
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use mmsb::internals::checkpoint;
use mmsb::internals::codec::Limits;
use mmsb::internals::image::StateImage;
use mmsb::internals::log::reader::visit_framed;
use mmsb::internals::log::LogWriter;
use mmsb::internals::recovery::{recover, RecoveryMode};
use mmsb::internals::vfs::{StdVfs, Vfs};
use mmsb::{Lsn, PageId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

/// One message of a state's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicated {
    /// Its stream sequence number.
    pub seq: u64,
    /// The epoch of the leader that published it.
    pub epoch: u64,
    /// What it carries.
    pub body: Body,
}

/// What a stream message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Records `first..=last`, framed as in a log segment.
    Commit {
        /// LSN of the first record.
        first: u64,
        /// LSN of the last record.
        last: u64,
        /// The framed records.
        framed: Bytes,
    },
    /// Records `first..=last` of a commit too large for a message, held
    /// by object `object` of the state's object store.
    Stored {
        /// LSN of the first record.
        first: u64,
        /// LSN of the last record.
        last: u64,
        /// The object's name.
        object: String,
    },
    /// A new leader's fence: it starts writing after LSN `after`.
    Fence {
        /// The last LSN the new leader had applied.
        after: u64,
    },
}

fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

fn num(seq: u64, what: &str, s: &str) -> Result<u64> {
    s.parse().map_err(|_| Error::BadMessage { seq, reason: format!("{what} {s:?} is not a number") })
}

impl Replicated {
    /// Read a stream message.
    ///
    /// # Errors
    /// [`Error::BadMessage`] for missing or malformed headers.
    pub fn from_message(m: &StreamMessage) -> Result<Replicated> {
        let seq = m.sequence;
        let epoch = header(m, HDR_EPOCH)
            .ok_or_else(|| Error::BadMessage { seq, reason: format!("no {HDR_EPOCH} header") })
            .and_then(|e| num(seq, "epoch", e))?;
        if let Some(after) = header(m, HDR_FENCE) {
            return Ok(Replicated { seq, epoch, body: Body::Fence { after: num(seq, "fence LSN", after)? } });
        }
        let lsns = header(m, HDR_LSN)
            .ok_or_else(|| Error::BadMessage { seq, reason: format!("no {HDR_LSN} header") })?;
        let (a, b) = lsns.split_once('-').ok_or_else(|| Error::BadMessage {
            seq,
            reason: format!("LSN range {lsns:?} is not first-last"),
        })?;
        let (first, last) = (num(seq, "first LSN", a)?, num(seq, "last LSN", b)?);
        if first == 0 || last < first {
            return Err(Error::BadMessage { seq, reason: format!("LSN range {first}-{last} is empty") });
        }
        if let Some(object) = header(m, HDR_OBJECT) {
            return Ok(Replicated {
                seq,
                epoch,
                body: Body::Stored { first, last, object: object.to_string() },
            });
        }
        Ok(Replicated { seq, epoch, body: Body::Commit { first, last, framed: m.payload.clone() } })
    }

    /// The last LSN this message names (a commit's last record, a
    /// fence's start).
    pub fn last_lsn(&self) -> u64 {
        match &self.body {
            Body::Commit { last, .. } | Body::Stored { last, .. } => *last,
            Body::Fence { after } => *after,
        }
    }
}

/// What a follower applied: one event per commit message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The message's stream sequence.
    pub seq: u64,
    /// The epoch of its leader.
    pub epoch: u64,
    /// Its first LSN.
    pub first: Lsn,
    /// Its last LSN: the follower's LSN now.
    pub last: Lsn,
}

/// How far a follower is behind its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// The stream's last sequence.
    pub stream_seq: u64,
    /// The last sequence this follower has read.
    pub read_seq: u64,
    /// The follower's LSN.
    pub lsn: Lsn,
}

impl Lag {
    /// Messages not read yet.
    pub fn messages(&self) -> u64 {
        self.stream_seq.saturating_sub(self.read_seq)
    }
}

/// A read-only replica of a replicated state.
#[derive(Debug)]
pub struct Follower {
    link: Option<Arc<Link>>,
    dir: PathBuf,
    image: StateImage,
    log: LogWriter,
    limits: Limits,
    /// The last stream sequence read.
    read_seq: u64,
    /// The highest leader epoch seen.
    epoch: u64,
    /// Commits that arrived before the ones they follow, by first LSN.
    pending: BTreeMap<u64, Replicated>,
    subscribers: Vec<mpsc::Sender<Applied>>,
    /// Subscribers to page-level events.
    event_subscribers: Vec<mpsc::Sender<mmsb::Event>>,
    /// Messages that were already applied when they arrived.
    duplicates: u64,
    /// The highest LSN a stream message named (a commit's last, a fence's),
    /// or a checkpoint this follower started from.
    seen_lsn: u64,
    /// Checkpoints of the object store this follower started from.
    bootstraps: Vec<Lsn>,
    durability: mmsb::Durability,
    /// The directory's lock: one writer of its log at a time (a
    /// follower's, or a leader's `Mmsb`).
    _lock: Option<mmsb::internals::vfs::DirLock>,
}

impl Follower {
    /// Open (or create) the follower's state directory `dir` and connect
    /// to the state's stream.
    ///
    /// # Errors
    /// As [`Follower::open_local`] and [`Link::connect`].
    pub fn open(opts: &Options, dir: &Path) -> Result<Follower> {
        let link = Arc::new(Link::connect(opts)?);
        Self::with_link(Some(link), opts, dir)
    }

    /// The checkpoints of the state's object store, oldest first.
    ///
    /// # Errors
    /// As [`archive::checkpoints`].
    pub fn stored_checkpoints(&self) -> Result<Vec<StoredCheckpoint>> {
        archive::checkpoints(self.link()?)
    }

    /// A follower of `dir` with no connection: it applies only what
    /// [`Follower::offer`] gives it.
    ///
    /// # Errors
    /// [`Error::State`] when the directory cannot be recovered.
    pub fn open_local(opts: &Options, dir: &Path) -> Result<Follower> {
        Self::with_link(None, opts, dir)
    }

    pub(crate) fn with_link(link: Option<Arc<Link>>, opts: &Options, dir: &Path) -> Result<Follower> {
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
        let log_dir = mmsb::internals::files::log_dir(dir);
        vfs.create_dir_all(&log_dir).map_err(|e| mmsb::Error::from(e).in_file(&log_dir))?;
        let lock = vfs.lock_dir(&log_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => mmsb::Error::InUse { dir: dir.to_path_buf() },
            _ => mmsb::Error::from(e).in_file(&log_dir),
        })?;
        let limits = Limits::default();
        let (image, log) = open_dir(vfs, dir, opts.durability, &limits)?;
        let mut f = Follower {
            link,
            dir: dir.to_path_buf(),
            image,
            log,
            limits,
            read_seq: 0,
            epoch: 0,
            pending: BTreeMap::new(),
            subscribers: Vec::new(),
            event_subscribers: Vec::new(),
            duplicates: 0,
            seen_lsn: 0,
            bootstraps: Vec::new(),
            durability: opts.durability,
            _lock: lock,
        };
        if f.link.is_some() {
            f.position()?;
        }
        Ok(f)
    }

    fn link(&self) -> Result<&Arc<Link>> {
        self.link.as_ref().ok_or_else(|| Error::Config("this follower has no connection".into()))
    }

    /// Start from the newest checkpoint of the object store when it is
    /// ahead of this follower; otherwise read the stream from after it
    /// (the messages up to it hold nothing this follower lacks).
    fn position(&mut self) -> Result<()> {
        let Some(c) = archive::checkpoints(self.link()?)?.pop() else { return Ok(()) };
        if c.lsn.0 > self.image.lsn {
            self.bootstrap(&c)?;
        } else if self.pending.is_empty() {
            self.read_seq = self.read_seq.max(c.seq);
            self.seen_lsn = self.seen_lsn.max(c.lsn.0);
        }
        Ok(())
    }

    /// Replace this follower's state with checkpoint `c` of the object
    /// store: the file is read and verified whole, installed in the state
    /// directory as its newest checkpoint, the local log (whose records it
    /// covers) removed, and the stream read from after `c.seq`.
    fn bootstrap(&mut self, c: &StoredCheckpoint) -> Result<()> {
        let link = self.link()?.clone();
        let (bytes, _) = archive::fetch_checkpoint(&link, c, &self.limits)?;
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
        let log_dir = mmsb::internals::files::log_dir(&self.dir);
        // The checkpoint first, durably: a crash after it leaves a
        // directory that recovers to it (the older files it covers are
        // skipped).
        let tmp = log_dir.join(format!("ckpt-{:020}.tmp", c.lsn.0));
        let fin = log_dir.join(mmsb::internals::files::checkpoint_name(c.lsn.0));
        {
            let mut f = vfs.create(&tmp).map_err(|e| mmsb::Error::from(e).in_file(&tmp))?;
            f.write_all(&bytes).map_err(|e| mmsb::Error::from(e).in_file(&tmp))?;
            f.sync().map_err(|e| mmsb::Error::from(e).in_file(&tmp))?;
        }
        // The recovery below reads the file again: the copy in memory goes.
        drop(bytes);
        vfs.rename(&tmp, &fin).map_err(|e| mmsb::Error::from(e).in_file(&fin))?;
        vfs.sync_dir(&log_dir).map_err(|e| mmsb::Error::from(e).in_file(&log_dir))?;
        self.log.close()?;
        let names = vfs.list(&log_dir).map_err(|e| mmsb::Error::from(e).in_file(&log_dir))?;
        for n in names {
            let older_ckpt = mmsb::internals::files::parse_checkpoint_name(&n).is_some_and(|l| l < c.lsn.0);
            if older_ckpt || mmsb::internals::files::parse_segment_name(&n).is_some() {
                let p = log_dir.join(&n);
                vfs.remove(&p).map_err(|e| mmsb::Error::from(e).in_file(&p))?;
            }
        }
        vfs.sync_dir(&log_dir).map_err(|e| mmsb::Error::from(e).in_file(&log_dir))?;
        let (image, log) = open_dir(vfs, &self.dir, self.durability, &self.limits)?;
        if image.lsn != c.lsn.0 {
            return Err(Error::State(mmsb::Error::Invariant(format!(
                "the state directory opened at LSN {} after installing the checkpoint at {}",
                image.lsn, c.lsn.0
            ))));
        }
        self.image = image;
        self.log = log;
        self.read_seq = c.seq;
        self.pending.clear();
        self.seen_lsn = self.seen_lsn.max(c.lsn.0);
        self.bootstraps.push(c.lsn);
        Ok(())
    }

    /// Write this follower's state as a full checkpoint into its state
    /// directory and store it in the object store, then keep the newest
    /// `keep` checkpoints there and trim the stream behind the oldest of
    /// them ([`archive::trim`]). Followers and a standby leader start from
    /// the newest; one that fell behind the trimmed stream starts again
    /// from it.
    ///
    /// # Errors
    /// [`Error::Config`] for `keep == 0` or commits still waiting for
    /// earlier ones; [`Error::State`] when the file cannot be written; the
    /// object store's and stream's errors.
    pub fn checkpoint(&mut self, keep: usize) -> Result<(StoredCheckpoint, archive::Trimmed)> {
        if keep == 0 {
            return Err(Error::Config("at least one checkpoint must be kept".into()));
        }
        if !self.pending.is_empty() {
            return Err(Error::Config(format!(
                "commits after LSN {} wait for earlier ones: catch up first",
                self.image.lsn
            )));
        }
        let link = self.link()?.clone();
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
        let log_dir = mmsb::internals::files::log_dir(&self.dir);
        let (path, _) = checkpoint::write_image(vfs.clone(), &log_dir, self.log.generation(), &self.image)?;
        let stored = archive::put_checkpoint_file(
            &link,
            Lsn(self.image.lsn),
            self.read_seq,
            self.image.state_hash(),
            &path,
        )?;
        // Older local checkpoints: the log is kept whole, so the newest
        // `keep` of them are all a start needs.
        let mut local = checkpoint::list(vfs.as_ref(), &log_dir)?;
        for (_, p) in local.drain(..).skip(keep) {
            vfs.remove(&p).map_err(|e| mmsb::Error::from(e).in_file(&p))?;
        }
        let trimmed = archive::trim(&link, keep)?;
        Ok((stored, trimmed))
    }

    /// The checkpoints of the object store this follower started from, in
    /// order (at open, or after falling behind the trimmed stream).
    pub fn bootstraps(&self) -> &[Lsn] {
        &self.bootstraps
    }

    /// Take one message, in any order and any number of times: a commit
    /// at or below the follower's LSN is ignored, one that does not
    /// follow it yet waits for the ones before it. Returns whether the
    /// follower's LSN moved.
    ///
    /// # Errors
    /// [`Error::State`] for records that do not read or replay (the
    /// follower keeps the state before that message);
    /// [`Error::BadMessage`] for a message whose records overlap the
    /// follower's LSN without starting after it.
    pub fn offer(&mut self, m: Replicated) -> Result<bool> {
        self.epoch = self.epoch.max(m.epoch);
        self.seen_lsn = self.seen_lsn.max(m.last_lsn());
        let (first, last) = match &m.body {
            Body::Commit { first, last, .. } | Body::Stored { first, last, .. } => (*first, *last),
            Body::Fence { .. } => return Ok(false),
        };
        if last <= self.image.lsn {
            self.duplicates += 1;
            return Ok(false);
        }
        if first <= self.image.lsn {
            return Err(Error::BadMessage {
                seq: m.seq,
                reason: format!("records {first}-{last} overlap LSN {} without following it", self.image.lsn),
            });
        }
        self.pending.insert(first, m);
        let before = self.image.lsn;
        while let Some(e) = self.pending.first_entry() {
            let next = self.image.lsn + 1;
            if *e.key() < next {
                e.remove();
                self.duplicates += 1;
                continue;
            }
            if *e.key() != next {
                break;
            }
            let m = e.remove();
            self.apply(&m)?;
        }
        Ok(self.image.lsn != before)
    }

    fn apply(&mut self, m: &Replicated) -> Result<()> {
        let (first, last, framed) = match &m.body {
            Body::Commit { first, last, framed } => (first, last, framed),
            Body::Stored { object, .. } => {
                return Err(Error::BadMessage {
                    seq: m.seq,
                    reason: format!("its records are object {object}, which was not read (offer the commit)"),
                })
            }
            Body::Fence { .. } => return Ok(()),
        };
        // The local log checks the frames as recovery reads them, then the
        // image replays them: the library's one decoder, twice.
        let end = self.log.append_framed(framed, &self.limits)?;
        if end.0 != *last {
            return Err(Error::BadMessage {
                seq: m.seq,
                reason: format!("records end at LSN {}, the header says {last}", end.0),
            });
        }
        let image = &mut self.image;
        let want_events = !self.event_subscribers.is_empty();
        let mut events = Vec::new();
        visit_framed(framed, *first, &self.limits, &mut |c| {
            if want_events {
                events.extend(image.events_of(&c));
            }
            image.apply_commit(c).map(|()| true)
        })?;
        // Optional records at the end of a message (a checkpoint's) are
        // part of the LSN sequence even though no commit ends there.
        image.lsn = *last;
        let ev = Applied { seq: m.seq, epoch: m.epoch, first: Lsn(*first), last: Lsn(*last) };
        self.subscribers.retain(|s| s.send(ev).is_ok());
        if want_events {
            self.event_subscribers.retain(|s| events.iter().all(|e| s.send(e.clone()).is_ok()));
        }
        Ok(())
    }

    /// Read the message after the last one read, if the stream has it, and
    /// apply it. Returns `None` when the stream holds nothing newer. When
    /// the stream was trimmed past that message, the follower starts again
    /// from the newest checkpoint of the object store (or, when it is
    /// already at or past that checkpoint, reads on after it).
    ///
    /// # Errors
    /// [`Error::Gap`] when neither the stream nor a checkpoint holds what
    /// follows this follower's LSN; as [`Follower::offer`] and
    /// [`Link::get`]; [`Error::BadObject`] for a large commit's object
    /// that is missing.
    pub fn step(&mut self) -> Result<Option<Replicated>> {
        let link = self.link()?.clone();
        let mut repositioned = false;
        loop {
            let (first, last) = link.bounds()?;
            let seq = self.read_seq + 1;
            if seq > last {
                return Ok(None);
            }
            let msg = if seq < first { None } else { link.get(seq)? };
            let Some(msg) = msg else {
                // Trimmed (maybe between the two requests): once from a
                // checkpoint, then it is a gap.
                if repositioned {
                    return Err(Error::Gap { lsn: Lsn(self.image.lsn), seq, first_seq: first });
                }
                repositioned = true;
                self.position()?;
                if self.read_seq + 1 < first {
                    return Err(Error::Gap {
                        lsn: Lsn(self.image.lsn),
                        seq: self.read_seq + 1,
                        first_seq: first,
                    });
                }
                continue;
            };
            let mut m = Replicated::from_message(&msg)?;
            if let Body::Stored { first, last, object } = &m.body {
                if *last > self.image.lsn {
                    let framed = link.get_object(object)?.ok_or_else(|| Error::BadObject {
                        name: object.clone(),
                        reason: format!("message {seq} names it for records {first}-{last}, and it is gone"),
                    })?;
                    m.body = Body::Commit { first: *first, last: *last, framed: Bytes::from(framed) };
                }
            }
            self.offer(m.clone())?;
            self.read_seq = seq;
            return Ok(Some(m));
        }
    }

    /// Apply every message the stream holds now. Returns the LSN reached.
    ///
    /// # Errors
    /// As [`Follower::step`].
    pub fn catch_up(&mut self) -> Result<Lsn> {
        let link = self.link()?.clone();
        let (_, last) = link.bounds()?;
        while self.read_seq < last {
            if self.step()?.is_none() {
                break;
            }
        }
        if !self.pending.is_empty() {
            return Err(Error::Gap { lsn: Lsn(self.image.lsn), seq: self.read_seq, first_seq: 0 });
        }
        Ok(self.lsn())
    }

    /// How far behind the stream this follower is.
    ///
    /// # Errors
    /// As [`Link::bounds`].
    pub fn lag(&self) -> Result<Lag> {
        let (_, last) = self.link()?.bounds()?;
        Ok(Lag { stream_seq: last, read_seq: self.read_seq, lsn: self.lsn() })
    }

    /// Events for every commit message applied from now on.
    pub fn subscribe(&mut self) -> mpsc::Receiver<Applied> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.push(tx);
        rx
    }

    /// Page-level events ([`mmsb::Event`]: pages created and deleted,
    /// deltas applied with the page's epoch after them, edges, derivations)
    /// of every commit applied from now on, the state-change events the
    /// leader's own subscribers got for it, in the same order. (A
    /// follower runs no propagation and writes no checkpoint of the
    /// leader's, so it sends none of the live-only events.)
    pub fn events(&mut self) -> mpsc::Receiver<mmsb::Event> {
        let (tx, rx) = mpsc::channel();
        self.event_subscribers.push(tx);
        rx
    }

    /// The follower's LSN: every record up to it is applied.
    pub fn lsn(&self) -> Lsn {
        Lsn(self.image.lsn)
    }

    /// The state hash at [`Follower::lsn`] (as `Mmsb::state_hash`).
    pub fn state_hash(&self) -> u128 {
        self.image.state_hash()
    }

    /// The state at [`Follower::lsn`].
    pub fn image(&self) -> &StateImage {
        &self.image
    }

    /// The bytes of page `id` at [`Follower::lsn`].
    ///
    /// # Errors
    /// [`mmsb::Error::PageNotFound`].
    pub fn read_page(&self, id: PageId) -> Result<&[u8]> {
        self.image.pages.get(&id).map(|p| &p.bytes[..]).ok_or(Error::State(mmsb::Error::PageNotFound(id)))
    }

    /// The highest leader epoch seen.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The highest LSN a message offered so far named.
    pub fn seen_lsn(&self) -> u64 {
        self.seen_lsn
    }

    /// The last stream sequence read.
    pub fn read_seq(&self) -> u64 {
        self.read_seq
    }

    /// Commit messages ignored because they were already applied.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The follower's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sync and close the local log, leaving a directory `Mmsb::start`
    /// opens at this follower's LSN.
    ///
    /// # Errors
    /// [`Error::State`] when the log cannot be synced.
    pub fn close(mut self) -> Result<(Lsn, u64)> {
        self.log.close()?;
        Ok((self.lsn(), self.read_seq))
    }
}

/// Recover state directory `dir` and open its log for appending.
fn open_dir(
    vfs: Arc<dyn Vfs>,
    dir: &Path,
    durability: mmsb::Durability,
    limits: &Limits,
) -> Result<(StateImage, LogWriter)> {
    let log_dir = mmsb::internals::files::log_dir(dir);
    let (image, _report, resume) = recover(vfs.as_ref(), dir, RecoveryMode::default(), limits)?;
    let log =
        LogWriter::resume(vfs, &log_dir, &resume, durability, mmsb::internals::log::DEFAULT_SEGMENT_BYTES)?;
    Ok((image, log))
}
