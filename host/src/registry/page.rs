//! The page record: a page's id, length, epoch, location, metadata and
//! the storage of its bytes.

use crate::gpu::Storage;
use crate::{Error, Location, Metadata, Result};
use shared_types::{Epoch, PageId};

/// A page: id, fixed length, epoch, location, metadata and bytes.
#[derive(Debug)]
pub struct Page {
    pub(crate) id: PageId,
    pub(crate) len: u64,
    pub(crate) epoch: Epoch,
    pub(crate) location: Location,
    pub(crate) meta: Metadata,
    pub(crate) storage: Storage,
    /// What changed since the last checkpoint (for an increment). Marked
    /// under the page's write lock (`get_mut`, no locking); read and
    /// cleared by a checkpoint under a read lock, so that a checkpoint never
    /// waits for a reader (a thread holding a page guard may checkpoint).
    pub(crate) changed: parking_lot::Mutex<Changed>,
}

impl Page {
    /// The page's id.
    pub fn id(&self) -> PageId {
        self.id
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Pages are never empty; provided for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of deltas applied since creation.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Where the bytes live.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The metadata map.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The `name` metadata entry, if it is UTF-8.
    pub fn name(&self) -> Option<&str> {
        self.meta.get("name").and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The bytes, for a page in host memory.
    ///
    /// # Errors
    /// [`Error::UnsupportedLocation`] for a page whose bytes are on a device:
    /// copy them out with [`crate::Mmsb::query_page`] instead.
    pub fn bytes(&self) -> Result<&[u8]> {
        self.storage.host().ok_or(Error::UnsupportedLocation { op: "Page::bytes", location: self.location })
    }

    /// A copy of the bytes, wherever they live (GPU pages apply their
    /// queued deltas first).
    pub(crate) fn copy_bytes(&self) -> Result<Vec<u8>> {
        self.storage.read().map(std::borrow::Cow::into_owned)
    }
}

/// Bytes per block of the change tracking behind incremental checkpoints:
/// an increment holds the blocks of this size that changed since its base.
/// A multiple of the page image's 64-byte block.
pub const CHANGE_BLOCK: usize = 4096;

/// What changed in a page since the last checkpoint: its blocks of
/// [`CHANGE_BLOCK`] bytes that deltas touched (marked as the deltas are
/// applied, from their byte ranges: no page scan), or the whole page.
#[derive(Debug, Default)]
pub(crate) struct Changed {
    /// The next increment holds the page whole (created since, or changed
    /// before the tracking could see how).
    whole: bool,
    /// Something changed (bytes, epoch or location): the page is in the
    /// next increment.
    any: bool,
    /// One bit per block, allocated on the first change.
    bits: Vec<u64>,
}

impl Changed {
    /// A page the next increment holds whole.
    pub(crate) fn whole() -> Self {
        Self { whole: true, any: true, bits: Vec::new() }
    }

    /// Nothing changed.
    pub(crate) fn is_clean(&self) -> bool {
        !self.any
    }

    /// Written whole.
    pub(crate) fn is_whole(&self) -> bool {
        self.whole
    }

    /// Forget every change (a checkpoint holds them now); keeps the bits'
    /// memory for the next round.
    pub(crate) fn clear(&mut self) {
        self.whole = false;
        self.any = false;
        self.bits.fill(0);
    }

    /// The page changed without a byte change (its location).
    pub(crate) fn touch(&mut self) {
        self.any = true;
    }

    /// Whether block `k` (of [`CHANGE_BLOCK`] bytes) changed.
    #[cfg(test)]
    pub(crate) fn block(&self, k: usize) -> bool {
        self.whole || self.bits.get(k / 64).is_some_and(|w| w >> (k % 64) & 1 == 1)
    }

    /// The changed blocks of a page of `len` bytes as byte ranges,
    /// ascending, adjacent blocks merged (the last one ends at `len`).
    pub(crate) fn runs(&self, len: u64) -> Vec<std::ops::Range<u64>> {
        if self.whole {
            return std::iter::once(0..len).filter(|r| !r.is_empty()).collect();
        }
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        // Word by word: a clean word (64 blocks) costs one test.
        for (w, &word) in self.bits.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let k = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (from, to) = ((k * CHANGE_BLOCK) as u64, ((k + 1) * CHANGE_BLOCK) as u64);
                if from >= len {
                    break;
                }
                match out.last_mut() {
                    Some(r) if r.end == from => r.end = to.min(len),
                    _ => out.push(from..to.min(len)),
                }
            }
        }
        out
    }

    /// Bytes an increment would copy for this page of `len` bytes.
    pub(crate) fn bytes(&self, len: u64) -> u64 {
        if self.whole {
            return len;
        }
        let n: u64 = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
        (n * CHANGE_BLOCK as u64).min(len)
    }

    /// Mark bytes `from..to` of a page of `len` bytes (clamped to it).
    pub(crate) fn mark(&mut self, len: u64, from: u64, to: u64) {
        self.any = true;
        let to = to.min(len);
        if self.whole || from >= to {
            return;
        }
        if self.bits.is_empty() {
            let blocks = len.div_ceil(CHANGE_BLOCK as u64) as usize;
            self.bits = vec![0; blocks.div_ceil(64)];
        }
        let (lo, hi) = ((from / CHANGE_BLOCK as u64) as usize, ((to - 1) / CHANGE_BLOCK as u64) as usize);
        let (lw, hw) = (lo / 64, hi / 64);
        let low = u64::MAX << (lo % 64);
        let high = u64::MAX >> (63 - hi % 64);
        if lw == hw {
            self.bits[lw] |= low & high;
        } else {
            self.bits[lw] |= low;
            self.bits[lw + 1..hw].fill(u64::MAX);
            self.bits[hw] |= high;
        }
    }

    /// Mark what `payload` writes in a page of `len` bytes.
    pub(crate) fn mark_payload(&mut self, payload: &crate::delta::Payload, len: u64) {
        use crate::delta::Payload;
        match payload {
            Payload::Full(_) => self.mark(len, 0, len),
            Payload::Sparse(s) => {
                self.any = true;
                for r in s.runs() {
                    self.mark(len, r.offset, r.offset.saturating_add(r.len));
                }
            }
            Payload::Dense(d) => {
                self.any = true;
                // 64 mask words a 4 KiB block.
                let per = CHANGE_BLOCK / 64;
                for (k, words) in d.mask_words().chunks(per).enumerate() {
                    if words.iter().any(|&w| w != 0) {
                        let from = (k * CHANGE_BLOCK) as u64;
                        self.mark(len, from, from + CHANGE_BLOCK as u64);
                    }
                }
            }
        }
    }

    /// Mark what the payload encoding `enc` (see docs/FORMAT.md) writes in
    /// a page of `len` bytes; an encoding it cannot read marks the whole
    /// page.
    pub(crate) fn mark_encoded(&mut self, enc: &[u8], len: u64) {
        self.any = true;
        let word = |at: usize| -> Option<u64> {
            enc.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let ok = match (enc.first(), word(1)) {
            (Some(1), Some(n)) => {
                // Dense: ceil(n/8) mask bytes; 512 a block.
                let mask = enc.get(9..9 + (n as usize).div_ceil(8));
                if let Some(mask) = mask {
                    for (k, b) in mask.chunks(CHANGE_BLOCK / 8).enumerate() {
                        if b.iter().any(|&x| x != 0) {
                            let from = (k * CHANGE_BLOCK) as u64;
                            self.mark(len, from, from + CHANGE_BLOCK as u64);
                        }
                    }
                }
                mask.is_some()
            }
            (Some(2), Some(n)) => {
                let runs = (0..n as usize).map(|i| (word(9 + 16 * i), word(17 + 16 * i)));
                let mut ok = n <= enc.len() as u64 / 16;
                if ok {
                    for (o, l) in runs {
                        match (o, l) {
                            (Some(o), Some(l)) => self.mark(len, o, o.saturating_add(l)),
                            _ => ok = false,
                        }
                    }
                }
                ok
            }
            (Some(3), Some(_)) => {
                self.mark(len, 0, len);
                true
            }
            _ => false,
        };
        if !ok {
            self.whole = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{DenseDelta, Payload, Run, SparseDelta};

    fn blocks(c: &Changed, len: u64) -> Vec<usize> {
        (0..len.div_ceil(CHANGE_BLOCK as u64) as usize).filter(|&k| c.block(k)).collect()
    }

    #[test]
    fn ranges_mark_exactly_the_blocks_they_touch() {
        let len = 200 * CHANGE_BLOCK as u64 + 5;
        let mut c = Changed::default();
        assert!(c.is_clean());
        c.mark(len, 4095, 4097);
        assert_eq!(blocks(&c, len), [0, 1]);
        c.mark(len, 64 * 4096 - 1, 130 * 4096 + 1);
        let mut want = vec![0, 1];
        want.extend(63..=130);
        assert_eq!(blocks(&c, len), want);
        // Past the end: clamped; the short last block counts.
        c.mark(len, len - 1, len + 100);
        want.push(200);
        assert_eq!(blocks(&c, len), want);
        assert_eq!(c.bytes(len), want.len() as u64 * 4096);
        assert_eq!(c.runs(len), [0..8192, 63 * 4096..131 * 4096, 200 * 4096..len]);
        c.clear();
        assert!(c.is_clean() && blocks(&c, len).is_empty());
        // An empty range still puts the page in the next increment.
        c.mark(len, 10, 10);
        assert!(!c.is_clean() && blocks(&c, len).is_empty());
    }

    #[test]
    fn payloads_and_their_encodings_mark_the_same_blocks() {
        let len = 20 * CHANGE_BLOCK as u64;
        let mut mask = vec![false; len as usize];
        mask[5] = true;
        mask[3 * 4096 + 100] = true;
        mask[19 * 4096] = true;
        let dense = DenseDelta::new(mask.iter().collect(), vec![1; len as usize]).unwrap();
        let sparse = SparseDelta::new(
            vec![Run { offset: 4096 * 7, len: 5000 }, Run { offset: 4096 * 15 - 1, len: 1 }],
            vec![7; 5001],
        )
        .unwrap();
        for (p, want) in [
            (Payload::Dense(dense), vec![0, 3, 19]),
            (Payload::Sparse(sparse), vec![7, 8, 14]),
            (Payload::Full(vec![1; len as usize]), (0..20).collect()),
        ] {
            let mut a = Changed::default();
            a.mark_payload(&p, len);
            let mut enc = Vec::new();
            crate::storage::codec::delta::encode_payload(&p, &mut enc);
            let mut b = Changed::default();
            b.mark_encoded(&enc, len);
            assert_eq!(blocks(&a, len), want, "{:?}", p.kind());
            assert_eq!(blocks(&b, len), want, "{:?}", p.kind());
        }
        // An encoding it cannot read: the whole page.
        let mut c = Changed::default();
        c.mark_encoded(&[9, 1], len);
        assert!(c.is_whole() && blocks(&c, len).len() == 20);
    }
}
