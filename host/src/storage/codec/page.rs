//! Page image codec, version 2: presence bitvector of 64-byte blocks, stored
//! run-length encoded, followed by the bytes of the non-zero blocks only.
//!
//! ```text
//! 0   magic "MSPG" | 4 version u16 = 2 | 6 flags u16 = 0
//! 8   total_len u64 (whole encoding, CRC included)
//! 16  id u64 | 24 epoch u64 | 32 len u64 (page bytes)
//! 40  location kind u32 | 44 location device u32
//! 48  meta_len u32 | 52 rle_count u32 | 56 data_len u64
//! 64  metadata section (meta_len bytes)
//!     rle_count × u32 run lengths: alternating absent/present block runs,
//!         starting with absent (the first run may be 0, no other run is 0)
//!     data_len bytes: the present blocks in order (the last block of the
//!         page is `len % 64` bytes when that is not 0)
//!     crc32c u32 over every byte before it
//! ```
//!
//! The encoding is canonical: a block is present exactly when it holds a
//! non-zero byte, so equal pages encode to equal bytes.

use super::{
    crc, crc_append, metadata_len, put_location, put_metadata, put_u16, put_u32, put_u64, read_location,
    read_metadata,
};
use super::{Limits, Reader};
use crate::alloc::{PageAllocator, PageBuf};
use crate::storage::vfs::{MemFile, VfsRead};
use crate::types::page::{Location, Metadata};
use crate::{Error, Result};
use shared_types::{Epoch, PageId};
use std::ops::Range;

/// Magic of a page image.
pub const PAGE_MAGIC: [u8; 4] = *b"MSPG";
/// Current page image version.
pub const PAGE_VERSION: u16 = 2;
/// Presence granularity in bytes.
pub const BLOCK: usize = 64;
/// Size of the fixed header.
pub const PAGE_HEAD_LEN: usize = 64;
/// Page image flag: the image is a patch (incremental checkpoints). Its
/// runs alternate unchanged and changed blocks and its data is the changed
/// blocks' bytes, whatever they hold (zero blocks included): applied to the
/// same page in the checkpoint it patches, it gives the page's bytes.
pub const PAGE_FLAG_PATCH: u16 = 1;

/// The bytes of a decoded page: a plain vector, or a buffer of the page
/// allocator when the decoder was given one (then recovery hands it to the
/// page without copying). Dereferences to `[u8]`.
pub struct PageBytes(Repr);

enum Repr {
    Vec(Vec<u8>),
    Pooled(PageBuf),
}

impl PageBytes {
    /// `len` zero bytes, from `alloc` when given.
    ///
    /// # Errors
    /// [`Error::InvalidPage`] when the allocator refuses the length.
    pub fn zeroed(len: usize, alloc: Option<&PageAllocator>) -> Result<Self> {
        Ok(match alloc {
            Some(a) => Self(Repr::Pooled(a.alloc(len)?)),
            None => Self(Repr::Vec(vec![0; len])),
        })
    }

    /// The bytes as a page buffer of `alloc` (no copy when they already are one).
    ///
    /// # Errors
    /// As [`PageAllocator::alloc`].
    pub fn into_page_buf(self, alloc: &PageAllocator) -> Result<PageBuf> {
        match self.0 {
            Repr::Pooled(b) => Ok(b),
            Repr::Vec(v) => alloc.alloc_copy(&v),
        }
    }

    /// The bytes as a vector (no copy when they already are one).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Vec(v) => v,
            Repr::Pooled(b) => b.to_vec(),
        }
    }
}

/// No bytes (an empty vector).
impl Default for PageBytes {
    fn default() -> Self {
        Self(Repr::Vec(Vec::new()))
    }
}

impl From<Vec<u8>> for PageBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(Repr::Vec(v))
    }
}

impl std::ops::Deref for PageBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Vec(v) => v,
            Repr::Pooled(b) => b,
        }
    }
}

impl std::ops::DerefMut for PageBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Repr::Vec(v) => v,
            Repr::Pooled(b) => b,
        }
    }
}

impl Clone for PageBytes {
    fn clone(&self) -> Self {
        Self(Repr::Vec(self.to_vec()))
    }
}

impl PartialEq for PageBytes {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for PageBytes {}

impl PartialEq<[u8]> for PageBytes {
    fn eq(&self, other: &[u8]) -> bool {
        self[..] == *other
    }
}

impl PartialEq<Vec<u8>> for PageBytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self[..] == other[..]
    }
}

impl std::fmt::Debug for PageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self[..], f)
    }
}

/// A decoded page: everything a checkpoint keeps of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageImage {
    /// Id.
    pub id: PageId,
    /// Epoch.
    pub epoch: Epoch,
    /// Location.
    pub location: Location,
    /// Metadata.
    pub meta: Metadata,
    /// The bytes (length fixed at creation).
    pub bytes: PageBytes,
}

/// Whether a block holds a non-zero byte.
#[inline]
fn block_present(b: &[u8]) -> bool {
    // Blocks of dense data almost always have a non-zero first word: answer
    // those without scanning the rest.
    if b.first_chunk::<8>().is_some_and(|w| u64::from_ne_bytes(*w) != 0) {
        return true;
    }
    let mut chunks = b.chunks_exact(8);
    let mut acc = 0u64;
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        acc |= u64::from_ne_bytes(a);
    }
    acc != 0 || chunks.remainder().iter().any(|&x| x != 0)
}

/// Append the head of a page's v2 image to `out` (fixed header, metadata,
/// block runs: everything before the data) and put the byte ranges of the
/// page that make up its data in `data` (present blocks, adjacent ones
/// merged). The image is the head, those bytes in order, then the CRC32C of
/// all of it; returns its total length.
///
/// With `data_crc`, also returns the CRC32C of the data (the ranges'
/// bytes in order), computed in the same pass as the presence scan, a
/// window at a time while the window is in cache: the page's memory is read
/// once.
///
/// # Errors
/// [`Error::InvalidPage`] when the page has more blocks than the format's
/// 32-bit run lengths can describe (pages over 256 GiB).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_head(
    id: PageId,
    epoch: Epoch,
    location: Location,
    meta: &Metadata,
    bytes: &[u8],
    out: &mut Vec<u8>,
    data: &mut Vec<Range<usize>>,
    mut data_crc: Option<&mut u32>,
) -> Result<u64> {
    /// Blocks scanned between two CRC updates (16 KiB: well within L1/L2).
    const WINDOW: usize = 256;
    let nblocks = bytes.len().div_ceil(BLOCK);
    if u32::try_from(nblocks).is_err() {
        return Err(Error::InvalidPage {
            reason: format!("page of {} bytes is too large to encode", bytes.len()),
        });
    }
    data.clear();
    // Alternating absent and present runs, starting with absent; each
    // present run is one data range.
    let n = bytes.len();
    let present_at = |k: usize| block_present(&bytes[k * BLOCK..((k + 1) * BLOCK).min(n)]);
    let mut runs: Vec<u32> = Vec::new();
    let mut data_len: u64 = 0;
    let mut k = 0;
    loop {
        let start = k;
        while k < nblocks && !present_at(k) {
            k += 1;
        }
        runs.push((k - start) as u32);
        if k == nblocks {
            break;
        }
        let start = k;
        let mut crc_from = start * BLOCK;
        while k < nblocks && present_at(k) {
            k += 1;
            if (k - start) % WINDOW == 0 {
                if let Some(c) = data_crc.as_deref_mut() {
                    *c = crc_append(*c, &bytes[crc_from..k * BLOCK]);
                    crc_from = k * BLOCK;
                }
            }
        }
        runs.push((k - start) as u32);
        let range = start * BLOCK..(k * BLOCK).min(n);
        if let Some(c) = data_crc.as_deref_mut() {
            *c = crc_append(*c, &bytes[crc_from..range.end]);
        }
        data_len += range.len() as u64;
        data.push(range);
        if k == nblocks {
            break;
        }
    }
    Ok(put_head((id, epoch, location, meta), 0, bytes.len() as u64, &runs, data_len, out))
}

/// The head of a patch image ([`PAGE_FLAG_PATCH`]) of a page of `len`
/// bytes whose changed bytes are `ranges`: ascending, disjoint, not
/// adjacent, each starting on a 64-byte block and ending on one or at
/// `len`. The image's data is those bytes in order. Costs O(ranges), not
/// O(blocks).
///
/// # Errors
/// [`Error::InvalidPage`] for ranges that break those rules, or a page too
/// large for the format (as [`encode_head`]).
pub(crate) fn encode_patch_head(
    head: (PageId, Epoch, Location, &Metadata),
    len: usize,
    ranges: &[Range<usize>],
    out: &mut Vec<u8>,
) -> Result<u64> {
    let nblocks = len.div_ceil(BLOCK);
    if u32::try_from(nblocks).is_err() {
        return Err(Error::InvalidPage { reason: format!("page of {len} bytes is too large to encode") });
    }
    let bad = |r: &Range<usize>| Error::InvalidPage {
        reason: format!(
            "patch of page {}: range {r:?} of a {len}-byte page is not made of whole blocks in order",
            head.0
        ),
    };
    let mut runs: Vec<u32> = Vec::with_capacity(2 * ranges.len() + 1);
    let (mut at, mut data_len) = (0usize, 0usize);
    for r in ranges {
        if r.start % BLOCK != 0 || r.start >= r.end || r.end > len || (r.end % BLOCK != 0 && r.end != len) {
            return Err(bad(r));
        }
        let (from, to) = (r.start / BLOCK, r.end.div_ceil(BLOCK));
        // Runs other than the first are never empty: a range must not
        // touch the one before it.
        if from < at || (from == at && at != 0) {
            return Err(bad(r));
        }
        runs.push((from - at) as u32);
        runs.push((to - from) as u32);
        data_len += r.len();
        at = to;
    }
    if at < nblocks || runs.is_empty() {
        runs.push((nblocks - at) as u32);
    }
    Ok(put_head(head, PAGE_FLAG_PATCH, len as u64, &runs, data_len as u64, out))
}

/// Append an image's head (fixed header, metadata, block runs) to `out`;
/// returns the image's total length.
fn put_head(
    (id, epoch, location, meta): (PageId, Epoch, Location, &Metadata),
    flags: u16,
    len: u64,
    runs: &[u32],
    data_len: u64,
    out: &mut Vec<u8>,
) -> u64 {
    let mlen = metadata_len(meta);
    let total = PAGE_HEAD_LEN as u64 + mlen as u64 + 4 * runs.len() as u64 + data_len + 4;
    out.reserve(PAGE_HEAD_LEN + mlen + 4 * runs.len());
    out.extend_from_slice(&PAGE_MAGIC);
    put_u16(out, PAGE_VERSION);
    put_u16(out, flags);
    put_u64(out, total);
    put_u64(out, id.0);
    put_u64(out, epoch.0);
    put_u64(out, len);
    put_location(out, location);
    put_u32(out, mlen as u32);
    put_u32(out, runs.len() as u32);
    put_u64(out, data_len);
    put_metadata(out, meta);
    for r in runs {
        put_u32(out, *r);
    }
    total
}

/// Append the v2 encoding of a page to `out`.
///
/// # Errors
/// [`Error::InvalidPage`] when the page has more blocks than the format's
/// 32-bit run lengths can describe (pages over 256 GiB).
pub fn encode_page(
    id: PageId,
    epoch: Epoch,
    location: Location,
    meta: &Metadata,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    let mut data = Vec::new();
    let total = encode_head(id, epoch, location, meta, bytes, out, &mut data, None)?;
    out.reserve((total as usize).saturating_sub(out.len() - start));
    for r in data {
        out.extend_from_slice(&bytes[r]);
    }
    let c = crc(&out[start..]);
    put_u32(out, c);
    debug_assert_eq!((out.len() - start) as u64, total);
    Ok(())
}

/// Decode one page image from the front of `buf` (first byte at absolute
/// offset `base`); returns it and the number of bytes it occupied.
///
/// Allocates the page length (bounded by [`Limits::max_page_len`]) and
/// otherwise only what the input holds.
///
/// # Errors
/// [`Error::Corrupt`] for any malformed input; never panics.
pub fn decode_page(buf: &[u8], base: u64, limits: &Limits) -> Result<(PageImage, usize)> {
    let mut src = MemFile(buf);
    let (p, used, _) = read_page(&mut src, 0, buf.len() as u64, base, limits, None)?;
    Ok((p, used as usize))
}

fn io_err(e: std::io::Error, at: u64) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::corrupt_at(at, "the file ended inside a page image")
    } else {
        Error::from(e)
    }
}

/// Decode the page image at offset `at` of `src`, which must lie within
/// the next `avail` bytes; offsets in errors are `base` plus the position
/// in the image. The page bytes are read straight into their buffer (from
/// `alloc` when given). Returns the page, the image length and the CRC32C
/// of the whole image, its CRC field included (for a file-level CRC).
///
/// The image's CRC is checked before anything past its length fields is
/// interpreted. Allocates the page length (bounded by
/// [`Limits::max_page_len`]) and otherwise only what the input holds.
///
/// # Errors
/// [`Error::Corrupt`] for any malformed input; [`Error::Io`]; never panics.
pub(crate) fn read_page(
    src: &mut dyn VfsRead,
    at: u64,
    avail: u64,
    base: u64,
    limits: &Limits,
    alloc: Option<&PageAllocator>,
) -> Result<(PageImage, u64, u32)> {
    match read_entry(src, at, avail, base, limits, alloc, false)? {
        (PageEntry::Full(p), used, c, _) => Ok((p, used, c)),
        (PageEntry::Patch(_), ..) => Err(Error::corrupt_at(base + 6, "unknown page flags")),
    }
}

/// A patch image, decoded: the page's new epoch and location, and the
/// bytes of its changed blocks with where they go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagePatch {
    /// Id.
    pub id: PageId,
    /// Epoch after the patch.
    pub epoch: Epoch,
    /// Location after the patch.
    pub location: Location,
    /// Metadata (equal to the patched page's).
    pub meta: Metadata,
    /// Page length (equal to the patched page's).
    pub len: u64,
    /// The changed byte ranges, ascending and disjoint, and the bytes of
    /// each in order in `data`.
    pub ranges: Vec<Range<usize>>,
    /// The changed bytes, packed.
    pub data: Vec<u8>,
}

impl PagePatch {
    /// Apply to `page`, the same page in the checkpoint this one patches.
    ///
    /// # Errors
    /// [`Error::Corrupt`] (offset `at`) when `page` has another id, length
    /// or metadata.
    pub fn apply_to(&self, page: &mut PageImage, at: u64) -> Result<()> {
        if page.id != self.id || page.bytes.len() as u64 != self.len || page.meta != self.meta {
            return Err(Error::corrupt_at(
                at,
                format!("patch of page {} does not match the page it patches (length or metadata)", self.id),
            ));
        }
        let mut packed = 0;
        for r in &self.ranges {
            page.bytes[r.clone()].copy_from_slice(&self.data[packed..packed + r.len()]);
            packed += r.len();
        }
        page.epoch = self.epoch;
        page.location = self.location;
        Ok(())
    }
}

/// An image in an incremental checkpoint: a whole page or a patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageEntry {
    /// A whole page (a page created, or rewritten, since the base).
    Full(PageImage),
    /// The changed blocks of a page of the base.
    Patch(PagePatch),
}

impl PageEntry {
    /// The page's id.
    pub fn id(&self) -> PageId {
        match self {
            PageEntry::Full(p) => p.id,
            PageEntry::Patch(p) => p.id,
        }
    }
}

/// [`read_page`], also accepting a patch image when `allow_patch`; also
/// returns the image's own CRC (its last four bytes).
///
/// # Errors
/// As [`read_page`].
pub(crate) fn read_entry(
    src: &mut dyn VfsRead,
    at: u64,
    avail: u64,
    base: u64,
    limits: &Limits,
    alloc: Option<&PageAllocator>,
    allow_patch: bool,
) -> Result<(PageEntry, u64, u32, u32)> {
    let mut head = [0u8; PAGE_HEAD_LEN];
    let head_len = (avail.min(PAGE_HEAD_LEN as u64)) as usize;
    src.read_exact_at(&mut head[..head_len], at).map_err(|e| io_err(e, base))?;
    let mut r = Reader::new(&head[..head_len], base);
    if r.bytes(4, "page magic")? != PAGE_MAGIC {
        return Err(Error::corrupt_at(base, "not a page image (bad magic)"));
    }
    let v = r.u16("page version")?;
    if v != PAGE_VERSION {
        return Err(Error::corrupt_at(base + 4, format!("unsupported page image version {v}")));
    }
    let flags = r.u16("page flags")?;
    if flags & !(if allow_patch { PAGE_FLAG_PATCH } else { 0 }) != 0 {
        return Err(Error::corrupt_at(base + 6, "unknown page flags"));
    }
    let patch = flags & PAGE_FLAG_PATCH != 0;
    let total = r.u64("page total length")?;
    if total < PAGE_HEAD_LEN as u64 + 4 || total > avail {
        return Err(Error::corrupt_at(
            base + 8,
            format!("page image of {total} bytes does not fit the input"),
        ));
    }
    // total >= 68, so the whole fixed header was read.
    let id = PageId(r.u64("page id")?);
    let epoch = Epoch(r.u64("page epoch")?);
    let len_at = r.offset();
    let len = r.u64("page length")?;
    let location_at = r.offset();
    let location = r.bytes(8, "page location")?;
    let mlen = u64::from(r.u32("metadata length")?);
    let rle_count = u64::from(r.u32("run count")?);
    let data_at = r.offset();
    let data_len = r.u64("data length")?;
    // Everything between the fixed header and the CRC: metadata and runs
    // (`mid`), then the data.
    let body = total - PAGE_HEAD_LEN as u64 - 4;
    let mid_len = mlen + 4 * rle_count;
    if mid_len > body || body - mid_len != data_len {
        return Err(Error::corrupt_at(data_at, "section lengths do not add up to the image length"));
    }
    if len == 0 || len > limits.max_page_len {
        return Err(Error::corrupt_at(len_at, format!("page length {len} out of range")));
    }
    if data_len > len {
        return Err(Error::corrupt_at(data_at, "data length does not match the present blocks"));
    }
    let len_usize = usize::try_from(len)
        .map_err(|_| Error::corrupt_at(len_at, "page length exceeds the address space"))?;
    let mut mid = vec![0u8; mid_len as usize];
    let mut pos = at + PAGE_HEAD_LEN as u64;
    src.read_exact_at(&mut mid, pos).map_err(|e| io_err(e, base + PAGE_HEAD_LEN as u64))?;
    pos += mid_len;
    // A patch keeps its data packed (data_len <= total <= avail bytes).
    let mut bytes = if patch {
        PageBytes::from(vec![0u8; data_len as usize])
    } else {
        PageBytes::zeroed(len_usize, alloc)
            .map_err(|e| Error::corrupt_at(len_at, format!("page length {len} cannot be allocated: {e}")))?
    };
    let data_n = data_len as usize;
    src.read_exact_at(&mut bytes[..data_n], pos)
        .map_err(|e| io_err(e, base + PAGE_HEAD_LEN as u64 + mid_len))?;
    pos += data_len;
    let mut stored = [0u8; 4];
    src.read_exact_at(&mut stored, pos).map_err(|e| io_err(e, base + total - 4))?;
    // One pass over the packed data, a window at a time while it is in
    // cache: the CRC, and the first all-zero block (in the packed data every
    // 64-byte chunk is one block: ranges are whole blocks but for the
    // page's short last block, which comes last).
    const WINDOW: usize = 16 << 10;
    let mut c = crc_append(crc(&head), &mid);
    let mut zero_chunk: Option<usize> = None;
    for (w, win) in bytes[..data_n].chunks(WINDOW).enumerate() {
        c = crc_append(c, win);
        if zero_chunk.is_none() && !patch {
            zero_chunk = win.chunks(BLOCK).position(|b| !block_present(b)).map(|j| w * (WINDOW / BLOCK) + j);
        }
    }
    if c != u32::from_le_bytes(stored) {
        return Err(Error::corrupt_at(base + total - 4, "page image CRC mismatch"));
    }
    let whole_crc = crc_append(c, &stored);

    let location = read_location(&mut Reader::new(location, location_at))?;
    let meta_at = base + PAGE_HEAD_LEN as u64;
    let mut mr = Reader::new(&mid[..mlen as usize], meta_at);
    let meta = read_metadata(&mut mr)?;
    mr.finish("metadata")?;
    let runs_at = meta_at + mlen;
    let runs = &mid[mlen as usize..];

    // The present ranges and where their bytes sit in the packed data.
    let nblocks = len.div_ceil(BLOCK as u64);
    let mut present_ranges: Vec<(usize, usize)> = Vec::new();
    let (mut block, mut packed, mut present) = (0u64, 0usize, false);
    for (i, rb) in runs.chunks_exact(4).enumerate() {
        let n = u64::from(u32::from_le_bytes([rb[0], rb[1], rb[2], rb[3]]));
        let here = runs_at + 4 * i as u64;
        if n == 0 && i != 0 {
            return Err(Error::corrupt_at(here, "empty block run (non-canonical)"));
        }
        if n > nblocks - block {
            return Err(Error::corrupt_at(here, "block runs exceed the page"));
        }
        if present {
            let from = block as usize * BLOCK;
            let to = ((block + n) as usize * BLOCK).min(len_usize);
            if to - from > data_n - packed {
                return Err(Error::corrupt_at(data_at, "data length does not match the present blocks"));
            }
            present_ranges.push((from, to));
            packed += to - from;
        }
        block += n;
        present = !present;
    }
    if block != nblocks || packed != data_n || runs.is_empty() {
        return Err(Error::corrupt_at(runs_at, "block runs do not cover the page exactly"));
    }
    if patch {
        let ranges = present_ranges.into_iter().map(|(from, to)| from..to).collect();
        let patch = PagePatch { id, epoch, location, meta, len, ranges, data: bytes.into_vec() };
        return Ok((PageEntry::Patch(patch), total, whole_crc, c));
    }
    if let Some(z) = zero_chunk {
        let mut packed_at = 0usize;
        let mut block = 0usize;
        for &(from, to) in &present_ranges {
            if z * BLOCK < packed_at + (to - from) {
                block = (from + z * BLOCK - packed_at) / BLOCK;
                break;
            }
            packed_at += to - from;
        }
        return Err(Error::corrupt_at(runs_at, format!("present block {block} is all zero (non-canonical)")));
    }
    // Move each present range from its packed position to its place, last
    // first (a range only ever moves up, past the ones before it), then
    // clear the gaps the packed bytes leave behind.
    let mut src_end = packed;
    for &(from, to) in present_ranges.iter().rev() {
        let n = to - from;
        src_end -= n;
        if src_end != from {
            bytes.copy_within(src_end..src_end + n, from);
        }
    }
    let mut prev_end = 0usize;
    for &(from, to) in &present_ranges {
        bytes[prev_end..from].fill(0);
        prev_end = to;
    }
    bytes[prev_end..].fill(0);
    Ok((PageEntry::Full(PageImage { id, epoch, location, meta, bytes }), total, whole_crc, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(p: &PageImage) -> Vec<u8> {
        let mut out = Vec::new();
        encode_page(p.id, p.epoch, p.location, &p.meta, &p.bytes, &mut out).unwrap();
        out
    }

    fn arb_page() -> impl Strategy<Value = PageImage> {
        (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(Location::Cpu), Just(Location::Unified), any::<u32>().prop_map(Location::Gpu)],
            proptest::collection::btree_map("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..8), 0..3),
            (1usize..600).prop_flat_map(|len| {
                proptest::collection::vec(prop_oneof![3 => Just(0u8), 1 => any::<u8>()], len)
            }),
            proptest::collection::vec((0usize..600, 1usize..200), 0..3),
        )
            .prop_map(|(id, epoch, location, meta, mut bytes, zeros)| {
                // Zero out some long stretches so that absent blocks are common.
                for (at, n) in zeros {
                    let len = bytes.len();
                    bytes[at.min(len)..(at + n).min(len)].fill(0);
                }
                PageImage { id: PageId(id), epoch: Epoch(epoch), location, meta, bytes: bytes.into() }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn page_round_trip(p in arb_page()) {
            let out = enc(&p);
            let (q, used) = decode_page(&out, 0, &Limits::default()).unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(q, p);
        }

        #[test]
        fn page_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_page(&bytes, 0, &Limits::default());
        }
    }

    #[test]
    fn zero_pages_are_small_and_dense_pages_cost_one_header() {
        let z = PageImage {
            id: PageId(1),
            epoch: Epoch(0),
            location: Location::Cpu,
            meta: Metadata::new(),
            bytes: vec![0; 1 << 20].into(),
        };
        assert_eq!(enc(&z).len(), PAGE_HEAD_LEN + 4 + 4 + 4);
        let mut one = z.clone();
        one.bytes[1000] = 1;
        assert_eq!(enc(&one).len(), PAGE_HEAD_LEN + 4 + 3 * 4 + 64 + 4);
    }

    #[test]
    fn truncation_and_bit_flips_are_detected() {
        let mut bytes = vec![0u8; 300];
        bytes[5] = 1;
        bytes[299] = 2;
        let p = PageImage {
            id: PageId(4),
            epoch: Epoch(9),
            location: Location::Cpu,
            meta: [("name".to_string(), b"x".to_vec())].into(),
            bytes: bytes.into(),
        };
        let out = enc(&p);
        for cut in 0..out.len() {
            assert!(decode_page(&out[..cut], 0, &Limits::default()).is_err(), "cut at {cut}");
        }
        for bit in 0..out.len() * 8 {
            let mut b = out.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_page(&b, 0, &Limits::default()).is_err(), "bit {bit}");
        }
    }
}
