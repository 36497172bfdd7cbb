//! MMSB GPU kernels, written in `no_std` Rust and compiled to PTX.
//!
//! Each kernel is a thin `extern "ptx-kernel"` entry point (compiled only for
//! `nvptx64`) around a plain `#[inline(always)]` body that takes a thread
//! index. The bodies compile for the host too, so CI tests the exact kernel
//! logic on the CPU; the device tests run the real PTX.
#![no_std]
#![cfg_attr(target_arch = "nvptx64", feature(abi_ptx, stdarch_nvptx))]

pub mod body;

#[cfg(target_arch = "nvptx64")]
mod entry;

/// Names of the `.entry` points the host loads from the PTX module.
pub mod names {
    /// Zero a page.
    pub const PAGE_ZERO: &str = "mmsb_page_zero";
    /// Every kernel name the host loads.
    pub const ALL: &[&str] = &[PAGE_ZERO];
}
