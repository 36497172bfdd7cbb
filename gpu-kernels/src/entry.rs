//! `extern "ptx-kernel"` entry points: thread index arithmetic and a call to
//! the matching body. Compiled only for `nvptx64`.
//!
//! Every kernel is launched with [`body::BLOCK`] threads per block and loops
//! with a grid stride, so any grid size is correct; the host sizes the grid
//! to cover the work once where it can.

use crate::body;
use core::arch::nvptx;
use shared_types::{ApplyDesc, MergeArgs, PageArgs};

#[inline(always)]
fn global_index() -> u64 {
    // SAFETY: reading special registers has no preconditions.
    unsafe { nvptx::_block_idx_x() as u64 * nvptx::_block_dim_x() as u64 + nvptx::_thread_idx_x() as u64 }
}

#[inline(always)]
fn grid_stride() -> u64 {
    // SAFETY: reading special registers has no preconditions.
    unsafe { nvptx::_grid_dim_x() as u64 * nvptx::_block_dim_x() as u64 }
}

/// Sum of `v` over the 32 lanes of the warp (every lane must call it).
#[inline(always)]
fn warp_sum(mut v: u32) -> u32 {
    let mut d = 16u32;
    while d > 0 {
        let o: u32;
        // SAFETY: a full-warp butterfly shuffle; every lane of the warp
        // executes it (the callers reach it unconditionally).
        unsafe {
            core::arch::asm!(
                "shfl.sync.bfly.b32 {o}, {v}, {d}, 31, -1;",
                o = out(reg32) o,
                v = in(reg32) v,
                d = in(reg32) d,
            );
        }
        v += o;
        d /= 2;
    }
    v
}

/// Zero `args.len` bytes at `args.dst`.
///
/// # Safety
/// `args.dst` must be a device address valid for `args.len` bytes.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_page_zero(args: PageArgs) {
    let n = body::windows(args.dst, args.len);
    let mut i = global_index();
    let step = grid_stride();
    while i < n {
        // SAFETY: the host passes a valid device range; each window is owned by one thread.
        unsafe { body::zero_window(args.dst, args.len, i) };
        i += step;
    }
}

/// Copy `args.len` bytes from `args.src` to `args.dst`.
///
/// # Safety
/// Both ranges valid device memory of `args.len` bytes, not overlapping.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_page_copy(args: PageArgs) {
    let n = body::windows(args.dst, args.len);
    let mut i = global_index();
    let step = grid_stride();
    while i < n {
        // SAFETY: as documented; each window is owned by one thread.
        unsafe { body::copy_window(args.dst, args.src, args.len, i) };
        i += step;
    }
}

/// Dense masked apply: `dst[k] = src[k]` where bit `k` of the mask words at
/// `args.mask` is set, for `k < args.len`.
///
/// # Safety
/// `dst`, `src` valid for `len` bytes, `mask` for `ceil(len / 32)` words.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_apply_dense(args: PageArgs) {
    let n = body::windows(args.dst, args.len);
    let mut i = global_index();
    let step = grid_stride();
    while i < n {
        // SAFETY: as documented; each window is owned by one thread.
        unsafe { body::blend_window(args.dst, args.src, args.mask, args.len, i) };
        i += step;
    }
}

/// Compare `args.dst` with `args.src` over `args.len` bytes: write the
/// difference bitmask to the words at `args.mask` and add the number of
/// differing bytes to the `u64` at `args.out` (which the host zeroes first).
///
/// # Safety
/// Inputs valid for `len` bytes, `mask` writable for `ceil(len / 32)` words,
/// `out` a valid 8-aligned `u64`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_page_compare(args: PageArgs) {
    let n = body::lanes(args.len);
    let mut i = global_index();
    let step = grid_stride();
    let mut count = 0u32;
    while i < n {
        // SAFETY: as documented; each window is owned by one thread.
        count += unsafe { body::compare_window(args.dst, args.src, args.mask, args.len, i) };
        i += step;
    }
    let total = warp_sum(count);
    // SAFETY: reading the special register has no preconditions.
    if unsafe { nvptx::_thread_idx_x() } % body::WARP == 0 {
        // SAFETY: out is a valid u64 only updated atomically by this kernel.
        unsafe { body::add_count(args.out, u64::from(total)) };
    }
}

/// Sparse apply of one delta: runs `0 .. d.run_count` at `d.runs` copy
/// bytes from `d.data` into the page at `d.page`, one warp per run.
///
/// # Safety
/// Every run inside the page and the data buffer; runs do not overlap.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_apply_sparse(d: ApplyDesc) {
    let g = global_index();
    let warp = g / body::WARP as u64;
    let lane = g % body::WARP as u64;
    let nwarps = grid_stride() / body::WARP as u64;
    // SAFETY: as documented.
    unsafe { body::apply_runs(d.page, d.data, d.runs, d.run_count, warp, nwarps, lane) };
}

/// Merge two dense deltas (see [`MergeArgs`]).
///
/// # Safety
/// Every buffer valid for its length; outputs do not overlap inputs.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_delta_merge(args: MergeArgs) {
    let n = body::lanes(args.len);
    let mut i = global_index();
    let step = grid_stride();
    while i < n {
        // SAFETY: as documented; each window is owned by one thread.
        unsafe { body::merge_window(&args, i) };
        i += step;
    }
}

/// Apply `count` descriptors at `descs`: block `b` applies descriptors `b`,
/// `b + gridDim`, ... with all of its threads.
///
/// # Safety
/// Every descriptor valid (see [`ApplyDesc`]); no two descriptors write the
/// same byte.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_apply_batch(descs: u64, count: u64) {
    // SAFETY: reading special registers has no preconditions.
    let (block, grid, tid, nthreads) = unsafe {
        (
            nvptx::_block_idx_x() as u64,
            nvptx::_grid_dim_x() as u64,
            nvptx::_thread_idx_x() as u64,
            nvptx::_block_dim_x() as u64,
        )
    };
    let mut k = block;
    while k < count {
        // SAFETY: k < count descriptors are readable.
        let d = unsafe { (descs as *const ApplyDesc).add(k as usize).read() };
        // SAFETY: as documented.
        unsafe { body::apply_desc(&d, tid, nthreads) };
        k += grid;
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: trap has no preconditions; it aborts the kernel.
    unsafe { nvptx::trap() }
}
