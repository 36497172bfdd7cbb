//! Layouts shared by the MMSB host library and its GPU kernels.
//!
//! Every type here is `#[repr(C)]` (or `#[repr(transparent)]`) and
//! [`bytemuck::Pod`], so the host can hand it to a kernel by value or in a
//! device array and both sides agree on every byte. Sizes and field offsets are
//! pinned by compile-time asserts at the bottom of this file.
#![no_std]
#![deny(missing_docs)]

use bytemuck::{Pod, Zeroable};

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            #[inline]
            fn from(v: u64) -> Self {
                Self(v)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// Identifier of a page, unique within one state and reproduced by replay.
    PageId
);
id_newtype!(
    /// Identifier of a delta, assigned in acceptance order.
    DeltaId
);
id_newtype!(
    /// Version counter of a page: +1 for every applied delta.
    Epoch
);
id_newtype!(
    /// Log sequence number: position of a record in the transaction log.
    Lsn
);

impl Epoch {
    /// The epoch after one more applied delta, or `None` on overflow.
    #[inline]
    pub const fn checked_next(self) -> Option<Epoch> {
        match self.0.checked_add(1) {
            Some(v) => Some(Epoch(v)),
            None => None,
        }
    }
}

/// One byte run of a sparse delta: `len` bytes at `offset` in the page,
/// taken from `data_offset` in the delta's data buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RunDesc {
    /// First page byte the run replaces.
    pub offset: u64,
    /// Number of bytes in the run (never zero in a valid delta).
    pub len: u64,
    /// Where the run's bytes start in the delta's data buffer.
    pub data_offset: u64,
}

/// Payload kind codes carried in [`ApplyDesc::kind`].
pub mod kind {
    /// Dense delta: bit-packed mask (one bit per page byte) plus page-length data.
    pub const DENSE: u32 = 1;
    /// Sparse delta: runs of bytes.
    pub const SPARSE: u32 = 2;
    /// Full delta: the whole page.
    pub const FULL: u32 = 3;
}

/// Describes one delta application for a batched kernel launch.
///
/// Pointers are device addresses (`u64`, as the driver API hands them out).
/// For [`kind::DENSE`], `mask` points at `ceil(len / 32)` little-endian `u32`
/// words (bit `i % 32` of word `i / 32` selects page byte `i`) and `data` at
/// `len` bytes. For [`kind::SPARSE`], `runs` points at `run_count`
/// [`RunDesc`]s and `data` at their concatenated bytes. For [`kind::FULL`],
/// `data` points at `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ApplyDesc {
    /// Device address of the destination page's first byte.
    pub page: u64,
    /// Page length in bytes.
    pub len: u64,
    /// Device address of the delta's data bytes.
    pub data: u64,
    /// Device address of the dense mask words (dense deltas only).
    pub mask: u64,
    /// Device address of the run descriptors (sparse deltas only).
    pub runs: u64,
    /// Number of runs (sparse deltas only).
    pub run_count: u64,
    /// One of the [`kind`] codes.
    pub kind: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// First work item of this descriptor in the launch's flattened work
    /// space (prefix sum of the per-descriptor work counts).
    pub work_start: u64,
}

/// Parameters of the single-page kernels (zero, copy, dense apply, compare).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PageArgs {
    /// Destination (or first operand) device address.
    pub dst: u64,
    /// Source (or second operand) device address; unused by zero.
    pub src: u64,
    /// Mask words device address, where the kernel takes one.
    pub mask: u64,
    /// Output counter device address, where the kernel takes one.
    pub out: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Parameters of the dense merge kernel: `out = merge(first, second)` over a
/// page of `len` bytes. Masks are `ceil(len / 32)` little-endian `u32` words
/// (bit `i % 32` of word `i / 32` selects byte `i`); data buffers are `len`
/// bytes. The output is canonical: `out_data` is zero where `out_mask` is clear.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MergeArgs {
    /// Device address of the output mask words.
    pub out_mask: u64,
    /// Device address of the output data bytes.
    pub out_data: u64,
    /// Mask words of the earlier delta.
    pub mask1: u64,
    /// Data bytes of the earlier delta.
    pub data1: u64,
    /// Mask words of the later delta.
    pub mask2: u64,
    /// Data bytes of the later delta.
    pub data2: u64,
    /// Page length in bytes.
    pub len: u64,
}

/// One argument of a device recompute function: a parent page's bytes in
/// the memory of the device the function runs on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DeviceInput {
    /// Device address of the first byte.
    pub ptr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The one parameter of a device recompute function's kernel, passed by
/// value: the parents (an array of [`DeviceInput`] in declaration order)
/// and the output, which starts zeroed and has the derived page's length.
/// The kernel is launched with a one-dimensional grid of any size and must
/// cover the whole output itself (a grid-stride loop).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RecomputeArgs {
    /// Device address of `n_inputs` [`DeviceInput`]s.
    pub inputs: u64,
    /// Number of parents.
    pub n_inputs: u64,
    /// Device address of the output bytes.
    pub out: u64,
    /// Output length in bytes.
    pub out_len: u64,
}

/// Runs an [`InlineApply`] holds at most.
pub const INLINE_RUNS: usize = 16;
/// Bytes of run data an [`InlineApply`] holds at most.
pub const INLINE_BYTES: usize = 2048;

/// A small apply carried whole in the parameters of one launch, so that
/// it needs no staging copy before the kernel: run `r < count` writes its
/// `len` bytes, taken from `data` at `data_offset`, at the device address
/// `offset` (absolute, so one launch may write several pages). The runs'
/// bytes lie back to back in `data` in run order (`data_offset` of run 0
/// is 0, and each next run starts where the previous one ends), `bytes`
/// of them in all. 2,448 bytes, within the 4 KiB a kernel's parameters
/// may take on every supported device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct InlineApply {
    /// Runs in use (at most [`INLINE_RUNS`]).
    pub count: u64,
    /// Bytes of `data` in use (at most [`INLINE_BYTES`]).
    pub bytes: u64,
    /// The runs; `offset` is a device address.
    pub runs: [RunDesc; INLINE_RUNS],
    /// The runs' bytes.
    pub data: [u8; INLINE_BYTES],
}

// Layout pins: a change here is a change of the kernel ABI.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<PageId>() == 8 && align_of::<PageId>() == 8);
    assert!(size_of::<Epoch>() == 8);
    assert!(size_of::<DeltaId>() == 8);
    assert!(size_of::<Lsn>() == 8);
    assert!(size_of::<RunDesc>() == 24);
    assert!(offset_of!(RunDesc, len) == 8);
    assert!(offset_of!(RunDesc, data_offset) == 16);
    assert!(size_of::<ApplyDesc>() == 64);
    assert!(offset_of!(ApplyDesc, len) == 8);
    assert!(offset_of!(ApplyDesc, data) == 16);
    assert!(offset_of!(ApplyDesc, mask) == 24);
    assert!(offset_of!(ApplyDesc, runs) == 32);
    assert!(offset_of!(ApplyDesc, run_count) == 40);
    assert!(offset_of!(ApplyDesc, kind) == 48);
    assert!(offset_of!(ApplyDesc, work_start) == 56);
    assert!(size_of::<PageArgs>() == 40);
    assert!(offset_of!(PageArgs, len) == 32);
    assert!(size_of::<MergeArgs>() == 56);
    assert!(offset_of!(MergeArgs, out_data) == 8);
    assert!(offset_of!(MergeArgs, mask1) == 16);
    assert!(offset_of!(MergeArgs, data1) == 24);
    assert!(offset_of!(MergeArgs, mask2) == 32);
    assert!(offset_of!(MergeArgs, data2) == 40);
    assert!(offset_of!(MergeArgs, len) == 48);
    assert!(size_of::<DeviceInput>() == 16);
    assert!(offset_of!(DeviceInput, len) == 8);
    assert!(size_of::<RecomputeArgs>() == 32);
    assert!(offset_of!(RecomputeArgs, n_inputs) == 8);
    assert!(offset_of!(RecomputeArgs, out) == 16);
    assert!(offset_of!(RecomputeArgs, out_len) == 24);
    assert!(size_of::<InlineApply>() == 2448 && align_of::<InlineApply>() == 8);
    assert!(offset_of!(InlineApply, runs) == 16);
    assert!(offset_of!(InlineApply, data) == 16 + 24 * INLINE_RUNS);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_through_bytes() {
        let d = ApplyDesc {
            page: 1,
            len: 2,
            data: 3,
            mask: 4,
            runs: 5,
            run_count: 6,
            kind: kind::SPARSE,
            _pad: 0,
            work_start: 7,
        };
        let bytes = bytemuck::bytes_of(&d);
        assert_eq!(bytes.len(), 64);
        assert_eq!(&bytes[48..52], &kind::SPARSE.to_le_bytes());
        let back: ApplyDesc = bytemuck::pod_read_unaligned(bytes);
        assert_eq!(back, d);
    }

    #[test]
    fn epoch_overflow_is_detected() {
        assert_eq!(Epoch(1).checked_next(), Some(Epoch(2)));
        assert_eq!(Epoch(u64::MAX).checked_next(), None);
    }
}
