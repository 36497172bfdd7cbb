//! MMSB GPU kernels, written in `no_std` Rust and compiled to PTX.
//!
//! Each kernel is a thin `extern "ptx-kernel"` entry point (compiled only for
//! `nvptx64`) around a plain `#[inline(always)]` body that takes a thread
//! index. The bodies compile for the host too, so CI tests the exact kernel
//! logic on the CPU (`body::selftest`, run by `cargo test` here and, through
//! the `selftest` feature, by the host crate's `kernel_bodies` test); the
//! device tests run the real PTX.
#![no_std]
#![cfg_attr(target_arch = "nvptx64", feature(abi_ptx, stdarch_nvptx, asm_experimental_arch))]

pub mod body;

#[cfg(target_arch = "nvptx64")]
mod entry;

/// Names of the `.entry` points the host loads from the PTX module.
pub mod names {
    /// Zero a page.
    pub const PAGE_ZERO: &str = "mmsb_page_zero";
    /// Copy a page.
    pub const PAGE_COPY: &str = "mmsb_page_copy";
    /// Compare two pages into a bitmask and a count.
    pub const PAGE_COMPARE: &str = "mmsb_page_compare";
    /// Dense masked apply to one page.
    pub const APPLY_DENSE: &str = "mmsb_apply_dense";
    /// Sparse (run) apply to one page.
    pub const APPLY_SPARSE: &str = "mmsb_apply_sparse";
    /// Merge two dense deltas.
    pub const DELTA_MERGE: &str = "mmsb_delta_merge";
    /// Apply many deltas to many pages in one launch.
    pub const APPLY_BATCH: &str = "mmsb_apply_batch";
    /// Apply a small delta carried in the launch's parameters.
    pub const APPLY_INLINE: &str = "mmsb_apply_inline";
    /// Every kernel name the host loads.
    pub const ALL: &[&str] = &[
        PAGE_ZERO,
        PAGE_COPY,
        PAGE_COMPARE,
        APPLY_DENSE,
        APPLY_SPARSE,
        DELTA_MERGE,
        APPLY_BATCH,
        APPLY_INLINE,
    ];
}
