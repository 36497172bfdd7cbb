//! Binary codecs of the persisted formats (specified in `docs/FORMAT.md`).
//!
//! | format | module | magic |
//! |---|---|---|
//! | page image v2 (presence bitvector + RLE + non-zero blocks) | [`page`] | `MSPG` |
//! | delta blob / delta record body, payload encoding | [`delta`] | `MSDL` |
//! | derived record body (the deltas of one propagation) | [`derived`] | – |
//!
//! Every field is little-endian and written explicitly; nothing is a raw
//! struct image. Decoders treat their input as untrusted: every length is
//! checked against the bytes that remain and against [`Limits`] before
//! anything is allocated, and every failure is an [`Error::Corrupt`] carrying
//! the offset of the first bad byte. No decoder panics on any input.

pub mod delta;
pub mod derived;
pub mod page;

use crate::types::page::Location;
use crate::{Error, Result};

/// Upper bounds a decoder enforces before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest page length accepted, in bytes.
    pub max_page_len: u64,
    /// Largest single log record body (or delta blob body), in bytes.
    pub max_record_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_page_len: 1 << 32, max_record_len: 1 << 32 }
    }
}

impl Limits {
    /// No bounds: for decoding what this process encoded itself.
    pub(crate) fn unbounded() -> Self {
        Self { max_page_len: u64::MAX, max_record_len: u64::MAX }
    }
}

/// CRC32C (Castagnoli) of `bytes`.
#[inline]
pub fn crc(bytes: &[u8]) -> u32 {
    crate::delta::simd::crc32c(bytes)
}

/// CRC32C of `bytes` appended to data whose CRC32C is `crc`.
#[inline]
pub fn crc_append(crc: u32, bytes: &[u8]) -> u32 {
    crate::delta::simd::crc32c_append(crc, bytes)
}

/// CRC32C of `A ‖ B` from the CRCs of `A` and `B` and the length of `B`.
#[inline]
pub fn crc_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crate::delta::simd::crc32c_combine(crc_a, crc_b, len_b)
}

/// A bounds-checked little-endian reader over untrusted bytes.
///
/// Offsets in its errors are absolute: `base` plus the position in `buf`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, whose first byte is at absolute offset `base`.
    pub fn new(buf: &'a [u8], base: u64) -> Self {
        Self { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A `Corrupt` error at the current offset.
    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::corrupt_at(self.offset(), reason)
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when fewer than `n` bytes remain.
    #[inline(always)]
    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.short(n, what)),
        }
    }

    #[cold]
    #[inline(never)]
    fn short(&self, n: usize, what: &str) -> Error {
        self.err(format!("{what}: need {n} bytes, {} remain", self.remaining()))
    }

    /// The next `u64`-counted byte length, checked against what remains.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `n` exceeds the remaining bytes.
    #[inline]
    pub fn bytes_u64(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        match usize::try_from(n) {
            Ok(n) => self.bytes(n, what),
            Err(_) => Err(self.err(format!("{what}: length {n} exceeds the address space"))),
        }
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        match self.buf.get(self.pos..).and_then(|rest| rest.first_chunk::<N>()) {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.short(N, what)),
        }
    }

    /// A byte.
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the end of input.
    #[inline(always)]
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian `u16`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the end of input.
    #[inline(always)]
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A little-endian `u32`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the end of input.
    #[inline(always)]
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A little-endian `u64`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the end of input.
    #[inline(always)]
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Position of the next byte in the input (not counting `base`).
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The input bytes `[from, position)`.
    pub(crate) fn since(&self, from: usize) -> &'a [u8] {
        self.buf.get(from..self.pos).unwrap_or_default()
    }

    /// An unsigned LEB128 number (7 bits a byte, low first, high bit set
    /// on every byte but the last), in its shortest form.
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the end of input, for a number over 64 bits,
    /// or for an overlong form (a last byte of zero after the first).
    #[inline]
    pub fn varint(&mut self, what: &str) -> Result<u64> {
        let at = self.offset();
        let mut v = 0u64;
        for i in 0..10u32 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                return Err(Error::corrupt_at(at, format!("{what}: number over 64 bits")));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if b == 0 && i > 0 {
                    return Err(Error::corrupt_at(at, format!("{what}: overlong number")));
                }
                return Ok(v);
            }
        }
        Err(Error::corrupt_at(at, format!("{what}: number over 64 bits")))
    }

    /// Fail unless every byte was consumed.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the number of trailing bytes.
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{what}: {} unexpected trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// Most bytes of a LEB128 number.
pub(crate) const VARINT_MAX: usize = 10;

/// Write `v` as a shortest-form LEB128 number (see [`Reader::varint`]) at
/// `out[at..]`, which must have room for [`VARINT_MAX`] bytes; returns the
/// position after it.
#[inline(always)]
pub(crate) fn put_varint_at(out: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        out[at] = v as u8 | 0x80;
        v >>= 7;
        at += 1;
    }
    out[at] = v as u8;
    at + 1
}

#[inline]
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Location codes: `(kind, device)`; kind 0 = CPU, 1 = GPU (device = ordinal), 2 = unified.
pub(crate) fn location_code(l: Location) -> (u32, u32) {
    match l {
        Location::Cpu => (0, 0),
        Location::Gpu(n) => (1, n),
        Location::Unified => (2, 0),
    }
}

pub(crate) fn read_location(r: &mut Reader<'_>) -> Result<Location> {
    let at = r.offset();
    let kind = r.u32("location kind")?;
    let dev = r.u32("location device")?;
    match (kind, dev) {
        (0, 0) => Ok(Location::Cpu),
        (1, n) => Ok(Location::Gpu(n)),
        (2, 0) => Ok(Location::Unified),
        _ => Err(Error::corrupt_at(at, format!("bad location ({kind}, {dev})"))),
    }
}

pub(crate) fn put_location(out: &mut Vec<u8>, l: Location) {
    let (k, d) = location_code(l);
    put_u32(out, k);
    put_u32(out, d);
}

/// Metadata section: `count u32`, then per entry `key_len u16, key (UTF-8),
/// value_len u32, value`, in key order.
pub(crate) fn put_metadata(out: &mut Vec<u8>, meta: &crate::types::page::Metadata) {
    put_u32(out, meta.len() as u32);
    for (k, v) in meta {
        put_u16(out, k.len() as u16);
        out.extend_from_slice(k.as_bytes());
        put_u32(out, v.len() as u32);
        out.extend_from_slice(v);
    }
}

/// Encoded size of a metadata section.
pub(crate) fn metadata_len(meta: &crate::types::page::Metadata) -> usize {
    4 + meta.iter().map(|(k, v)| 2 + k.len() + 4 + v.len()).sum::<usize>()
}

pub(crate) fn read_metadata(r: &mut Reader<'_>) -> Result<crate::types::page::Metadata> {
    use crate::types::page::{MAX_META_ENTRIES, MAX_META_KEY, MAX_META_VALUE};
    let count = r.u32("metadata count")? as usize;
    if count > MAX_META_ENTRIES {
        return Err(r.err(format!("{count} metadata entries (at most {MAX_META_ENTRIES})")));
    }
    let mut meta = crate::types::page::Metadata::new();
    let mut prev: Option<String> = None;
    for _ in 0..count {
        let at = r.offset();
        let kl = r.u16("metadata key length")? as usize;
        if kl > MAX_META_KEY {
            return Err(Error::corrupt_at(at, format!("metadata key of {kl} bytes")));
        }
        let key = std::str::from_utf8(r.bytes(kl, "metadata key")?)
            .map_err(|_| Error::corrupt_at(at, "metadata key is not UTF-8"))?
            .to_owned();
        if prev.as_ref().is_some_and(|p| *p >= key) {
            return Err(Error::corrupt_at(at, "metadata keys out of order"));
        }
        let vl = r.u32("metadata value length")? as usize;
        if vl > MAX_META_VALUE {
            return Err(Error::corrupt_at(at, format!("metadata value of {vl} bytes")));
        }
        let value = r.bytes(vl, "metadata value")?.to_vec();
        prev = Some(key.clone());
        meta.insert(key, value);
    }
    Ok(meta)
}
