//! `extern "ptx-kernel"` entry points: thread index arithmetic and a call to
//! the matching body. Compiled only for `nvptx64`.
//!
//! Every kernel is launched with [`body::BLOCK`] threads per block and loops
//! with a grid stride, so any grid size is correct; the host sizes the grid
//! to cover the work once where it can.

use crate::body;
use core::arch::nvptx;
use shared_types::{ApplyDesc, InlineApply, MergeArgs, PageArgs, RunDesc};

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

/// Lane `src` of the warp's `v` (every lane must call it).
#[inline(always)]
fn shfl_idx(v: u32, src: u32) -> u32 {
    let o: u32;
    // SAFETY: a full-warp indexed shuffle; the sparse bodies call it in
    // warp-uniform control flow (see `body::RunGroup`).
    unsafe {
        core::arch::asm!(
            "shfl.sync.idx.b32 {o}, {v}, {s}, 31, -1;",
            o = out(reg32) o,
            v = in(reg32) v,
            s = in(reg32) src,
        );
    }
    o
}

/// `v` of the lane `d` below (own `v` for lanes below `d`); every lane must call it.
#[inline(always)]
fn shfl_up(v: u32, d: u32) -> u32 {
    let o: u32;
    // SAFETY: a full-warp up shuffle, reached by every lane.
    unsafe {
        core::arch::asm!(
            "shfl.sync.up.b32 {o}, {v}, {d}, 0, -1;",
            o = out(reg32) o,
            v = in(reg32) v,
            d = in(reg32) d,
        );
    }
    o
}

#[inline(always)]
fn shfl_idx64(v: u64, src: u32) -> u64 {
    u64::from(shfl_idx(v as u32, src)) | (u64::from(shfl_idx((v >> 32) as u32, src)) << 32)
}

#[inline(always)]
fn shfl_up64(v: u64, d: u32) -> u64 {
    u64::from(shfl_up(v as u32, d)) | (u64::from(shfl_up((v >> 32) as u32, d)) << 32)
}

/// A group of runs held in the registers of a warp: lane `j` holds run `j`
/// and the prefix sum of window counts up to it.
struct WarpGroup {
    run: RunDesc,
    start: u64,
    total: u64,
    /// The group has fewer than 2^28 windows, so every start and every
    /// run length fits 32 bits (a run of `w` windows holds at most `16 w`
    /// bytes): those values travel in one shuffle instead of two. The same
    /// for every lane, so both paths stay warp-uniform.
    narrow: bool,
}

impl body::RunGroup for WarpGroup {
    #[inline(always)]
    fn run(&self, j: u32) -> RunDesc {
        let len = if self.narrow {
            u64::from(shfl_idx(self.run.len as u32, j))
        } else {
            shfl_idx64(self.run.len, j)
        };
        RunDesc {
            offset: shfl_idx64(self.run.offset, j),
            len,
            data_offset: shfl_idx64(self.run.data_offset, j),
        }
    }
    #[inline(always)]
    fn start(&self, j: u32) -> u64 {
        if self.narrow {
            u64::from(shfl_idx(self.start as u32, j))
        } else {
            shfl_idx64(self.start, j)
        }
    }
    #[inline(always)]
    fn total(&self) -> u64 {
        self.total
    }
}

/// The device's [`body::Lanes`]: one coalesced load of the group's run
/// descriptors and a warp scan of their window counts.
struct Warp;

impl body::Lanes for Warp {
    type Group = WarpGroup;
    #[inline(always)]
    unsafe fn group(&self, page: u64, runs: u64, r0: u64, count: u64, lane: u32) -> WarpGroup {
        let run = if u64::from(lane) < count {
            // SAFETY: r0 + lane < r0 + count, readable per the caller.
            unsafe { body::run_at(runs, r0 + u64::from(lane)) }
        } else {
            RunDesc::default()
        };
        let n = body::run_windows(page, &run);
        let mut incl = n;
        let mut d = 1u32;
        while d < body::WARP {
            let below = shfl_up64(incl, d);
            if lane >= d {
                incl += below;
            }
            d *= 2;
        }
        let total = shfl_idx64(incl, body::WARP - 1);
        WarpGroup { run, start: incl - n, total, narrow: total < 1 << 28 }
    }
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
/// bytes from `d.data` into the page at `d.page`, one warp per group of
/// [`body::GROUP`] runs (see `body::sweep_group`).
///
/// # Safety
/// Every run inside the page, its source bytes readable in whole 16-aligned
/// blocks (see `body::load_run_window`); runs do not overlap.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_apply_sparse(d: ApplyDesc) {
    let g = global_index();
    let warp = g / body::WARP as u64;
    let lane = g % body::WARP as u64;
    let nwarps = grid_stride() / body::WARP as u64;
    // SAFETY: as documented.
    unsafe {
        body::apply_runs::<_, { body::WIDE }>(&Warp, d.page, d.data, d.runs, d.run_count, warp, nwarps, lane)
    };
}

/// Apply the small delta carried in `a` itself (see [`InlineApply`]): one
/// thread per data byte, no staging buffer to copy first.
///
/// # Safety
/// As `body::inline_dst` says: every run in use names writable device bytes
/// that no other thread writes.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_apply_inline(a: InlineApply) {
    let n = body::inline_len(&a);
    let mut k = global_index();
    let step = grid_stride();
    while k < n {
        let dst = body::inline_dst(&a, k);
        let v: u32;
        // Byte k of the data, read straight from the parameter space: an
        // index Rust computed would make the compiler copy all 2,448
        // bytes of the parameters to each thread's local memory first.
        // SAFETY: the kernel's first parameter is an InlineApply, whose
        // data starts at DATA_AT; k < n <= INLINE_BYTES keeps the read
        // inside it.
        unsafe {
            core::arch::asm!(
                "{{",
                ".reg .b64 %inline_at;",
                "mov.b64 %inline_at, mmsb_apply_inline_param_0;",
                "add.s64 %inline_at, %inline_at, {k};",
                "ld.param.u8 {v}, [%inline_at+{at}];",
                "}}",
                k = in(reg64) k,
                at = const DATA_AT,
                v = out(reg32) v,
            );
        }
        // SAFETY: as documented; dst is byte k's place in its run, and
        // each byte is owned by one thread.
        unsafe { (dst as *mut u8).write(v as u8) };
        k += step;
    }
}

/// Offset of [`InlineApply::data`] in the parameter.
const DATA_AT: usize = core::mem::offset_of!(InlineApply, data);

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
        unsafe { body::apply_desc(&d, tid, nthreads, &Warp) };
        k += grid;
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: trap has no preconditions; it aborts the kernel.
    unsafe { nvptx::trap() }
}
