//! Delta codec: the payload encoding, the delta body (used inside log
//! records) and the standalone delta blob (`MSDL`).
//!
//! Payload encoding (its size is [`Payload::encoded_len`]):
//!
//! ```text
//! kind u8 (1 dense, 2 sparse, 3 full) | n u64 | body
//!   dense : n = page length; ceil(n/8) mask bytes (bit i%8 of byte i/8 selects
//!           page byte i); then the selected bytes only, in page order
//!   sparse: n = run count; n × (offset u64, len u64); then the runs' bytes
//!   full  : n = page length; n bytes
//! ```
//!
//! Decoding borrows: [`PayloadView`] validates the structure without
//! allocating and can apply itself to a page directly (the replay fast path).

use super::{crc, put_u16, put_u32, put_u64, Limits, Reader};
use crate::delta::{ByteBuf, Delta, DenseDelta, Payload, Provenance, Run, RunBuf, Source, SparseDelta};
use crate::{Error, Result};
use shared_types::{DeltaId, Epoch, PageId};

/// Magic of a standalone delta blob.
pub const DELTA_MAGIC: [u8; 4] = *b"MSDL";
/// Current version of the delta blob and delta body format.
pub const DELTA_VERSION: u16 = 1;
/// Size of the fixed part of a delta body.
pub const DELTA_HEAD_LEN: usize = 44;
/// Size of the blob header (magic, version, flags, body length).
pub const BLOB_HEAD_LEN: usize = 12;

pub(crate) const FLAG_BASE: u8 = 1;
const FLAG_TAG: u8 = 2;

/// Append the payload encoding of `p` to `out`; writes exactly
/// `p.encoded_len()` bytes.
pub fn encode_payload(p: &Payload, out: &mut Vec<u8>) {
    out.extend_from_slice(&payload_head(p));
    encode_payload_body(p, out);
}

/// Size of the payload encoding's head (kind byte and `u64` length).
pub(crate) const PAYLOAD_HEAD_LEN: usize = 9;

/// The head of the payload encoding of `p`: kind and length or run count.
#[inline]
pub(crate) fn payload_head(p: &Payload) -> [u8; PAYLOAD_HEAD_LEN] {
    let (kind, n) = match p {
        Payload::Dense(d) => (1u8, d.len()),
        Payload::Sparse(s) => (2, s.runs().len() as u64),
        Payload::Full(b) => (3, b.len() as u64),
    };
    let mut head = [0u8; PAYLOAD_HEAD_LEN];
    head[0] = kind;
    head[1..].copy_from_slice(&n.to_le_bytes());
    head
}

/// The payload encoding of `p` after its head ([`payload_head`]).
#[inline]
pub(crate) fn encode_payload_body(p: &Payload, out: &mut Vec<u8>) {
    match p {
        Payload::Dense(d) => {
            let nbytes = d.len().div_ceil(8) as usize;
            let words = d.mask_words();
            let start = out.len();
            out.reserve(words.len() * 8);
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.truncate(start + nbytes);
            // Selected bytes, skipping whole empty words quickly.
            let data = d.data();
            for (wi, &w) in words.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                let base = wi * 64;
                if w == u64::MAX {
                    out.extend_from_slice(&data[base..base + 64]);
                    continue;
                }
                let mut m = w;
                while m != 0 {
                    let bit = m.trailing_zeros() as usize;
                    out.push(data[base + bit]);
                    m &= m - 1;
                }
            }
        }
        Payload::Sparse(s) => {
            for r in s.runs() {
                let mut run = [0u8; 16];
                run[..8].copy_from_slice(&r.offset.to_le_bytes());
                run[8..].copy_from_slice(&r.len.to_le_bytes());
                out.extend_from_slice(&run);
            }
            out.extend_from_slice(s.data());
        }
        Payload::Full(b) => out.extend_from_slice(b),
    }
}

/// A validated, borrowed payload encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadView<'a> {
    /// Dense: page length, `ceil(len/8)` mask bytes and the selected bytes.
    Dense {
        /// Page length.
        len: u64,
        /// Mask bytes (dead bits of the last byte are zero).
        mask: &'a [u8],
        /// The selected bytes in page order.
        selected: &'a [u8],
    },
    /// Sparse: `16 × count` run bytes and the runs' data.
    Sparse {
        /// Encoded runs, `(offset u64, len u64)` each, validated sorted and disjoint.
        runs: &'a [u8],
        /// Concatenated run bytes.
        data: &'a [u8],
        /// One past the last byte touched.
        end: u64,
    },
    /// The whole page.
    Full(&'a [u8]),
}

#[cold]
#[inline(never)]
fn misfit(page_len: u64) -> Error {
    Error::invalid_delta(None, format!("logged payload does not fit a page of {page_len} bytes"))
}

#[inline(always)]
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl<'a> PayloadView<'a> {
    /// Bytes selected by the payload (as [`Payload::touched`] of the owned
    /// payload).
    pub fn touched(&self) -> u64 {
        match self {
            PayloadView::Dense { selected, .. } => selected.len() as u64,
            PayloadView::Sparse { data, .. } => data.len() as u64,
            PayloadView::Full(b) => b.len() as u64,
        }
    }

    /// Parse and validate a payload encoding that spans all of `buf` (whose
    /// first byte is at absolute offset `base`).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for any malformed input; never panics.
    #[inline(always)]
    pub fn parse(buf: &'a [u8], base: u64, limits: &Limits) -> Result<Self> {
        // Well-formed sparse payloads (the small-delta case) are checked in
        // one tight pass; anything else, and every error, takes the
        // field-by-field path below.
        if let Some((h, rest)) = buf.split_first_chunk::<9>() {
            if h[0] == 2 {
                if let Some(v) = Self::sparse_fast(le64(h, 1), rest, limits) {
                    return Ok(v);
                }
            }
        }
        Self::parse_fields(buf, base, limits)
    }

    /// A valid sparse body of `n` runs spanning all of `rest`, or `None`.
    #[inline]
    fn sparse_fast(n: u64, rest: &'a [u8], limits: &Limits) -> Option<Self> {
        if n > rest.len() as u64 / 16 {
            return None;
        }
        let (runs, data) = rest.split_at(16 * n as usize);
        let (mut total, mut prev_end) = (0u64, 0u64);
        for (i, r) in runs.chunks_exact(16).enumerate() {
            let (off, len) = (le64(r, 0), le64(r, 8));
            let end = off.checked_add(len)?;
            if len == 0 || end > limits.max_page_len || (i > 0 && off < prev_end) {
                return None;
            }
            prev_end = end;
            total += len;
        }
        (data.len() as u64 == total).then_some(PayloadView::Sparse { runs, data, end: prev_end })
    }

    fn parse_fields(buf: &'a [u8], base: u64, limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(buf, base);
        let at = r.offset();
        let kind = r.u8("payload kind")?;
        let n = r.u64("payload length")?;
        let view = Self::read_body(kind, n, at, &mut r, limits)?;
        r.finish("payload")?;
        Ok(view)
    }

    /// Read the body of a payload of `kind` and length or run count `n`
    /// (as its encoding's head gives them; `at` is the head's offset) from
    /// `r`, exactly as many bytes as the body holds.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for any malformed input; never panics.
    pub(crate) fn read_body(kind: u8, n: u64, at: u64, r: &mut Reader<'a>, limits: &Limits) -> Result<Self> {
        let view = match kind {
            1 => {
                if n == 0 || n > limits.max_page_len {
                    return Err(Error::corrupt_at(at, format!("dense payload for a page of {n} bytes")));
                }
                let mask = r.bytes_u64(n.div_ceil(8), "dense mask")?;
                let tail = (n % 8) as u32;
                if tail != 0 && mask[mask.len() - 1] >> tail != 0 {
                    return Err(Error::corrupt_at(r.offset() - 1, "dense mask bits set past the page end"));
                }
                let count: u64 = mask.iter().map(|b| u64::from(b.count_ones())).sum();
                let selected = r.bytes_u64(count, "dense selected bytes")?;
                PayloadView::Dense { len: n, mask, selected }
            }
            2 => {
                let runs_len =
                    n.checked_mul(16).ok_or_else(|| Error::corrupt_at(at, "sparse run count overflows"))?;
                let runs_at = r.offset();
                let runs = r.bytes_u64(runs_len, "sparse runs")?;
                let mut total: u64 = 0;
                let mut prev_end: u64 = 0;
                for i in 0..n as usize {
                    let (off, len) = (le64(runs, 16 * i), le64(runs, 16 * i + 8));
                    let here = runs_at + 16 * i as u64;
                    if len == 0 {
                        return Err(Error::corrupt_at(here, format!("sparse run {i} is empty")));
                    }
                    let end =
                        off.checked_add(len).filter(|e| *e <= limits.max_page_len).ok_or_else(|| {
                            Error::corrupt_at(here, format!("sparse run {i} ends out of range"))
                        })?;
                    if i > 0 && off < prev_end {
                        return Err(Error::corrupt_at(
                            here,
                            format!("sparse run {i} overlaps or is out of order"),
                        ));
                    }
                    prev_end = end;
                    total += len; // ≤ end ≤ max_page_len: cannot overflow
                }
                let data = r.bytes_u64(total, "sparse data")?;
                PayloadView::Sparse { runs, data, end: prev_end }
            }
            3 => {
                if n > limits.max_page_len {
                    return Err(Error::corrupt_at(at, format!("full payload of {n} bytes")));
                }
                PayloadView::Full(r.bytes_u64(n, "full payload bytes")?)
            }
            k => return Err(Error::corrupt_at(at, format!("unknown payload kind {k}"))),
        };
        Ok(view)
    }

    /// Check that the payload fits a page of `page_len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when it does not.
    #[inline]
    pub fn check(&self, page_len: u64) -> Result<()> {
        let ok = match self {
            PayloadView::Dense { len, .. } => *len == page_len,
            PayloadView::Sparse { end, .. } => *end <= page_len,
            PayloadView::Full(b) => b.len() as u64 == page_len,
        };
        if ok {
            Ok(())
        } else {
            Err(misfit(page_len))
        }
    }

    /// Replace the selected bytes of `page`.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when the payload does not fit; `page` is then unchanged.
    #[inline(always)]
    pub fn apply_to(&self, page: &mut [u8]) -> Result<()> {
        self.check(page.len() as u64)?;
        match *self {
            // Small sparse deltas are the common case: inline.
            PayloadView::Sparse { runs, data, .. } => {
                let mut at = 0usize;
                for r in runs.chunks_exact(16) {
                    let (off, len) = (le64(r, 0) as usize, le64(r, 8) as usize);
                    crate::delta::simd::copy_small(&mut page[off..off + len], &data[at..at + len]);
                    at += len;
                }
            }
            other => other.apply_wide(page),
        }
        Ok(())
    }

    /// [`PayloadView::apply_to`] of a full or dense payload that fits `page`.
    #[inline(never)]
    fn apply_wide(&self, page: &mut [u8]) {
        match *self {
            PayloadView::Full(b) => page.copy_from_slice(b),
            PayloadView::Sparse { .. } => {}
            PayloadView::Dense { mask, selected, .. } => {
                crate::delta::simd::scatter_selected(page, mask, selected);
            }
        }
    }

    /// The owned payload.
    ///
    /// # Errors
    /// [`Error::Corrupt`] only if the view was built by hand inconsistently.
    pub fn to_payload(self) -> Result<Payload> {
        match self {
            PayloadView::Full(b) => Ok(Payload::Full(b.to_vec())),
            PayloadView::Sparse { runs, data, .. } => {
                let runs: RunBuf =
                    runs.chunks_exact(16).map(|r| Run { offset: le64(r, 0), len: le64(r, 8) }).collect();
                SparseDelta::from_bufs(&runs, ByteBuf::from_slice(data))
                    .map(Payload::Sparse)
                    .map_err(|e| Error::corrupt(format!("sparse payload: {e}")))
            }
            PayloadView::Dense { len, mask, .. } => {
                let mut data = vec![0u8; len as usize];
                self.apply_to(&mut data)?;
                let mut words = vec![0u64; mask.len().div_ceil(8)];
                for (i, &b) in mask.iter().enumerate() {
                    words[i / 8] |= u64::from(b) << (8 * (i % 8));
                }
                DenseDelta::from_words(words, data)
                    .map(Payload::Dense)
                    .map_err(|e| Error::corrupt(format!("dense payload: {e}")))
            }
        }
    }
}

/// Apply the payload encoding `enc` (spanning all of it) to `page`: a full
/// payload of the page's length is copied straight in, anything else is
/// parsed (with no size bounds: for encodings this process made) and applied.
///
/// # Errors
/// [`Error::Corrupt`] for a malformed encoding, [`Error::InvalidDelta`]
/// when it does not fit; `page` is then unchanged.
#[inline]
pub(crate) fn apply_encoded(enc: &[u8], page: &mut [u8]) -> Result<()> {
    if let Some((h, body)) = enc.split_first_chunk::<9>() {
        if h[0] == 3 && body.len() == page.len() && le64(h, 1) == body.len() as u64 {
            page.copy_from_slice(body);
            return Ok(());
        }
    }
    PayloadView::parse(enc, 0, &Limits::unbounded())?.apply_to(page)
}

/// Decode a payload encoding spanning all of `buf`.
///
/// # Errors
/// [`Error::Corrupt`] for malformed input.
pub fn decode_payload(buf: &[u8], limits: &Limits) -> Result<Payload> {
    PayloadView::parse(buf, 0, limits)?.to_payload()
}

fn source_code(s: &Source) -> u8 {
    match s {
        Source::User => 0,
        Source::Propagation(_) => 1,
        Source::Replay => 2,
    }
}

fn provenance_len(s: &Source) -> usize {
    match s {
        Source::Propagation(p) => 4 + p.function.len() + 4 + 4 + 16 * p.parents.len(),
        _ => 0,
    }
}

/// Exact size of the delta body of `d`.
pub fn delta_body_len(d: &Delta) -> u64 {
    DELTA_HEAD_LEN as u64
        + provenance_len(&d.source) as u64
        + d.tag.as_ref().map_or(0, |t| t.len() as u64)
        + d.payload.encoded_len()
}

/// Append the delta body of `d` (see docs/FORMAT.md) to `out`.
///
/// # Errors
/// [`Error::InvalidDelta`] when a tag or provenance field exceeds the
/// format's 32-bit lengths.
pub fn encode_delta_body(d: &Delta, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&delta_head(d)?);
    encode_delta_rest(d, out);
    Ok(())
}

/// The fixed part of the delta body of `d` (the first [`DELTA_HEAD_LEN`]
/// bytes); [`encode_delta_rest`] writes the rest.
///
/// # Errors
/// As [`encode_delta_body`].
#[inline]
pub(crate) fn delta_head(d: &Delta) -> Result<[u8; DELTA_HEAD_LEN]> {
    let plen = provenance_len(&d.source);
    let tlen = d.tag.as_ref().map_or(0, String::len);
    let (Ok(plen), Ok(tlen)) = (u32::try_from(plen), u32::try_from(tlen)) else {
        return Err(Error::invalid_delta(Some(d.page), "tag or provenance too large to encode"));
    };
    let mut h = [0u8; DELTA_HEAD_LEN];
    h[0..8].copy_from_slice(&d.id.0.to_le_bytes());
    h[8..16].copy_from_slice(&d.page.0.to_le_bytes());
    h[16..24].copy_from_slice(&d.timestamp.to_le_bytes());
    h[24..32].copy_from_slice(&d.base_epoch.map_or(0, |e| e.0).to_le_bytes());
    h[32] = if d.base_epoch.is_some() { FLAG_BASE } else { 0 } | if d.tag.is_some() { FLAG_TAG } else { 0 };
    h[33] = source_code(&d.source);
    // h[34..36]: reserved, zero.
    h[36..40].copy_from_slice(&plen.to_le_bytes());
    h[40..44].copy_from_slice(&tlen.to_le_bytes());
    Ok(h)
}

/// The delta body of `d` after its fixed part: provenance, tag, payload.
#[inline]
pub(crate) fn encode_delta_rest(d: &Delta, out: &mut Vec<u8>) {
    if let Source::Propagation(p) = &d.source {
        put_u32(out, p.function.len() as u32);
        out.extend_from_slice(p.function.as_bytes());
        put_u32(out, p.version);
        put_u32(out, p.parents.len() as u32);
        for (pg, ep) in &p.parents {
            put_u64(out, pg.0);
            put_u64(out, ep.0);
        }
    }
    if let Some(t) = &d.tag {
        out.extend_from_slice(t.as_bytes());
    }
    encode_payload(&d.payload, out);
}

/// A validated, borrowed delta body.
#[derive(Clone, Copy, Debug)]
pub struct DeltaView<'a> {
    /// Delta id.
    pub id: DeltaId,
    /// Target page.
    pub page: PageId,
    /// Logical timestamp.
    pub timestamp: u64,
    /// Optimistic base epoch.
    pub base_epoch: Option<Epoch>,
    /// Source code: 0 user, 1 propagation, 2 replay.
    pub source: u8,
    /// Provenance (validated; [`ProvenanceView::None`] unless propagation).
    pub provenance: ProvenanceView<'a>,
    /// Tag bytes (validated UTF-8), when the tag flag is set.
    pub tag: Option<&'a str>,
    /// The payload.
    pub payload: PayloadView<'a>,
}

impl<'a> DeltaView<'a> {
    /// Parse a delta body spanning all of `buf` (first byte at absolute offset `base`).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for malformed input; never panics.
    #[inline(always)]
    pub fn parse(buf: &'a [u8], base: u64, limits: &Limits) -> Result<Self> {
        // The fixed part is read as one block; a body too short for it
        // takes the field-by-field path, which names the missing field.
        let Some(h) = buf.first_chunk::<DELTA_HEAD_LEN>() else {
            return Self::parse_fields(buf, base, limits);
        };
        let u64_at = |at: usize| le64(h, at);
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let (base_raw, flags, source) = (u64_at(24), h[32], h[33]);
        let (plen, tlen) = (u32_at(36), u32_at(40));
        let plain =
            flags & !FLAG_BASE == 0 && source == 0 && h[34] == 0 && h[35] == 0 && plen == 0 && tlen == 0;
        if !plain || (flags & FLAG_BASE == 0 && base_raw != 0) {
            // Provenance, a tag, or something to report: the general path.
            return Self::parse_fields(buf, base, limits);
        }
        let pay_at = base + DELTA_HEAD_LEN as u64;
        let payload = PayloadView::parse(&buf[DELTA_HEAD_LEN..], pay_at, limits)?;
        Ok(DeltaView {
            id: DeltaId(u64_at(0)),
            page: PageId(u64_at(8)),
            timestamp: u64_at(16),
            base_epoch: (flags & FLAG_BASE != 0).then_some(Epoch(base_raw)),
            source,
            provenance: ProvenanceView::None,
            tag: None,
            payload,
        })
    }

    /// [`DeltaView::parse`] field by field.
    fn parse_fields(buf: &'a [u8], base: u64, limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(buf, base);
        let id = DeltaId(r.u64("delta id")?);
        let page = PageId(r.u64("delta page")?);
        let timestamp = r.u64("delta timestamp")?;
        let base_raw = r.u64("delta base epoch")?;
        let flags_at = r.offset();
        let flags = r.u8("delta flags")?;
        if flags & !(FLAG_BASE | FLAG_TAG) != 0 {
            return Err(Error::corrupt_at(flags_at, format!("unknown delta flags {flags:#x}")));
        }
        if flags & FLAG_BASE == 0 && base_raw != 0 {
            return Err(Error::corrupt_at(flags_at - 8, "base epoch set without its flag"));
        }
        let source = r.u8("delta source")?;
        if source > 2 {
            return Err(Error::corrupt_at(flags_at + 1, format!("unknown delta source {source}")));
        }
        if r.u16("delta reserved")? != 0 {
            return Err(Error::corrupt_at(flags_at + 2, "reserved delta field is not zero"));
        }
        let plen = r.u32("provenance length")?;
        let tlen_at = r.offset();
        let tlen = r.u32("tag length")?;
        if (source == 1) != (plen != 0) {
            return Err(Error::corrupt_at(tlen_at - 4, "provenance present iff the source is propagation"));
        }
        if flags & FLAG_TAG == 0 && tlen != 0 {
            return Err(Error::corrupt_at(tlen_at, "tag bytes without the tag flag"));
        }
        let prov_at = r.offset();
        let provenance = r.bytes(plen as usize, "provenance")?;
        if source == 1 {
            parse_provenance(provenance, prov_at)?;
        }
        let tag_at = r.offset();
        let tag_bytes = r.bytes(tlen as usize, "tag")?;
        let tag = if flags & FLAG_TAG != 0 {
            Some(std::str::from_utf8(tag_bytes).map_err(|_| Error::corrupt_at(tag_at, "tag is not UTF-8"))?)
        } else {
            None
        };
        let pay_at = r.offset();
        let rest = r.bytes(r.remaining(), "payload")?;
        let payload = PayloadView::parse(rest, pay_at, limits)?;
        Ok(DeltaView {
            id,
            page,
            timestamp,
            base_epoch: (flags & FLAG_BASE != 0).then_some(Epoch(base_raw)),
            source,
            provenance: if source == 1 { ProvenanceView::Body(provenance) } else { ProvenanceView::None },
            tag,
            payload,
        })
    }

    /// The owned delta.
    ///
    /// # Errors
    /// [`Error::Corrupt`] (only for hand-built inconsistent views).
    pub fn to_delta(self) -> Result<Delta> {
        let source = match self.source {
            0 => Source::User,
            1 => Source::Propagation(self.provenance.to_provenance()?),
            _ => Source::Replay,
        };
        Ok(Delta {
            id: self.id,
            page: self.page,
            base_epoch: self.base_epoch,
            payload: self.payload.to_payload()?,
            source,
            tag: self.tag.map(str::to_owned),
            timestamp: self.timestamp,
        })
    }
}

/// The provenance of a delta as a log record holds it, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvenanceView<'a> {
    /// None: the delta's source is not propagation.
    None,
    /// The provenance section of a delta body (docs/FORMAT.md).
    Body(&'a [u8]),
    /// An entry of a derived record ([`super::derived`]).
    Derived {
        /// Function name.
        function: &'a str,
        /// Function version.
        version: u32,
        /// Parent count.
        count: u64,
        /// The parents: `count` pairs of LEB128 numbers (page, epoch).
        parents: &'a [u8],
    },
}

impl ProvenanceView<'_> {
    /// The owned provenance.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for [`ProvenanceView::None`] and for hand-built
    /// inconsistent views.
    pub fn to_provenance(self) -> Result<Provenance> {
        match self {
            ProvenanceView::None => Err(Error::corrupt_at(0, "a propagation delta without provenance")),
            ProvenanceView::Body(b) => parse_provenance(b, 0),
            ProvenanceView::Derived { function, version, count, parents } => {
                let mut r = Reader::new(parents, 0);
                let mut out = Vec::with_capacity(count.min(parents.len() as u64 / 2) as usize);
                for _ in 0..count {
                    out.push((PageId(r.varint("parent page")?), Epoch(r.varint("parent epoch")?)));
                }
                r.finish("derived parents")?;
                Ok(Provenance { function: function.into(), version, parents: out })
            }
        }
    }
}

/// What replay needs of a delta body with no provenance and no tag and a
/// sparse payload of at least one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlainSparse<'a> {
    pub id: u64,
    pub page: u64,
    pub timestamp: u64,
    pub base_epoch: Option<u64>,
    /// Encoded runs, validated sorted, disjoint and non-empty.
    pub runs: &'a [u8],
    /// Their bytes.
    pub data: &'a [u8],
    /// One past the last byte touched.
    pub end: u64,
}

/// A delta body spanning all of `buf` that [`DeltaView::parse`] accepts as
/// user-sourced, untagged, with a sparse payload of at least one run, read in
/// one pass; `None` for any other body, valid or not.
#[inline(always)]
pub(crate) fn plain_sparse<'a>(buf: &'a [u8], limits: &Limits) -> Option<PlainSparse<'a>> {
    const AT: usize = DELTA_HEAD_LEN + PAYLOAD_HEAD_LEN;
    let (h, rest) = buf.split_first_chunk::<AT>()?;
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let (base_raw, flags) = (le64(h, 24), h[32]);
    let plain = flags & !FLAG_BASE == 0
        && h[33] == 0
        && h[34] == 0
        && h[35] == 0
        && u32_at(36) == 0
        && u32_at(40) == 0
        && (flags & FLAG_BASE != 0 || base_raw == 0)
        && h[DELTA_HEAD_LEN] == 2;
    let n = le64(h, DELTA_HEAD_LEN + 1);
    if !plain || n == 0 {
        return None;
    }
    let PayloadView::Sparse { runs, data, end } = PayloadView::sparse_fast(n, rest, limits)? else {
        return None;
    };
    Some(PlainSparse {
        id: le64(h, 0),
        page: le64(h, 8),
        timestamp: le64(h, 16),
        base_epoch: (flags & FLAG_BASE != 0).then_some(base_raw),
        runs,
        data,
        end,
    })
}

fn parse_provenance(buf: &[u8], base: u64) -> Result<Provenance> {
    let mut r = Reader::new(buf, base);
    let at = r.offset();
    let flen = r.u32("provenance function length")?;
    let function = std::str::from_utf8(r.bytes(flen as usize, "provenance function")?)
        .map_err(|_| Error::corrupt_at(at, "provenance function name is not UTF-8"))?
        .into();
    let version = r.u32("provenance version")?;
    let n = r.u32("provenance parent count")? as u64;
    if n.saturating_mul(16) != r.remaining() as u64 {
        return Err(r.err(format!("{n} provenance parents do not fill {} bytes", r.remaining())));
    }
    let mut parents = Vec::with_capacity(n as usize);
    for _ in 0..n {
        parents.push((PageId(r.u64("parent page")?), Epoch(r.u64("parent epoch")?)));
    }
    r.finish("provenance")?;
    Ok(Provenance { function, version, parents })
}

/// Decode a delta body spanning all of `buf`.
///
/// # Errors
/// [`Error::Corrupt`] for malformed input.
pub fn decode_delta_body(buf: &[u8], limits: &Limits) -> Result<Delta> {
    DeltaView::parse(buf, 0, limits)?.to_delta()
}

/// Encode `d` as a standalone blob: `MSDL`, version, flags, body length,
/// body, CRC32C of everything before it.
///
/// # Errors
/// [`Error::InvalidDelta`] when the body exceeds 4 GiB or a field its length.
pub fn encode_delta(d: &Delta) -> Result<Vec<u8>> {
    let body = delta_body_len(d);
    let body32 =
        u32::try_from(body).map_err(|_| Error::invalid_delta(Some(d.page), "delta too large for a blob"))?;
    let mut out = Vec::with_capacity(BLOB_HEAD_LEN + body as usize + 4);
    out.extend_from_slice(&DELTA_MAGIC);
    put_u16(&mut out, DELTA_VERSION);
    put_u16(&mut out, 0);
    put_u32(&mut out, body32);
    encode_delta_body(d, &mut out)?;
    let c = crc(&out);
    put_u32(&mut out, c);
    Ok(out)
}

/// Decode a standalone delta blob spanning all of `buf`.
///
/// # Errors
/// [`Error::Corrupt`] for a bad magic, version, length or CRC, or a
/// malformed body; never panics, allocates only what the input justifies.
pub fn decode_delta(buf: &[u8], limits: &Limits) -> Result<Delta> {
    let mut r = Reader::new(buf, 0);
    if r.bytes(4, "delta magic")? != DELTA_MAGIC {
        return Err(Error::corrupt_at(0, "not a delta blob (bad magic)"));
    }
    let v = r.u16("delta version")?;
    if v != DELTA_VERSION {
        return Err(Error::corrupt_at(4, format!("unsupported delta blob version {v}")));
    }
    if r.u16("delta blob flags")? != 0 {
        return Err(Error::corrupt_at(6, "unknown delta blob flags"));
    }
    let len = r.u32("delta body length")? as u64;
    if len > limits.max_record_len {
        return Err(Error::corrupt_at(8, format!("delta body of {len} bytes exceeds the limit")));
    }
    let body = r.bytes_u64(len, "delta body")?;
    let crc_at = r.offset();
    let stored = r.u32("delta crc")?;
    r.finish("delta blob")?;
    if crc(&buf[..crc_at as usize]) != stored {
        return Err(Error::corrupt_at(crc_at, "delta blob CRC mismatch"));
    }
    DeltaView::parse(body, BLOB_HEAD_LEN as u64, limits)?.to_delta()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_payload(max_len: usize) -> impl Strategy<Value = Payload> {
        (1..max_len).prop_flat_map(|len| {
            prop_oneof![
                proptest::collection::vec(proptest::option::of(any::<u8>()), len)
                    .prop_map(|o| Payload::Dense(DenseDelta::from_options(&o).unwrap())),
                proptest::collection::vec(any::<u8>(), len).prop_map(Payload::Full),
                proptest::collection::vec((any::<bool>(), any::<u8>()), len).prop_map(|v| {
                    let mut pairs: Vec<(u64, Vec<u8>)> = Vec::new();
                    for (i, (on, b)) in v.into_iter().enumerate() {
                        if on {
                            match pairs.last_mut() {
                                Some((o, d)) if *o + d.len() as u64 == i as u64 => d.push(b),
                                _ => pairs.push((i as u64, vec![b])),
                            }
                        }
                    }
                    Payload::Sparse(SparseDelta::from_pairs(pairs.iter().map(|(o, d)| (*o, &d[..]))).unwrap())
                }),
            ]
        })
    }

    fn arb_delta() -> impl Strategy<Value = Delta> {
        (
            arb_payload(200),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            0u8..3,
            proptest::option::of("[a-z]{0,12}"),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
        )
            .prop_map(|(payload, id, page, base, src, tag, ts, parents)| Delta {
                id: DeltaId(id),
                page: PageId(page),
                base_epoch: base.map(Epoch),
                payload,
                source: match src {
                    0 => Source::User,
                    1 => Source::Propagation(Provenance {
                        function: "sum".into(),
                        version: 3,
                        parents: parents.into_iter().map(|(a, b)| (PageId(a), Epoch(b))).collect(),
                    }),
                    _ => Source::Replay,
                },
                tag,
                timestamp: ts,
            })
    }

    /// The body of `d` with the bytes of `flips` flipped and up to two
    /// bytes cut off its end.
    fn mutated_body(d: &Delta, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
        let mut body = Vec::new();
        encode_delta_body(d, &mut body).unwrap();
        for &(at, x) in flips {
            let n = body.len();
            body[at % n] ^= x;
        }
        body.truncate(body.len() - cut % 3);
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn payload_round_trip_and_size(p in arb_payload(300)) {
            let mut out = Vec::new();
            encode_payload(&p, &mut out);
            prop_assert_eq!(out.len() as u64, p.encoded_len());
            prop_assert_eq!(decode_payload(&out, &Limits::default()).unwrap(), p.clone());
            // The borrowed view applies exactly like the owned payload.
            let len = match &p { Payload::Dense(d) => d.len() as usize, Payload::Full(b) => b.len(), Payload::Sparse(s) => s.end() as usize };
            let mut a: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut b = a.clone();
            p.apply_to(&mut a).unwrap();
            PayloadView::parse(&out, 0, &Limits::default()).unwrap().apply_to(&mut b).unwrap();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn delta_blob_round_trip(d in arb_delta()) {
            let blob = encode_delta(&d).unwrap();
            prop_assert_eq!(blob.len() as u64, BLOB_HEAD_LEN as u64 + delta_body_len(&d) + 4);
            prop_assert_eq!(decode_delta(&blob, &Limits::default()).unwrap(), d);
        }

        #[test]
        fn block_parsers_agree_with_the_field_parsers(
            d in arb_delta(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in any::<usize>(),
        ) {
            let body = mutated_body(&d, &flips, cut);
            let body = &body[..];
            let lim = Limits { max_page_len: 250, ..Limits::default() };
            let fast = DeltaView::parse(body, 5, &lim);
            let slow = DeltaView::parse_fields(body, 5, &lim);
            prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
            let pay = &body[body.len().min(DELTA_HEAD_LEN)..];
            let fast = PayloadView::parse(pay, 3, &lim);
            let slow = PayloadView::parse_fields(pay, 3, &lim);
            prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        }

        #[test]
        fn plain_sparse_agrees_with_the_delta_parser(
            d in arb_delta(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in any::<usize>(),
        ) {
            let body = mutated_body(&d, &flips, cut);
            let body = &body[..];
            let lim = Limits { max_page_len: 250, ..Limits::default() };
            let view = DeltaView::parse(body, 0, &lim);
            match plain_sparse(body, &lim) {
                Some(p) => {
                    let v = view.unwrap();
                    prop_assert_eq!(
                        (v.id.0, v.page.0, v.timestamp, v.base_epoch.map(|e| e.0)),
                        (p.id, p.page, p.timestamp, p.base_epoch)
                    );
                    prop_assert_eq!((v.source, v.provenance, v.tag), (0, ProvenanceView::None, None));
                    prop_assert_eq!(v.payload, PayloadView::Sparse { runs: p.runs, data: p.data, end: p.end });
                }
                None => {
                    // Only bodies it does not cover are left to the general parser.
                    if let Ok(v) = view {
                        let covered = v.source == 0
                            && v.tag.is_none()
                            && matches!(v.payload, PayloadView::Sparse { runs, .. } if !runs.is_empty());
                        prop_assert!(!covered, "{:?}", v);
                    }
                }
            }
        }

        #[test]
        fn delta_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_delta(&bytes, &Limits::default());
            let _ = decode_delta_body(&bytes, &Limits::default());
            let _ = decode_payload(&bytes, &Limits::default());
        }
    }

    #[test]
    fn truncation_and_bit_flips_are_detected() {
        let d = Delta {
            id: DeltaId(7),
            page: PageId(3),
            base_epoch: Some(Epoch(2)),
            payload: Payload::Sparse(
                SparseDelta::from_pairs([(4u64, &[1u8, 2, 3][..]), (40, &[9][..])]).unwrap(),
            ),
            source: Source::Propagation(Provenance {
                function: "f".into(),
                version: 1,
                parents: vec![(PageId(1), Epoch(5))],
            }),
            tag: Some("t".into()),
            timestamp: 11,
        };
        let blob = encode_delta(&d).unwrap();
        for cut in 0..blob.len() {
            assert!(decode_delta(&blob[..cut], &Limits::default()).is_err(), "truncated at {cut}");
        }
        for bit in 0..blob.len() * 8 {
            let mut b = blob.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_delta(&b, &Limits::default()).is_err(), "bit {bit} flipped");
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocation() {
        for kind in [1u8, 2, 3] {
            let mut b = vec![kind];
            b.extend_from_slice(&u64::MAX.to_le_bytes());
            assert!(decode_payload(&b, &Limits::default()).is_err());
            let mut b = vec![kind];
            b.extend_from_slice(&(1u64 << 40).to_le_bytes());
            assert!(decode_payload(&b, &Limits::default()).is_err());
        }
    }
}
