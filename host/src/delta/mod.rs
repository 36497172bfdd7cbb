//! Deltas: byte-level changes to a page, and the laws they obey.
//!
//! A [`Payload`] selects page bytes and gives their new values:
//!
//! | kind | what it holds | selects |
//! |---|---|---|
//! | [`DenseDelta`] | one mask bit per page byte plus page-length data | the masked bytes |
//! | [`SparseDelta`] | sorted, non-overlapping byte runs plus their bytes | the bytes of the runs |
//! | `Full` | the whole page | every byte |
//!
//! `apply` replaces exactly the selected bytes; `merge(a, b)` is one payload
//! with `apply(apply(p, a), b) == apply(p, merge(a, b))`, and merge is
//! associative. Payloads are kept in a canonical form (dense data is zero
//! where the mask is clear; adjacent sparse runs are coalesced), so equal
//! effects give equal values.

use crate::{Error, Result};
#[cfg(target_pointer_width = "64")]
use bitvec::prelude::{BitSlice, BitVec, Lsb0};
use serde::{Deserialize, Serialize};
use shared_types::{DeltaId, Epoch, PageId};
use smallvec::SmallVec;

/// Bytes of a sparse delta kept inside the delta itself, with no heap
/// allocation: small writes (a counter, a field, a short record) are the
/// common case, and a batch of them then costs no allocation or free.
pub const SPARSE_INLINE_BYTES: usize = 16;

/// Runs being gathered for a sparse delta (decoding, building from
/// pairs): one inline, more on the heap. The delta keeps them as a
/// [`RunStore`].
pub(crate) type RunBuf = SmallVec<[Run; 1]>;
/// Bytes of a sparse delta: up to [`SPARSE_INLINE_BYTES`] inline, more on
/// 64-byte-aligned lines.
pub(crate) use crate::linebuf::ByteBuf;

pub mod change;
pub(crate) mod simd;
const _: () = assert!(SPARSE_INLINE_BYTES == crate::linebuf::INLINE);

/// A byte run of a sparse delta: `len` bytes starting at page byte `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Run {
    /// First page byte replaced.
    pub offset: u64,
    /// Number of bytes replaced.
    pub len: u64,
}

impl Run {
    /// One past the last byte, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

/// A run as a sparse delta keeps it when it ends at or before
/// `u32::MAX` (pages of up to 4 GiB, the default page limit): 8 bytes
/// instead of 16, so the run list of a delta of short runs is half the
/// memory and half the bytes an apply reads. Laid out as offset then
/// length (`#[repr(C)]`): the vector run copy reads eight runs, one
/// 64-byte vector, at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct NarrowRun {
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl NarrowRun {
    #[inline]
    pub(crate) fn wide(self) -> Run {
        Run { offset: u64::from(self.offset), len: u64::from(self.len) }
    }
}

/// The runs of a sparse delta: narrow when the last run ends at or before
/// `u32::MAX` (then every run does), wide otherwise. The choice depends on
/// the runs alone, so equal deltas hold equal stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RunStore {
    /// Two runs inline, more on the heap.
    Narrow(SmallVec<[NarrowRun; 2]>),
    /// A delta reaching past byte `u32::MAX` of its page.
    Wide(Vec<Run>),
}

impl Default for RunStore {
    fn default() -> Self {
        RunStore::Narrow(SmallVec::new())
    }
}

impl RunStore {
    /// The store of checked runs (sorted, apart, no overflow), coalescing
    /// adjacent ones on the way.
    fn coalescing(runs: &[Run]) -> Self {
        let mut it = runs.iter().copied().peekable();
        let merged = std::iter::from_fn(move || {
            let mut r = it.next()?;
            while let Some(n) = it.next_if(|n| r.offset + r.len == n.offset) {
                r.len += n.len;
            }
            Some(r)
        });
        Self::collect(runs.last().map_or(0, |r| r.offset + r.len), runs.len(), merged)
    }

    /// The store of checked, coalesced runs ending at `end`.
    fn of_coalesced(runs: &[Run], end: u64) -> Self {
        Self::collect(end, runs.len(), runs.iter().copied())
    }

    /// The store of coalesced runs (at most `cap` of them) ending at `end`:
    /// narrow when `end` fits a `u32`.
    fn collect(end: u64, cap: usize, runs: impl Iterator<Item = Run>) -> Self {
        if end <= u64::from(u32::MAX) {
            let mut v: SmallVec<[NarrowRun; 2]> = SmallVec::with_capacity(cap);
            // Every run ends at or before `end`, so both fields fit.
            v.extend(runs.map(|r| NarrowRun { offset: r.offset as u32, len: r.len as u32 }));
            RunStore::Narrow(v)
        } else {
            let mut v = Vec::with_capacity(cap);
            v.extend(runs);
            RunStore::Wide(v)
        }
    }

    fn len(&self) -> usize {
        match self {
            RunStore::Narrow(v) => v.len(),
            RunStore::Wide(v) => v.len(),
        }
    }
}

/// The runs of a [`SparseDelta`], in order ([`SparseDelta::runs`]).
#[derive(Clone, Debug)]
pub struct Runs<'a>(RunsIter<'a>);

#[derive(Clone, Debug)]
enum RunsIter<'a> {
    Narrow(std::slice::Iter<'a, NarrowRun>),
    Wide(std::slice::Iter<'a, Run>),
}

impl Iterator for Runs<'_> {
    type Item = Run;

    #[inline]
    fn next(&mut self) -> Option<Run> {
        match &mut self.0 {
            RunsIter::Narrow(i) => i.next().map(|r| r.wide()),
            RunsIter::Wide(i) => i.next().copied(),
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            RunsIter::Narrow(i) => i.size_hint(),
            RunsIter::Wide(i) => i.size_hint(),
        }
    }
}

impl DoubleEndedIterator for Runs<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Run> {
        match &mut self.0 {
            RunsIter::Narrow(i) => i.next_back().map(|r| r.wide()),
            RunsIter::Wide(i) => i.next_back().copied(),
        }
    }
}

impl ExactSizeIterator for Runs<'_> {}
impl std::iter::FusedIterator for Runs<'_> {}

/// A dense delta: a mask with one bit per page byte plus page-length data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseDelta {
    /// The mask as packed words: bit `i % 64` of word `i / 64` selects byte
    /// `i`; bits past the data's length are zero.
    words: Vec<u64>,
    data: Vec<u8>,
}

impl DenseDelta {
    /// Build from a mask and page-length data. Data bytes whose mask bit is
    /// clear are ignored (and zeroed, to keep the canonical form).
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when mask and data lengths differ or are zero.
    #[cfg(target_pointer_width = "64")]
    pub fn new(mut mask: BitVec<u64, Lsb0>, data: Vec<u8>) -> Result<Self> {
        if mask.len() != data.len() {
            return Err(Error::invalid_delta(
                None,
                format!("dense mask has {} bits but data has {} bytes", mask.len(), data.len()),
            ));
        }
        if data.is_empty() {
            return Err(Error::invalid_delta(None, "dense delta over an empty page"));
        }
        mask.set_uninitialized(false);
        Self::from_words(mask.into_vec(), data)
    }

    /// Build from packed mask words (bit `i % 64` of word `i / 64` selects
    /// byte `i`) and page-length data.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when the word count does not match the data
    /// length or the data is empty.
    pub fn from_words(words: Vec<u64>, mut data: Vec<u8>) -> Result<Self> {
        if words.len() != data.len().div_ceil(64) {
            return Err(Error::invalid_delta(
                None,
                format!(
                    "{} mask words for {} data bytes (need {})",
                    words.len(),
                    data.len(),
                    data.len().div_ceil(64)
                ),
            ));
        }
        if data.is_empty() {
            return Err(Error::invalid_delta(None, "dense delta over an empty page"));
        }
        clear_unmasked(&mut data, &words);
        Ok(Self { words, data }.with_clean_tail())
    }

    /// Build from per-byte selections: `Some(b)` replaces a byte with `b`.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] for an empty slice.
    pub fn from_options(bytes: &[Option<u8>]) -> Result<Self> {
        // Packed words first (bitvec's bit-by-bit `collect` is slower and
        // trips Miri's Stacked Borrows check inside bitvec).
        let mut words = vec![0u64; bytes.len().div_ceil(64)];
        for (i, b) in bytes.iter().enumerate() {
            if b.is_some() {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        let data = bytes.iter().map(|b| b.unwrap_or(0)).collect();
        Self::from_words(words, data)
    }

    /// Page length this delta is for.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Always false: a dense delta covers at least one byte.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The mask, one bit per page byte.
    #[cfg(target_pointer_width = "64")]
    pub fn mask(&self) -> &BitSlice<u64, Lsb0> {
        &BitSlice::from_slice(&self.words)[..self.data.len()]
    }

    /// The mask as packed little-endian words (dead bits are zero).
    pub fn mask_words(&self) -> &[u64] {
        &self.words
    }

    /// Page-length data, zero where the mask is clear.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Number of selected bytes.
    pub fn selected(&self) -> u64 {
        self.mask_words().iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// A sparse delta: sorted, non-overlapping byte runs plus their bytes.
///
/// A delta of one run and at most 16 bytes (`SPARSE_INLINE_BYTES`) holds them
/// inline: building, logging, applying and dropping it allocates nothing.
/// More bytes, when the engine writes them (decoding from the log,
/// [`Payload::diff`], merging, [`SparseDelta::from_pairs`]), start on a
/// 64-byte boundary, as pages do: a run on whole cache lines of the page
/// is then read from whole lines too, where a heap `Vec` (16 bytes past a
/// line) splits every 64-byte load. [`SparseDelta::new`] takes its `Vec`
/// over as it is, with no copy.
///
/// Runs are kept in 8 bytes each (a 32-bit offset and length) when the
/// delta ends at or before byte `u32::MAX`, as on every page within the
/// default [`Limits`](crate::storage::codec::Limits), and in 16 past it;
/// [`SparseDelta::runs`] gives them as [`Run`]s either way.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SparseDelta {
    runs: RunStore,
    data: ByteBuf,
}

impl SparseDelta {
    /// Build from runs and their concatenated bytes. Adjacent runs are
    /// coalesced. `data` is taken over, not copied (more than
    /// 16 bytes of it), and stays where the allocator put
    /// it; [`SparseDelta::from_pairs`] copies the bytes onto a cache line
    /// instead (see the type's notes).
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] for an empty run, runs out of order or
    /// overlapping, an offset overflow, or a data length that differs from
    /// the sum of the run lengths.
    pub fn new(runs: Vec<Run>, data: Vec<u8>) -> Result<Self> {
        Self::from_bufs(&runs, ByteBuf::from_vec(data))
    }

    /// [`SparseDelta::new`] of runs and bytes already in their buffers.
    pub(crate) fn from_bufs(runs: &[Run], data: ByteBuf) -> Result<Self> {
        let total = Self::checked_total(runs)?;
        if total != data.len() as u64 {
            return Err(Error::invalid_delta(
                None,
                format!("runs cover {total} bytes but {} data bytes were given", data.len()),
            ));
        }
        Ok(Self::coalesced(runs, data))
    }

    /// The bytes `runs` cover, or why they do not form a sparse delta
    /// (an empty run, runs out of order or overlapping, an overflow).
    fn checked_total(runs: &[Run]) -> Result<u64> {
        let mut total: u64 = 0;
        let mut prev_end: Option<u64> = None;
        for (i, r) in runs.iter().enumerate() {
            if r.len == 0 {
                return Err(Error::invalid_delta(None, format!("run {i} is empty")));
            }
            let end = r.end().ok_or_else(|| Error::invalid_delta(None, format!("run {i} overflows")))?;
            if let Some(p) = prev_end {
                if r.offset < p {
                    return Err(Error::invalid_delta(
                        None,
                        format!(
                            "run {i} at offset {} overlaps or precedes the previous run ending at {p}",
                            r.offset
                        ),
                    ));
                }
            }
            prev_end = Some(end);
            total =
                total.checked_add(r.len).ok_or_else(|| Error::invalid_delta(None, "run lengths overflow"))?;
        }
        Ok(total)
    }

    /// Checked runs and their bytes, with adjacent runs coalesced.
    fn coalesced(runs: &[Run], data: ByteBuf) -> Self {
        Self { runs: RunStore::coalescing(runs), data }
    }

    /// Runs already checked and coalesced (sorted, apart, not adjacent,
    /// inside `u64`) and exactly their bytes.
    fn of_coalesced(runs: &[Run], data: ByteBuf) -> Self {
        let end = runs.last().map_or(0, |r| r.offset + r.len);
        Self { runs: RunStore::of_coalesced(runs, end), data }
    }

    /// Build from `(offset, bytes)` pairs (sorted, non-overlapping).
    ///
    /// # Errors
    /// As [`SparseDelta::new`] (the runs are checked before any byte is
    /// copied), and [`Error::InvalidDelta`] when the bytes cannot be
    /// allocated (the same slice given at many offsets can add up to more
    /// than memory holds).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<Self> {
        // The runs first, checked, then the bytes into one buffer of their
        // exact size (no regrowth copying them again as it fills).
        let mut runs = RunBuf::new();
        let mut slices: SmallVec<[&[u8]; 2]> = SmallVec::new();
        for (offset, bytes) in pairs {
            runs.push(Run { offset, len: bytes.len() as u64 });
            slices.push(bytes);
        }
        let total = Self::checked_total(&runs)?;
        let mut data = usize::try_from(total).ok().and_then(ByteBuf::try_with_capacity).ok_or_else(|| {
            Error::invalid_delta(None, format!("the runs cover {total} bytes, more than can be allocated"))
        })?;
        for bytes in slices {
            data.extend_from_slice(bytes);
        }
        Ok(Self::coalesced(&runs, data))
    }

    /// The runs, sorted and non-adjacent. A delta ending at or before
    /// byte `u32::MAX` keeps them in 8 bytes each; the iterator gives
    /// them as [`Run`]s either way.
    #[inline]
    pub fn runs(&self) -> Runs<'_> {
        Runs(match &self.runs {
            RunStore::Narrow(v) => RunsIter::Narrow(v.iter()),
            RunStore::Wide(v) => RunsIter::Wide(v.iter()),
        })
    }

    /// The number of runs.
    #[inline]
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The runs as they are kept.
    #[inline]
    pub(crate) fn store(&self) -> &RunStore {
        &self.runs
    }

    /// The runs' bytes, concatenated in run order.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// One past the last byte touched (0 for no runs).
    #[inline]
    pub fn end(&self) -> u64 {
        self.runs().next_back().map_or(0, |r| r.offset + r.len)
    }

    /// Iterate `(run, its bytes)`.
    pub fn iter(&self) -> impl Iterator<Item = (Run, &[u8])> {
        let mut at = 0usize;
        self.runs().map(move |r| {
            let s = &self.data[at..at + r.len as usize];
            at += r.len as usize;
            (r, s)
        })
    }
}

/// The bytes a delta changes and their new values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Mask plus page-length data.
    Dense(DenseDelta),
    /// Byte runs.
    Sparse(SparseDelta),
    /// The whole page.
    Full(Vec<u8>),
}

/// Kind codes of payloads, as written in the binary formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PayloadKind {
    /// [`Payload::Dense`].
    Dense = 1,
    /// [`Payload::Sparse`].
    Sparse = 2,
    /// [`Payload::Full`].
    Full = 3,
}

impl Payload {
    /// The payload's kind.
    pub fn kind(&self) -> PayloadKind {
        match self {
            Payload::Dense(_) => PayloadKind::Dense,
            Payload::Sparse(_) => PayloadKind::Sparse,
            Payload::Full(_) => PayloadKind::Full,
        }
    }

    /// Check that the payload fits a page of `page_len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when it does not.
    #[inline]
    pub fn check(&self, page_len: u64) -> Result<()> {
        let ok = match self {
            Payload::Dense(d) => d.len() == page_len,
            Payload::Full(b) => b.len() as u64 == page_len,
            Payload::Sparse(s) => s.end() <= page_len,
        };
        if ok {
            Ok(())
        } else {
            Err(self.misfit(page_len))
        }
    }

    #[cold]
    #[inline(never)]
    fn misfit(&self, page_len: u64) -> Error {
        let what = match self {
            Payload::Dense(d) => format!("dense delta for {} bytes", d.len()),
            Payload::Full(b) => format!("full delta of {} bytes", b.len()),
            Payload::Sparse(s) => format!("sparse delta reaching byte {}", s.end()),
        };
        Error::invalid_delta(None, format!("{what} does not fit a page of {page_len} bytes"))
    }

    /// Replace the selected bytes of `page`.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when the payload does not fit; `page` is then
    /// unchanged.
    #[inline(always)]
    pub fn apply_to(&self, page: &mut [u8]) -> Result<()> {
        match self {
            // The run copy checks the delta's end against the page itself.
            Payload::Sparse(s) => {
                if !crate::delta::simd::copy_sparse(page, s) {
                    return Err(self.misfit(page.len() as u64));
                }
            }
            other => {
                other.check(page.len() as u64)?;
                other.apply_wide(page);
            }
        }
        Ok(())
    }

    /// [`Payload::apply_to`] of a dense or full payload that fits `page`.
    #[inline(never)]
    fn apply_wide(&self, page: &mut [u8]) {
        match self {
            Payload::Full(b) => page.copy_from_slice(b),
            Payload::Dense(d) => blend(page, &d.data, d.mask_words()),
            Payload::Sparse(_) => {}
        }
    }

    /// Bytes selected by the payload.
    pub fn touched(&self) -> u64 {
        match self {
            Payload::Dense(d) => d.selected(),
            Payload::Sparse(s) => s.data.len() as u64,
            Payload::Full(b) => b.len() as u64,
        }
    }

    /// Exact size of the payload in the binary delta encoding (see
    /// docs/FORMAT.md): kind byte, a `u64` length or run count, then the body.
    pub fn encoded_len(&self) -> u64 {
        9 + match self {
            Payload::Dense(d) => d.len().div_ceil(8) + d.selected(),
            Payload::Sparse(s) => 16 * s.run_count() as u64 + s.data.len() as u64,
            Payload::Full(b) => b.len() as u64,
        }
    }

    /// The equivalent dense payload for a page of `page_len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when the payload does not fit.
    pub fn to_dense(&self, page_len: u64) -> Result<DenseDelta> {
        self.check(page_len)?;
        if page_len == 0 {
            return Err(Error::invalid_delta(None, "dense delta over an empty page"));
        }
        Ok(match self {
            Payload::Dense(d) => d.clone(),
            Payload::Full(b) => {
                DenseDelta { words: vec![!0u64; b.len().div_ceil(64)], data: b.clone() }.with_clean_tail()
            }
            Payload::Sparse(s) => {
                let mut words = vec![0u64; (page_len as usize).div_ceil(64)];
                let mut data = vec![0u8; page_len as usize];
                for (r, bytes) in s.iter() {
                    let (a, b) = (r.offset as usize, (r.offset + r.len) as usize);
                    set_bits(&mut words, a, b);
                    data[a..b].copy_from_slice(bytes);
                }
                DenseDelta { words, data }
            }
        })
    }

    /// One payload with the effect of `self` followed by `later`, for a page
    /// of `page_len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when either payload does not fit the page.
    pub fn merge(&self, later: &Payload, page_len: u64) -> Result<Payload> {
        self.check(page_len)?;
        later.check(page_len)?;
        Ok(match (self, later) {
            (_, Payload::Full(b)) => Payload::Full(b.clone()),
            (Payload::Full(a), b) => {
                let mut out = a.clone();
                b.apply_to(&mut out)?;
                Payload::Full(out)
            }
            (Payload::Sparse(a), Payload::Sparse(b)) => Payload::Sparse(merge_sparse(a, b)),
            (a, b) => {
                let mut out = a.to_dense(page_len)?;
                let bd;
                let later_dense = match b {
                    Payload::Dense(d) => d,
                    other => {
                        bd = other.to_dense(page_len)?;
                        &bd
                    }
                };
                blend(&mut out.data, &later_dense.data, later_dense.mask_words());
                for (w, m) in out.words.iter_mut().zip(later_dense.mask_words()) {
                    *w |= m;
                }
                Payload::Dense(out)
            }
        })
    }

    /// The smallest payload (in [`Payload::encoded_len`]) that turns `old`
    /// into `new`.
    ///
    /// # Errors
    /// [`Error::InvalidDelta`] when the lengths differ or are zero.
    pub fn diff(old: &[u8], new: &[u8]) -> Result<Payload> {
        check_diff(old, new)?;
        Ok(diff_direct(old, new))
    }
}

/// The pages [`Payload::diff`] can compare: equal, non-zero lengths.
fn check_diff(old: &[u8], new: &[u8]) -> Result<()> {
    if old.len() != new.len() {
        return Err(Error::invalid_delta(
            None,
            format!("cannot diff pages of {} and {} bytes", old.len(), new.len()),
        ));
    }
    if old.is_empty() {
        return Err(Error::invalid_delta(None, "cannot diff empty pages"));
    }
    Ok(())
}

/// What [`Payload::diff`] chooses its encoding by, from one pass over the
/// pages: the differing bytes, and the runs and bytes of the sparse form
/// once gaps of fewer than 16 equal bytes are bridged (a bridged gap costs
/// its bytes and saves a 16-byte run header).
struct DiffSizes {
    ndiff: u64,
    bridged_runs: u64,
    bridged_bytes: u64,
}

impl DiffSizes {
    fn of(old: &[u8], new: &[u8]) -> Self {
        let mut z = Self { ndiff: 0, bridged_runs: 0, bridged_bytes: 0 };
        let mut cur: Option<(u64, u64)> = None;
        visit_runs(old, new, |o, l| {
            z.ndiff += l;
            cur = match cur {
                Some((s, e)) if o - e < 16 => Some((s, o + l)),
                Some((s, e)) => {
                    z.bridged_runs += 1;
                    z.bridged_bytes += e - s;
                    Some((o, o + l))
                }
                None => Some((o, o + l)),
            };
        });
        if let Some((s, e)) = cur {
            z.bridged_runs += 1;
            z.bridged_bytes += e - s;
        }
        z
    }
}

/// Append the payload encoding (see [`crate::storage::codec::delta`]) of
/// [`Payload::diff`]`(old, new)` to `out`, byte for byte what
/// [`crate::storage::codec::delta::encode_payload`] writes for it, without building
/// the payload; returns the bytes it touches ([`Payload::touched`]). `out`
/// is unchanged on error.
///
/// # Errors
/// As [`Payload::diff`].
pub(crate) fn encode_diff(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> Result<u64> {
    check_diff(old, new)?;
    let len = new.len() as u64;
    if new.len() <= SMALL_DIFF {
        return Ok(encode_small_diff(old, new, count_differing(old, new), out));
    }
    let DiffSizes { ndiff, bridged_runs, bridged_bytes } = DiffSizes::of(old, new);
    let sparse_cost = 16 * bridged_runs + bridged_bytes;
    let dense_cost = len.div_ceil(8) + ndiff;
    let start = out.len();
    if sparse_cost <= dense_cost && sparse_cost <= len {
        out.reserve(9 + sparse_cost as usize);
        out.push(2);
        out.extend_from_slice(&bridged_runs.to_le_bytes());
        // Run table first, then the runs' bytes.
        let table = out.len();
        out.resize(table + 16 * bridged_runs as usize, 0);
        let mut k = table;
        let mut emit = |out: &mut Vec<u8>, s: u64, e: u64| {
            out[k..k + 8].copy_from_slice(&s.to_le_bytes());
            out[k + 8..k + 16].copy_from_slice(&(e - s).to_le_bytes());
            k += 16;
            out.extend_from_slice(&new[s as usize..e as usize]);
        };
        let mut cur: Option<(u64, u64)> = None;
        visit_runs(old, new, |o, l| {
            cur = match cur {
                Some((s, e)) if o - e < 16 => Some((s, o + l)),
                Some((s, e)) => {
                    emit(out, s, e);
                    Some((o, o + l))
                }
                None => Some((o, o + l)),
            };
        });
        if let Some((s, e)) = cur {
            emit(out, s, e);
        }
        debug_assert_eq!(out.len() - start, 9 + sparse_cost as usize);
        Ok(bridged_bytes)
    } else if dense_cost <= len {
        out.reserve(9 + dense_cost as usize);
        out.push(1);
        out.extend_from_slice(&len.to_le_bytes());
        let mask = out.len();
        out.resize(mask + len.div_ceil(8) as usize, 0);
        visit_runs(old, new, |o, l| {
            for i in o..o + l {
                out[mask + (i / 8) as usize] |= 1 << (i % 8);
            }
            out.extend_from_slice(&new[o as usize..(o + l) as usize]);
        });
        debug_assert_eq!(out.len() - start, 9 + dense_cost as usize);
        Ok(ndiff)
    } else {
        out.reserve(9 + new.len());
        out.push(3);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(new);
        Ok(len)
    }
}

/// Pages up to this length never take the sparse encoding of a non-empty
/// diff: its cost is at least 16 (one run header) plus the differing bytes,
/// more than the dense cost of `ceil(len / 8)` mask bytes plus the same.
const SMALL_DIFF: usize = 120;

/// [`encode_diff`] when `new` differs from `old`, nothing when they are
/// equal (`Ok(None)`, `out` unchanged; empty pages are equal): one pass
/// over small pages decides both, larger ones compare first.
///
/// # Errors
/// As [`encode_diff`].
#[inline]
pub(crate) fn encode_change(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> Result<Option<u64>> {
    if old.len() == new.len() && new.len() <= SMALL_DIFF {
        return Ok(match count_differing(old, new) {
            0 => None,
            ndiff => Some(encode_small_diff(old, new, ndiff, out)),
        });
    }
    if old == new {
        return Ok(None);
    }
    encode_diff(old, new, out).map(Some)
}

/// [`encode_diff`] of pages of equal length up to [`SMALL_DIFF`] bytes:
/// counts the differing bytes and picks dense or full as [`diff_direct`] does.
/// `ndiff` is [`count_differing`]`(old, new)`.
fn encode_small_diff(old: &[u8], new: &[u8], ndiff: u64, out: &mut Vec<u8>) -> u64 {
    let len = new.len() as u64;
    if ndiff == 0 {
        // The sparse encoding of no runs.
        out.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0]);
        return 0;
    }
    let mut head = [0u8; 9];
    head[1..].copy_from_slice(&len.to_le_bytes());
    if len.div_ceil(8) + ndiff <= len {
        head[0] = 1;
        out.extend_from_slice(&head);
        let mask = out.len();
        out.resize(mask + new.len().div_ceil(8), 0);
        for (i, (a, b)) in old.iter().zip(new).enumerate() {
            if a != b {
                out[mask + i / 8] |= 1 << (i % 8);
            }
        }
        out.extend(old.iter().zip(new).filter(|(a, b)| a != b).map(|(_, b)| *b));
        ndiff
    } else {
        head[0] = 3;
        out.reserve(9 + new.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(new);
        len
    }
}

/// How many bytes of `a` and `b` (of equal length) differ, eight at a time.
#[inline]
fn count_differing(a: &[u8], b: &[u8]) -> u64 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let (mut n, mut wa, mut wb) = (0u64, a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut wa).zip(&mut wb) {
        let (mut p, mut q) = ([0u8; 8], [0u8; 8]);
        p.copy_from_slice(x);
        q.copy_from_slice(y);
        let d = u64::from_ne_bytes(p) ^ u64::from_ne_bytes(q);
        // The high bit of each byte of `nz` is set exactly when that byte of
        // `d` is not zero.
        let nz = ((d & LOW7) + LOW7) | d;
        n += u64::from((nz & !LOW7).count_ones());
    }
    n + wa.remainder().iter().zip(wb.remainder()).filter(|(x, y)| x != y).count() as u64
}

/// [`Payload::diff`] without an intermediate run list: one pass sizes the
/// three encodings, a second builds the cheapest (the same choice as
/// [`diff_from_runs`]).
fn diff_direct(old: &[u8], new: &[u8]) -> Payload {
    let len = new.len() as u64;
    let DiffSizes { ndiff, bridged_runs, bridged_bytes } = DiffSizes::of(old, new);
    let sparse_cost = 16 * bridged_runs + bridged_bytes;
    let dense_cost = len.div_ceil(8) + ndiff;
    if sparse_cost <= dense_cost && sparse_cost <= len {
        let mut runs: Vec<Run> = Vec::with_capacity(bridged_runs as usize);
        visit_runs(old, new, |o, l| match runs.last_mut() {
            Some(last) if o - (last.offset + last.len) < 16 => last.len = o + l - last.offset,
            _ => runs.push(Run { offset: o, len: l }),
        });
        let mut data = ByteBuf::with_capacity(bridged_bytes as usize);
        for r in &runs {
            data.extend_from_slice(&new[r.offset as usize..(r.offset + r.len) as usize]);
        }
        Payload::Sparse(SparseDelta::of_coalesced(&runs, data))
    } else if dense_cost <= len {
        let mut words = vec![0u64; new.len().div_ceil(64)];
        let mut data = vec![0u8; new.len()];
        visit_runs(old, new, |o, l| {
            let (a, b) = (o as usize, (o + l) as usize);
            set_bits(&mut words, a, b);
            data[a..b].copy_from_slice(&new[a..b]);
        });
        Payload::Dense(DenseDelta { words, data })
    } else {
        Payload::Full(new.to_vec())
    }
}

/// The payload [`Payload::diff`] picks, given the maximal runs where the old
/// page differs from `new` (shared by the CPU diff and the GPU diff, which
/// finds the runs on the device). `raw` must be sorted, non-empty runs apart
/// from each other and inside `new`, as the mask scans that produce it give
/// them: a sparse delta's runs are trusted to be so wherever it is applied.
pub(crate) fn diff_from_runs(raw: Vec<Run>, new: &[u8]) -> Payload {
    let fetch = |ranges: &[std::ops::Range<u64>]| -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ranges.iter().map(|r| (r.end - r.start) as usize).sum());
        for r in ranges {
            out.extend_from_slice(&new[r.start as usize..r.end as usize]);
        }
        Ok(out)
    };
    match diff_from_fetch(raw, new.len() as u64, fetch) {
        Ok(p) => p,
        // The fetch above cannot fail.
        Err(_) => Payload::Full(new.to_vec()),
    }
}

/// [`diff_from_runs`] for a page of `len` bytes whose new bytes are
/// elsewhere (on a device): `fetch` returns the bytes of the ranges it is
/// given (ascending, apart), packed in order. Only the bytes the payload
/// holds are fetched: the bridged runs for a sparse payload, the differing
/// runs for a dense one, the whole page for a full one.
///
/// # Errors
/// The errors of `fetch`, or [`Error::Invariant`] when it returns a wrong
/// number of bytes.
pub(crate) fn diff_from_fetch(
    raw: Vec<Run>,
    len: u64,
    fetch: impl FnOnce(&[std::ops::Range<u64>]) -> Result<Vec<u8>>,
) -> Result<Payload> {
    debug_assert!(raw.windows(2).all(|w| w[0].offset + w[0].len < w[1].offset));
    debug_assert!(raw.iter().all(|r| r.len > 0 && r.offset + r.len <= len));
    let ndiff: u64 = raw.iter().map(|r| r.len).sum();
    // Bridging a gap of g equal bytes costs g data bytes and saves one
    // 16-byte run header: worth it exactly when g < 16.
    let mut bridged: Vec<Run> = Vec::with_capacity(raw.len());
    for &r in &raw {
        match bridged.last_mut() {
            Some(last) if r.offset - (last.offset + last.len) < 16 => {
                last.len = r.offset + r.len - last.offset
            }
            _ => bridged.push(r),
        }
    }
    let sparse_cost = 16 * bridged.len() as u64 + bridged.iter().map(|r| r.len).sum::<u64>();
    let dense_cost = len.div_ceil(8) + ndiff;
    let full_cost = len;
    let fetched = |ranges: &[std::ops::Range<u64>], data: Vec<u8>| -> Result<Vec<u8>> {
        let want: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if data.len() as u64 != want {
            return Err(Error::Invariant(format!("fetched {} bytes of {want}", data.len())));
        }
        Ok(data)
    };
    if sparse_cost <= dense_cost && sparse_cost <= full_cost {
        let ranges: Vec<std::ops::Range<u64>> = bridged.iter().map(|r| r.offset..r.offset + r.len).collect();
        let packed = fetched(&ranges, fetch(&ranges)?)?;
        // A buffer of the sparse layout (its bytes start on a line past
        // the inline size), not the fetched vector adopted as it is.
        let mut data = ByteBuf::with_capacity(packed.len());
        data.extend_from_slice(&packed);
        Ok(Payload::Sparse(SparseDelta::of_coalesced(&bridged, data)))
    } else if dense_cost <= full_cost {
        let ranges: Vec<std::ops::Range<u64>> = raw.iter().map(|r| r.offset..r.offset + r.len).collect();
        let packed = fetched(&ranges, fetch(&ranges)?)?;
        let mut words = vec![0u64; len.div_ceil(64) as usize];
        let mut data = vec![0u8; len as usize];
        let mut at = 0;
        for r in &raw {
            let (a, b) = (r.offset as usize, (r.offset + r.len) as usize);
            set_bits(&mut words, a, b);
            data[a..b].copy_from_slice(&packed[at..at + (b - a)]);
            at += b - a;
        }
        Ok(Payload::Dense(DenseDelta { words, data }))
    } else {
        let whole = 0..len;
        let whole = std::slice::from_ref(&whole);
        Ok(Payload::Full(fetched(whole, fetch(whole)?)?))
    }
}

impl DenseDelta {
    /// Clear the mask bits past the data's length (the canonical form).
    fn with_clean_tail(mut self) -> Self {
        let tail = self.data.len() % 64;
        if let (Some(last), true) = (self.words.last_mut(), tail != 0) {
            *last &= (1u64 << tail) - 1;
        }
        self
    }
}

/// Set bits `a..b` of packed mask `words` (bit `i % 64` of word `i / 64`),
/// a word at a time.
fn set_bits(words: &mut [u64], a: usize, b: usize) {
    if a >= b {
        return;
    }
    let (wa, wb) = (a / 64, (b - 1) / 64);
    let lo = !0u64 << (a % 64);
    let hi = !0u64 >> (63 - (b - 1) % 64);
    if wa == wb {
        words[wa] |= lo & hi;
        return;
    }
    words[wa] |= lo;
    words[wa + 1..wb].fill(!0);
    words[wb] |= hi;
}

/// Maximal runs of bytes where `a` and `b` differ (equal lengths).
pub(crate) fn differing_runs(a: &[u8], b: &[u8]) -> Vec<Run> {
    let mut runs = Vec::new();
    visit_runs(a, b, |offset, len| runs.push(Run { offset, len }));
    runs
}

/// Call `f(offset, len)` for each maximal run where `a` and `b` differ, in
/// order (equal lengths).
#[inline]
fn visit_runs(a: &[u8], b: &[u8], mut f: impl FnMut(u64, u64)) {
    let mut open: Option<u64> = None;
    let n = a.len();
    let mut i = 0usize;
    while i < n {
        // Skip equal 8-byte words quickly when no run is open.
        if open.is_none() && i + 8 <= n {
            let x = u64::from_ne_bytes(a[i..i + 8].try_into().unwrap_or_default());
            let y = u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or_default());
            if x == y {
                i += 8;
                continue;
            }
        }
        let differ = a[i] != b[i];
        match (differ, open) {
            (true, None) => open = Some(i as u64),
            (false, Some(s)) => {
                f(s, i as u64 - s);
                open = None;
            }
            _ => {}
        }
        i += 1;
    }
    if let Some(s) = open {
        f(s, n as u64 - s);
    }
}

/// Zero the bytes of `data` whose mask bit is clear.
fn clear_unmasked(data: &mut [u8], words: &[u64]) {
    for (chunk, &m) in data.chunks_mut(64).zip(words) {
        if m == u64::MAX {
            continue;
        }
        for (g, part) in chunk.chunks_mut(8).enumerate() {
            let bm = crate::delta::simd::expand8((m >> (8 * g)) as u8);
            if part.len() == 8 {
                let v = u64::from_le_bytes(part.try_into().unwrap_or_default()) & bm;
                part.copy_from_slice(&v.to_le_bytes());
            } else {
                for (k, b) in part.iter_mut().enumerate() {
                    if bm >> (8 * k) & 0xFF == 0 {
                        *b = 0;
                    }
                }
            }
        }
    }
}

/// Copy `src` bytes into `dst` where the mask bit is set. `src` is in
/// canonical form (zero where the mask is clear).
#[inline]
pub(crate) fn blend(dst: &mut [u8], src: &[u8], words: &[u64]) {
    crate::delta::simd::blend(dst, src, words);
}

fn merge_sparse(a: &SparseDelta, b: &SparseDelta) -> SparseDelta {
    // Union of the intervals, coalescing overlaps and adjacency.
    let mut all: Vec<Run> = Vec::with_capacity(a.run_count() + b.run_count());
    let (mut ra, mut rb) = (a.runs().peekable(), b.runs().peekable());
    loop {
        let next = match (ra.peek(), rb.peek()) {
            (Some(x), Some(y)) if x.offset <= y.offset => ra.next(),
            (Some(_), Some(_)) | (None, Some(_)) => rb.next(),
            (Some(_), None) => ra.next(),
            (None, None) => None,
        };
        let Some(r) = next else { break };
        match all.last_mut() {
            Some(last) if r.offset <= last.offset + last.len => {
                let end = (last.offset + last.len).max(r.offset + r.len);
                last.len = end - last.offset;
            }
            _ => all.push(r),
        }
    }
    let total: u64 = all.iter().map(|r| r.len).sum();
    let mut data = ByteBuf::zeroed(total as usize);
    let mut starts = Vec::with_capacity(all.len());
    let mut acc = 0u64;
    for r in &all {
        starts.push(acc);
        acc += r.len;
    }
    for src in [a, b] {
        let mut u = 0;
        for (r, bytes) in src.iter() {
            while all[u].offset + all[u].len < r.offset + r.len {
                u += 1;
            }
            let at = (starts[u] + r.offset - all[u].offset) as usize;
            data[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
    SparseDelta::of_coalesced(&all, data)
}

/// Which recompute function produced a derived delta, from which inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// Registered name of the recompute function (shared, not copied, by
    /// the deltas of one function).
    pub function: std::sync::Arc<str>,
    /// Its version at the time of the recompute.
    pub version: u32,
    /// Each parent page and the epoch it was read at.
    pub parents: Vec<(PageId, Epoch)>,
}

/// Who produced a delta.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// A user write through the API.
    User,
    /// Recomputation of a derived page.
    Propagation(Provenance),
    /// A state restore or diff application.
    Replay,
}

/// A delta as accepted by the state: payload plus identity and provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// Assigned in acceptance order.
    pub id: DeltaId,
    /// Target page.
    pub page: PageId,
    /// Optimistic check: the epoch the delta was built against.
    pub base_epoch: Option<Epoch>,
    /// The change.
    pub payload: Payload,
    /// Who produced it.
    pub source: Source,
    /// Free-form user tag.
    pub tag: Option<String>,
    /// Logical timestamp: position in the state's history (not wall time).
    pub timestamp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse(pairs: &[(u64, &[u8])]) -> Payload {
        Payload::Sparse(SparseDelta::from_pairs(pairs.iter().copied()).unwrap())
    }

    #[test]
    fn dense_apply_replaces_exactly_the_masked_bytes() {
        for len in [1usize, 7, 8, 63, 64, 65, 130, 1000] {
            let opts: Vec<Option<u8>> = (0..len)
                .map(|i| if i % 3 == 0 || i % 7 == 1 { Some(i as u8 ^ 0x5A) } else { None })
                .collect();
            let d = Payload::Dense(DenseDelta::from_options(&opts).unwrap());
            let mut page: Vec<u8> = (0..len).map(|i| (i * 11) as u8).collect();
            let before = page.clone();
            d.apply_to(&mut page).unwrap();
            for i in 0..len {
                assert_eq!(page[i], opts[i].unwrap_or(before[i]), "byte {i} of {len}");
            }
        }
    }

    #[test]
    fn dense_canonicalizes_unmasked_data() {
        let mut mask = BitVec::<u64, Lsb0>::repeat(false, 70);
        mask.set(3, true);
        let d = DenseDelta::new(mask, vec![9u8; 70]).unwrap();
        assert_eq!(d.data().iter().filter(|&&b| b != 0).count(), 1);
        assert_eq!(d.selected(), 1);
    }

    #[test]
    fn sparse_validation() {
        assert!(SparseDelta::new(vec![Run { offset: 0, len: 0 }], vec![]).is_err());
        assert!(
            SparseDelta::new(vec![Run { offset: 5, len: 2 }, Run { offset: 6, len: 1 }], vec![0; 3]).is_err()
        );
        assert!(
            SparseDelta::new(vec![Run { offset: 5, len: 2 }, Run { offset: 1, len: 1 }], vec![0; 3]).is_err()
        );
        assert!(SparseDelta::new(vec![Run { offset: u64::MAX, len: 2 }], vec![0; 2]).is_err());
        assert!(SparseDelta::new(vec![Run { offset: 0, len: 2 }], vec![0; 3]).is_err());
        let s = SparseDelta::new(vec![Run { offset: 0, len: 2 }, Run { offset: 2, len: 1 }], vec![1, 2, 3])
            .unwrap();
        assert_eq!(s.runs().collect::<Vec<_>>(), [Run { offset: 0, len: 3 }], "adjacent runs coalesce");
        // from_pairs checks the same, and coalesces the same.
        let big = [7u8; 40];
        for bad in [
            vec![(0, &big[..0])],
            vec![(5, &big[..2]), (6, &big[..1])],
            vec![(5, &big[..2]), (1, &big[..1])],
            vec![(u64::MAX, &big[..2])],
            vec![(0, &big[..]), (20, &big[..])],
        ] {
            assert!(
                matches!(SparseDelta::from_pairs(bad.clone()), Err(Error::InvalidDelta { .. })),
                "{bad:?}"
            );
        }
        let p = SparseDelta::from_pairs([(0, &big[..20]), (20, &big[..20]), (50, &big[..1])]).unwrap();
        assert_eq!(p.runs().collect::<Vec<_>>(), [Run { offset: 0, len: 40 }, Run { offset: 50, len: 1 }]);
        assert_eq!(p.data(), &[7u8; 41][..]);
    }

    #[test]
    fn out_of_range_is_an_error_and_leaves_the_page_alone() {
        let mut page = vec![1u8; 10];
        assert!(sparse(&[(8, &[0, 0, 0])]).apply_to(&mut page).is_err());
        assert!(Payload::Full(vec![0; 9]).apply_to(&mut page).is_err());
        assert_eq!(page, vec![1u8; 10]);
        // Many runs (the vector copy), only the last one past the end:
        // nothing is copied, and the error says what did not fit.
        let mut big = vec![1u8; 640];
        let runs: Vec<(u64, &[u8])> = (0..6).map(|i| (i * 128, &[0u8; 64][..])).collect();
        let err = sparse(&runs).apply_to(&mut big).unwrap_err();
        assert!(matches!(err, Error::InvalidDelta { .. }), "{err}");
        assert!(err.to_string().contains("reaching byte 704"), "{err}");
        assert_eq!(big, vec![1u8; 640]);
    }

    #[test]
    fn runs_are_kept_narrow_up_to_byte_u32_max_and_wide_past_it() {
        let max = u64::from(u32::MAX);
        let narrow =
            SparseDelta::new(vec![Run { offset: 3, len: 2 }, Run { offset: max - 4, len: 4 }], vec![1; 6])
                .unwrap();
        assert!(matches!(narrow.store(), RunStore::Narrow(_)), "{narrow:?}");
        assert_eq!(narrow.end(), max);
        assert_eq!(
            narrow.runs().collect::<Vec<_>>(),
            [Run { offset: 3, len: 2 }, Run { offset: max - 4, len: 4 }]
        );
        assert_eq!(narrow.runs().next_back(), Some(Run { offset: max - 4, len: 4 }));
        assert_eq!(narrow.runs().len(), 2);
        // One byte further, and a run of 2^32 bytes: both kept wide, the
        // same runs given back; adjacent wide runs coalesce as narrow ones do.
        let wide = SparseDelta::new(
            vec![Run { offset: 3, len: 2 }, Run { offset: max - 4, len: 4 }, Run { offset: max, len: 1 }],
            vec![2; 7],
        )
        .unwrap();
        assert!(matches!(wide.store(), RunStore::Wide(_)), "{wide:?}");
        assert_eq!(
            wide.runs().collect::<Vec<_>>(),
            [Run { offset: 3, len: 2 }, Run { offset: max - 4, len: 5 }]
        );
        assert_eq!(wide.end(), max + 1);
        let long = SparseDelta::new(vec![Run { offset: 0, len: max + 1 }], Vec::new());
        assert!(long.is_err(), "the data must match the runs");
        // Merging a narrow delta with a wide one gives a wide one, and the
        // laws still hold on the bytes below 4 GiB.
        let m = Payload::Sparse(narrow.clone()).merge(&Payload::Sparse(wide.clone()), max + 1).unwrap();
        let Payload::Sparse(ms) = &m else { panic!("sparse merge stays sparse") };
        assert!(matches!(ms.store(), RunStore::Wide(_)));
        assert_eq!(
            ms.runs().collect::<Vec<_>>(),
            [Run { offset: 3, len: 2 }, Run { offset: max - 4, len: 5 }]
        );
        assert_eq!(ms.data(), &[2u8; 7][..]);
        // Too far for any page in memory here: the typed error, the page
        // left alone.
        let mut page = vec![9u8; 64];
        assert!(matches!(Payload::Sparse(wide).apply_to(&mut page), Err(Error::InvalidDelta { .. })));
        assert_eq!(page, vec![9u8; 64]);
    }

    #[test]
    fn merge_sparse_overlapping() {
        let a = sparse(&[(0, &[1, 1, 1, 1]), (10, &[2, 2])]);
        let b = sparse(&[(2, &[9, 9, 9]), (12, &[3])]);
        let m = a.merge(&b, 16).unwrap();
        let mut p1 = vec![0u8; 16];
        a.apply_to(&mut p1).unwrap();
        b.apply_to(&mut p1).unwrap();
        let mut p2 = vec![0u8; 16];
        m.apply_to(&mut p2).unwrap();
        assert_eq!(p1, p2);
        if let Payload::Sparse(s) = &m {
            assert_eq!(s.runs().collect::<Vec<_>>(), [Run { offset: 0, len: 5 }, Run { offset: 10, len: 3 }]);
        } else {
            panic!("sparse merge stays sparse");
        }
    }

    proptest::proptest! {
        #[test]
        fn direct_diff_matches_the_run_list_diff(
            pairs in proptest::collection::vec((proptest::prelude::any::<u8>(), 0u8..4), 1..600),
        ) {
            let old: Vec<u8> = pairs.iter().map(|p| p.0).collect();
            let new: Vec<u8> = pairs.iter().map(|p| if p.1 == 0 { p.0.wrapping_add(1) } else { p.0 }).collect();
            let d = Payload::diff(&old, &new).unwrap();
            proptest::prop_assert_eq!(&d, &diff_from_runs(differing_runs(&old, &new), &new));
            let mut page = old.clone();
            d.apply_to(&mut page).unwrap();
            proptest::prop_assert_eq!(page, new);
        }
    }

    proptest::proptest! {
        #[test]
        fn encoded_diff_is_the_encoding_of_the_diff(
            pairs in proptest::collection::vec((proptest::prelude::any::<u8>(), 0u8..64), 1..700),
            every in 1u8..64,
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
        ) {
            let old: Vec<u8> = pairs.iter().map(|p| p.0).collect();
            let new: Vec<u8> =
                pairs.iter().map(|p| if p.1 % every == 0 { p.0.wrapping_add(1) } else { p.0 }).collect();
            let d = Payload::diff(&old, &new).unwrap();
            let mut want = prefix.clone();
            crate::storage::codec::delta::encode_payload(&d, &mut want);
            let mut got = prefix.clone();
            let touched = encode_diff(&old, &new, &mut got).unwrap();
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert_eq!(touched, d.touched());
            // encode_change: the same bytes when the pages differ, nothing
            // at all when they are equal.
            let mut got = prefix.clone();
            let changed = encode_change(&old, &new, &mut got).unwrap();
            if old == new {
                proptest::prop_assert_eq!(changed, None);
                proptest::prop_assert_eq!(&got, &prefix);
            } else {
                proptest::prop_assert_eq!(changed, Some(d.touched()));
                proptest::prop_assert_eq!(&got, &want);
            }
            let mut same = prefix.clone();
            proptest::prop_assert_eq!(encode_change(&new, &new, &mut same).unwrap(), None);
            proptest::prop_assert_eq!(&same, &prefix);
        }
    }

    #[test]
    fn encoded_diff_covers_each_kind_and_refuses_bad_lengths() {
        let old = vec![0u8; 4096];
        let mut one = old.clone();
        one[100] = 1;
        let mut half = old.clone();
        half.iter_mut().step_by(2).for_each(|b| *b = 1);
        let every = vec![3u8; 4096];
        for (new, kind) in [(&one, 2u8), (&half, 1), (&every, 3)] {
            let mut want = Vec::new();
            crate::storage::codec::delta::encode_payload(&Payload::diff(&old, new).unwrap(), &mut want);
            let mut got = vec![7u8];
            encode_diff(&old, new, &mut got).unwrap();
            assert_eq!(got[0], 7);
            assert_eq!(got[1], kind);
            assert_eq!(&got[1..], &want[..]);
        }
        // Around the small-page cut-over, every kind and no change at all.
        for len in [1usize, 7, 8, 9, 15, 16, 17, 119, 120, 121, 128, 200] {
            let old: Vec<u8> = (0..len).map(|i| i as u8).collect();
            type Edit<'a> = &'a dyn Fn(&mut Vec<u8>);
            let edits: [Edit<'_>; 5] = [
                &|_| {},
                &|v| v[0] ^= 1,
                &|v| {
                    let n = v.len();
                    v[n - 1] ^= 1;
                    v[n / 2] ^= 2;
                },
                &|v| v.iter_mut().step_by(3).for_each(|b| *b ^= 4),
                &|v| v.iter_mut().for_each(|b| *b ^= 8),
            ];
            for edit in edits {
                let mut new = old.clone();
                edit(&mut new);
                let d = Payload::diff(&old, &new).unwrap();
                let mut want = Vec::new();
                crate::storage::codec::delta::encode_payload(&d, &mut want);
                let mut got = Vec::new();
                assert_eq!(encode_diff(&old, &new, &mut got).unwrap(), d.touched());
                assert_eq!(got, want, "{len} bytes");
            }
        }
        let mut out = vec![1u8, 2];
        assert!(encode_diff(&old, &old[1..], &mut out).is_err());
        assert!(encode_diff(&[], &[], &mut out).is_err());
        assert!(encode_change(&old, &old[1..], &mut out).is_err());
        let big = vec![1u8; 4096];
        assert!(encode_change(&big, &big[1..], &mut out).is_err());
        assert_eq!(encode_change(&[], &[], &mut out).unwrap(), None);
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn diff_picks_the_smallest_encoding() {
        let old = vec![0u8; 4096];
        let mut new = old.clone();
        new[100] = 1;
        let d = Payload::diff(&old, &new).unwrap();
        assert_eq!(d.kind(), PayloadKind::Sparse);
        let mut all = old.clone();
        for (i, b) in all.iter_mut().enumerate() {
            if i % 2 == 0 {
                *b = 1;
            }
        }
        assert_eq!(Payload::diff(&old, &all).unwrap().kind(), PayloadKind::Dense);
        let every: Vec<u8> = vec![3u8; 4096];
        assert_eq!(Payload::diff(&old, &every).unwrap().kind(), PayloadKind::Full);
        let same = Payload::diff(&old, &old).unwrap();
        assert_eq!(same.touched(), 0);
        assert!(Payload::diff(&old, &old[1..]).is_err());
    }

    #[test]
    fn sparse_bytes_past_the_inline_size_start_on_a_line() {
        let on_line = |p: &Payload| match p {
            Payload::Sparse(s) => {
                s.data().len() > SPARSE_INLINE_BYTES && (s.data().as_ptr() as usize).is_multiple_of(64)
            }
            _ => false,
        };
        let a = sparse(&[(64, &[1; 64])]);
        let b = sparse(&[(0, &[2; 40]), (200, &[3; 30])]);
        let old = vec![0u8; 4096];
        let mut new = old.clone();
        new[128..192].fill(4);
        let diffed = Payload::diff(&old, &new).unwrap();
        let from_runs = diff_from_runs(vec![Run { offset: 128, len: 64 }], &new);
        let merged = a.merge(&b, 4096).unwrap();
        let mut enc = Vec::new();
        crate::storage::codec::delta::encode_payload(&b, &mut enc);
        let decoded =
            crate::storage::codec::delta::decode_payload(&enc, &crate::storage::codec::Limits::default())
                .unwrap();
        for (what, p) in [
            ("from_pairs", &a),
            ("from_pairs, two runs", &b),
            ("diff", &diffed),
            ("diff_from_runs", &from_runs),
            ("merge", &merged),
            ("decode", &decoded),
        ] {
            assert!(on_line(p), "{what}: {p:?}");
        }
        assert_eq!(decoded, b);
        // `new` takes its vector over as it is.
        let v = vec![5u8; 64];
        let at = v.as_ptr();
        let adopted = SparseDelta::new(vec![Run { offset: 0, len: 64 }], v).unwrap();
        assert_eq!(adopted.data().as_ptr(), at, "not copied");
        // Up to the inline size, the bytes stay inside the delta.
        let small = sparse(&[(5, &[1; SPARSE_INLINE_BYTES])]);
        assert!(matches!(&small, Payload::Sparse(s) if s.data.is_inline()));
    }
}
