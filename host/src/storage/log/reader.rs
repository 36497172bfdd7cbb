//! Reading the log: segment headers, record frames, record bodies, and the
//! scan over all segments that decides what is committed, what is a torn
//! tail, what is abandoned history, and what is corruption.

use super::{Dropped, RecoveryMode, TornTail};
use super::{RecordType, RECORD_HEAD_LEN, RECORD_TAIL_LEN, SEGMENT_HEAD_LEN, SEGMENT_VERSION};
use crate::delta::change::Change;
use crate::storage::codec::delta::DeltaView;
use crate::storage::codec::derived::DerivedView;
use crate::storage::codec::{crc, read_location, read_metadata, Limits, Reader};
use crate::storage::files::{check_names, parse_segment_name, SEGMENT_MAGIC};
use crate::storage::vfs::{Vfs, VfsRead};
use crate::types::page::{Location, Metadata};
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
    if !header_crc_matches(head) {
        return Err(Error::corrupt_at(40, "segment header CRC mismatch"));
    }
    r.u32("segment header crc")?;
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

/// Whether the CRC at byte 40 of a whole segment header (`head`, at least
/// [`SEGMENT_HEAD_LEN`] bytes) matches its first 40 bytes.
fn header_crc_matches(head: &[u8]) -> bool {
    head.get(40..44).is_some_and(|c| crc(&head[..40]).to_le_bytes() == c)
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

/// Whether `buf[pos..]` starts with a whole frame (within the buffer) whose
/// CRC matches, whatever its length limit, type, flags and LSN: no crash
/// leaves one that is not the next record.
fn crc_valid_frame(buf: &[u8], pos: usize) -> bool {
    let Some(rest) = buf.get(pos..) else { return false };
    let Some(len) = rest.first_chunk::<4>().map(|l| u32::from_le_bytes(*l) as usize) else {
        return false;
    };
    let Some(framed) = len.checked_add(RECORD_HEAD_LEN + RECORD_TAIL_LEN) else {
        return false;
    };
    match rest.get(..framed).and_then(|f| f.split_last_chunk::<RECORD_TAIL_LEN>()) {
        Some((data, c)) => crc(data) == u32::from_le_bytes(*c),
        None => false,
    }
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
    /// The deltas of one propagation. A scan never delivers this: it hands
    /// each of its deltas to the visitor as a [`Record::Delta`], all with
    /// the record's LSN.
    Derived(DerivedView<'a>),
    /// A batch of this many records follows.
    BatchBegin(u32),
    /// The batch of this many records is complete.
    BatchEnd(u32),
    /// A dependency-graph change.
    Graph(Change),
    /// Propagation work queued at a checkpoint: pages written whose data
    /// children are due, and derived pages to recompute.
    Due {
        /// Written pages.
        written: Vec<PageId>,
        /// Derived pages.
        forced: Vec<PageId>,
    },
    /// A propagation ran and changed no page.
    Settled,
    /// Pages stale through a control edge when a checkpoint was taken.
    Stale(Vec<PageId>),
    /// An optional record this reader skips.
    Optional(u8),
}

/// The page lists of a due or stale record body (`what`): one u32 count per
/// list (each read under its label in `counts`), then every list's u64 ids;
/// the counts must account for the whole body.
fn read_page_lists<const N: usize>(
    r: &mut Reader<'_>,
    base: u64,
    what: &str,
    counts: [&str; N],
) -> Result<[Vec<PageId>; N]> {
    let mut lens = [0u32; N];
    for (n, label) in lens.iter_mut().zip(counts) {
        *n = r.u32(label)?;
    }
    if lens.iter().map(|&n| u64::from(n)).sum::<u64>() * 8 != r.remaining() as u64 {
        return Err(Error::corrupt_at(base, format!("{what} record counts do not match its length")));
    }
    let page = format!("{what} page");
    let mut lists: [Vec<PageId>; N] = std::array::from_fn(|_| Vec::new());
    for (list, &n) in lists.iter_mut().zip(&lens) {
        *list = (0..n).map(|_| r.u64(&page).map(PageId)).collect::<Result<_>>()?;
    }
    Ok(lists)
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
        Some(RecordType::Derived) => Record::Derived(DerivedView::parse(raw.body, base, limits)?),
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
            // One encoding per record, as for every other field: postcard
            // would also take overlong varints.
            if postcard::to_stdvec(&rec).ok().as_deref() != Some(raw.body) {
                return Err(Error::corrupt_at(base, "graph record not in its canonical encoding"));
            }
            Record::Graph(rec.into_change())
        }
        Some(RecordType::Due) => {
            let [written, forced] =
                read_page_lists(&mut r, base, "due", ["due written count", "due forced count"])?;
            Record::Due { written, forced }
        }
        Some(RecordType::Settled) => {
            r.finish("settled record")?;
            Record::Settled
        }
        Some(RecordType::Stale) => {
            let [pages] = read_page_lists(&mut r, base, "stale", ["stale count"])?;
            Record::Stale(pages)
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
    /// Deltas held by the derived records of `by_type`.
    pub derived_deltas: u64,
}

/// One committed unit handed to the visitor: `(lsn, record)` pairs of one
/// commit (a single change, or a whole batch without its markers), and the
/// LSN of its last record ([`Commit::end_lsn`]: a batch's end marker).
///
/// It derefs to the slice of records; iterating it yields `&(lsn, record)`.
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a, 'b> {
    records: &'b [(u64, Record<'a>)],
    end: u64,
}

impl<'a, 'b> Commit<'a, 'b> {
    /// A commit of `records` whose last record (marker included) has LSN `end`.
    pub fn new(records: &'b [(u64, Record<'a>)], end: u64) -> Self {
        Commit { records, end }
    }

    /// The LSN of the commit's last record: the state's LSN once it is
    /// applied. For a batch this is its end marker, one past its last
    /// change.
    pub fn end_lsn(&self) -> u64 {
        self.end
    }

    /// The records, without batch markers.
    pub fn records(&self) -> &'b [(u64, Record<'a>)] {
        self.records
    }
}

impl<'a, 'b> std::ops::Deref for Commit<'a, 'b> {
    type Target = [(u64, Record<'a>)];
    fn deref(&self) -> &Self::Target {
        self.records
    }
}

impl<'a, 'b> IntoIterator for Commit<'a, 'b> {
    type Item = &'b (u64, Record<'a>);
    type IntoIter = std::slice::Iter<'b, (u64, Record<'a>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

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

    /// LSN of the batch's end marker: the state's LSN once it is applied.
    pub fn end_lsn(&self) -> u64 {
        self.first_lsn + self.count as u64
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

/// How the frame at some position of a commit's bytes reads.
enum Frame {
    /// Valid ([`read_frame`] accepts it): its framed length and type.
    Valid { framed: usize, kind: u8 },
    /// Cut off by the end of the bytes, which must hold this many for it.
    Short(usize),
    /// Invalid whatever follows.
    Bad,
}

/// The checks of [`read_frame`] on the frame at `rest[at..]` with LSN
/// `lsn`, telling a frame the bytes end inside from an invalid one.
#[inline(always)]
fn frame_at(rest: &[u8], at: usize, lsn: u64, limits: &Limits) -> Frame {
    const MIN: usize = RECORD_HEAD_LEN + RECORD_TAIL_LEN;
    let Some(head) = rest.get(at..).and_then(|r| r.first_chunk::<RECORD_HEAD_LEN>()) else {
        return Frame::Short(at + MIN);
    };
    if rest.len() - at < MIN {
        return Frame::Short(at + MIN);
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if u64::from(len) > limits.max_record_len {
        return Frame::Bad;
    }
    let Some(framed) = (len as usize).checked_add(MIN) else {
        return Frame::Bad;
    };
    let Some(frame) = rest.get(at..).and_then(|r| r.get(..framed)) else {
        return Frame::Short(at.saturating_add(framed));
    };
    let (kind, flags, reserved) = (head[4], head[5], u16::from_le_bytes([head[6], head[7]]));
    let mut l = [0u8; 8];
    l.copy_from_slice(&head[8..16]);
    let Some((data, c)) = frame.split_last_chunk::<RECORD_TAIL_LEN>() else {
        return Frame::Bad;
    };
    if crc(data) != u32::from_le_bytes(*c)
        || kind == 0
        || flags != 0
        || reserved != 0
        || u64::from_le_bytes(l) != lsn
    {
        return Frame::Bad;
    }
    Frame::Valid { framed, kind }
}

/// The count of a well-formed batch marker frame (as [`decode_record`]
/// accepts it) at the front of `frame`.
#[inline]
fn marker_count(frame: &[u8]) -> Option<u32> {
    let body = frame.get(RECORD_HEAD_LEN..)?;
    if frame.len() != RECORD_HEAD_LEN + 8 + RECORD_TAIL_LEN {
        return None;
    }
    let count = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    let reserved = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    (reserved == 0 && count >= 2).then_some(count)
}

/// How the commit at the front of some bytes reads.
enum Walk {
    /// Every frame of it is valid and present; `spans` holds them.
    Whole,
    /// The bytes end inside it: they must hold this many.
    Short(usize),
    /// A frame of it is invalid.
    Bad,
}

/// The frames of the committed unit that starts at the front of `rest`
/// (first LSN `lsn`), as `(offset, framed length)` into `spans`: one record,
/// or a batch from its begin marker to its end marker. Where the scan would
/// stop the unit early with an error (a malformed begin marker, another
/// begin marker, more records than declared) the frames end there too.
fn walk_commit(rest: &[u8], lsn: u64, limits: &Limits, spans: &mut Vec<(usize, usize)>) -> Walk {
    let first = match frame_at(rest, 0, lsn, limits) {
        Frame::Valid { framed, kind } => (framed, kind),
        Frame::Short(n) => return Walk::Short(n),
        Frame::Bad => return Walk::Bad,
    };
    spans.push((0, first.0));
    if first.1 != RecordType::BatchBegin as u8 {
        return Walk::Whole;
    }
    let Some(n) = marker_count(&rest[..first.0]) else {
        return Walk::Whole;
    };
    let (mut at, mut next) = (first.0, lsn + 1);
    for _ in 0..=n {
        match frame_at(rest, at, next, limits) {
            Frame::Valid { framed, kind } => {
                spans.push((at, framed));
                at += framed;
                next += 1;
                if kind == RecordType::BatchBegin as u8 || kind == RecordType::BatchEnd as u8 {
                    break;
                }
            }
            Frame::Short(n) => return Walk::Short(n),
            Frame::Bad => return Walk::Bad,
        }
    }
    Walk::Whole
}

/// The delta records of a walked commit (see [`walk_commit`]) that is a
/// well-formed batch of delta records only, whose bytes `rest` start at
/// segment offset `pos`, first LSN `lsn`.
fn delta_batch_of<'a>(
    rest: &'a [u8],
    spans: &[(usize, usize)],
    pos: u64,
    lsn: u64,
) -> Option<DeltaFrames<'a>> {
    let (&(b, bl), &(e, el)) = (spans.first()?, spans.last()?);
    let n = marker_count(rest.get(b..b + bl)?)?;
    if spans.len() as u64 != u64::from(n) + 2
        || rest.get(b + 4) != Some(&(RecordType::BatchBegin as u8))
        || rest.get(e + 4) != Some(&(RecordType::BatchEnd as u8))
        || marker_count(rest.get(e..e + el)?) != Some(n)
        || spans[1..spans.len() - 1]
            .iter()
            .any(|&(at, _)| rest.get(at + 4) != Some(&(RecordType::Delta as u8)))
    {
        return None;
    }
    let first = spans[1].0;
    Some(DeltaFrames {
        bytes: rest.get(first..e)?,
        offset: pos + first as u64,
        count: n as usize,
        first_lsn: lsn + 1,
    })
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
    scan_windowed(vfs, dir, after_lsn, mode, limits, visit, SCAN_WINDOW)
}

/// [`scan_with`] reading `window` bytes of a segment at a time (any
/// window gives the same scan; tests use small ones), or with `window` 0
/// each segment whole and record by record.
///
/// # Errors
/// As [`scan`].
#[doc(hidden)]
pub fn scan_windowed(
    vfs: &dyn Vfs,
    dir: &Path,
    after_lsn: u64,
    mode: RecoveryMode,
    limits: &Limits,
    visit: &mut dyn Visitor,
    window: usize,
) -> Result<ScanResult> {
    let mut res = ScanResult { last_lsn: after_lsn, ..ScanResult::default() };
    let names = match vfs.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(res),
        Err(e) => return Err(Error::from(e).in_file(dir)),
    };
    check_names(dir, &names)?;
    let mut seqs: Vec<(u64, PathBuf)> =
        names.iter().filter_map(|n| parse_segment_name(n).map(|s| (s, dir.join(n)))).collect();
    seqs.sort();
    res.max_seq = seqs.last().map(|s| s.0);
    let mut prev_gen: Option<u64> = None;
    let mut by_type = [(0u64, 0u64); 256];
    let res = scan_all(vfs, &seqs, &mut res, &mut prev_gen, &mut by_type, mode, limits, visit, window)
        .map(|()| res);
    res.map(|mut r| {
        for (k, v) in by_type.iter().enumerate() {
            if v.0 > 0 {
                r.by_type.insert(k as u8, *v);
            }
        }
        r
    })
}

/// Bytes of the segment files a scan reads at a time (more when one
/// committed unit needs more): the records are decoded while the bytes are
/// still in cache, and the buffer is reused from file to file.
pub const SCAN_WINDOW: usize = 512 << 10;

/// A segment file opened for a scan.
struct Seg {
    file: Box<dyn VfsRead>,
    len: u64,
    /// Its first bytes (the header, or all of a shorter file).
    head: Vec<u8>,
}

fn open_segment(vfs: &dyn Vfs, path: &Path) -> std::io::Result<Seg> {
    let mut file = vfs.open_read(path)?;
    let len = file.len();
    let mut head = vec![0u8; len.min(SEGMENT_HEAD_LEN as u64) as usize];
    match file.read_exact_at(&mut head, 0) {
        Ok(()) => Ok(Seg { file, len, head }),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Shorter than when it was opened: take what it holds now.
            let all = vfs.read(path)?;
            head = all[..all.len().min(SEGMENT_HEAD_LEN)].to_vec();
            Ok(Seg { len: all.len() as u64, file: Box::new(crate::storage::vfs::MemFile(all)), head })
        }
        Err(e) => Err(e),
    }
}

/// The bytes `[base, base + filled)` of the segment being scanned.
#[derive(Default)]
struct Window {
    buf: Vec<u8>,
    base: u64,
    filled: usize,
    /// Bytes read at a time.
    chunk: usize,
}

impl Window {
    /// Keep the bytes from `pos` on, and read more: at least `need` from
    /// `pos` (the caller checked that the file holds them), else a chunk.
    fn refill(&mut self, seg: &mut Seg, pos: u64, need: usize) -> std::io::Result<()> {
        let keep = match pos.checked_sub(self.base) {
            Some(k) if k <= self.filled as u64 => k as usize,
            _ => self.filled,
        };
        self.buf.copy_within(keep..self.filled, 0);
        self.filled -= keep;
        self.base = pos;
        // No more than the file holds from `pos` on.
        let left = usize::try_from(seg.len.saturating_sub(pos)).unwrap_or(usize::MAX);
        let want = need.max(self.chunk).min(left).max(1);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let end = self.base + self.filled as u64;
        let n = (self.buf.len() - self.filled).min(usize::try_from(seg.len - end).unwrap_or(usize::MAX));
        seg.file.read_exact_at(&mut self.buf[self.filled..self.filled + n], end)?;
        self.filled += n;
        Ok(())
    }
}

/// Where a scan is in a segment: offset and LSN of the next record, the
/// open batch (declared count, offset of its begin record, records taken
/// into it) and the records of the committed unit so far (a derived
/// record's deltas one by one).
struct Cursor<'a> {
    pos: usize,
    lsn: u64,
    batch: Option<(u32, u64, u64)>,
    pending: Vec<(u64, Record<'a>)>,
}

/// An empty list that reuses the allocation of `v`.
fn recycle<'b>(mut v: Vec<(u64, Record<'_>)>) -> Vec<(u64, Record<'b>)> {
    v.clear();
    // An empty iteration that changes the lifetime: collected in place.
    #[allow(clippy::unnecessary_filter_map)]
    v.into_iter().filter_map(|_| None).collect()
}

/// Take one valid frame into the committed unit at `cur`, delivering the
/// unit when it ends there: `Some(Stopped)` when the visitor stops.
#[allow(clippy::too_many_arguments)]
#[inline]
fn take_frame<'a>(
    raw: RawRecord<'a>,
    cur: &mut Cursor<'a>,
    path: &Path,
    res: &mut ScanResult,
    summary: &mut SegmentSummary,
    by_type: &mut [(u64, u64); 256],
    limits: &Limits,
    visit: &mut dyn Visitor,
) -> Result<Option<SegEnd>, (Error, u64)> {
    let lsn = cur.lsn;
    summary.records += 1;
    summary.lsns = Some((summary.lsns.map_or(lsn, |l| l.0), lsn));
    by_type[raw.kind as usize].0 += 1;
    by_type[raw.kind as usize].1 += raw.framed as u64;
    cur.pos += raw.framed;
    cur.lsn += 1;
    let batch = cur.batch;
    let bad = |reason: String| {
        let start = batch.map_or(raw.offset, |b| b.1);
        (corrupt(path, raw.offset, reason), start)
    };
    let decode_err = |e: Error| {
        let start = batch.map_or(raw.offset, |b| b.1);
        (e.in_file(path), start)
    };
    let pending = &mut cur.pending;
    let marker = raw.kind == RecordType::BatchBegin as u8 || raw.kind == RecordType::BatchEnd as u8;
    if marker {
        match decode_record(&raw, limits).map_err(decode_err)? {
            Record::BatchBegin(n) => {
                if batch.is_some() {
                    return Err(bad("batch begins inside a batch".into()));
                }
                cur.batch = Some((n, raw.offset, 0));
                pending.clear();
                return Ok(None);
            }
            Record::BatchEnd(n) => match batch {
                Some((m, _, taken)) if m == n && taken == u64::from(n) => {}
                _ => {
                    return Err(bad(format!(
                        "batch end ({n}) does not match its begin ({:?}, {} records)",
                        batch.map(|b| (b.0, b.1)),
                        batch.map_or(0, |b| b.2)
                    )))
                }
            },
            _ => return Err(bad("batch marker decodes as another record".into())),
        }
    } else {
        if let Some((n, _, taken)) = batch {
            if taken >= u64::from(n) {
                // Decoding errors come first, as for any record.
                decode_record(&raw, limits).map_err(decode_err)?;
                return Err(bad("batch holds more records than declared".into()));
            }
        }
        // Decoded straight into the commit's list: records are large.
        if raw.kind == RecordType::Derived as u8 {
            let base = raw.offset + RECORD_HEAD_LEN as u64;
            let before = pending.len();
            DerivedView::head(raw.body, base)
                .and_then(|v| v.for_each(limits, |d| pending.push((raw.lsn, Record::Delta(d)))))
                .map_err(decode_err)?;
            res.derived_deltas += (pending.len() - before) as u64;
        } else {
            pending.push((raw.lsn, decode_record(&raw, limits).map_err(decode_err)?));
        }
        if let Some(b) = &mut cur.batch {
            b.2 += 1;
            return Ok(None);
        }
    }
    // A committed unit ends at this record.
    let start = batch.map_or(raw.offset, |b| b.1);
    cur.batch = None;
    if raw.lsn > res.last_lsn {
        pending.retain(|(_, r)| !matches!(r, Record::Optional(_)));
        let go = if pending.is_empty() { Ok(true) } else { visit.commit(Commit::new(pending, raw.lsn)) };
        match go {
            Ok(go) => {
                res.last_lsn = raw.lsn;
                if !go {
                    return Ok(Some(SegEnd::Stopped));
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
    Ok(None)
}

/// Read `framed`, whole frames of whole committed units (a segment's
/// records without its header, as a replicated log carries them) whose
/// first record has LSN `first_lsn`, delivering each unit to `visit`
/// (which returns `false` to stop) as a scan of a segment would. Returns
/// the LSN of the last record read.
///
/// # Errors
/// [`Error::Corrupt`] for a frame that is not the next valid record, a
/// malformed batch, or bytes that end inside a batch or are empty; an
/// error from `visit`.
pub fn visit_framed(
    framed: &[u8],
    first_lsn: u64,
    limits: &Limits,
    visit: &mut dyn FnMut(Commit<'_, '_>) -> Result<bool>,
) -> Result<u64> {
    let path = Path::new("<replicated commit>");
    if framed.is_empty() {
        return Err(corrupt(path, 0, "no records"));
    }
    let mut cur = Cursor { pos: 0, lsn: first_lsn, batch: None, pending: Vec::new() };
    let mut res = ScanResult { last_lsn: first_lsn.saturating_sub(1), ..ScanResult::default() };
    let mut summary = SegmentSummary {
        path: path.to_path_buf(),
        bytes: framed.len() as u64,
        header: None,
        records: 0,
        lsns: None,
    };
    let mut by_type = [(0u64, 0u64); 256];
    let mut visitor = FnVisitor(visit);
    while cur.pos < framed.len() {
        let raw =
            read_frame(framed, cur.pos, cur.lsn, limits).map_err(|r| corrupt(path, cur.pos as u64, r))?;
        match take_frame(raw, &mut cur, path, &mut res, &mut summary, &mut by_type, limits, &mut visitor) {
            Ok(Some(_)) => return Ok(cur.lsn - 1),
            Ok(None) => {}
            Err((e, _)) => return Err(e),
        }
    }
    if cur.batch.is_some() {
        return Err(corrupt(path, cur.pos as u64, "the records end inside a batch"));
    }
    Ok(cur.lsn - 1)
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
    window: usize,
) -> Result<()> {
    let open = |p: &Path| open_segment(vfs, p).map_err(|e| Error::from(e).in_file(p));
    let load = |p: &Path| vfs.read(p).map_err(|e| Error::from(e).in_file(p));
    let mut win = Window { chunk: window, ..Window::default() };
    let mut next: Option<Seg> = match seqs.first() {
        Some((_, p)) => Some(open(p)?),
        None => None,
    };
    for i in 0..seqs.len() {
        let path = &seqs[i].1;
        let Some(mut seg) = next.take() else { break };
        next = match seqs.get(i + 1) {
            Some((_, p)) => Some(open(p)?),
            None => None,
        };
        let is_last = next.is_none();
        let nh = next.as_ref().and_then(|s| parse_segment_header(&s.head).ok());
        let mut summary =
            SegmentSummary { path: path.clone(), bytes: seg.len, header: None, records: 0, lsns: None };
        let outcome = scan_segment(
            vfs,
            &mut seg,
            &mut win,
            path,
            res,
            &mut summary,
            nh,
            is_last,
            prev_gen,
            by_type,
            limits,
            visit,
        )?;
        let scanned = summary.bytes;
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
                    bytes: scanned.saturating_sub(offset),
                    reason: e.to_string(),
                    set_aside: None,
                });
                for (_, p) in &seqs[i + 1..] {
                    let bytes = load(p)?.len() as u64;
                    res.dropped.push(Dropped {
                        file: p.clone(),
                        offset: 0,
                        bytes,
                        reason: "follows dropped corruption".into(),
                        set_aside: None,
                    });
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Scan one segment: its header, then its records, read a window at a
/// time while every committed unit is whole and valid; from the first one
/// that is not (a torn tail, corruption), the rest of the file is read
/// whole and scanned record by record.
#[allow(clippy::too_many_arguments)]
fn scan_segment(
    vfs: &dyn Vfs,
    seg: &mut Seg,
    win: &mut Window,
    path: &Path,
    res: &mut ScanResult,
    summary: &mut SegmentSummary,
    next: Option<SegmentHeader>,
    is_last: bool,
    prev_gen: &mut Option<u64>,
    by_type: &mut [(u64, u64); 256],
    limits: &Limits,
    visit: &mut dyn Visitor,
) -> Result<Result<SegEnd, (Error, u64)>> {
    let expected = res.last_lsn + 1;
    let h = match parse_segment_header(&seg.head) {
        Ok(h) => h,
        Err(e) => {
            // A segment gets its name only once its header is durable (see
            // docs/RELIABILITY.md, the crash model): a named segment whose
            // header does not read, the last one included, was damaged or
            // cut short after it was written, and is corruption. The one
            // exception loses nothing: a later generation that starts
            // exactly where the log read so far ends has abandoned it (a
            // tolerant recovery dropped it, or an older version of the
            // writer, which named segments before their header was durable,
            // crashed while creating it).
            if next.is_some_and(|n| prev_gen.is_none_or(|g| n.generation > g) && n.first_lsn <= expected) {
                return Ok(Ok(SegEnd::Cut));
            }
            return Ok(Err((e.in_file(path), 0)));
        }
    };
    if let Some(named) = path.file_name().and_then(|n| n.to_str()).and_then(parse_segment_name) {
        if named != h.seq {
            return Ok(Err((
                corrupt(
                    path,
                    24,
                    format!("the header is of segment {:016x}, the file name of {named:016x}", h.seq),
                ),
                0,
            )));
        }
    }
    summary.header = Some(h);
    res.max_generation = res.max_generation.max(h.generation);
    if prev_gen.is_some_and(|g| h.generation < g) {
        return Ok(Err((
            corrupt(
                path,
                16,
                format!("generation {} after generation {}", h.generation, prev_gen.unwrap_or(0)),
            ),
            0,
        )));
    }
    *prev_gen = Some(h.generation);
    // Segments wholly at or below the start LSN (covered by a checkpoint) are skipped.
    if next.is_some_and(|n| n.generation >= h.generation && n.first_lsn <= expected) {
        return Ok(Ok(SegEnd::Clean));
    }
    if h.first_lsn > expected {
        return Ok(Err((
            corrupt(path, 32, format!("log records {expected}..{} are missing", h.first_lsn - 1)),
            SEGMENT_HEAD_LEN as u64,
        )));
    }
    let cut = next.filter(|n| n.generation > h.generation).map(|n| n.first_lsn);
    let (mut pos, mut lsn) = (SEGMENT_HEAD_LEN, h.first_lsn);
    match stream_segment(seg, win, path, res, summary, &mut pos, &mut lsn, cut, by_type, limits, visit)? {
        Streamed::Ended(end) => Ok(end),
        Streamed::AtEnd => Ok(segment_end(path, res, None, cut, next, &h, pos, lsn, is_last, seg.len)),
        Streamed::Slow => {
            let buf = vfs.read(path).map_err(|e| Error::from(e).in_file(path))?;
            summary.bytes = buf.len() as u64;
            let cur = Cursor { pos, lsn, batch: None, pending: Vec::new() };
            Ok(scan_records(&buf, cur, path, res, summary, next, &h, cut, is_last, by_type, limits, visit))
        }
    }
}

/// How far [`stream_segment`] went.
enum Streamed {
    /// The segment's scan ended (cut, stopped, or an error).
    Ended(Result<SegEnd, (Error, u64)>),
    /// Every record was taken; no batch is open.
    AtEnd,
    /// A committed unit is not whole and valid: the general scan goes on
    /// from the position reached.
    Slow,
}

/// The records of a segment from `pos` (LSN `lsn`) on, one committed unit at
/// a time through the window, while each unit is whole and valid.
#[allow(clippy::too_many_arguments)]
fn stream_segment(
    seg: &mut Seg,
    win: &mut Window,
    path: &Path,
    res: &mut ScanResult,
    summary: &mut SegmentSummary,
    pos: &mut usize,
    lsn: &mut u64,
    cut: Option<u64>,
    by_type: &mut [(u64, u64); 256],
    limits: &Limits,
    visit: &mut dyn Visitor,
) -> Result<Streamed> {
    if win.chunk == 0 {
        // No window: the whole file, record by record.
        return Ok(Streamed::Slow);
    }
    // The window holds nothing of this segment yet.
    win.base = *pos as u64;
    win.filled = 0;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut store: Vec<(u64, Record<'_>)> = Vec::new();
    loop {
        if cut == Some(*lsn) {
            return Ok(Streamed::Ended(Ok(SegEnd::Cut)));
        }
        let at = *pos as u64;
        if at >= seg.len {
            return Ok(Streamed::AtEnd);
        }
        let local = match at.checked_sub(win.base) {
            Some(l) if l <= win.filled as u64 => l as usize,
            _ => return Ok(Streamed::Slow),
        };
        spans.clear();
        match walk_commit(&win.buf[local..win.filled], *lsn, limits, &mut spans) {
            Walk::Whole => {}
            Walk::Short(need) => {
                let more = win.base + (win.filled as u64) < seg.len;
                if more && at.saturating_add(need as u64) <= seg.len {
                    match win.refill(seg, at, need) {
                        Ok(()) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Streamed::Slow),
                        Err(e) => return Err(Error::from(e).in_file(path)),
                    }
                }
                return Ok(Streamed::Slow);
            }
            Walk::Bad => return Ok(Streamed::Slow),
        }
        let bytes = &win.buf[local..win.filled];
        if visit.takes_delta_batches() {
            if let Some(frames) = delta_batch_of(bytes, &spans, at, *lsn) {
                let last = *lsn + frames.len() as u64 + 1;
                if last > res.last_lsn {
                    if let Some(go) = visit.delta_batch(frames) {
                        let n = frames.len() as u64;
                        summary.records += n + 2;
                        summary.lsns = Some((summary.lsns.map_or(*lsn, |l| l.0), last));
                        let (b, d) = (spans[1].0, spans[spans.len() - 1].0);
                        let e = spans[spans.len() - 1].1;
                        for (kind, count, len) in [
                            (RecordType::BatchBegin, 1, b),
                            (RecordType::Delta, n, d - b),
                            (RecordType::BatchEnd, 1, e),
                        ] {
                            by_type[kind as usize].0 += count;
                            by_type[kind as usize].1 += len as u64;
                        }
                        *pos += d + e;
                        *lsn = last + 1;
                        res.last_lsn = last;
                        if !go {
                            return Ok(Streamed::Ended(Ok(SegEnd::Stopped)));
                        }
                        continue;
                    }
                }
            }
        }
        // Record by record; every frame of the unit is known valid.
        let mut cur =
            Cursor { pos: *pos, lsn: *lsn, batch: None, pending: recycle(std::mem::take(&mut store)) };
        for &(off, framed) in &spans {
            let kind = bytes[off + 4];
            let raw = RawRecord {
                offset: (*pos + off) as u64,
                framed,
                kind,
                lsn: cur.lsn,
                body: &bytes[off + RECORD_HEAD_LEN..off + framed - RECORD_TAIL_LEN],
            };
            match take_frame(raw, &mut cur, path, res, summary, by_type, limits, visit) {
                Ok(None) => {}
                Ok(Some(end)) => return Ok(Streamed::Ended(Ok(end))),
                Err(e) => return Ok(Streamed::Ended(Err(e))),
            }
        }
        if cur.batch.is_some() {
            return Err(Error::Invariant("a committed unit read whole left its batch open".into()));
        }
        *pos = cur.pos;
        *lsn = cur.lsn;
        store = recycle(cur.pending);
    }
}

/// The records of a whole segment `buf` from the cursor on, frame by frame
/// (the general scan, which tells torn tails from corruption).
#[allow(clippy::too_many_arguments)]
fn scan_records<'a>(
    buf: &'a [u8],
    mut cur: Cursor<'a>,
    path: &Path,
    res: &mut ScanResult,
    summary: &mut SegmentSummary,
    next: Option<SegmentHeader>,
    h: &SegmentHeader,
    cut: Option<u64>,
    is_last: bool,
    by_type: &mut [(u64, u64); 256],
    limits: &Limits,
    visit: &mut dyn Visitor,
) -> Result<SegEnd, (Error, u64)> {
    loop {
        if cut == Some(cur.lsn) && cur.batch.is_none() {
            return Ok(SegEnd::Cut);
        }
        if cur.pos == buf.len() {
            break;
        }
        let raw = match read_frame(buf, cur.pos, cur.lsn, limits) {
            Ok(r) => r,
            Err(reason) => {
                let pos = cur.pos;
                let start = cur.batch.map_or(pos as u64, |b| b.1);
                // A torn tail is bytes a crash left unfinished: never a
                // whole frame whose CRC matches (with another LSN, type or
                // flags), and never damage with a valid record after it.
                if is_last
                    && !crc_valid_frame(buf, pos)
                    && valid_record_after(buf, pos + 1, cur.lsn.saturating_sub(1), limits).is_none()
                {
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
        if let Some(end) = take_frame(raw, &mut cur, path, res, summary, by_type, limits, visit)? {
            return Ok(end);
        }
    }
    segment_end(
        path,
        res,
        cur.batch.map(|b| (b.0, b.1)),
        cut,
        next,
        h,
        cur.pos,
        cur.lsn,
        is_last,
        buf.len() as u64,
    )
}

/// The end of a segment's bytes at `pos`, the next record's LSN `lsn`.
#[allow(clippy::too_many_arguments)]
fn segment_end(
    path: &Path,
    res: &mut ScanResult,
    batch: Option<(u32, u64)>,
    cut: Option<u64>,
    next: Option<SegmentHeader>,
    h: &SegmentHeader,
    pos: usize,
    lsn: u64,
    is_last: bool,
    len: u64,
) -> Result<SegEnd, (Error, u64)> {
    if let Some((_, begin)) = batch {
        if is_last {
            res.torn = Some(TornTail { file: path.to_path_buf(), offset: begin, bytes: len - begin });
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
