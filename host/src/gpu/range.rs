//! Typed device ranges: a span of device memory that can only be made from
//! a live allocation, and the checks every device operation makes on them.
//!
//! A [`DeviceRange`] borrows the allocation it was taken from (a pooled
//! [`DeviceBlock`](super::pool::DeviceBlock) or a GPU page), so the memory
//! outlives the range; it carries the device's ordinal and its length, and
//! narrower ranges come from [`DeviceRange::slice`], which checks the
//! bounds. Operations check that each range is on their device and that
//! lengths agree, and report a [`RangeError`] (inside [`Error::Gpu`]) when
//! they do not.
//!
//! Every allocation a range can come from starts 256-byte aligned and is
//! readable in whole 16-byte blocks past its requested length (pool
//! classes are multiples of 256 bytes, larger blocks multiples of 2 MiB,
//! managed memory is page-granular), which the sparse kernels' whole-block
//! reads rely on.

use super::driver::DevicePtr;
use crate::Error;
use std::marker::PhantomData;

/// A byte range of device memory inside one live allocation on one device.
///
/// Made only from an allocation (a pooled device block or a GPU page) and
/// narrowed with [`DeviceRange::slice`]; it borrows the allocation for
/// `'a`. Copying a range copies the borrow, not the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceRange<'a> {
    ptr: DevicePtr,
    len: u64,
    device: u32,
    _alloc: PhantomData<&'a ()>,
}

impl std::fmt::Debug for DeviceRange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRange")
            .field("device", &self.device)
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> DeviceRange<'a> {
    /// The range of `len` bytes at `ptr` on device `device`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must lie inside one device or managed allocation
    /// of device `device` (see the module docs for the allocations meant)
    /// that stays allocated for `'a`.
    pub(crate) unsafe fn new(ptr: DevicePtr, len: u64, device: u32) -> Self {
        Self { ptr, len, device, _alloc: PhantomData }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range holds no byte.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ordinal of the device the memory lives on.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn device(&self) -> u32 {
        self.device
    }

    /// The `len` bytes starting `offset` bytes into this range.
    ///
    /// # Errors
    /// [`RangeError::OutOfBounds`] when they reach past its end.
    pub fn slice(&self, offset: u64, len: u64) -> Result<DeviceRange<'a>, RangeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(Self { ptr: self.ptr + offset, len, ..*self }),
            _ => Err(RangeError::OutOfBounds { offset, len, available: self.len }),
        }
    }

    /// Device address of the first byte.
    pub(crate) fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Whether the two ranges share a byte.
    pub(crate) fn overlaps(&self, other: &DeviceRange<'_>) -> bool {
        self.device == other.device
            && self.len > 0
            && other.len > 0
            && self.ptr < other.ptr + other.len
            && other.ptr < self.ptr + self.len
    }

    /// Whether the 16-byte blocks holding this range's bytes (what the
    /// sparse kernels read) share a byte with `other`.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn blocks_overlap(&self, other: &DeviceRange<'_>) -> bool {
        let lo = self.ptr & !15;
        let hi = (self.ptr + self.len).next_multiple_of(16);
        self.device == other.device
            && self.len > 0
            && other.len > 0
            && lo < other.ptr + other.len
            && other.ptr < hi
    }

    /// Check that the range is on device `device`.
    pub(crate) fn on(&self, op: &'static str, device: u32) -> Result<(), RangeError> {
        if self.device == device {
            Ok(())
        } else {
            Err(RangeError::WrongDevice { op, expected: device, found: self.device })
        }
    }

    /// Check that the range holds exactly `len` bytes.
    pub(crate) fn exactly(&self, op: &'static str, len: u64) -> Result<(), RangeError> {
        if self.len == len {
            Ok(())
        } else {
            Err(RangeError::LengthMismatch { op, expected: len, found: self.len })
        }
    }

    /// Check that the range holds at least `len` bytes.
    pub(crate) fn at_least(&self, op: &'static str, len: u64) -> Result<(), RangeError> {
        if self.len >= len {
            Ok(())
        } else {
            Err(RangeError::TooShort { op, needed: len, found: self.len })
        }
    }

    /// Check that the first byte's address is a multiple of `align`.
    pub(crate) fn aligned(&self, op: &'static str, align: u64) -> Result<(), RangeError> {
        if self.ptr.is_multiple_of(align) {
            Ok(())
        } else {
            Err(RangeError::Misaligned { op, align })
        }
    }

    /// Check that the range shares no byte with `other`.
    pub(crate) fn apart(&self, op: &'static str, other: &DeviceRange<'_>) -> Result<(), RangeError> {
        if self.overlaps(other) {
            Err(RangeError::Overlap { op })
        } else {
            Ok(())
        }
    }
}

/// Why a device range does not fit an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// [`DeviceRange::slice`] reached past the end of the range.
    #[error("{len} bytes at offset {offset} do not fit a device range of {available} bytes")]
    OutOfBounds {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Length of the range sliced.
        available: u64,
    },
    /// The range lives on another device than the one asked to use it.
    #[error("{op}: the range is on device {found}, the operation on device {expected}")]
    WrongDevice {
        /// The operation.
        op: &'static str,
        /// The operation's device.
        expected: u32,
        /// The range's device.
        found: u32,
    },
    /// Lengths that must agree do not.
    #[error("{op}: a range of {found} bytes where {expected} are needed")]
    LengthMismatch {
        /// The operation.
        op: &'static str,
        /// The length needed.
        expected: u64,
        /// The range's length.
        found: u64,
    },
    /// The range is shorter than the operation needs.
    #[error("{op}: a range of {found} bytes where at least {needed} are needed")]
    TooShort {
        /// The operation.
        op: &'static str,
        /// The least length needed.
        needed: u64,
        /// The range's length.
        found: u64,
    },
    /// The range does not start on the alignment the operation needs.
    #[error("{op}: the range does not start on a multiple of {align} bytes")]
    Misaligned {
        /// The operation.
        op: &'static str,
        /// The alignment needed.
        align: u64,
    },
    /// Two ranges that must be apart share bytes.
    #[error("{op}: ranges that must be apart overlap")]
    Overlap {
        /// The operation.
        op: &'static str,
    },
    /// A list of runs or updates does not fit the ranges it is for.
    #[error("{op}: entry {index}: {reason}")]
    BadEntry {
        /// The operation.
        op: &'static str,
        /// Index of the offending entry.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl From<RangeError> for Error {
    fn from(e: RangeError) -> Self {
        Error::Gpu { context: "checking a device range".into(), source: Box::new(e) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(ptr: u64, len: u64) -> DeviceRange<'static> {
        // SAFETY: these ranges are never handed to the device.
        unsafe { DeviceRange::new(ptr, len, 0) }
    }

    #[test]
    fn slices_are_checked() {
        let r = range(0x1000, 100);
        let s = r.slice(10, 90).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.ptr(), s.len(), s.device()), (0x100a, 90, 0));
        assert_eq!(r.slice(100, 0).map(|s| s.len()), Ok(0));
        assert_eq!(r.slice(10, 91), Err(RangeError::OutOfBounds { offset: 10, len: 91, available: 100 }));
        assert!(r.slice(u64::MAX, 2).is_err());
        assert!(s.slice(0, 91).is_err());
    }

    #[test]
    fn checks_report_typed_errors() {
        let a = range(0x1000, 64);
        let b = range(0x1040, 64);
        assert!(!a.overlaps(&b));
        assert!(a.apart("t", &b).is_ok());
        assert!(a.slice(0, 65).is_err());
        let c = range(0x103f, 2);
        assert_eq!(a.apart("t", &c), Err(RangeError::Overlap { op: "t" }));
        assert!(!range(0x1000, 0).overlaps(&a));
        // Sparse reads cover whole 16-byte blocks.
        let d = range(0x1041, 3);
        assert!(!d.overlaps(&range(0x1044, 4)));
        assert!(d.blocks_overlap(&range(0x1044, 4)));
        assert!(!d.blocks_overlap(&range(0x1050, 4)));
        assert_eq!(a.on("t", 1), Err(RangeError::WrongDevice { op: "t", expected: 1, found: 0 }));
        assert_eq!(a.exactly("t", 63), Err(RangeError::LengthMismatch { op: "t", expected: 63, found: 64 }));
        assert_eq!(a.at_least("t", 65), Err(RangeError::TooShort { op: "t", needed: 65, found: 64 }));
        assert!(a.at_least("t", 64).is_ok());
        assert_eq!(c.aligned("t", 4), Err(RangeError::Misaligned { op: "t", align: 4 }));
        let e: Error = RangeError::Overlap { op: "t" }.into();
        assert!(matches!(e, Error::Gpu { .. }));
    }
}
