//! The derived record: the deltas one propagation commits, in one log
//! record of type [`crate::storage::log::RecordType::Derived`] (docs/FORMAT.md).
//!
//! A propagation writes many small deltas that share their source, their
//! recompute functions and consecutive ids and timestamps. As separate delta
//! records each would carry a 44-byte head, its function's name and
//! 16 bytes per parent; here the ids and timestamps are given once, each
//! function's name and version once per record, and pages, epochs and
//! lengths as LEB128 numbers. A derived delta of an 8-byte page with one
//! parent takes about 27 bytes instead of 113.
//!
//! ```text
//! @0   count     u32   n >= 1 deltas; delta i has id first_id + i and
//! @4   reserved  u32   0                timestamp first_ts + i
//! @8   first_id  u64
//! @16  first_ts  u64
//! @24  n entries:
//!      page      varint
//!      function  varint  f: below k (functions defined so far in this
//!                        record) names function f; equal to k defines
//!                        function k here:
//!                          name_len varint, name (UTF-8), version varint (u32)
//!      parents   varint  P, then P × (page varint, epoch varint)
//!      kind      u8      payload kind (1 dense, 2 sparse, 3 full)
//!      n         varint  page length (dense, full) or run count (sparse)
//!      body      the payload body for that kind and n, as in the payload
//!                encoding of a delta body
//! ```
//!
//! Every varint is an unsigned LEB128 number in its shortest form
//! ([`crate::storage::codec::Reader::varint`]). The entries fill the body exactly.

use super::delta::{DeltaView, PayloadView, ProvenanceView, PAYLOAD_HEAD_LEN};
use super::{Limits, Reader};
use crate::{Error, Result};
use shared_types::{DeltaId, PageId};

/// Size of the fixed head of a derived record body.
pub const DERIVED_HEAD_LEN: usize = 24;

/// A validated derived record body.
#[derive(Clone, Copy, Debug)]
pub struct DerivedView<'a> {
    body: &'a [u8],
    base: u64,
    count: u32,
    first_id: u64,
    first_ts: u64,
}

impl<'a> DerivedView<'a> {
    /// Parse and validate a derived record body spanning all of `body`
    /// (first byte at absolute offset `base`): its head, and every entry.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for malformed input; never panics, and allocates
    /// no more than the input holds.
    pub fn parse(body: &'a [u8], base: u64, limits: &Limits) -> Result<Self> {
        let v = Self::head(body, base)?;
        v.for_each(limits, |_| {})?;
        Ok(v)
    }

    /// The head alone: the entries are checked as [`DerivedView::for_each`]
    /// walks them.
    pub(crate) fn head(body: &'a [u8], base: u64) -> Result<Self> {
        let mut r = Reader::new(body, base);
        let count = r.u32("derived delta count")?;
        if count == 0 {
            return Err(Error::corrupt_at(base, "a derived record of no deltas"));
        }
        if r.u32("derived reserved")? != 0 {
            return Err(Error::corrupt_at(base + 4, "reserved derived record field is not zero"));
        }
        let first_id = r.u64("derived first delta id")?;
        let first_ts = r.u64("derived first timestamp")?;
        let last = u64::from(count) - 1;
        if first_id.checked_add(last).is_none() || first_ts.checked_add(last).is_none() {
            return Err(Error::corrupt_at(base + 8, "derived delta ids or timestamps overflow"));
        }
        Ok(DerivedView { body, base, count, first_id, first_ts })
    }

    /// Number of deltas.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are none (never, for a valid record).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Hand each delta to `f`, in order, as a delta record would read
    /// (source propagation, no base epoch, no tag).
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the first malformed entry (`f` has then seen
    /// the deltas before it), or for bytes after the last entry.
    pub fn for_each(&self, limits: &Limits, mut f: impl FnMut(DeltaView<'a>)) -> Result<()> {
        let body = self.body.get(DERIVED_HEAD_LEN..).unwrap_or_default();
        let mut r = Reader::new(body, self.base + DERIVED_HEAD_LEN as u64);
        let mut functions: Vec<(&'a str, u32)> = Vec::new();
        for i in 0..u64::from(self.count) {
            let page = PageId(r.varint("derived page")?);
            let at = r.offset();
            let k = r.varint("derived function")?;
            let (function, version) = match usize::try_from(k).ok().and_then(|k| functions.get(k)) {
                Some(f) => *f,
                None if k == functions.len() as u64 => {
                    let name_at = r.offset();
                    let n = r.varint("function name length")?;
                    let name = std::str::from_utf8(r.bytes_u64(n, "function name")?)
                        .map_err(|_| Error::corrupt_at(name_at, "function name is not UTF-8"))?;
                    let version_at = r.offset();
                    let version = u32::try_from(r.varint("function version")?)
                        .map_err(|_| Error::corrupt_at(version_at, "function version over 32 bits"))?;
                    functions.push((name, version));
                    (name, version)
                }
                None => {
                    return Err(Error::corrupt_at(
                        at,
                        format!("function {k} used before it is defined ({} so far)", functions.len()),
                    ))
                }
            };
            let count = r.varint("parent count")?;
            if count > r.remaining() as u64 / 2 {
                return Err(r.err(format!("{count} parents cannot fit in {} bytes", r.remaining())));
            }
            let from = r.position();
            for _ in 0..count {
                r.varint("parent page")?;
                r.varint("parent epoch")?;
            }
            let parents = r.since(from);
            let pay_at = r.offset();
            let kind = r.u8("payload kind")?;
            let n = r.varint("payload length")?;
            let payload = PayloadView::read_body(kind, n, pay_at, &mut r, limits)?;
            f(DeltaView {
                id: DeltaId(self.first_id + i),
                page,
                timestamp: self.first_ts + i,
                base_epoch: None,
                source: 1,
                provenance: ProvenanceView::Derived { function, version, count, parents },
                tag: None,
                payload,
            });
        }
        r.finish("derived record")
    }
}

/// What the writer needs to frame one derived delta into a derived record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DerivedEntry<'a> {
    pub(crate) page: PageId,
    /// A key of the function within this process (its registry index):
    /// deltas of one key and version share one function definition.
    pub(crate) func: u32,
    pub(crate) function: &'a str,
    pub(crate) version: u32,
    pub(crate) parents: &'a [(PageId, shared_types::Epoch)],
    /// The payload encoding (kind, length, body).
    pub(crate) payload: &'a [u8],
}

impl DerivedEntry<'_> {
    /// Most bytes the entry takes, its function defined in it.
    #[inline]
    pub(crate) fn bound(&self) -> usize {
        use super::VARINT_MAX;
        5 * VARINT_MAX + self.function.len() + 2 * VARINT_MAX * self.parents.len() + self.payload.len()
    }
}

/// The function definitions of the derived record being written: which
/// slot each function key has, to write each name once.
#[derive(Debug, Default)]
pub(crate) struct FunctionSlots {
    /// Slot of each key (`u32::MAX`: none), indexed by key.
    slot: Vec<u32>,
    /// `(key, version)` of each slot defined so far.
    defined: Vec<(u32, u32)>,
}

impl FunctionSlots {
    /// Forget the definitions: a new record starts.
    pub(crate) fn reset(&mut self) {
        for &(key, _) in &self.defined {
            self.slot[key as usize] = u32::MAX;
        }
        self.defined.clear();
    }

    /// Write `e` at `out[at..]` (room for [`DerivedEntry::bound`] bytes),
    /// defining its function if this record has not; returns the position
    /// after it.
    #[inline(always)]
    pub(crate) fn put_entry(&mut self, out: &mut [u8], mut at: usize, e: &DerivedEntry<'_>) -> usize {
        use super::put_varint_at;
        at = put_varint_at(out, at, e.page.0);
        let key = e.func as usize;
        if key >= self.slot.len() {
            self.slot.resize(key + 1, u32::MAX);
        }
        let s = self.slot[key];
        match self.defined.get(s as usize) {
            Some(&(k, v)) if k == e.func && v == e.version => at = put_varint_at(out, at, u64::from(s)),
            _ => {
                let s = self.defined.len() as u32;
                self.slot[key] = s;
                self.defined.push((e.func, e.version));
                at = put_varint_at(out, at, u64::from(s));
                let name = e.function.as_bytes();
                at = put_varint_at(out, at, name.len() as u64);
                crate::delta::simd::copy_small(&mut out[at..at + name.len()], name);
                at += name.len();
                at = put_varint_at(out, at, u64::from(e.version));
            }
        }
        at = put_varint_at(out, at, e.parents.len() as u64);
        for (page, epoch) in e.parents {
            at = put_varint_at(out, at, page.0);
            at = put_varint_at(out, at, epoch.0);
        }
        // The payload encoding's head (kind u8, n u64) with n as a varint.
        let (head, body) = e.payload.split_at(PAYLOAD_HEAD_LEN.min(e.payload.len()));
        let mut n = [0u8; 8];
        n.copy_from_slice(head.get(1..9).unwrap_or(&[0; 8]));
        out[at] = head.first().copied().unwrap_or(0);
        at = put_varint_at(out, at + 1, u64::from_le_bytes(n));
        crate::delta::simd::copy_small(&mut out[at..at + body.len()], body);
        at + body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::{put_varint_at, VARINT_MAX};
    use proptest::prelude::*;
    use shared_types::Epoch;

    fn varint(v: u64) -> Vec<u8> {
        let mut b = [0u8; VARINT_MAX];
        let n = put_varint_at(&mut b, 0, v);
        b[..n].to_vec()
    }

    /// A record body of the given entries, each written by the writer's
    /// entry code (function keys as given).
    fn body(first_id: u64, first_ts: u64, entries: &[DerivedEntry<'_>]) -> Vec<u8> {
        let mut out = vec![0u8; DERIVED_HEAD_LEN];
        out[0..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        out[8..16].copy_from_slice(&first_id.to_le_bytes());
        out[16..24].copy_from_slice(&first_ts.to_le_bytes());
        let mut slots = FunctionSlots::default();
        let mut at = out.len();
        for e in entries {
            out.resize(at + e.bound(), 0);
            at = slots.put_entry(&mut out, at, e);
        }
        out.truncate(at);
        out
    }

    fn deltas(b: &[u8]) -> Result<Vec<crate::delta::Delta>> {
        let v = DerivedView::parse(b, 0, &Limits::default())?;
        let mut out = Vec::new();
        let mut err = None;
        v.for_each(&Limits::default(), |d| match d.to_delta() {
            Ok(d) => out.push(d),
            Err(e) => err = Some(e),
        })?;
        err.map_or(Ok(out), Err)
    }

    // The payload encoding of a full 3-byte page.
    const FULL3: [u8; 12] = [3, 3, 0, 0, 0, 0, 0, 0, 0, 7, 8, 9];

    fn entry(func: u32, function: &str, version: u32) -> DerivedEntry<'_> {
        DerivedEntry { page: PageId(300), func, function, version, parents: &[], payload: &FULL3 }
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX / 2, u64::MAX] {
            let b = varint(v);
            assert_eq!(b.len(), (64 - (v | 1).leading_zeros() as usize).div_ceil(7));
            let mut r = Reader::new(&b, 0);
            assert_eq!(r.varint("v").unwrap(), v);
            r.finish("v").unwrap();
        }
        assert_eq!(varint(300), [0xac, 0x02]);
    }

    #[test]
    fn malformed_varints_are_corrupt() {
        for (bytes, why) in [
            (&[0x80u8][..], "need 1 bytes"),
            (&[0x80, 0x00][..], "overlong"),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..], "over 64 bits"),
            (&[0xff; 11][..], "over 64 bits"),
        ] {
            let e = Reader::new(bytes, 0).varint("v").unwrap_err();
            assert!(matches!(&e, Error::Corrupt { .. }) && e.to_string().contains(why), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn functions_are_defined_once_per_key_and_version() {
        let es = [entry(0, "a", 1), entry(1, "bb", 1), entry(0, "a", 1), entry(0, "a", 2), entry(0, "a", 2)];
        let b = body(5, 9, &es);
        // Each definition spells the name; the repeats are one byte.
        assert_eq!(b.windows(2).filter(|w| w == b"bb").count(), 1);
        assert_eq!(b.iter().filter(|&&c| c == b'a').count(), 2);
        let ds = deltas(&b).unwrap();
        let got: Vec<(u64, u64, String, u32)> = ds
            .iter()
            .map(|d| {
                let crate::delta::Source::Propagation(p) = &d.source else { panic!("{d:?}") };
                (d.id.0, d.timestamp, p.function.to_string(), p.version)
            })
            .collect();
        assert_eq!(
            got,
            [(5, 9, "a", 1), (6, 10, "bb", 1), (7, 11, "a", 1), (8, 12, "a", 2), (9, 13, "a", 2)]
                .map(|(i, t, f, v)| (i, t, f.to_string(), v))
        );
        assert!(ds.iter().all(|d| d.payload == crate::delta::Payload::Full(vec![7, 8, 9])));
    }

    #[test]
    fn malformed_bodies_are_corrupt_naming_the_fault() {
        let parents = [(PageId(1), Epoch(u64::MAX)), (PageId(u64::MAX), Epoch(0))];
        let good = body(1, 1, &[DerivedEntry { parents: &parents, ..entry(0, "f", 3) }]);
        assert_eq!(deltas(&good).unwrap().len(), 1);
        let head = &good[..DERIVED_HEAD_LEN];
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let entry_bytes = |parts: &[&[u8]]| {
            let mut b = head.to_vec();
            for p in parts {
                b.extend_from_slice(p);
            }
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (with(&|b| b[0..4].copy_from_slice(&0u32.to_le_bytes())), "no deltas"),
            (with(&|b| b[4] = 1), "reserved"),
            (
                with(&|b| {
                    b[0..4].copy_from_slice(&2u32.to_le_bytes());
                    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                }),
                "overflow",
            ),
            (with(&|b| b[0..4].copy_from_slice(&2u32.to_le_bytes())), "derived page"),
            (with(&|b| b.push(0)), "trailing"),
            (with(&|b| b.truncate(b.len() - 1)), "full payload bytes"),
            (good[..20].to_vec(), "need 8 bytes"),
            // Page 1, function 1 while none is defined.
            (entry_bytes(&[&[1, 1]]), "used before it is defined"),
            // A name that is not UTF-8.
            (entry_bytes(&[&[1, 0, 2, 0xff, 0xfe, 1, 0]]), "not UTF-8"),
            // A version over 32 bits.
            (entry_bytes(&[&[1, 0, 1, b'f'], &varint(1 << 32), &[0]]), "over 32 bits"),
            // More parents than bytes could hold.
            (entry_bytes(&[&[1, 0, 1, b'f', 1], &varint(1000), &[1, 1]]), "cannot fit"),
            // An unknown payload kind.
            (entry_bytes(&[&[1, 0, 1, b'f', 1, 0, 9, 1, 0]]), "unknown payload kind"),
            // A dense payload for a page of 0 bytes.
            (entry_bytes(&[&[1, 0, 1, b'f', 1, 0, 1, 0]]), "dense payload"),
        ];
        for (b, why) in cases {
            let e = deltas(&b).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }) && e.to_string().contains(why), "{why}: {e}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = deltas(&b);
        }

        #[test]
        fn any_byte_changed_in_a_valid_body_parses_or_fails_cleanly(
            at in 0usize..1000, to in any::<u8>(), cut in 0usize..1000,
        ) {
            let parents = [(PageId(7), Epoch(300))];
            let es = [
                DerivedEntry { parents: &parents, ..entry(0, "copy", 1) },
                entry(1, "sum", 2),
                entry(0, "copy", 1),
            ];
            let mut b = body(10, 20, &es);
            let at = at % b.len();
            b[at] = to;
            b.truncate(b.len() - cut % 8);
            let _ = deltas(&b);
        }
    }
}
