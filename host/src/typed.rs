//! Typed views of pages: read a page as a `T: bytemuck::Pod` (or a `[T]`),
//! and write through a closure whose mutation is captured as a delta.
//!
//! [`Mmsb::write`] copies the page's bytes into an aligned `T`, runs the
//! closure, compares the bytes before and after, and commits the smallest
//! payload that turns one into the other (the payload [`Payload::diff`]
//! gives; a change of one field is a sparse delta of that field's bytes).
//! The delta then goes the way of every other: through
//! [`Mmsb::update_page_at`], logged, applied, propagated to derived pages,
//! announced as an [`Event::DeltaApplied`](crate::Event::DeltaApplied).
//! A closure that changes nothing commits nothing.
//!
//! Pages on the CPU are read in place; GPU and unified pages through a
//! staging copy (as [`Mmsb::query_page`]: queued deltas are applied first).
//! Page bytes carry no alignment promise for `T` beyond the allocator's
//! 64 bytes (and none at all at an offset), so values are always copied
//! into properly aligned storage: no view ever reads unaligned memory.
//!
//! # Concurrency
//! A write reads the page and its epoch under the page's read lock and
//! commits with that epoch as the base ([`Mmsb::update_page_at`]). When
//! another writer got there first, the read-modify-write starts again, up
//! to [`WRITE_ATTEMPTS`] times, so the closure may run more than once:
//! keep it a pure function of the value it is given.
//!
//! # Examples
//! ```
//! use bytemuck::{Pod, Zeroable};
//! use mmsb::{Config, Mmsb, PageSpec};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
//! #[repr(C)]
//! struct Particle {
//!     pos: [f32; 3],
//!     mass: f32,
//! }
//!
//! # fn main() -> mmsb::Result<()> {
//! let state = Mmsb::start(Config::temporary())?;
//! let p = state.create_page(PageSpec::new(std::mem::size_of::<Particle>() as u64))?;
//! state.write::<Particle>(p, |t| t.mass = 2.5)?;
//! assert_eq!(state.read::<Particle>(p)?.mass, 2.5);
//! # Ok(())
//! # }
//! ```

use crate::delta::{diff_from_runs, differing_runs, Payload};
use crate::{Epoch, Error, Mmsb, PageId, Result};
use bytemuck::Pod;
use std::mem::size_of;

/// How often a typed write re-reads the page after losing a race with
/// another writer before it gives up with [`Error::StaleEpoch`].
pub const WRITE_ATTEMPTS: usize = 256;

/// The part of a page a typed view covers.
#[derive(Clone, Copy)]
enum Shape {
    /// Exactly one `T`: the page's length is `size_of::<T>()`.
    One,
    /// One `T` at a byte offset of a larger page.
    At(u64),
    /// The whole page as `[T]`: the length is a multiple of `size_of::<T>()`.
    Slice,
}

/// The byte range of `shape` in a page of `page_len` bytes.
fn range<T: Pod>(page: PageId, page_len: u64, shape: Shape) -> Result<(usize, usize)> {
    let size = size_of::<T>();
    let err = |offset, len, reason| Error::TypeLayout {
        page,
        ty: std::any::type_name::<T>(),
        size,
        offset,
        len,
        reason,
    };
    if size == 0 {
        return Err(err(0, page_len, "zero-sized types have no bytes to view"));
    }
    let n = size as u64;
    let (a, b) = match shape {
        Shape::One if page_len != n => {
            return Err(err(0, page_len, "the page length differs from the type's size"))
        }
        Shape::One => (0, n),
        Shape::At(offset) => match offset.checked_add(n) {
            Some(end) if end <= page_len => (offset, end),
            _ => return Err(err(offset, n, "the value would extend past the end of the page")),
        },
        Shape::Slice if !page_len.is_multiple_of(n) => {
            return Err(err(0, page_len, "the page length is not a multiple of the type's size"))
        }
        Shape::Slice => (0, page_len),
    };
    // Page lengths fit in memory (they were allocated), so these fit usize.
    Ok((a as usize, b as usize))
}

/// Copy `bytes` (any alignment, a whole number of `T`) into aligned values.
fn to_values<T: Pod>(bytes: &[u8]) -> Vec<T> {
    let mut out = vec![T::zeroed(); bytes.len() / size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(bytes);
    out
}

impl Mmsb {
    /// Read a page whose length is `size_of::<T>()` as one `T`.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::TypeLayout`] when the length
    /// differs or `T` is zero-sized; [`Error::Gpu`] when a device page
    /// cannot be read.
    pub fn read<T: Pod>(&self, page: PageId) -> Result<T> {
        self.read_shape::<T>(page, Shape::One).map(|(v, _)| v[0])
    }

    /// Read the `T` at byte `offset` of a page (any alignment).
    ///
    /// # Errors
    /// As [`Mmsb::read`]; [`Error::TypeLayout`] when the value would extend
    /// past the end of the page.
    pub fn read_at<T: Pod>(&self, page: PageId, offset: u64) -> Result<T> {
        self.read_shape::<T>(page, Shape::At(offset)).map(|(v, _)| v[0])
    }

    /// Read a whole page as a slice of `T`, with the page's epoch.
    ///
    /// # Errors
    /// As [`Mmsb::read`]; [`Error::TypeLayout`] when the page length is not
    /// a multiple of `size_of::<T>()`.
    ///
    /// # Examples
    /// ```
    /// # use mmsb::{Config, Mmsb, PageSpec};
    /// # fn main() -> mmsb::Result<()> {
    /// let state = Mmsb::start(Config::temporary())?;
    /// let p = state.create_page(PageSpec::new(4 * 8))?;
    /// state.write_slice::<u64>(p, |v| v[2] = 7)?;
    /// let (values, epoch) = state.read_slice::<u64>(p)?;
    /// assert_eq!(values, [0, 0, 7, 0]);
    /// assert_eq!(epoch.get(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_slice<T: Pod>(&self, page: PageId) -> Result<(Vec<T>, Epoch)> {
        self.read_shape::<T>(page, Shape::Slice)
    }

    /// Change a page of `size_of::<T>()` bytes through `f` and commit the
    /// change as the smallest delta between the bytes before and after.
    /// Returns the page's epoch afterwards (unchanged when `f` changed no
    /// byte: nothing is committed then).
    ///
    /// `f` may run more than once (see the [module docs](crate::typed)).
    ///
    /// # Errors
    /// As [`Mmsb::read`] and [`Mmsb::update_page`] (a recompute error of
    /// the propagation the write causes, for example);
    /// [`Error::StaleEpoch`] after [`WRITE_ATTEMPTS`] lost races.
    ///
    /// # Complexity
    /// One copy of the page, one comparison of its bytes, one commit.
    pub fn write<T: Pod>(&self, page: PageId, mut f: impl FnMut(&mut T)) -> Result<Epoch> {
        self.write_shape::<T>(page, Shape::One, &mut |v| f(&mut v[0]))
    }

    /// Change the `T` at byte `offset` of a page through `f`, as
    /// [`Mmsb::write`]. Only the value's bytes are compared.
    ///
    /// # Errors
    /// As [`Mmsb::write`] and [`Mmsb::read_at`].
    pub fn write_at<T: Pod>(&self, page: PageId, offset: u64, mut f: impl FnMut(&mut T)) -> Result<Epoch> {
        self.write_shape::<T>(page, Shape::At(offset), &mut |v| f(&mut v[0]))
    }

    /// Change a whole page viewed as `[T]` through `f`, as [`Mmsb::write`].
    ///
    /// # Errors
    /// As [`Mmsb::write`] and [`Mmsb::read_slice`].
    pub fn write_slice<T: Pod>(&self, page: PageId, mut f: impl FnMut(&mut [T])) -> Result<Epoch> {
        self.write_shape::<T>(page, Shape::Slice, &mut f)
    }

    fn read_shape<T: Pod>(&self, page: PageId, shape: Shape) -> Result<(Vec<T>, Epoch)> {
        self.read_locked(page, |p| {
            let (a, b) = range::<T>(page, p.len(), shape)?;
            let values = match p.bytes() {
                Ok(bytes) => to_values(&bytes[a..b]),
                Err(_) => to_values(&p.copy_bytes()?[a..b]),
            };
            Ok((values, p.epoch()))
        })
    }

    fn write_shape<T: Pod>(&self, page: PageId, shape: Shape, f: &mut dyn FnMut(&mut [T])) -> Result<Epoch> {
        let _span = tracing::debug_span!("mmsb.write_typed", page = page.0, ty = std::any::type_name::<T>())
            .entered();
        // A write, even one that turns out to change nothing.
        self.live()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The whole page (the payload may end up dense or full), its
            // epoch, and the view's range, read under one lock.
            let (mut bytes, epoch, (a, b)) = self.read_locked(page, |p| {
                let r = range::<T>(page, p.len(), shape)?;
                let bytes = match p.bytes() {
                    Ok(bytes) => bytes.to_vec(),
                    Err(_) => p.copy_bytes()?,
                };
                Ok((bytes, p.epoch(), r))
            })?;
            let mut values = to_values::<T>(&bytes[a..b]);
            f(&mut values);
            let after: &[u8] = bytemuck::cast_slice(&values);
            // Only the view's bytes can differ: compare just those.
            let mut runs = differing_runs(&bytes[a..b], after);
            if runs.is_empty() {
                return Ok(epoch);
            }
            for r in &mut runs {
                r.offset += a as u64;
            }
            bytes[a..b].copy_from_slice(after);
            let payload: Payload = diff_from_runs(runs, &bytes);
            match self.update_page_at(page, payload, epoch) {
                Err(Error::StaleEpoch { .. }) if attempt < WRITE_ATTEMPTS => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, SourceKind};
    use crate::storage::log::reader::{self, Record};
    use crate::{Config, PageSpec, PayloadKind, PropagationMode, Run};
    use bytemuck::{Pod, Zeroable};

    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    #[repr(C)]
    struct Body {
        id: u64,
        pos: [f32; 3],
        vel: [f32; 3],
        mass: f64,
        /// Makes the record large enough (296 bytes) that a sparse delta of
        /// a few bytes is smaller than a dense one (mask: 37 bytes).
        trail: [f64; 32],
    }

    const BODY: u64 = size_of::<Body>() as u64;

    /// Every delta the log holds, in order.
    fn logged(state: &Mmsb) -> Vec<crate::Delta> {
        state.sync().unwrap();
        let dir = crate::storage::files::log_dir(state.dir());
        let mut out = Vec::new();
        reader::scan(
            &crate::storage::vfs::StdVfs,
            &dir,
            0,
            crate::storage::recovery::RecoveryMode::Strict,
            state.limits(),
            &mut |c| {
                for (_, r) in c {
                    if let Record::Delta(v) = r {
                        out.push(v.to_delta()?);
                    }
                }
                Ok(true)
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn one_field_changes_into_a_sparse_delta_of_its_bytes() -> Result<()> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(BODY))?;
        let sub = state.subscribe();
        let init = Body { id: 7, pos: [1.0, 2.0, 3.0], vel: [0.5; 3], mass: 10.0, trail: [0.25; 32] };
        assert_eq!(state.write::<Body>(p, |b| *b = init)?.get(), 1);
        assert_eq!(state.read::<Body>(p)?, init);

        // pos[1] is 4 bytes at offset 12; 2.0 -> 6.0 changes only the high bytes.
        let e = state.write::<Body>(p, |b| b.pos[1] = 6.0)?;
        assert_eq!(e.get(), 2);
        assert_eq!(state.read::<Body>(p)?.pos, [1.0, 6.0, 3.0]);
        let deltas = logged(&state);
        let last = deltas.last().unwrap();
        let Payload::Sparse(s) = &last.payload else {
            panic!("expected sparse, got {:?}", last.payload.kind())
        };
        let (a, b) = (2.0f32.to_le_bytes(), 6.0f32.to_le_bytes());
        let first = (0..4).find(|&i| a[i] != b[i]).unwrap() as u64;
        let end = (0..4).rfind(|&i| a[i] != b[i]).unwrap() as u64 + 1;
        assert_eq!(s.runs().collect::<Vec<_>>(), [Run { offset: 12 + first, len: end - first }]);
        assert_eq!(last.source, crate::Source::User);

        let bytes: Vec<u64> = sub
            .drain()
            .into_iter()
            .filter_map(|e| match e {
                Event::DeltaApplied { page, source: SourceKind::User, bytes, .. } if page == p => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(bytes.last(), Some(&(end - first)));
        Ok(())
    }

    #[test]
    fn a_small_page_gets_the_smallest_payload_and_it_touches_only_the_changed_bytes() -> Result<()> {
        #[derive(Clone, Copy, Pod, Zeroable)]
        #[repr(C)]
        struct Small {
            a: u32,
            b: u32,
            c: u64,
        }
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(16))?;
        state.write::<Small>(p, |s| s.c = 0x0101)?;
        let d = logged(&state).pop().unwrap();
        // 16-byte page: a dense mask is 2 bytes, a sparse run header 16.
        assert_eq!(d.payload, Payload::diff(&[0; 16], &state.query_page(p)?)?);
        assert_eq!((d.payload.kind(), d.payload.touched()), (PayloadKind::Dense, 2));
        assert_eq!(state.read::<Small>(p)?.c, 0x0101);
        Ok(())
    }

    #[test]
    fn a_write_that_changes_nothing_commits_nothing() -> Result<()> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(BODY))?;
        let before = state.log_stats().records;
        assert_eq!(state.write::<Body>(p, |b| b.mass = 0.0)?.get(), 0);
        assert_eq!(state.log_stats().records, before);
        Ok(())
    }

    #[test]
    fn values_at_unaligned_offsets_read_and_write() -> Result<()> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(1000))?;
        state.write_at::<u64>(p, 3, |v| *v = 0x0102_0304_0506_0708)?;
        assert_eq!(state.read_at::<u64>(p, 3)?, 0x0102_0304_0506_0708);
        assert_eq!(&state.query_page(p)?[3..11], &0x0102_0304_0506_0708u64.to_le_bytes());
        let d = logged(&state).pop().unwrap();
        assert_eq!(d.payload.kind(), PayloadKind::Sparse);
        assert_eq!(d.payload.touched(), 8);
        Ok(())
    }

    #[test]
    fn slices_and_whole_page_rewrites_pick_the_smallest_payload() -> Result<()> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(4096))?;
        state.write_slice::<u32>(p, |v| v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32 + 1))?;
        let (v, e) = state.read_slice::<u32>(p)?;
        assert_eq!((v.len(), v[1023], e.get()), (1024, 1024, 1));
        let d = logged(&state).pop().unwrap();
        let expect = Payload::diff(&[0; 4096], bytemuck::cast_slice(&v))?;
        assert_eq!(d.payload, expect);
        Ok(())
    }

    #[test]
    fn layout_mismatches_are_typed_errors() -> Result<()> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(10))?;
        let is_layout = |r: Result<_>| matches!(r, Err(Error::TypeLayout { .. }));
        assert!(is_layout(state.read::<u64>(p).map(drop)));
        assert!(is_layout(state.read_slice::<u64>(p).map(drop)));
        assert!(is_layout(state.read_at::<u64>(p, 3).map(drop)));
        assert!(is_layout(state.read_at::<u64>(p, u64::MAX).map(drop)));
        assert!(is_layout(state.read::<()>(p).map(drop)));
        assert!(is_layout(state.write::<u64>(p, |v| *v = 1).map(drop)));
        assert!(matches!(state.read::<u64>(PageId(99)), Err(Error::PageNotFound(_))));
        assert_eq!(state.page_info(p)?.epoch.get(), 0);
        Ok(())
    }

    #[test]
    fn typed_writes_propagate_to_derived_pages() -> Result<()> {
        let state = Mmsb::start(Config::temporary().with_propagation(PropagationMode::Immediate))?;
        crate::mmsb! { state;
            page input(16);
            derived total(8) = sum_u32@1(input) |ins, out| {
                let s: u64 = ins[0].chunks(4).map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).sum();
                out.copy_from_slice(&s.to_le_bytes());
            };
        }
        state.write_slice::<u32>(input, |v| v.copy_from_slice(&[1, 2, 3, 4]))?;
        assert_eq!(state.read::<u64>(total)?, 10);
        state.write_at::<u32>(input, 8, |v| *v += 100)?;
        assert_eq!(state.read::<u64>(total)?, 110);
        Ok(())
    }

    #[test]
    fn gpu_and_unified_pages_go_through_a_staging_copy() -> Result<()> {
        let Ok(info) = crate::gpu::probe() else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        let state = Mmsb::start(Config::temporary())?;
        for loc in [crate::Location::Gpu(0), crate::Location::Unified] {
            if loc == crate::Location::Unified && !info.managed_memory {
                continue;
            }
            let p = state.create_page(PageSpec::new(BODY).on(loc))?;
            state.write::<Body>(p, |b| b.mass = 3.0)?;
            assert_eq!(state.write::<Body>(p, |b| b.id = 9)?.get(), 2);
            let b = state.read::<Body>(p)?;
            assert_eq!((b.id, b.mass), (9, 3.0));
            let d = logged(&state).pop().unwrap();
            assert_eq!((d.page, d.payload.kind(), d.payload.touched()), (p, PayloadKind::Sparse, 1));
        }
        Ok(())
    }

    #[test]
    fn concurrent_typed_writes_lose_no_update() -> Result<()> {
        let state = std::sync::Arc::new(Mmsb::start(Config::temporary())?);
        let p = state.create_page(PageSpec::new(8))?;
        std::thread::scope(|s| {
            for _ in 0..4 {
                let st = state.clone();
                s.spawn(move || {
                    for _ in 0..50 {
                        st.write::<u64>(p, |v| *v += 1).unwrap();
                    }
                });
            }
        });
        assert_eq!(state.read::<u64>(p)?, 200);
        Ok(())
    }
}
