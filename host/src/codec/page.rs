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
    crc, metadata_len, put_location, put_metadata, put_u16, put_u32, put_u64, read_location, read_metadata,
};
use super::{Limits, Reader};
use crate::page::{Location, Metadata};
use crate::{Error, Result};
use shared_types::{Epoch, PageId};

/// Magic of a page image.
pub const PAGE_MAGIC: [u8; 4] = *b"MSPG";
/// Current page image version.
pub const PAGE_VERSION: u16 = 2;
/// Presence granularity in bytes.
pub const BLOCK: usize = 64;
/// Size of the fixed header.
pub const PAGE_HEAD_LEN: usize = 64;

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
    pub bytes: Vec<u8>,
}

fn block_present(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(8);
    let mut acc = 0u64;
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        acc |= u64::from_ne_bytes(a);
    }
    acc != 0 || chunks.remainder().iter().any(|&x| x != 0)
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
    let nblocks = bytes.len().div_ceil(BLOCK);
    if u32::try_from(nblocks).is_err() {
        return Err(Error::InvalidPage {
            reason: format!("page of {} bytes is too large to encode", bytes.len()),
        });
    }
    // Runs and data size first (header fields come before them).
    let mut runs: Vec<u32> = Vec::new();
    let mut present = false;
    let mut cur: u32 = 0;
    let mut data_len: u64 = 0;
    for b in bytes.chunks(BLOCK) {
        let p = block_present(b);
        if p != present {
            runs.push(cur);
            cur = 0;
            present = p;
        }
        cur += 1;
        if p {
            data_len += b.len() as u64;
        }
    }
    runs.push(cur);
    let start = out.len();
    let mlen = metadata_len(meta);
    let total = PAGE_HEAD_LEN as u64 + mlen as u64 + 4 * runs.len() as u64 + data_len + 4;
    out.reserve(total as usize);
    out.extend_from_slice(&PAGE_MAGIC);
    put_u16(out, PAGE_VERSION);
    put_u16(out, 0);
    put_u64(out, total);
    put_u64(out, id.0);
    put_u64(out, epoch.0);
    put_u64(out, bytes.len() as u64);
    put_location(out, location);
    put_u32(out, mlen as u32);
    put_u32(out, runs.len() as u32);
    put_u64(out, data_len);
    put_metadata(out, meta);
    for r in &runs {
        put_u32(out, *r);
    }
    for b in bytes.chunks(BLOCK) {
        if block_present(b) {
            out.extend_from_slice(b);
        }
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
    let mut r = Reader::new(buf, base);
    if r.bytes(4, "page magic")? != PAGE_MAGIC {
        return Err(Error::corrupt_at(base, "not a page image (bad magic)"));
    }
    let v = r.u16("page version")?;
    if v != PAGE_VERSION {
        return Err(Error::corrupt_at(base + 4, format!("unsupported page image version {v}")));
    }
    if r.u16("page flags")? != 0 {
        return Err(Error::corrupt_at(base + 6, "unknown page flags"));
    }
    let total = r.u64("page total length")?;
    if total < PAGE_HEAD_LEN as u64 + 4 || total > buf.len() as u64 {
        return Err(Error::corrupt_at(
            base + 8,
            format!("page image of {total} bytes does not fit the input"),
        ));
    }
    let total = total as usize;
    // Check the CRC before interpreting anything else.
    let mut c = [0u8; 4];
    c.copy_from_slice(&buf[total - 4..total]);
    if crc(&buf[..total - 4]) != u32::from_le_bytes(c) {
        return Err(Error::corrupt_at(base + total as u64 - 4, "page image CRC mismatch"));
    }
    let mut r = Reader::new(&buf[..total - 4], base);
    r.bytes(16, "page head")?;
    let id = PageId(r.u64("page id")?);
    let epoch = Epoch(r.u64("page epoch")?);
    let len_at = r.offset();
    let len = r.u64("page length")?;
    if len == 0 || len > limits.max_page_len {
        return Err(Error::corrupt_at(len_at, format!("page length {len} out of range")));
    }
    let location = read_location(&mut r)?;
    let mlen = r.u32("metadata length")? as usize;
    let rle_count = r.u32("run count")? as usize;
    let data_at = r.offset();
    let data_len = r.u64("data length")?;
    let meta_at = r.offset();
    let mut mr = Reader::new(r.bytes(mlen, "metadata")?, meta_at);
    let meta = read_metadata(&mut mr)?;
    mr.finish("metadata")?;
    let runs_at = r.offset();
    let runs = r.bytes(rle_count.saturating_mul(4), "block runs")?;
    let data = r.bytes_u64(data_len, "page data")?;
    r.finish("page image")?;

    let nblocks = len.div_ceil(BLOCK as u64);
    let mut bytes = vec![0u8; len as usize];
    let (mut block, mut at, mut present) = (0u64, 0usize, false);
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
            let to = ((block + n) as usize * BLOCK).min(len as usize);
            let need = to - from;
            if need > data.len() - at {
                return Err(Error::corrupt_at(data_at, "data length does not match the present blocks"));
            }
            bytes[from..to].copy_from_slice(&data[at..at + need]);
            for (k, b) in bytes[from..to].chunks(BLOCK).enumerate() {
                if !block_present(b) {
                    return Err(Error::corrupt_at(
                        runs_at + 4 * i as u64,
                        format!("present block {} is all zero (non-canonical)", block + k as u64),
                    ));
                }
            }
            at += need;
        }
        block += n;
        present = !present;
    }
    if block != nblocks || at != data.len() || runs.is_empty() {
        return Err(Error::corrupt_at(runs_at, "block runs do not cover the page exactly"));
    }
    Ok((PageImage { id, epoch, location, meta, bytes }, total))
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
                PageImage { id: PageId(id), epoch: Epoch(epoch), location, meta, bytes }
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
            bytes: vec![0; 1 << 20],
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
            bytes,
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
