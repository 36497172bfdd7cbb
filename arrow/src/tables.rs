//! Row buffers of the tables: rows go in one by one, a [`RecordBatch`]
//! comes out, and the buffer is empty again. Each knows its row count and
//! roughly how many bytes it holds, so the history's reader can cut
//! batches of bounded size.

use crate::schema;
use arrow_array::builder::{BooleanBuilder, LargeBinaryBuilder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{
    ArrayRef, BinaryArray, ListArray, MapArray, RecordBatch, StringArray, StructArray, UInt64Array,
};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use mmsb::internals::codec::delta::{DeltaView, PayloadView, ProvenanceView};
use mmsb::{EdgeKind, Error, Location, Metadata, PageImage, Result};
use std::sync::Arc;

fn arrow_err(e: arrow_schema::ArrowError) -> Error {
    Error::Serialization(format!("arrow: {e}"))
}

/// A dense payload whose mask has more runs than this is described by its
/// mask (the `mask` column), not by runs: the encoder chose dense because
/// the runs were many, and a random half-full mask of 1 MiB has about
/// 260,000 of them.
pub const MAX_DENSE_RANGES: u64 = 256;

/// Runs of set bits in a dense payload's mask (bit k of byte j: page byte
/// 8j + k), counted a word at a time: a run starts at each set bit whose
/// predecessor is clear.
fn dense_runs(mask: &[u8]) -> u64 {
    let (words, tail) = mask.as_chunks::<8>();
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    let mut carry = 0u64;
    let mut n = 0u64;
    for w in words.iter().chain((!tail.is_empty()).then_some(&last)) {
        let w = u64::from_le_bytes(*w);
        n += u64::from((w & !((w << 1) | carry)).count_ones());
        carry = w >> 63;
    }
    n
}

/// `(offset, len)` runs of the bytes a payload writes, in page order, and
/// (when `bytes` is given) the bytes themselves appended to it; the bytes
/// written. `None` for a dense payload of more than [`MAX_DENSE_RANGES`]
/// runs (its bytes are appended all the same).
fn ranges_of(p: &PayloadView<'_>, runs: &mut Vec<(u64, u64)>, bytes: Option<&mut Vec<u8>>) -> Option<u64> {
    match *p {
        PayloadView::Full(b) => {
            runs.push((0, b.len() as u64));
            if let Some(out) = bytes {
                out.extend_from_slice(b);
            }
            Some(b.len() as u64)
        }
        PayloadView::Sparse { runs: enc, data, .. } => {
            for r in enc.chunks_exact(16) {
                let off = u64::from_le_bytes(r[..8].try_into().unwrap_or_default());
                let len = u64::from_le_bytes(r[8..].try_into().unwrap_or_default());
                runs.push((off, len));
            }
            if let Some(out) = bytes {
                out.extend_from_slice(data);
            }
            Some(data.len() as u64)
        }
        PayloadView::Dense { mask, selected, .. } => {
            if let Some(out) = bytes {
                out.extend_from_slice(selected);
            }
            if dense_runs(mask) > MAX_DENSE_RANGES {
                return None;
            }
            // Runs of set mask bits, a 64-bit word at a time (bit k of
            // mask byte j is page byte 8j + k: a little-endian word); the
            // selected bytes are in page order, so they are the runs'
            // bytes back to back.
            let mut open: Option<(u64, u64)> = None;
            let (words, tail) = mask.as_chunks::<8>();
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            let tail_word = (!tail.is_empty()).then_some(&last);
            for (i, w) in words.iter().chain(tail_word).enumerate() {
                mask_runs(u64::from_le_bytes(*w), 64 * i as u64, &mut open, runs);
            }
            if let Some(r) = open {
                runs.push(r);
            }
            Some(selected.len() as u64)
        }
    }
}

/// The runs of set bits of mask word `w`, whose bit 0 is page byte `base`,
/// continuing the run `open` (one that reaches the word's last bit stays
/// open for the next word).
#[inline]
fn mask_runs(w: u64, base: u64, open: &mut Option<(u64, u64)>, runs: &mut Vec<(u64, u64)>) {
    let mut pos = 0u32;
    while pos < 64 {
        let rest = w >> pos;
        if rest & 1 == 1 {
            let ones = rest.trailing_ones();
            match open {
                Some((_, len)) => *len += u64::from(ones),
                None => *open = Some((base + u64::from(pos), u64::from(ones))),
            }
            pos += ones;
        } else {
            if let Some(r) = open.take() {
                runs.push(r);
            }
            if rest == 0 {
                break;
            }
            pos += rest.trailing_zeros();
        }
    }
}

/// A list of `(u64, u64)` structs, built from flat vectors.
#[derive(Default)]
struct PairList {
    offsets: Vec<i32>,
    a: Vec<u64>,
    b: Vec<u64>,
    valid: Vec<bool>,
}

impl PairList {
    fn push_row(&mut self, items: impl IntoIterator<Item = (u64, u64)>, valid: bool) -> Result<()> {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        for (x, y) in items {
            self.a.push(x);
            self.b.push(y);
        }
        let end = i32::try_from(self.a.len())
            .map_err(|_| Error::Serialization("a batch's list column passed 2^31 items".into()))?;
        self.offsets.push(end);
        self.valid.push(valid);
        Ok(())
    }

    fn finish(&mut self, fields: arrow_schema::Fields, nullable: bool) -> ArrayRef {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let items = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(UInt64Array::from(std::mem::take(&mut self.a))) as ArrayRef,
                Arc::new(UInt64Array::from(std::mem::take(&mut self.b))),
            ],
            None,
        );
        let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(&mut self.offsets, vec![0])));
        let valid = std::mem::take(&mut self.valid);
        let nulls = (nullable && valid.iter().any(|v| !v)).then(|| NullBuffer::from(valid));
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(fields), false)),
            offsets,
            Arc::new(items),
            nulls,
        ))
    }
}

/// Rows of the `deltas` table.
pub(crate) struct Deltas {
    lsn: UInt64Builder,
    delta_id: UInt64Builder,
    time: UInt64Builder,
    page_id: UInt64Builder,
    epoch_before: UInt64Builder,
    epoch_after: UInt64Builder,
    base_epoch: UInt64Builder,
    kind: StringBuilder,
    ranges: PairList,
    mask: LargeBinaryBuilder,
    bytes_written: UInt64Builder,
    bytes: LargeBinaryBuilder,
    source: StringBuilder,
    function: StringBuilder,
    function_version: UInt32Builder,
    parents: PairList,
    tag: StringBuilder,
    with_bytes: bool,
    rows: usize,
    held: usize,
    scratch_runs: Vec<(u64, u64)>,
    scratch_bytes: Vec<u8>,
}

impl Deltas {
    pub(crate) fn new(with_bytes: bool) -> Self {
        Self {
            lsn: UInt64Builder::new(),
            delta_id: UInt64Builder::new(),
            time: UInt64Builder::new(),
            page_id: UInt64Builder::new(),
            epoch_before: UInt64Builder::new(),
            epoch_after: UInt64Builder::new(),
            base_epoch: UInt64Builder::new(),
            kind: StringBuilder::new(),
            ranges: PairList::default(),
            mask: LargeBinaryBuilder::new(),
            bytes_written: UInt64Builder::new(),
            bytes: LargeBinaryBuilder::new(),
            source: StringBuilder::new(),
            function: StringBuilder::new(),
            function_version: UInt32Builder::new(),
            parents: PairList::default(),
            tag: StringBuilder::new(),
            with_bytes,
            rows: 0,
            held: 0,
            scratch_runs: Vec::new(),
            scratch_bytes: Vec::new(),
        }
    }

    /// One delta, logged at `lsn`, that took its page from `before` to
    /// `before + 1`.
    pub(crate) fn push(&mut self, lsn: u64, v: &DeltaView<'_>, before: u64) -> Result<()> {
        self.lsn.append_value(lsn);
        self.delta_id.append_value(v.id.0);
        self.time.append_value(v.timestamp);
        self.page_id.append_value(v.page.0);
        self.epoch_before.append_value(before);
        self.epoch_after.append_value(before + 1);
        self.base_epoch.append_option(v.base_epoch.map(|e| e.0));
        self.kind.append_value(match v.payload {
            PayloadView::Dense { .. } => "dense",
            PayloadView::Sparse { .. } => "sparse",
            PayloadView::Full(_) => "full",
        });
        self.scratch_runs.clear();
        self.scratch_bytes.clear();
        let bytes = self.with_bytes.then_some(&mut self.scratch_bytes);
        let written = match ranges_of(&v.payload, &mut self.scratch_runs, bytes) {
            Some(w) => {
                self.ranges.push_row(self.scratch_runs.iter().copied(), true)?;
                self.mask.append_null();
                w
            }
            None => {
                let PayloadView::Dense { mask, selected, .. } = v.payload else {
                    return Err(Error::Invariant("only a dense payload has no runs".into()));
                };
                self.ranges.push_row([], false)?;
                self.mask.append_value(mask);
                self.held += mask.len();
                selected.len() as u64
            }
        };
        self.bytes_written.append_value(written);
        if self.with_bytes {
            self.bytes.append_value(&self.scratch_bytes);
        } else {
            self.bytes.append_null();
        }
        self.held += 96 + 16 * self.scratch_runs.len() + self.scratch_bytes.len();
        match v.source {
            1 => {
                self.source.append_value("derived");
                let prov = match v.provenance {
                    ProvenanceView::None => None,
                    p => Some(p.to_provenance()?),
                };
                match prov {
                    Some(p) => {
                        self.function.append_value(&*p.function);
                        self.function_version.append_value(p.version);
                        self.parents.push_row(p.parents.iter().map(|(pg, e)| (pg.0, e.0)), true)?;
                        self.held += p.function.len() + 16 * p.parents.len();
                    }
                    None => {
                        self.function.append_null();
                        self.function_version.append_null();
                        self.parents.push_row([], false)?;
                    }
                }
            }
            s => {
                self.source.append_value(if s == 0 { "user" } else { "replay" });
                self.function.append_null();
                self.function_version.append_null();
                self.parents.push_row([], false)?;
            }
        }
        self.tag.append_option(v.tag);
        self.rows += 1;
        Ok(())
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn held(&self) -> usize {
        self.held
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        self.held = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.lsn.finish()),
            Arc::new(self.delta_id.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.page_id.finish()),
            Arc::new(self.epoch_before.finish()),
            Arc::new(self.epoch_after.finish()),
            Arc::new(self.base_epoch.finish()),
            Arc::new(self.kind.finish()),
            self.ranges.finish(schema::range_fields(), true),
            Arc::new(self.mask.finish()),
            Arc::new(self.bytes_written.finish()),
            Arc::new(self.bytes.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.function.finish()),
            Arc::new(self.function_version.finish()),
            self.parents.finish(schema::parent_fields(), true),
            Arc::new(self.tag.finish()),
        ];
        RecordBatch::try_new(schema::deltas(), cols).map_err(arrow_err)
    }
}

/// Rows of the `commits` table.
#[derive(Default)]
pub(crate) struct Commits {
    first_lsn: UInt64Builder,
    last_lsn: UInt64Builder,
    time_first: UInt64Builder,
    time_last: UInt64Builder,
    changes: UInt32Builder,
    kind: StringBuilder,
    rows: usize,
}

impl Commits {
    pub(crate) fn push(
        &mut self,
        first_lsn: u64,
        last_lsn: u64,
        time_before: u64,
        changes: usize,
        kind: &str,
    ) {
        self.first_lsn.append_value(first_lsn);
        self.last_lsn.append_value(last_lsn);
        self.time_first.append_value(time_before + 1);
        self.time_last.append_value(time_before + changes as u64);
        self.changes.append_value(u32::try_from(changes).unwrap_or(u32::MAX));
        self.kind.append_value(kind);
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.first_lsn.finish()),
            Arc::new(self.last_lsn.finish()),
            Arc::new(self.time_first.finish()),
            Arc::new(self.time_last.finish()),
            Arc::new(self.changes.finish()),
            Arc::new(self.kind.finish()),
        ];
        RecordBatch::try_new(schema::commits(), cols).map_err(arrow_err)
    }
}

/// A page's `name` metadata entry, when it is UTF-8.
pub(crate) fn name_of(meta: &Metadata) -> Option<&str> {
    meta.get("name").and_then(|n| std::str::from_utf8(n).ok())
}

/// Rows of the `pages` table.
#[derive(Default)]
pub(crate) struct Pages {
    page_id: UInt64Builder,
    name: StringBuilder,
    length: UInt64Builder,
    location: StringBuilder,
    epoch: UInt64Builder,
    meta_offsets: Vec<i32>,
    meta_keys: Vec<String>,
    meta_values: Vec<Vec<u8>>,
    bytes: LargeBinaryBuilder,
    rows: usize,
    held: usize,
}

impl Pages {
    pub(crate) fn push(&mut self, p: &PageImage) -> Result<()> {
        self.page_id.append_value(p.id.0);
        self.name.append_option(name_of(&p.meta));
        self.length.append_value(p.bytes.len() as u64);
        self.location.append_value(location_name(p.location));
        self.epoch.append_value(p.epoch.0);
        if self.meta_offsets.is_empty() {
            self.meta_offsets.push(0);
        }
        for (k, v) in &p.meta {
            self.meta_keys.push(k.clone());
            self.meta_values.push(v.clone());
            self.held += k.len() + v.len();
        }
        self.meta_offsets.push(
            i32::try_from(self.meta_keys.len())
                .map_err(|_| Error::Serialization("a batch's metadata passed 2^31 entries".into()))?,
        );
        self.bytes.append_value(&p.bytes[..]);
        self.held += 64 + p.bytes.len();
        self.rows += 1;
        Ok(())
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn held(&self) -> usize {
        self.held
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        self.held = 0;
        if self.meta_offsets.is_empty() {
            self.meta_offsets.push(0);
        }
        let entries_field = schema::metadata_entries();
        let DataType::Struct(entry_fields) = entries_field.data_type().clone() else {
            return Err(Error::Invariant("metadata entries are a struct".into()));
        };
        let keys = StringArray::from_iter_values(std::mem::take(&mut self.meta_keys));
        let values = BinaryArray::from_iter_values(std::mem::take(&mut self.meta_values));
        let entries =
            StructArray::new(entry_fields, vec![Arc::new(keys) as ArrayRef, Arc::new(values)], None);
        let offsets =
            OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(&mut self.meta_offsets, vec![0])));
        let map =
            MapArray::try_new(Arc::new(entries_field), offsets, entries, None, false).map_err(arrow_err)?;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.page_id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.length.finish()),
            Arc::new(self.location.finish()),
            Arc::new(self.epoch.finish()),
            Arc::new(map),
            Arc::new(self.bytes.finish()),
        ];
        RecordBatch::try_new(schema::pages(), cols).map_err(arrow_err)
    }
}

/// `cpu`, `gpu:N` or `unified`.
pub(crate) fn location_name(l: Location) -> String {
    l.to_string()
}

/// Rows of the `graph_nodes` table.
#[derive(Default)]
pub(crate) struct Nodes {
    id: UInt64Builder,
    name: StringBuilder,
    derived: BooleanBuilder,
    function: StringBuilder,
    version: UInt32Builder,
    rows: usize,
}

impl Nodes {
    pub(crate) fn push(&mut self, id: u64, name: Option<&str>, derived: Option<(&str, u32)>) {
        self.id.append_value(id);
        self.name.append_option(name);
        self.derived.append_value(derived.is_some());
        self.function.append_option(derived.map(|d| d.0));
        self.version.append_option(derived.map(|d| d.1));
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.derived.finish()),
            Arc::new(self.function.finish()),
            Arc::new(self.version.finish()),
        ];
        RecordBatch::try_new(schema::graph_nodes(), cols).map_err(arrow_err)
    }
}

/// Rows of the `graph_edges` table.
#[derive(Default)]
pub(crate) struct Edges {
    source: UInt64Builder,
    target: UInt64Builder,
    kind: StringBuilder,
    rows: usize,
}

impl Edges {
    pub(crate) fn push(&mut self, from: u64, to: u64, kind: EdgeKind) {
        self.source.append_value(from);
        self.target.append_value(to);
        self.kind.append_value(match kind {
            EdgeKind::Data => "data",
            EdgeKind::Control => "control",
        });
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.source.finish()),
            Arc::new(self.target.finish()),
            Arc::new(self.kind.finish()),
        ];
        RecordBatch::try_new(schema::graph_edges(), cols).map_err(arrow_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ranges_are_the_runs_of_set_mask_bits() {
        // Bits 0-2, 7-9 (across a byte), 20, 24-40 (whole bytes and a
        // run into the next); page of 42 bytes.
        let mask = [0b1000_0111u8, 0b0000_0011, 0b0001_0000, 0xFF, 0xFF, 0b0000_0001];
        let selected: Vec<u8> = (1..=24).collect();
        let p = PayloadView::Dense { len: 42, mask: &mask, selected: &selected };
        let (mut runs, mut bytes) = (Vec::new(), Vec::new());
        assert_eq!(ranges_of(&p, &mut runs, Some(&mut bytes)), Some(24));
        assert_eq!(dense_runs(&mask), 4);
        assert_eq!(runs, vec![(0, 3), (7, 3), (20, 1), (24, 17)]);
        assert_eq!(bytes, selected);
        // Random masks of every length up to 200 bytes against a bit-by-bit reference.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for n in 1..200usize {
            let m: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly all or nothing, sometimes mixed.
                    [0, 0xFF, x as u8][(x >> 60) as usize % 3]
                })
                .collect();
            let mut expect: Vec<(u64, u64)> = Vec::new();
            for bit in 0..8 * n as u64 {
                if m[(bit / 8) as usize] >> (bit % 8) & 1 == 1 {
                    match expect.last_mut() {
                        Some((o, l)) if *o + *l == bit => *l += 1,
                        _ => expect.push((bit, 1)),
                    }
                }
            }
            let count: u64 = expect.iter().map(|r| r.1).sum();
            let sel = vec![1u8; count as usize];
            let v = PayloadView::Dense { len: 8 * n as u64, mask: &m, selected: &sel };
            runs.clear();
            assert_eq!(dense_runs(&m), expect.len() as u64, "mask {m:?}");
            if expect.len() as u64 > MAX_DENSE_RANGES {
                assert_eq!(ranges_of(&v, &mut runs, None), None);
                continue;
            }
            assert_eq!(ranges_of(&v, &mut runs, None), Some(count));
            assert_eq!(runs, expect, "mask {m:?}");
        }
        let full = [9u8; 5];
        runs.clear();
        assert_eq!(ranges_of(&PayloadView::Full(&full), &mut runs, None), Some(5));
        assert_eq!(runs, vec![(0, 5)]);
        // A mask of more runs than the limit: no runs, the bytes all the same.
        let many = vec![0b0101_0101u8; 80];
        let sel = vec![3u8; 320];
        let (mut runs, mut bytes) = (Vec::new(), Vec::new());
        let v = PayloadView::Dense { len: 640, mask: &many, selected: &sel };
        assert_eq!(dense_runs(&many), 320);
        assert_eq!(ranges_of(&v, &mut runs, Some(&mut bytes)), None);
        assert_eq!(bytes, sel);
    }
}
