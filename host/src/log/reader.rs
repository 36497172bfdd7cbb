//! Reading the log: segment headers, record frames, record bodies, and the
//! scan over all segments that decides what is committed, what is a torn
//! tail, what is abandoned history, and what is corruption.

use super::recovery::{Dropped, RecoveryMode, TornTail};
use super::{
    parse_segment_name, RecordType, RECORD_HEAD_LEN, RECORD_TAIL_LEN, SEGMENT_HEAD_LEN, SEGMENT_MAGIC,
    SEGMENT_VERSION,
};
use crate::change::Change;
use crate::codec::delta::DeltaView;
use crate::codec::{crc, read_location, read_metadata, Limits, Reader};
use crate::page::{Location, Metadata};
use crate::vfs::Vfs;
use crate::{Error, Result};
use shared_types::PageId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Generation: a segment of a higher generation forks the history at its first LSN.
    pub generation: u64,
    /// Sequence number (also in the file name).
    pub seq: u64,
    /// LSN of the segment's first record.
    pub first_lsn: u64,
}

/// Parse a segment header from the front of `buf`.
///
/// # Errors
/// [`Error::Corrupt`] with the offset of the bad field.
pub fn parse_segment_header(buf: &[u8]) -> Result<SegmentHeader> {
    let mut r = Reader::new(buf, 0);
    let head = r.bytes(SEGMENT_HEAD_LEN, "segment header")?;
    if head[..8] != SEGMENT_MAGIC {
        return Err(Error::corrupt_at(0, "not a log segment (bad magic)"));
    }
    let mut r = Reader::new(head, 0);
    r.bytes(8, "magic")?;
    let version = r.u32("segment version")?;
    let flags = r.u32("segment flags")?;
    let generation = r.u64("generation")?;
    let seq = r.u64("segment seq")?;
    let first_lsn = r.u64("first lsn")?;
    let stored = r.u32("segment header crc")?;
    if crc(&head[..40]) != stored {
        return Err(Error::corrupt_at(40, "segment header CRC mismatch"));
    }
    if version != SEGMENT_VERSION {
        return Err(Error::corrupt_at(8, format!("unsupported segment version {version}")));
    }
    if flags != 0 || r.u32("reserved")? != 0 {
        return Err(Error::corrupt_at(12, "unknown segment flags"));
    }
    if first_lsn == 0 {
        return Err(Error::corrupt_at(32, "first LSN is 0"));
    }
    Ok(SegmentHeader { generation, seq, first_lsn })
}

/// One framed record.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// Offset of the frame in its segment.
    pub offset: u64,
    /// Framed length (header + body + CRC).
    pub framed: usize,
    /// Type code.
    pub kind: u8,
    /// LSN.
    pub lsn: u64,
    /// Body.
    pub body: &'a [u8],
}

/// Parse the frame at `pos` and check its CRC and LSN.
///
/// # Errors
/// A reason string: the frame is not a valid record with LSN `expect_lsn`.
pub fn read_frame<'a>(
    buf: &'a [u8],
    pos: usize,
    expect_lsn: u64,
    limits: &Limits,
) -> Result<RawRecord<'a>, String> {
    let rest = &buf[pos.min(buf.len())..];
    if rest.len() < RECORD_HEAD_LEN + RECORD_TAIL_LEN {
        return Err(format!("{} bytes cannot hold a record", rest.len()));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
    if len > limits.max_record_len {
        return Err(format!("record length {len} exceeds the limit"));
    }
    let framed = RECORD_HEAD_LEN + len as usize + RECORD_TAIL_LEN;
    if framed > rest.len() {
        return Err(format!("record of {framed} bytes runs past the end of the segment"));
    }
    let (kind, flags, reserved) = (rest[4], rest[5], u16::from_le_bytes([rest[6], rest[7]]));
    let mut l = [0u8; 8];
    l.copy_from_slice(&rest[8..16]);
    let lsn = u64::from_le_bytes(l);
    let c = &rest[framed - 4..framed];
    if crc(&rest[..framed - 4]) != u32::from_le_bytes([c[0], c[1], c[2], c[3]]) {
        return Err("record CRC mismatch".into());
    }
    if kind == 0 || flags != 0 || reserved != 0 {
        return Err(format!("bad record type/flags ({kind}, {flags}, {reserved})"));
    }
    if lsn != expect_lsn {
        return Err(format!("record has LSN {lsn}, expected {expect_lsn}"));
    }
    Ok(RawRecord { offset: pos as u64, framed, kind, lsn, body: &rest[RECORD_HEAD_LEN..framed - 4] })
}

/// Whether a CRC-valid record with an LSN above `min_lsn` starts anywhere in
/// `buf[from..]`: used to tell a torn tail from corruption followed by data.
pub fn valid_record_after(buf: &[u8], from: usize, min_lsn: u64, limits: &Limits) -> Option<u64> {
    let mut pos = from;
    while pos + RECORD_HEAD_LEN + RECORD_TAIL_LEN <= buf.len() {
        let mut l = [0u8; 8];
        l.copy_from_slice(&buf[pos + 8..pos + 16]);
        let lsn = u64::from_le_bytes(l);
        if lsn > min_lsn && buf[pos + 4] != 0 && read_frame(buf, pos, lsn, limits).is_ok() {
            return Some(pos as u64);
        }
        pos += 1;
    }
    None
}

/// A decoded record.
#[derive(Clone, Debug)]
pub enum Record<'a> {
    /// A page was created.
    Create {
        /// Id.
        id: PageId,
        /// Length.
        len: u64,
        /// Location.
        location: Location,
        /// Metadata.
        meta: Metadata,
    },
    /// A page was deleted.
    Delete {
        /// Id.
        id: PageId,
    },
    /// A delta was applied.
    Delta(DeltaView<'a>),
    /// A batch of this many records follows.
    BatchBegin(u32),
    /// The batch of this many records is complete.
    BatchEnd(u32),
    /// A dependency-graph change.
    Graph(Change),
    /// An optional record this reader skips.
    Optional(u8),
}

/// Decode a record body.
///
/// # Errors
/// [`Error::Corrupt`] for a malformed body or a required type this build
/// does not know.
#[inline]
pub fn decode_record<'a>(raw: &RawRecord<'a>, limits: &Limits) -> Result<Record<'a>> {
    let base = raw.offset + RECORD_HEAD_LEN as u64;
    let mut r = Reader::new(raw.body, base);
    let rec = match RecordType::from_code(raw.kind) {
        Some(RecordType::CreatePage) => {
            let id = PageId(r.u64("page id")?);
            let len = r.u64("page length")?;
            if len == 0 || len > limits.max_page_len {
                return Err(Error::corrupt_at(base + 8, format!("page length {len} out of range")));
            }
            let location = read_location(&mut r)?;
            let meta = read_metadata(&mut r)?;
            r.finish("create record")?;
            Record::Create { id, len, location, meta }
        }
        Some(RecordType::DeletePage) => {
            let id = PageId(r.u64("page id")?);
            r.finish("delete record")?;
            Record::Delete { id }
        }
        Some(RecordType::Delta) => Record::Delta(DeltaView::parse(raw.body, base, limits)?),
        Some(t @ (RecordType::BatchBegin | RecordType::BatchEnd)) => {
            let n = r.u32("batch count")?;
            if r.u32("batch reserved")? != 0 || n < 2 {
                return Err(Error::corrupt_at(base, "malformed batch marker"));
            }
            r.finish("batch marker")?;
            if t == RecordType::BatchBegin {
                Record::BatchBegin(n)
            } else {
                Record::BatchEnd(n)
            }
        }
        Some(RecordType::Graph) => {
            // postcard bounds every length by the remaining body bytes.
            let (rec, rest): (super::GraphRecord, &[u8]) = postcard::take_from_bytes(raw.body)
                .map_err(|e| Error::corrupt_at(base, format!("malformed graph record: {e}")))?;
            if !rest.is_empty() {
                return Err(Error::corrupt_at(base, "trailing bytes after a graph record"));
            }
            Record::Graph(rec.into_change())
        }
        None if RecordType::is_optional(raw.kind) => Record::Optional(raw.kind),
        None => {
            return Err(Error::corrupt_at(
                raw.offset + 4,
                format!("unknown required record type {:#04x}", raw.kind),
            ))
        }
    };
    Ok(rec)
}

/// Per-segment facts gathered by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its header, when valid.
    pub header: Option<SegmentHeader>,
    /// Valid records read from it.
    pub records: u64,
    /// LSN range of those records.
    pub lsns: Option<(u64, u64)>,
}

/// Everything a scan learned.
#[derive(Clone, Debug, Default)]
pub struct ScanResult {
    /// LSN of the last record of the last committed batch delivered (or the start LSN).
    pub last_lsn: u64,
    /// Segments seen, in order.
    pub segments: Vec<SegmentSummary>,
    /// A torn tail that was cut.
    pub torn: Option<TornTail>,
    /// Data dropped by tolerant recovery.
    pub dropped: Vec<Dropped>,
    /// Highest segment sequence number present.
    pub max_seq: Option<u64>,
    /// Highest generation present.
    pub max_generation: u64,
    /// Whether the visitor stopped the scan.
    pub stopped: bool,
    /// Count and framed bytes of records per type code.
    pub by_type: BTreeMap<u8, (u64, u64)>,
}

/// One committed unit handed to the visitor: `(lsn, record)` pairs of one
/// commit (a single change, or a whole batch without its markers).
pub type Commit<'a, 'b> = &'b [(u64, Record<'a>)];

/// The delta records of one batch, framed back to back as the segment holds
/// them, with every frame already checked (length within the limit and the
/// segment, type [`RecordType::Delta`], flags, LSN in sequence, CRC) and the
/// batch's begin and end markers valid and matching. The bodies are not
/// decoded.
#[derive(Clone, Copy, Debug)]
pub struct DeltaFrames<'a> {
    bytes: &'a [u8],
    offset: u64,
    count: usize,
    first_lsn: u64,
}

impl<'a> DeltaFrames<'a> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none (never, for a batch).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// LSN of the last record (the batch's end marker follows it).
    pub fn last_lsn(&self) -> u64 {
        self.first_lsn + self.count as u64 - 1
    }

    /// `(absolute offset of the body in the segment, body)` of each record,
    /// in order.
    pub fn bodies(&self) -> impl Iterator<Item = (u64, &'a [u8])> {
        let (mut rest, mut at) = (self.bytes, self.offset);
        std::iter::from_fn(move || {
            let len = u32::from_le_bytes(*rest.first_chunk::<4>()?) as usize;
            let framed = RECORD_HEAD_LEN + len + RECORD_TAIL_LEN;
            let body = rest.get(RECORD_HEAD_LEN..RECORD_HEAD_LEN + len)?;
            let here = at + RECORD_HEAD_LEN as u64;
            rest = rest.get(framed..)?;
            at += framed as u64;
            Some((here, body))
        })
    }
}

/// Receives what a scan delivers.
pub trait Visitor {
    /// One committed unit, decoded; `Ok(false)` stops the scan after it.
    ///
    /// # Errors
    /// Whatever the visitor refuses the unit with: the scan stops with it.
    fn commit(&mut self, c: Commit<'_, '_>) -> Result<bool>;

    /// A committed batch of delta records only, before anything of it is
    /// decoded: `Some(go)` when the visitor has taken it whole (as
    /// [`Visitor::commit`] would, `go` as it would return), `None` to have
    /// it decoded and handed to [`Visitor::commit`] instead. A visitor that
    /// returns `None` must have changed nothing.
    fn delta_batch(&mut self, frames: DeltaFrames<'_>) -> Option<bool> {
        let _ = frames;
        None
    }

    /// Whether the scan should offer batches to [`Visitor::delta_batch`]
    /// (finding one checks its frames: work lost when the visitor declines).
    fn takes_delta_batches(&self) -> bool {
        false
    }
}

struct FnVisitor<'v>(&'v mut dyn FnMut(Commit<'_, '_>) -> Result<bool>);

impl Visitor for FnVisitor<'_> {
    fn commit(&mut self, c: Commit<'_, '_>) -> Result<bool> {
        (self.0)(c)
    }
}

/// A frame at the front of `rest` of type `kind`, with LSN `lsn`, a valid
/// CRC and zero flags: its framed length, or `None` (the general path then
/// reads it and says what is wrong).
#[inline(always)]
fn plain_frame(rest: &[u8], kind: u8, lsn: u64, limits: &Limits) -> Option<usize> {
    let head = rest.first_chunk::<RECORD_HEAD_LEN>()?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&head[8..16]);
    if u64::from(len) > limits.max_record_len
        || head[4] != kind
        || head[5] != 0
        || head[6] != 0
        || head[7] != 0
        || u64::from_le_bytes(l) != lsn
    {
        return None;
    }
    let framed = RECORD_HEAD_LEN + len as usize + RECORD_TAIL_LEN;
    let frame = rest.get(..framed)?;
    let (data, c) = frame.split_last_chunk::<RECORD_TAIL_LEN>()?;
    (crc(data) == u32::from_le_bytes(*c)).then_some(framed)
}

/// A batch marker of type `kind` for `n` records (or any valid count when
/// `n` is `None`) at the front of `rest`: `(framed length, count)`.
#[inline]
fn plain_marker(
    rest: &[u8],
    kind: RecordType,
    lsn: u64,
    n: Option<u32>,
    limits: &Limits,
) -> Option<(usize, u32)> {
    let framed = plain_frame(rest, kind as u8, lsn, limits)?;
    if framed != RECORD_HEAD_LEN + 8 + RECORD_TAIL_LEN {
        return None;
    }
    let body = rest.get(RECORD_HEAD_LEN..RECORD_HEAD_LEN + 8)?;
    let count = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    let reserved = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    (reserved == 0 && count >= 2 && n.is_none_or(|n| n == count)).then_some((framed, count))
}

/// A whole committed batch of delta records at `buf[pos..]` whose first
/// record (the begin marker) has LSN `lsn`, every frame of it valid: the
/// delta frames, the framed lengths of the begin marker, the deltas and the
/// end marker. `None` for anything else, valid or not.
#[inline]
fn delta_batch_at<'a>(
    buf: &'a [u8],
    pos: usize,
    lsn: u64,
    limits: &Limits,
) -> Option<(DeltaFrames<'a>, [usize; 3])> {
    let rest = buf.get(pos..)?;
    let (begin, n) = plain_marker(rest, RecordType::BatchBegin, lsn, None, limits)?;
    let mut at = begin;
    let mut next = lsn + 1;
    for _ in 0..n {
        at += plain_frame(rest.get(at..)?, RecordType::Delta as u8, next, limits)?;
        next += 1;
    }
    let deltas = at - begin;
    let (end, _) = plain_marker(rest.get(at..)?, RecordType::BatchEnd, next, Some(n), limits)?;
    let frames = DeltaFrames {
        bytes: rest.get(begin..at)?,
        offset: (pos + begin) as u64,
        count: n as usize,
        first_lsn: lsn + 1,
    };
    Some((frames, [begin, deltas, end]))
}

enum SegEnd {
    Clean,
    Cut,
    Stopped,
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt { file: Some(file.to_path_buf()), offset: Some(offset), reason: reason.into() }
}

/// Scan every segment of `dir`, delivering each committed unit whose LSNs
/// are above `after_lsn` to `visit` (which returns `false` to stop).
///
/// # Errors
/// [`Error::Corrupt`] for corruption that is not a torn tail (in
/// [`RecoveryMode::Strict`]) or an error from `visit`; [`Error::Io`].
pub fn scan(
    vfs: &dyn Vfs,
    dir: &Path,
    after_lsn: u64,
    mode: RecoveryMode,
    limits: &Limits,
    visit: &mut dyn FnMut(Commit<'_, '_>) -> Result<bool>,
) -> Result<ScanResult> {
    scan_with(vfs, dir, after_lsn, mode, limits, &mut FnVisitor(visit))
}

/// [`scan`] with a [`Visitor`], which may take batches of delta records
/// before they are decoded ([`Visitor::delta_batch`]).
///
/// # Errors
/// As [`scan`].
pub fn scan_with(
    vfs: &dyn Vfs,
    dir: &Path,
    after_lsn: u64,
    mode: RecoveryMode,
    limits: &Limits,
    visit: &mut dyn Visitor,
) -> Result<ScanResult> {
    let mut res = ScanResult { last_lsn: after_lsn, ..ScanResult::default() };
    let names = match vfs.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(res),
        Err(e) => return Err(Error::from(e).in_file(dir)),
    };
    let mut seqs: Vec<(u64, PathBuf)> =
        names.iter().filter_map(|n| parse_segment_name(n).map(|s| (s, dir.join(n)))).collect();
    seqs.sort();
    res.max_seq = seqs.last().map(|s| s.0);
    let load = |p: &Path| vfs.read(p).map_err(|e| Error::from(e).in_file(p));
    let mut prev_gen: Option<u64> = None;
    let mut by_type = [(0u64, 0u64); 256];
    let res =
        scan_all(vfs, &seqs, &mut res, &mut prev_gen, &mut by_type, mode, limits, visit, load).map(|()| res);
    res.map(|mut r| {
        for (k, v) in by_type.iter().enumerate() {
            if v.0 > 0 {
                r.by_type.insert(k as u8, *v);
            }
        }
        r
    })
}

#[allow(clippy::too_many_arguments)]
fn scan_all(
    vfs: &dyn Vfs,
    seqs: &[(u64, PathBuf)],
    res: &mut ScanResult,
    prev_gen: &mut Option<u64>,
    by_type: &mut [(u64, u64); 256],
    mode: RecoveryMode,
    limits: &Limits,
    visit: &mut dyn Visitor,
    load: impl Fn(&Path) -> Result<Vec<u8>>,
) -> Result<()> {
    let _ = vfs;
    let mut next_buf: Option<Vec<u8>> = match seqs.first() {
        Some((_, p)) => Some(load(p)?),
        None => None,
    };
    for i in 0..seqs.len() {
        let path = &seqs[i].1;
        let buf = next_buf.take().unwrap_or_default();
        next_buf = match seqs.get(i + 1) {
            Some((_, p)) => Some(load(p)?),
            None => None,
        };
        let is_last = next_buf.is_none();
        let nh = next_buf.as_deref().and_then(|b| parse_segment_header(b).ok());
        let mut summary = SegmentSummary {
            path: path.clone(),
            bytes: buf.len() as u64,
            header: None,
            records: 0,
            lsns: None,
        };
        let outcome =
            scan_segment(&buf, path, res, &mut summary, nh, is_last, prev_gen, by_type, limits, visit);
        res.segments.push(summary);
        match outcome {
            Ok(SegEnd::Clean) | Ok(SegEnd::Cut) => {}
            Ok(SegEnd::Stopped) => {
                res.stopped = true;
                return Ok(());
            }
            Err((e, offset)) => {
                if mode == RecoveryMode::Strict {
                    return Err(e);
                }
                res.dropped.push(Dropped {
                    file: path.clone(),
                    offset,
                    bytes: buf.len() as u64 - offset,
                    reason: e.to_string(),
                });
                for (_, p) in &seqs[i + 1..] {
                    let bytes = load(p)?.len() as u64;
                    res.dropped.push(Dropped {
                        file: p.clone(),
                        offset: 0,
                        bytes,
                        reason: "follows dropped corruption".into(),
                    });
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn scan_segment(
    buf: &[u8],
    path: &Path,
    res: &mut ScanResult,
    summary: &mut SegmentSummary,
    next: Option<SegmentHeader>,
    is_last: bool,
    prev_gen: &mut Option<u64>,
    by_type: &mut [(u64, u64); 256],
    limits: &Limits,
    visit: &mut dyn Visitor,
) -> Result<SegEnd, (Error, u64)> {
    let expected = res.last_lsn + 1;
    let h = match parse_segment_header(buf) {
        Ok(h) => h,
        Err(e) => {
            if is_last {
                res.torn = Some(TornTail { file: path.to_path_buf(), offset: 0, bytes: buf.len() as u64 });
                return Ok(SegEnd::Cut);
            }
            // A segment whose header never reached the disk, abandoned by a
            // later generation that starts exactly where the log ended.
            if next.is_some_and(|n| prev_gen.is_none_or(|g| n.generation > g) && n.first_lsn <= expected) {
                return Ok(SegEnd::Cut);
            }
            return Err((e.in_file(path), 0));
        }
    };
    summary.header = Some(h);
    res.max_generation = res.max_generation.max(h.generation);
    if prev_gen.is_some_and(|g| h.generation < g) {
        return Err((
            corrupt(
                path,
                16,
                format!("generation {} after generation {}", h.generation, prev_gen.unwrap_or(0)),
            ),
            0,
        ));
    }
    *prev_gen = Some(h.generation);
    // Segments wholly at or below the start LSN (covered by a checkpoint) are skipped.
    if next.is_some_and(|n| n.generation >= h.generation && n.first_lsn <= expected) {
        return Ok(SegEnd::Clean);
    }
    if h.first_lsn > expected {
        return Err((
            corrupt(path, 32, format!("log records {expected}..{} are missing", h.first_lsn - 1)),
            SEGMENT_HEAD_LEN as u64,
        ));
    }
    let cut = next.filter(|n| n.generation > h.generation).map(|n| n.first_lsn);
    let mut pos = SEGMENT_HEAD_LEN;
    let mut lsn = h.first_lsn;
    // Open batch: (declared count, offset of its begin record).
    let mut batch: Option<(u32, u64)> = None;
    let mut pending: Vec<(u64, Record<'_>)> = Vec::new();
    loop {
        if cut == Some(lsn) && batch.is_none() {
            return Ok(SegEnd::Cut);
        }
        if pos == buf.len() {
            break;
        }
        if batch.is_none() && visit.takes_delta_batches() {
            // A whole valid batch of deltas may go to the visitor undecoded.
            if let Some((frames, [begin, deltas, end])) = delta_batch_at(buf, pos, lsn, limits) {
                let last = lsn + frames.len() as u64 + 1;
                if last > res.last_lsn {
                    if let Some(go) = visit.delta_batch(frames) {
                        let n = frames.len() as u64;
                        summary.records += n + 2;
                        summary.lsns = Some((summary.lsns.map_or(lsn, |l| l.0), last));
                        for (kind, count, bytes) in [
                            (RecordType::BatchBegin, 1, begin),
                            (RecordType::Delta, n, deltas),
                            (RecordType::BatchEnd, 1, end),
                        ] {
                            by_type[kind as usize].0 += count;
                            by_type[kind as usize].1 += bytes as u64;
                        }
                        pos += begin + deltas + end;
                        lsn = last + 1;
                        res.last_lsn = last;
                        if !go {
                            return Ok(SegEnd::Stopped);
                        }
                        continue;
                    }
                }
            }
        }
        let raw = match read_frame(buf, pos, lsn, limits) {
            Ok(r) => r,
            Err(reason) => {
                let start = batch.map_or(pos as u64, |b| b.1);
                if is_last && valid_record_after(buf, pos + 1, lsn.saturating_sub(1), limits).is_none() {
                    res.torn = Some(TornTail {
                        file: path.to_path_buf(),
                        offset: start,
                        bytes: buf.len() as u64 - start,
                    });
                    return Ok(SegEnd::Cut);
                }
                return Err((corrupt(path, pos as u64, reason), start));
            }
        };
        summary.records += 1;
        summary.lsns = Some((summary.lsns.map_or(lsn, |l| l.0), lsn));
        by_type[raw.kind as usize].0 += 1;
        by_type[raw.kind as usize].1 += raw.framed as u64;
        pos += raw.framed;
        lsn += 1;
        let bad = |reason: String| {
            let start = batch.map_or(raw.offset, |b| b.1);
            (corrupt(path, raw.offset, reason), start)
        };
        let decode_err = |e: Error| {
            let start = batch.map_or(raw.offset, |b| b.1);
            (e.in_file(path), start)
        };
        let marker = raw.kind == RecordType::BatchBegin as u8 || raw.kind == RecordType::BatchEnd as u8;
        if marker {
            match decode_record(&raw, limits).map_err(decode_err)? {
                Record::BatchBegin(n) => {
                    if batch.is_some() {
                        return Err(bad("batch begins inside a batch".into()));
                    }
                    batch = Some((n, raw.offset));
                    pending.clear();
                    continue;
                }
                Record::BatchEnd(n) => match batch {
                    Some((m, _)) if m == n && pending.len() as u64 == u64::from(n) => {}
                    _ => {
                        return Err(bad(format!(
                            "batch end ({n}) does not match its begin ({batch:?}, {} records)",
                            pending.len()
                        )))
                    }
                },
                _ => return Err(bad("batch marker decodes as another record".into())),
            }
        } else {
            if let Some((n, _)) = batch {
                if pending.len() as u64 >= u64::from(n) {
                    // Decoding errors come first, as for any record.
                    decode_record(&raw, limits).map_err(decode_err)?;
                    return Err(bad("batch holds more records than declared".into()));
                }
            }
            // Decoded straight into the commit's list: records are large.
            pending.push((raw.lsn, decode_record(&raw, limits).map_err(decode_err)?));
            if batch.is_some() {
                continue;
            }
        }
        // A committed unit ends at this record.
        let start = batch.map_or(raw.offset, |b| b.1);
        batch = None;
        if raw.lsn > res.last_lsn {
            pending.retain(|(_, r)| !matches!(r, Record::Optional(_)));
            let go = if pending.is_empty() { Ok(true) } else { visit.commit(&pending) };
            match go {
                Ok(go) => {
                    res.last_lsn = raw.lsn;
                    if !go {
                        return Ok(SegEnd::Stopped);
                    }
                }
                Err(e) => {
                    let e = match e {
                        Error::Corrupt { .. } => e.in_file(path),
                        other => corrupt(
                            path,
                            start,
                            format!("record at LSN {} cannot be replayed: {other}", pending[0].0),
                        ),
                    };
                    return Err((e, start));
                }
            }
        }
        pending.clear();
    }
    // End of the segment's bytes.
    if let Some((_, begin)) = batch {
        if is_last {
            res.torn =
                Some(TornTail { file: path.to_path_buf(), offset: begin, bytes: buf.len() as u64 - begin });
            return Ok(SegEnd::Cut);
        }
        return Err((corrupt(path, begin, "batch not closed before the segment ends"), begin));
    }
    if let Some(c) = cut {
        if c != lsn {
            return Err((
                corrupt(path, pos as u64, format!("log records {lsn}..{} are missing", c.saturating_sub(1))),
                pos as u64,
            ));
        }
    } else if let Some(n) = next {
        if n.generation == h.generation && n.first_lsn != lsn {
            return Err((
                corrupt(
                    path,
                    pos as u64,
                    format!("next segment starts at LSN {}, expected {lsn}", n.first_lsn),
                ),
                pos as u64,
            ));
        }
    }
    Ok(SegEnd::Clean)
}
