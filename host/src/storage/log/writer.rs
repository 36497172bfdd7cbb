//! The log writer: frames records into an in-memory buffer (no allocation
//! per record once the buffer has grown), writes the buffer with one
//! `write` per commit (or less, by [`Durability`]), fsyncs by policy, rolls
//! segments, and poisons itself on the first I/O failure.

use super::Resume;
use super::{Durability, RecordType, RECORD_HEAD_LEN, RECORD_TAIL_LEN, SEGMENT_HEAD_LEN, SEGMENT_VERSION};
use crate::delta::change::Change;
use crate::delta::simd::copy_small;
use crate::delta::Payload;
use crate::storage::codec::delta::{
    delta_body_len, delta_head, encode_delta_rest, encode_payload_body, payload_head, DELTA_HEAD_LEN,
    FLAG_BASE, PAYLOAD_HEAD_LEN,
};
use crate::storage::codec::derived::{DerivedEntry, FunctionSlots, DERIVED_HEAD_LEN};
use crate::storage::codec::{crc, put_location, put_metadata, put_u32, put_u64};
use crate::storage::files::{segment_name, segment_temp_name, SEGMENT_MAGIC};
use crate::storage::vfs::{Vfs, VfsFile};
use crate::{Error, Result};
use shared_types::{Lsn, PageId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// With [`Durability::None`], the buffer is written once it holds this much.
pub const BUFFER_BYTES: usize = 1 << 20;

/// A propagation's derived deltas go into derived records of about this
/// many bytes at most.
pub const DERIVED_RECORD_BYTES: usize = 1 << 20;

/// Framed size of a batch marker record.
const MARKER_LEN: usize = RECORD_HEAD_LEN + 8 + RECORD_TAIL_LEN;

/// Counters of a log writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Bytes appended (framing included).
    pub bytes: u64,
    /// Commits (calls that reached their durability).
    pub commits: u64,
    /// `write` calls.
    pub writes: u64,
    /// Fsyncs.
    pub syncs: u64,
    /// Time spent in the fsyncs of [`LogStats::syncs`] that this writer
    /// timed (the log's own, not segment-creation ones), in nanoseconds.
    pub sync_nanos: u64,
    /// The longest of those fsyncs, in nanoseconds.
    pub max_sync_nanos: u64,
    /// Segments opened.
    pub segments: u64,
}

/// Where each group commit's framed records go, besides the local log,
/// before the commit is acknowledged: a replicated log (the
/// `mmsb-replica` crate publishes them to a NATS JetStream stream).
///
/// The log writer's commit and sync hand the sink the records
/// appended since the last hand-off, framed exactly as in a segment
/// (docs/FORMAT.md), with the LSNs of the first and the last. The sink is
/// called before the records are written locally. An error from it
/// poisons the log: the commit fails, nothing of it is applied, and the
/// writer accepts no more commits (the sink may or may not have stored the
/// records; a replicated writer resolves that by reading its stream).
pub trait CommitSink: Send + Sync + std::fmt::Debug {
    /// Take records `first..=last` (`framed`: whole frames, whole commits).
    ///
    /// # Errors
    /// Any error; it becomes the commit's error and poisons the log.
    fn commit(&self, first: Lsn, last: Lsn, framed: &[u8]) -> Result<()>;
}

/// Appends records to the segment files of one log directory.
#[derive(Debug)]
pub struct LogWriter {
    /// The replicated log each commit goes to first, if any.
    sink: Option<Arc<dyn CommitSink>>,
    /// Where in `buf` the records not yet handed to `sink` start.
    sink_from: usize,
    /// The LSN of the first of them.
    sink_lsn: u64,
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    file: Option<Box<dyn VfsFile>>,
    seq: u64,
    generation: u64,
    next_lsn: u64,
    buf: Vec<u8>,
    seg_bytes: u64,
    segment_limit: u64,
    durability: Durability,
    unsynced_records: u64,
    last_sync: Instant,
    poisoned: Option<String>,
    stats: LogStats,
    /// Function definitions of the derived record being framed.
    slots: FunctionSlots,
}

/// Encode a segment header.
pub fn segment_header(generation: u64, seq: u64, first_lsn: u64) -> [u8; SEGMENT_HEAD_LEN] {
    let mut h = Vec::with_capacity(SEGMENT_HEAD_LEN);
    h.extend_from_slice(&SEGMENT_MAGIC);
    put_u32(&mut h, SEGMENT_VERSION);
    put_u32(&mut h, 0);
    put_u64(&mut h, generation);
    put_u64(&mut h, seq);
    put_u64(&mut h, first_lsn);
    let c = crc(&h);
    put_u32(&mut h, c);
    put_u32(&mut h, 0);
    let mut out = [0u8; SEGMENT_HEAD_LEN];
    out.copy_from_slice(&h);
    out
}

impl LogWriter {
    /// Start segment `seq` of generation `generation` in `dir`, whose first
    /// record will have LSN `next_lsn`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be created.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        seq: u64,
        generation: u64,
        next_lsn: u64,
        durability: Durability,
        segment_limit: u64,
    ) -> Result<Self> {
        let mut w = Self::unopened(vfs, dir, seq, generation, next_lsn, durability, segment_limit);
        w.start_segment(seq)?;
        Ok(w)
    }

    /// Go on writing where recovery left the log ([`Resume`]): append to
    /// the empty segment a clean stop left, when recovery says the log
    /// ends there intact and the file system can append; else start a new
    /// segment of a new generation.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened or created.
    pub fn resume(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        at: &Resume,
        durability: Durability,
        segment_limit: u64,
    ) -> Result<Self> {
        if let Some(c) = &at.continued {
            match vfs.open_append(&c.path) {
                Ok(file) => {
                    let mut w =
                        Self::unopened(vfs, dir, c.seq, c.generation, at.next_lsn, durability, segment_limit);
                    w.file = Some(file);
                    w.seg_bytes = SEGMENT_HEAD_LEN as u64;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
                Err(e) => return Err(Error::from(e).in_file(&c.path)),
            }
        }
        Self::open(vfs, dir, at.seq, at.generation, at.next_lsn, durability, segment_limit)
    }

    fn unopened(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        seq: u64,
        generation: u64,
        next_lsn: u64,
        durability: Durability,
        segment_limit: u64,
    ) -> Self {
        LogWriter {
            sink: None,
            sink_from: 0,
            sink_lsn: next_lsn,
            vfs,
            dir: dir.to_path_buf(),
            file: None,
            seq,
            generation,
            next_lsn,
            buf: Vec::with_capacity(64 << 10),
            seg_bytes: 0,
            segment_limit: segment_limit.max(SEGMENT_HEAD_LEN as u64 + 1),
            durability,
            unsynced_records: 0,
            last_sync: Instant::now(),
            poisoned: None,
            stats: LogStats::default(),
            slots: FunctionSlots::default(),
        }
    }

    fn start_segment(&mut self, seq: u64) -> Result<()> {
        let path = self.dir.join(segment_name(seq));
        // A segment is written under a temporary name, its header made
        // durable, then renamed and the directory synced: a file with a
        // segment's name always has a whole header, so a named segment
        // whose header does not read was damaged, never torn by a crash.
        // A temporary left by a crash or a failure is removed at start.
        let tmp = self.dir.join(segment_temp_name(seq));
        let header = segment_header(self.generation, seq, self.next_lsn);
        let res = self.vfs.create(&tmp).and_then(|mut f| {
            f.write_all(&header)?;
            f.sync()?;
            Ok(f)
        });
        let file = match res {
            Ok(f) => f,
            Err(e) => {
                let _ = self.vfs.remove(&tmp);
                return Err(self.poison(Error::from(e).in_file(&tmp)));
            }
        };
        if let Err(e) = self.vfs.rename(&tmp, &path) {
            let _ = self.vfs.remove(&tmp);
            return Err(self.poison(Error::from(e).in_file(&path)));
        }
        if let Err(e) = self.vfs.sync_dir(&self.dir) {
            return Err(self.poison(Error::from(e).in_file(&self.dir)));
        }
        self.file = Some(file);
        self.seq = seq;
        self.stats.writes += 1;
        self.stats.syncs += 1;
        self.seg_bytes = SEGMENT_HEAD_LEN as u64;
        self.stats.segments += 1;
        Ok(())
    }

    fn poison(&mut self, e: Error) -> Error {
        self.poison_with(e.to_string());
        e
    }

    /// Poison the log: every later write returns [`Error::Poisoned`] with
    /// `reason` (the first reason given is kept).
    pub fn poison_with(&mut self, reason: String) {
        if self.poisoned.is_none() {
            self.poisoned = Some(reason);
        }
        self.file = None;
        self.buf.clear();
        self.sink_from = 0;
    }

    /// Hand every later commit to `sink` before it is written locally.
    pub fn set_sink(&mut self, sink: Option<Arc<dyn CommitSink>>) {
        self.sink = sink;
        self.sink_from = self.buf.len();
        self.sink_lsn = self.next_lsn;
    }

    /// Hand the records appended since the last hand-off to the sink.
    fn replicate(&mut self) -> Result<()> {
        let Some(sink) = &self.sink else { return Ok(()) };
        if self.next_lsn == self.sink_lsn {
            return Ok(());
        }
        let (first, last) = (Lsn(self.sink_lsn), Lsn(self.next_lsn - 1));
        let res = match self.buf.get(self.sink_from..) {
            Some(framed) => sink.commit(first, last, framed),
            None => Err(Error::Invariant("the replicated records left the log buffer".into())),
        };
        if let Err(e) = res {
            // The refused records go; those of acknowledged commits that
            // the buffer still holds (durability `None`) are written first.
            self.buf.truncate(self.sink_from);
            self.next_lsn = self.sink_lsn;
            let _ = self.write_out();
            return Err(self.poison(e));
        }
        self.sink_from = self.buf.len();
        self.sink_lsn = self.next_lsn;
        Ok(())
    }

    /// Append records framed elsewhere (a replica's copy of a leader's
    /// commits): `framed` must hold whole commits whose first record has
    /// this log's next LSN; they are checked as recovery reads them
    /// ([`super::reader::visit_framed`]) before anything is appended, then
    /// committed with this log's durability. Returns the last LSN.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for frames that do not read as whole commits
    /// from the next LSN (nothing appended); as [`LogWriter::commit`].
    pub fn append_framed(&mut self, framed: &[u8], limits: &crate::storage::codec::Limits) -> Result<Lsn> {
        self.live()?;
        let last = super::reader::visit_framed(framed, self.next_lsn, limits, &mut |_| Ok(true))?;
        self.framed_with(|w| {
            w.buf.extend_from_slice(framed);
            w.next_lsn = last + 1;
            Ok(())
        })?;
        self.commit()?;
        Ok(Lsn(last))
    }

    fn live(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// The reason the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// LSN the next record gets.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next_lsn)
    }

    /// LSN of the last record appended (0 before the first): the state's
    /// LSN once the commit holding it is applied.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn - 1)
    }

    /// Current segment sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Generation of the segments this writer writes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// The durability setting.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    #[inline]
    fn record(&mut self, ty: RecordType, body: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; RECORD_HEAD_LEN]);
        body(&mut self.buf)?;
        let len = self.buf.len() - start - RECORD_HEAD_LEN;
        let len = u32::try_from(len)
            .map_err(|_| Error::Serialization(format!("log record of {len} bytes exceeds 4 GiB")))?;
        let h = &mut self.buf[start..start + RECORD_HEAD_LEN];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4] = ty as u8;
        h[8..16].copy_from_slice(&self.next_lsn.to_le_bytes());
        let c = crc(&self.buf[start..]);
        self.buf.extend_from_slice(&c.to_le_bytes());
        self.next_lsn += 1;
        Ok(())
    }

    /// Frame a delta record: header and fixed body fields go in as one
    /// block, after a single reserve for the whole frame.
    #[inline]
    fn delta_record(&mut self, d: &crate::delta::Delta) -> Result<()> {
        let body = delta_body_len(d);
        let len = u32::try_from(body)
            .map_err(|_| Error::Serialization(format!("log record of {body} bytes exceeds 4 GiB")))?;
        let mut head = [0u8; RECORD_HEAD_LEN + DELTA_HEAD_LEN];
        head[0..4].copy_from_slice(&len.to_le_bytes());
        head[4] = RecordType::Delta as u8;
        head[8..16].copy_from_slice(&self.next_lsn.to_le_bytes());
        head[RECORD_HEAD_LEN..].copy_from_slice(&delta_head(d)?);
        let start = self.buf.len();
        self.buf.reserve(RECORD_HEAD_LEN + body as usize + RECORD_TAIL_LEN);
        self.buf.extend_from_slice(&head);
        encode_delta_rest(d, &mut self.buf);
        debug_assert_eq!(self.buf.len() - start, RECORD_HEAD_LEN + body as usize);
        let c = crc(&self.buf[start..]);
        self.buf.extend_from_slice(&c.to_le_bytes());
        self.next_lsn += 1;
        Ok(())
    }

    /// Frame the delta record of a user update (source user, no tag):
    /// the same bytes [`LogWriter::append`] writes for the equivalent
    /// [`Change::Apply`], built without an owned [`crate::Delta`]. A small
    /// sparse record is assembled and checksummed on the stack and enters
    /// the buffer as one copy; otherwise the frame, delta and payload heads
    /// go in as one block and the payload body after them.
    #[inline]
    fn user_delta_record(&mut self, id: u64, u: &crate::delta::change::Update, timestamp: u64) -> Result<()> {
        const FIXED: usize = RECORD_HEAD_LEN + DELTA_HEAD_LEN + PAYLOAD_HEAD_LEN;
        const STACK: usize = 128;
        let body = DELTA_HEAD_LEN as u64 + u.payload.encoded_len();
        let len = u32::try_from(body)
            .map_err(|_| Error::Serialization(format!("log record of {body} bytes exceeds 4 GiB")))?;
        let mut rec = [0u8; STACK];
        rec[0..4].copy_from_slice(&len.to_le_bytes());
        rec[4] = RecordType::Delta as u8;
        rec[8..16].copy_from_slice(&self.next_lsn.to_le_bytes());
        let d = &mut rec[RECORD_HEAD_LEN..];
        d[0..8].copy_from_slice(&id.to_le_bytes());
        d[8..16].copy_from_slice(&u.page.0.to_le_bytes());
        d[16..24].copy_from_slice(&timestamp.to_le_bytes());
        if let Some(b) = u.base_epoch {
            d[24..32].copy_from_slice(&b.0.to_le_bytes());
            d[32] = FLAG_BASE;
        }
        // Source 0 (user), reserved, provenance and tag lengths: all zero.
        rec[RECORD_HEAD_LEN + DELTA_HEAD_LEN..FIXED].copy_from_slice(&payload_head(&u.payload));
        let framed = RECORD_HEAD_LEN + body as usize + RECORD_TAIL_LEN;
        match &u.payload {
            Payload::Sparse(s) if framed <= STACK => {
                let mut at = FIXED;
                for r in s.runs() {
                    rec[at..at + 8].copy_from_slice(&r.offset.to_le_bytes());
                    rec[at + 8..at + 16].copy_from_slice(&r.len.to_le_bytes());
                    at += 16;
                }
                let data = s.data();
                copy_small(&mut rec[at..at + data.len()], data);
                at += data.len();
                let c = crc(&rec[..at]);
                rec[at..at + RECORD_TAIL_LEN].copy_from_slice(&c.to_le_bytes());
                debug_assert_eq!(at + RECORD_TAIL_LEN, framed);
                self.buf.extend_from_slice(&rec[..framed]);
            }
            payload => {
                let start = self.buf.len();
                self.buf.reserve(framed);
                self.buf.extend_from_slice(&rec[..FIXED]);
                encode_payload_body(payload, &mut self.buf);
                debug_assert_eq!(self.buf.len() - start, RECORD_HEAD_LEN + body as usize);
                let c = crc(&self.buf[start..]);
                self.buf.extend_from_slice(&c.to_le_bytes());
            }
        }
        self.next_lsn += 1;
        Ok(())
    }

    /// Frame user updates as one atomic batch, exactly as [`LogWriter::append`]
    /// frames the [`Change::Apply`] deltas the commit path makes of them:
    /// update `i` gets delta id `first_id + i` and timestamp
    /// `first_timestamp + i`, source user and no tag. Nothing is written yet:
    /// call [`LogWriter::commit`].
    ///
    /// # Errors
    /// As [`LogWriter::append`].
    pub fn append_updates(
        &mut self,
        updates: &[crate::delta::change::Update],
        first_id: u64,
        first_timestamp: u64,
    ) -> Result<std::ops::RangeInclusive<Lsn>> {
        self.framed(updates.len(), |w, i| {
            w.user_delta_record(first_id + i as u64, &updates[i], first_timestamp + i as u64)
        })
    }

    /// Frame derived deltas `from..` of a propagation as one derived record
    /// (docs/FORMAT.md) of about [`DERIVED_RECORD_BYTES`] at most (one delta
    /// more when it alone is larger): delta `i` has id `first_id + i` and
    /// timestamp `first_ts + i`. Returns the index of the first delta left.
    fn derived_record<'a>(
        &mut self,
        (from, n): (usize, usize),
        (first_id, first_ts): (u64, u64),
        each: &impl Fn(usize) -> DerivedEntry<'a>,
    ) -> Result<usize> {
        const HEAD: usize = RECORD_HEAD_LEN + DERIVED_HEAD_LEN;
        let Self { buf, slots, next_lsn, .. } = self;
        let start = buf.len();
        // Zeroed ahead of the entries, as much again as the record holds
        // (from 256 bytes to 64 KiB at a time).
        buf.resize(start + HEAD + 256, 0);
        slots.reset();
        let (mut at, mut i) = (start + HEAD, from);
        while i < n && (i == from || at - start < DERIVED_RECORD_BYTES) {
            let e = each(i);
            let room = at + e.bound() + RECORD_TAIL_LEN;
            if room > buf.len() {
                buf.resize(room.max(buf.len() + (at - start).clamp(256, 64 << 10)), 0);
            }
            at = slots.put_entry(buf, at, &e);
            i += 1;
        }
        let len = at - start - RECORD_HEAD_LEN;
        let len = u32::try_from(len)
            .map_err(|_| Error::Serialization(format!("log record of {len} bytes exceeds 4 GiB")))?;
        let rec = &mut buf[start..];
        rec[0..4].copy_from_slice(&len.to_le_bytes());
        rec[4] = RecordType::Derived as u8;
        rec[8..16].copy_from_slice(&next_lsn.to_le_bytes());
        let h = &mut rec[RECORD_HEAD_LEN..HEAD];
        h[0..4].copy_from_slice(&((i - from) as u32).to_le_bytes());
        h[8..16].copy_from_slice(&(first_id + from as u64).to_le_bytes());
        h[16..24].copy_from_slice(&(first_ts + from as u64).to_le_bytes());
        let end = at - start;
        let c = crc(&rec[..end]);
        rec[end..end + RECORD_TAIL_LEN].copy_from_slice(&c.to_le_bytes());
        buf.truncate(at + RECORD_TAIL_LEN);
        *next_lsn += 1;
        Ok(i)
    }

    /// Frame the `n` derived deltas of a propagation (source propagation,
    /// no base epoch, no tag; delta `i` with id `first_id + i` and timestamp
    /// `first_ts + i`, described by `each(i)`) as derived records of about
    /// [`DERIVED_RECORD_BYTES`] at most, one atomic batch when there are
    /// several. They read as the [`Change::Apply`] deltas with
    /// [`crate::Source::Propagation`] they stand for. Nothing is written
    /// yet: call [`LogWriter::commit`].
    ///
    /// # Errors
    /// As [`LogWriter::append`]; [`Error::Serialization`] when the ids or
    /// timestamps would pass `u64::MAX`.
    pub(crate) fn append_derived<'a>(
        &mut self,
        n: usize,
        first: (u64, u64),
        each: impl Fn(usize) -> DerivedEntry<'a>,
    ) -> Result<std::ops::RangeInclusive<Lsn>> {
        if first.0.checked_add(n as u64).is_none() || first.1.checked_add(n as u64).is_none() {
            return Err(Error::Serialization("derived delta ids or timestamps overflow".into()));
        }
        self.framed_with(|w| {
            let (mark, mut records) = (w.buf.len(), 0u32);
            let mut from = 0;
            while from < n {
                from = w.derived_record((from, n), first, &each)?;
                records += 1;
                if records == 1 && from < n {
                    // A second record follows: the first opens a batch
                    // (its count written once known).
                    w.insert_batch_begin(mark);
                }
            }
            if records > 1 {
                w.end_batch(mark, records)?;
            }
            Ok(())
        })
    }

    /// Frame user updates (as [`LogWriter::append_updates`] frames them,
    /// update `i` with id `first_id + i` and timestamp `first_ts + i`) and
    /// the `n` derived deltas of their propagation after them (as
    /// [`LogWriter::append_derived`] frames them, from the next id and
    /// timestamp on) as one atomic batch. Nothing is written yet: call
    /// [`LogWriter::commit`].
    ///
    /// # Errors
    /// As [`LogWriter::append_derived`].
    pub(crate) fn append_propagated<'a>(
        &mut self,
        updates: &[crate::delta::change::Update],
        (first_id, first_ts): (u64, u64),
        n: usize,
        each: impl Fn(usize) -> DerivedEntry<'a>,
    ) -> Result<std::ops::RangeInclusive<Lsn>> {
        let users = updates.len() as u64;
        if n == 0 {
            return self.append_updates(updates, first_id, first_ts);
        }
        let derived = match (first_id.checked_add(users), first_ts.checked_add(users)) {
            (Some(id), Some(ts)) if users > 0 => (id, ts),
            (Some(_), Some(_)) => return self.append_derived(n, (first_id, first_ts), each),
            _ => return Err(Error::Serialization("delta ids or timestamps overflow".into())),
        };
        if derived.0.checked_add(n as u64).is_none() || derived.1.checked_add(n as u64).is_none() {
            return Err(Error::Serialization("derived delta ids or timestamps overflow".into()));
        }
        self.framed_with(|w| {
            let mark = w.buf.len();
            w.record(RecordType::BatchBegin, |b| {
                put_u32(b, 0);
                put_u32(b, 0);
                Ok(())
            })?;
            let lsn0 = w.next_lsn;
            for (i, u) in updates.iter().enumerate() {
                w.user_delta_record(first_id + i as u64, u, first_ts + i as u64)?;
            }
            let mut from = 0;
            while from < n {
                from = w.derived_record((from, n), derived, &each)?;
            }
            let records = u32::try_from(w.next_lsn - lsn0)
                .map_err(|_| Error::Serialization("a batch of more than 2^32 records".into()))?;
            w.end_batch(mark, records)
        })
    }

    /// Close the batch whose begin marker is at `buf[mark..]` after its
    /// `records` records: its end marker, and the count in its begin marker.
    fn end_batch(&mut self, mark: usize, records: u32) -> Result<()> {
        self.record(RecordType::BatchEnd, |b| {
            put_u32(b, records);
            put_u32(b, 0);
            Ok(())
        })?;
        let h = &mut self.buf[mark..mark + MARKER_LEN];
        h[RECORD_HEAD_LEN..RECORD_HEAD_LEN + 4].copy_from_slice(&records.to_le_bytes());
        let c = crc(&h[..MARKER_LEN - RECORD_TAIL_LEN]);
        h[MARKER_LEN - RECORD_TAIL_LEN..].copy_from_slice(&c.to_le_bytes());
        Ok(())
    }

    /// Put a batch begin marker before the one record framed at
    /// `buf[mark..]`, taking its LSN (its count and CRC are left for
    /// [`LogWriter::end_batch`] to write); the record moves to the next LSN
    /// (its frame's LSN and CRC written again).
    fn insert_batch_begin(&mut self, mark: usize) {
        let lsn = u64::from_le_bytes(self.buf[mark + 8..mark + 16].try_into().unwrap_or_default());
        let mut m = [0u8; MARKER_LEN];
        m[0..4].copy_from_slice(&8u32.to_le_bytes());
        m[4] = RecordType::BatchBegin as u8;
        m[8..16].copy_from_slice(&lsn.to_le_bytes());
        self.buf.splice(mark..mark, m);
        let rec = &mut self.buf[mark + MARKER_LEN..];
        rec[8..16].copy_from_slice(&(lsn + 1).to_le_bytes());
        let end = rec.len() - RECORD_TAIL_LEN;
        let c = crc(&rec[..end]);
        rec[end..].copy_from_slice(&c.to_le_bytes());
        self.next_lsn += 1;
    }

    /// Frame `n` records as one atomic batch (begin/end markers around more
    /// than one), `each(self, i)` writing record `i`, and account for them;
    /// on an error the buffer and the next LSN are as they were.
    fn framed(
        &mut self,
        n: usize,
        mut each: impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<std::ops::RangeInclusive<Lsn>> {
        self.framed_with(|w| w.batch_records(n, &mut each))
    }

    /// Frame what `records` writes (whole committed units) and account for
    /// it; on an error the buffer and the next LSN are as they were.
    fn framed_with(
        &mut self,
        records: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<std::ops::RangeInclusive<Lsn>> {
        self.live()?;
        if self.seg_bytes >= self.segment_limit {
            self.rotate()?;
        }
        let (mark, lsn0) = (self.buf.len(), self.next_lsn);
        let res = records(self);
        if let Err(e) = res {
            self.buf.truncate(mark);
            self.next_lsn = lsn0;
            return Err(e);
        }
        let added = (self.buf.len() - mark) as u64;
        self.seg_bytes += added;
        self.stats.bytes += added;
        self.stats.records += self.next_lsn - lsn0;
        self.unsynced_records += self.next_lsn - lsn0;
        Ok(Lsn(lsn0)..=Lsn(self.next_lsn - 1))
    }

    fn batch_records(
        &mut self,
        n: usize,
        each: &mut impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<()> {
        let count = u32::try_from(n)
            .map_err(|_| Error::Serialization(format!("a batch of {n} changes is too large")))?;
        let marker = |b: &mut Vec<u8>| {
            put_u32(b, count);
            put_u32(b, 0);
            Ok(())
        };
        if n > 1 {
            self.record(RecordType::BatchBegin, marker)?;
        }
        for i in 0..n {
            each(self, i)?;
        }
        if n > 1 {
            self.record(RecordType::BatchEnd, marker)?;
        }
        Ok(())
    }

    /// Frame a due record: propagation work queued at a checkpoint (pages
    /// written whose data children are due, derived pages to recompute).
    /// Nothing is written yet: call [`LogWriter::commit`] or
    /// [`LogWriter::sync`].
    ///
    /// # Errors
    /// As [`LogWriter::append`].
    pub(crate) fn append_due(&mut self, written: &[PageId], forced: &[PageId]) -> Result<()> {
        self.append_page_lists(RecordType::Due, &[written, forced])
    }

    /// Frame a stale record: pages a control parent's write left stale and
    /// that were not written since, at a checkpoint. Nothing is written
    /// yet: call [`LogWriter::commit`] or [`LogWriter::sync`].
    ///
    /// # Errors
    /// As [`LogWriter::append`].
    pub(crate) fn append_stale(&mut self, pages: &[PageId]) -> Result<()> {
        self.append_page_lists(RecordType::Stale, &[pages])
    }

    /// Frame a record of page lists (due, stale): each list's count as a
    /// u32, then every list's ids as u64s, in order.
    fn append_page_lists(&mut self, kind: RecordType, lists: &[&[PageId]]) -> Result<()> {
        let Ok(counts) =
            lists.iter().map(|l| u32::try_from(l.len())).collect::<std::result::Result<Vec<u32>, _>>()
        else {
            return Err(Error::Serialization(format!(
                "too many pages in a {} record",
                RecordType::name(kind as u8)
            )));
        };
        self.framed(1, |log, _| {
            log.record(kind, |b| {
                for &n in &counts {
                    put_u32(b, n);
                }
                for p in lists.iter().copied().flatten() {
                    put_u64(b, p.0);
                }
                Ok(())
            })
        })
        .map(drop)
    }

    /// Frame a settled record: a propagation ran and changed no page (so
    /// that recovery does not queue again what the writes before it
    /// queued). Nothing is written yet: call [`LogWriter::commit`].
    ///
    /// # Errors
    /// As [`LogWriter::append`].
    pub(crate) fn append_settled(&mut self) -> Result<()> {
        self.framed(1, |log, _| log.record(RecordType::Settled, |_| Ok(()))).map(drop)
    }

    /// Frame `changes` as one atomic batch (begin/end markers around more than
    /// one change) into the buffer and return the LSN range they occupy.
    /// Nothing is written yet: call [`LogWriter::commit`].
    ///
    /// # Errors
    /// [`Error::Poisoned`]; [`Error::Serialization`] for a record over 4 GiB
    /// (the buffer is then unchanged); [`Error::Io`] when rolling to a new
    /// segment fails (the log is then poisoned).
    pub fn append(&mut self, changes: &[Change]) -> Result<std::ops::RangeInclusive<Lsn>> {
        self.framed(changes.len(), |w, i| w.change_record(&changes[i]))
    }

    /// Frame one change as its record.
    fn change_record(&mut self, c: &Change) -> Result<()> {
        match c {
            Change::CreatePage { id, len, location, meta } => self.record(RecordType::CreatePage, |b| {
                put_u64(b, id.0);
                put_u64(b, *len);
                put_location(b, *location);
                put_metadata(b, meta);
                Ok(())
            }),
            Change::DeletePage { id } => self.record(RecordType::DeletePage, |b| {
                put_u64(b, id.0);
                Ok(())
            }),
            Change::Apply(d) => self.delta_record(d),
            other => {
                let rec = super::GraphRecord::of(other).ok_or_else(|| {
                    Error::Serialization(format!("no log record type for change {other:?}"))
                })?;
                self.record(RecordType::Graph, |b| {
                    let bytes = postcard::to_stdvec(&rec)?;
                    b.extend_from_slice(&bytes);
                    Ok(())
                })
            }
        }
    }

    fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = match self.file.as_mut() {
            Some(f) => f.write_all(&self.buf),
            None => return Err(Error::Poisoned("the log has no open segment".into())),
        };
        if let Err(e) = res {
            let path = self.dir.join(segment_name(self.seq));
            return Err(self.poison(Error::from(e).in_file(path)));
        }
        self.stats.writes += 1;
        self.buf.clear();
        self.sink_from = 0;
        Ok(())
    }

    /// Reach the configured durability for everything appended so far.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or the [`Error::Io`] that poisons the log now.
    pub fn commit(&mut self) -> Result<()> {
        self.live()?;
        self.replicate()?;
        match self.durability {
            Durability::None => {
                if self.buf.len() >= BUFFER_BYTES {
                    self.write_out()?;
                }
            }
            Durability::Flush => self.write_out()?,
            Durability::Fsync { every_records, every_ms } => {
                self.write_out()?;
                let by_count = every_records > 0 && self.unsynced_records >= every_records;
                let by_time = every_ms > 0 && self.last_sync.elapsed().as_millis() as u64 >= every_ms;
                if by_count || by_time || (every_records == 0 && every_ms == 0) {
                    self.fsync()?;
                }
            }
        }
        self.stats.commits += 1;
        Ok(())
    }

    fn fsync(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let res = match self.file.as_mut() {
            Some(f) => f.sync(),
            None => return Err(Error::Poisoned("the log has no open segment".into())),
        };
        let took = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.sync_nanos = self.stats.sync_nanos.saturating_add(took);
        self.stats.max_sync_nanos = self.stats.max_sync_nanos.max(took);
        if let Err(e) = res {
            // Never retried: after a failed fsync the kernel may have dropped
            // the dirty pages, so a later "successful" fsync proves nothing.
            let path = self.dir.join(segment_name(self.seq));
            return Err(self.poison(Error::from(e).in_file(path)));
        }
        self.stats.syncs += 1;
        self.unsynced_records = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Write and fsync everything appended so far, whatever the durability.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or the [`Error::Io`] that poisons the log now.
    pub fn sync(&mut self) -> Result<()> {
        self.live()?;
        self.replicate()?;
        self.write_out()?;
        self.fsync()
    }

    /// Sync the current segment and start the next one; returns the new
    /// segment's sequence number. Every earlier segment is then complete.
    ///
    /// # Errors
    /// As [`LogWriter::sync`].
    pub fn rotate(&mut self) -> Result<u64> {
        self.sync()?;
        self.file = None;
        self.start_segment(self.seq + 1)?;
        Ok(self.seq)
    }

    /// Close the log cleanly: sync the current segment and start an empty
    /// one whose header names the next LSN (when the current segment holds
    /// records; otherwise its own header does). Every record written so far
    /// is then pinned by a header in another file, so that a later cut of the
    /// closed segment (a truncation, a lost block) reads as missing records,
    /// never as a torn tail. Returns the sequence number of the segment
    /// the log now ends in.
    ///
    /// # Errors
    /// As [`LogWriter::sync`].
    pub fn close(&mut self) -> Result<u64> {
        if self.seg_bytes == SEGMENT_HEAD_LEN as u64 {
            // No record in this segment: its header already names the next LSN.
            self.sync()?;
            return Ok(self.seq);
        }
        self.rotate()
    }

    /// Start the next segment without syncing the current one: only for
    /// when a durable checkpoint covers every record appended so far (they
    /// are still handed to the OS, so the old segment stays a faithful copy
    /// until it is removed; recovery from the checkpoint skips it). Returns
    /// the new segment's sequence number.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or the [`Error::Io`] that poisons the log now.
    pub fn rotate_covered(&mut self) -> Result<u64> {
        self.live()?;
        self.write_out()?;
        self.unsynced_records = 0;
        self.file = None;
        self.start_segment(self.seq + 1)?;
        Ok(self.seq)
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Best effort, never panics: hand buffered records to the OS.
        if self.poisoned.is_none() {
            let _ = self.write_out();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::change::Update;
    use crate::delta::{Delta, DenseDelta, Payload, Source, SparseDelta};
    use crate::storage::codec::Limits;
    use crate::storage::vfs::SimVfs;
    use shared_types::{DeltaId, Epoch, PageId};

    fn log_bytes(f: impl FnOnce(&mut LogWriter)) -> Vec<u8> {
        let vfs = Arc::new(SimVfs::new());
        let dir = Path::new("/log");
        vfs.create_dir_all(dir).unwrap();
        let mut w = LogWriter::open(vfs.clone(), dir, 1, 1, 5, Durability::Flush, 1 << 30).unwrap();
        f(&mut w);
        w.commit().unwrap();
        vfs.read(&dir.join(segment_name(1))).unwrap()
    }

    fn sample_updates() -> Vec<Update> {
        let big_runs: Vec<(u64, Vec<u8>)> = (0..9).map(|k| (k * 10, vec![k as u8 + 1; 3])).collect();
        vec![
            Update::new(
                PageId(3),
                Payload::Sparse(SparseDelta::from_pairs([(5u64, &[1u8, 2, 3][..])]).unwrap()),
            ),
            Update::new(
                PageId(3),
                Payload::Sparse(SparseDelta::from_pairs([(0u64, &[9u8; 16][..])]).unwrap()),
            )
            .at_epoch(Epoch(7)),
            Update::new(
                PageId(4),
                Payload::Sparse(SparseDelta::from_pairs(big_runs.iter().map(|(o, d)| (*o, &d[..]))).unwrap()),
            ),
            Update::new(
                PageId(4),
                Payload::Sparse(SparseDelta::from_pairs([(1u64, &[4u8; 40][..])]).unwrap()),
            ),
            Update::new(PageId(5), Payload::Full(vec![6; 100])),
            Update::new(
                PageId(6),
                Payload::Dense(DenseDelta::from_options(&[Some(1), None, Some(3), None, None]).unwrap()),
            ),
            Update::new(PageId(6), Payload::Sparse(SparseDelta::default())),
        ]
    }

    /// The changes user `updates` stand for: update `i` with id
    /// `first_id + i` and timestamp `first_ts + i`.
    fn user_changes(updates: &[Update], first_id: u64, first_ts: u64) -> Vec<Change> {
        updates
            .iter()
            .enumerate()
            .map(|(i, u)| {
                Change::Apply(Delta {
                    id: DeltaId(first_id + i as u64),
                    page: u.page,
                    base_epoch: u.base_epoch,
                    payload: u.payload.clone(),
                    source: Source::User,
                    tag: None,
                    timestamp: first_ts + i as u64,
                })
            })
            .collect()
    }

    #[test]
    fn user_updates_frame_like_the_equivalent_changes() {
        for n in [0usize, 1, 2, 7] {
            let updates: Vec<Update> = sample_updates().into_iter().take(n).collect();
            let changes = user_changes(&updates, 40, 90);
            let generic = log_bytes(|w| {
                w.append(&changes).unwrap();
            });
            let fast = log_bytes(|w| {
                let lsns = w.append_updates(&updates, 40, 90).unwrap();
                assert_eq!(lsns.end().0 + 1 - lsns.start().0, if n > 1 { n as u64 + 2 } else { n as u64 });
            });
            assert_eq!(generic, fast, "{n} updates");
        }
    }

    /// Every delta a scan of the log `bytes` (segment 1 of `/log`, first
    /// LSN 5 as [`log_bytes`] writes it) delivers,
    /// with its LSN.
    fn scanned(bytes: &[u8]) -> Vec<(u64, Delta)> {
        let vfs = SimVfs::new();
        let dir = Path::new("/log");
        vfs.create_dir_all(dir).unwrap();
        vfs.create(&dir.join(segment_name(1))).unwrap().write_all(bytes).unwrap();
        let mut out = Vec::new();
        let limits = crate::storage::codec::Limits::default();
        super::super::reader::scan(&vfs, dir, 4, super::super::RecoveryMode::Strict, &limits, &mut |c| {
            for (lsn, r) in c {
                match r {
                    super::super::reader::Record::Delta(v) => out.push((*lsn, v.to_delta()?)),
                    other => panic!("unexpected record {other:?}"),
                }
            }
            Ok(true)
        })
        .unwrap();
        out
    }

    type Sample = (String, Vec<(PageId, Epoch)>, Payload);

    /// (function, parents, payload): short and long names, no parent to
    /// many, every payload kind, small and large.
    fn derived_samples() -> Vec<Sample> {
        let big_runs: Vec<(u64, Vec<u8>)> = (0..12).map(|k| (k * 40, vec![k as u8; 5])).collect();
        vec![
            ("copy".into(), vec![(PageId(1), Epoch(4))], Payload::Full(vec![7; 8])),
            (
                "sum".into(),
                vec![(PageId(1), Epoch(4)), (PageId(2), Epoch(9)), (PageId(1), Epoch(4))],
                Payload::Dense(DenseDelta::from_options(&[Some(1), None, Some(3), None, None]).unwrap()),
            ),
            (
                "f".repeat(300),
                vec![(PageId(8), Epoch(1))],
                Payload::Sparse(SparseDelta::from_pairs([(3u64, &[1u8, 2][..])]).unwrap()),
            ),
            (
                "wide".into(),
                (0..20).map(|i| (PageId(i * 1000), Epoch(u64::MAX - i))).collect(),
                Payload::Sparse(SparseDelta::from_pairs(big_runs.iter().map(|(o, d)| (*o, &d[..]))).unwrap()),
            ),
            ("nil".into(), vec![], Payload::Full(vec![1; 600])),
            ("empty".into(), vec![(PageId(3), Epoch(0))], Payload::Sparse(SparseDelta::default())),
        ]
    }

    /// The deltas `samples[pick[i]]` stand for, as changes (ids from 70,
    /// timestamps from 20, pages from 100, function version `3 + pick`,
    /// or 9 for the key `vary` at odd positions).
    fn derived_changes(samples: &[Sample], pick: &[usize], vary: Option<usize>) -> Vec<Change> {
        pick.iter()
            .enumerate()
            .map(|(i, &k)| {
                let (f, parents, p) = &samples[k];
                Change::Apply(Delta {
                    id: DeltaId(70 + i as u64),
                    page: PageId(100 + i as u64 * 300),
                    base_epoch: None,
                    payload: p.clone(),
                    source: Source::Propagation(crate::delta::Provenance {
                        function: Arc::from(f.as_str()),
                        version: if vary == Some(k) && i % 2 == 1 { 9 } else { 3 + k as u32 },
                        parents: parents.clone(),
                    }),
                    tag: None,
                    timestamp: 20 + i as u64,
                })
            })
            .collect()
    }

    /// The payload encoding of each delta of `changes`.
    fn payload_encodings(changes: &[Change]) -> Vec<Vec<u8>> {
        changes
            .iter()
            .map(|c| {
                let Change::Apply(d) = c else { unreachable!() };
                let mut e = Vec::new();
                crate::storage::codec::delta::encode_payload(&d.payload, &mut e);
                e
            })
            .collect()
    }

    /// The derived entry of derived delta `c` (function key `key`, payload
    /// encoding `payload`).
    fn entry_of<'a>(c: &'a Change, key: usize, payload: &'a [u8]) -> DerivedEntry<'a> {
        let Change::Apply(d) = c else { unreachable!() };
        let Source::Propagation(p) = &d.source else { unreachable!() };
        DerivedEntry {
            page: d.page,
            func: key as u32,
            function: &p.function,
            version: p.version,
            parents: &p.parents,
            payload,
        }
    }

    /// Frame `changes` (all derived) with `append_derived`, each function
    /// keyed by its sample index `pick[i]`.
    fn derived_log(changes: &[Change], pick: &[usize]) -> (Vec<u8>, u64) {
        let encoded = payload_encodings(changes);
        let mut lsns = 0;
        let bytes = log_bytes(|w| {
            let r = w
                .append_derived(changes.len(), (70, 20), |i| entry_of(&changes[i], pick[i], &encoded[i]))
                .unwrap();
            lsns = if changes.is_empty() { 0 } else { r.end().0 + 1 - r.start().0 };
        });
        (bytes, lsns)
    }

    fn deltas_of(changes: &[Change]) -> Vec<Delta> {
        changes.iter().map(|c| if let Change::Apply(d) = c { d.clone() } else { unreachable!() }).collect()
    }

    #[test]
    fn derived_records_read_as_the_equivalent_changes() {
        let samples = derived_samples();
        let all: Vec<usize> = (0..samples.len()).collect();
        // Functions used again (defined once per record), and one key
        // whose version changes between deltas (defined again).
        let mixed = [0, 1, 0, 0, 3, 1, 2, 2, 0, 4, 5, 3];
        for (pick, vary) in [(&all[..0], None), (&all[..1], None), (&all[..2], None), (&all[..], None)]
            .into_iter()
            .chain([(&mixed[..], None), (&mixed[..], Some(0))])
        {
            let changes = derived_changes(&samples, pick, vary);
            let generic = log_bytes(|w| {
                w.append(&changes).unwrap();
            });
            let (compact, lsns) = derived_log(&changes, pick);
            let want = deltas_of(&changes);
            let read: Vec<Delta> = scanned(&compact).into_iter().map(|(_, d)| d).collect();
            assert_eq!(read, want, "{pick:?}");
            let generic: Vec<Delta> = scanned(&generic).into_iter().map(|(_, d)| d).collect();
            assert_eq!(generic, want, "{pick:?}");
            // One record, one LSN, whatever the count.
            assert_eq!(lsns, u64::from(!pick.is_empty()), "{pick:?}");
            assert!(compact.len() < log_bytes(|w| drop(w.append(&changes))).len() || pick.is_empty());
        }
    }

    #[test]
    fn a_write_and_its_propagation_read_as_one_commit_of_both() {
        let samples = derived_samples();
        let pick = [0usize, 1, 0, 3];
        for users in [0usize, 1, 3] {
            for derived in [0usize, 1, 4] {
                let updates: Vec<Update> = sample_updates().into_iter().take(users).collect();
                // Users' deltas from id 70 and timestamp 20, the derived after them.
                let mut changes = user_changes(&updates, 70, 20);
                let mut d = derived_changes(&samples, &pick[..derived], None);
                for c in &mut d {
                    if let Change::Apply(x) = c {
                        x.id = DeltaId(x.id.0 + users as u64);
                        x.timestamp += users as u64;
                    }
                }
                let encoded = payload_encodings(&d);
                let mut commits = 0;
                let bytes = log_bytes(|w| {
                    w.append_propagated(&updates, (70, 20), derived, |i| {
                        entry_of(&d[i], pick[i], &encoded[i])
                    })
                    .unwrap();
                });
                changes.extend(d);
                let want = deltas_of(&changes);
                // One commit holding all of them.
                let vfs = SimVfs::new();
                let dir = Path::new("/log");
                vfs.create_dir_all(dir).unwrap();
                vfs.create(&dir.join(segment_name(1))).unwrap().write_all(&bytes).unwrap();
                let limits = crate::storage::codec::Limits::default();
                super::super::reader::scan(
                    &vfs,
                    dir,
                    4,
                    super::super::RecoveryMode::Strict,
                    &limits,
                    &mut |c| {
                        commits += 1;
                        assert_eq!(c.len(), want.len());
                        Ok(true)
                    },
                )
                .unwrap();
                assert_eq!(commits, u32::from(!want.is_empty()), "{users} users, {derived} derived");
                let read: Vec<Delta> = scanned(&bytes).into_iter().map(|(_, d)| d).collect();
                assert_eq!(read, want, "{users} users, {derived} derived");
            }
        }
    }

    #[test]
    fn due_settled_and_stale_records_read_back_and_malformed_ones_are_corrupt() {
        use super::super::reader::{decode_record, read_frame, Record};
        let (written, forced) = ([PageId(3), PageId(300)], [PageId(7)]);
        let bytes = log_bytes(|w| {
            w.append_due(&written, &forced).unwrap();
            w.append_settled().unwrap();
        });
        let limits = crate::storage::codec::Limits::default();
        let first = read_frame(&bytes, SEGMENT_HEAD_LEN, 5, &limits).unwrap();
        match decode_record(&first, &limits).unwrap() {
            Record::Due { written: w, forced: f } => {
                assert_eq!((&w[..], &f[..]), (&written[..], &forced[..]))
            }
            other => panic!("{other:?}"),
        }
        let second = read_frame(&bytes, SEGMENT_HEAD_LEN + first.framed, 6, &limits).unwrap();
        assert!(matches!(decode_record(&second, &limits).unwrap(), Record::Settled));
        let stale = [PageId(4), PageId(9)];
        let bytes = log_bytes(|w| w.append_stale(&stale).unwrap());
        let third = read_frame(&bytes, SEGMENT_HEAD_LEN, 5, &limits).unwrap();
        match decode_record(&third, &limits).unwrap() {
            Record::Stale(pages) => assert_eq!(pages, stale),
            other => panic!("{other:?}"),
        }
        // Counts that do not match the body, and a settled record with a body.
        for (kind, body) in [
            (RecordType::Due, vec![2u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            (RecordType::Due, vec![0u8, 0, 0]),
            (RecordType::Settled, vec![0u8]),
            (RecordType::Stale, vec![1u8, 0, 0, 0]),
            (RecordType::Stale, vec![0u8, 0, 0, 0, 7]),
            (RecordType::Stale, vec![0u8, 0]),
        ] {
            let raw = super::super::reader::RawRecord {
                offset: 0,
                framed: 0,
                kind: kind as u8,
                lsn: 1,
                body: &body,
            };
            assert!(matches!(decode_record(&raw, &limits), Err(Error::Corrupt { .. })), "{kind:?} {body:?}");
        }
    }

    #[test]
    fn a_large_propagation_spans_several_derived_records_in_one_batch() {
        // 600 deltas of 4 KiB: about 2.4 MiB, so three records and the
        // batch markers around them, every delta read back.
        let samples: Vec<Sample> = (0..3)
            .map(|k| (format!("f{k}"), vec![(PageId(k), Epoch(k))], Payload::Full(vec![k as u8 + 1; 4096])))
            .collect();
        let pick: Vec<usize> = (0..600).map(|i| i % 3).collect();
        let changes = derived_changes(&samples, &pick, None);
        let (bytes, lsns) = derived_log(&changes, &pick);
        assert_eq!(lsns, 3 + 2, "three records and the batch markers");
        let read = scanned(&bytes);
        assert_eq!(read.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), deltas_of(&changes));
        // The deltas of one record share its LSN.
        let mut per_lsn = std::collections::BTreeMap::new();
        for (lsn, _) in &read {
            *per_lsn.entry(*lsn).or_insert(0) += 1;
        }
        assert_eq!(per_lsn.len(), 3);
        assert!(per_lsn.values().all(|&n| n < 300 && n > 50), "{per_lsn:?}");
    }

    #[test]
    fn derived_ids_past_u64_max_are_refused_and_leave_the_buffer_alone() {
        let vfs = Arc::new(SimVfs::new());
        let dir = Path::new("/log");
        vfs.create_dir_all(dir).unwrap();
        let mut w = LogWriter::open(vfs, dir, 1, 1, 5, Durability::Flush, 1 << 30).unwrap();
        let payload = [3u8, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        let e = |_| DerivedEntry {
            page: PageId(1),
            func: 0,
            function: "f",
            version: 1,
            parents: &[],
            payload: &payload,
        };
        let before = (w.buf.len(), w.next_lsn());
        assert!(matches!(w.append_derived(2, (u64::MAX - 1, 0), e), Err(Error::Serialization(_))));
        assert!(matches!(w.append_derived(2, (0, u64::MAX), e), Err(Error::Serialization(_))));
        assert_eq!((w.buf.len(), w.next_lsn()), before);
        w.append_derived(2, (u64::MAX - 2, 0), e).unwrap();
    }

    /// A sink that records what it is given, and refuses when told to.
    #[derive(Debug, Default)]
    struct Recorder {
        got: parking_lot::Mutex<Vec<(u64, u64, Vec<u8>)>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl CommitSink for Recorder {
        fn commit(&self, first: Lsn, last: Lsn, framed: &[u8]) -> Result<()> {
            if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Replication("refused".into()));
            }
            self.got.lock().push((first.0, last.0, framed.to_vec()));
            Ok(())
        }
    }

    fn create(id: u64) -> Change {
        Change::CreatePage {
            id: PageId(id),
            len: 8,
            location: crate::types::page::Location::Cpu,
            meta: Default::default(),
        }
    }

    #[test]
    fn a_sink_gets_each_commit_framed_before_the_local_log_and_a_refusal_rolls_it_back() {
        let vfs = Arc::new(SimVfs::new());
        let dir = Path::new("/log");
        vfs.create_dir_all(dir).unwrap();
        let mut w = LogWriter::open(vfs.clone(), dir, 1, 1, 1, Durability::None, 1 << 30).unwrap();
        let sink = Arc::new(Recorder::default());
        w.set_sink(Some(sink.clone()));
        w.append(&[create(1)]).unwrap();
        w.commit().unwrap();
        w.append(&[create(2), create(3)]).unwrap();
        w.commit().unwrap();
        {
            let got = sink.got.lock();
            assert_eq!(got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), [(1, 1), (2, 5)]);
            // The bytes are whole commits the reader takes from their first LSN.
            for (first, last, framed) in got.iter() {
                let end =
                    super::super::reader::visit_framed(framed, *first, &Limits::default(), &mut |_| Ok(true));
                assert_eq!(end.unwrap(), *last);
            }
        }
        // Durability `None` kept both in the buffer; a refusal writes
        // the acknowledged ones, drops the refused one and poisons.
        sink.refuse.store(true, std::sync::atomic::Ordering::Relaxed);
        w.append(&[create(4)]).unwrap();
        assert!(matches!(w.commit(), Err(Error::Replication(_))));
        assert_eq!(w.last_lsn(), Lsn(5));
        assert!(matches!(w.append(&[create(5)]), Err(Error::Poisoned(_))));
        let bytes = vfs.read(&dir.join(segment_name(1))).unwrap();
        let got = sink.got.lock();
        let expect: Vec<u8> = got.iter().flat_map(|g| g.2.iter().copied()).collect();
        assert_eq!(&bytes[SEGMENT_HEAD_LEN..], &expect[..]);
    }

    #[test]
    fn append_framed_takes_whole_commits_from_the_next_lsn_only() {
        let framed = {
            let vfs = Arc::new(SimVfs::new());
            let dir = Path::new("/a");
            vfs.create_dir_all(dir).unwrap();
            let mut w = LogWriter::open(vfs.clone(), dir, 1, 1, 1, Durability::Flush, 1 << 30).unwrap();
            w.append(&[create(1), create(2)]).unwrap();
            w.commit().unwrap();
            vfs.read(&dir.join(segment_name(1))).unwrap()[SEGMENT_HEAD_LEN..].to_vec()
        };
        let vfs = Arc::new(SimVfs::new());
        let dir = Path::new("/b");
        vfs.create_dir_all(dir).unwrap();
        let limits = Limits::default();
        let mut w = LogWriter::open(vfs.clone(), dir, 1, 1, 1, Durability::Flush, 1 << 30).unwrap();
        // Cut inside the batch, or a flipped byte: refused, nothing appended.
        assert!(matches!(w.append_framed(&framed[..framed.len() - 3], &limits), Err(Error::Corrupt { .. })));
        let mut bad = framed.clone();
        bad[20] ^= 1;
        assert!(matches!(w.append_framed(&bad, &limits), Err(Error::Corrupt { .. })));
        assert!(matches!(w.append_framed(&[], &limits), Err(Error::Corrupt { .. })));
        assert_eq!(w.next_lsn(), Lsn(1));
        assert_eq!(w.append_framed(&framed, &limits).unwrap(), Lsn(4));
        // The same records again do not follow LSN 4.
        assert!(matches!(w.append_framed(&framed, &limits), Err(Error::Corrupt { .. })));
        let bytes = vfs.read(&dir.join(segment_name(1))).unwrap();
        assert_eq!(&bytes[SEGMENT_HEAD_LEN..], &framed[..]);
    }
}
