//! `extern "ptx-kernel"` entry points: thread index arithmetic and a call to
//! the matching body. Compiled only for `nvptx64`.

use crate::body;
use core::arch::nvptx;
use shared_types::PageArgs;

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

/// Zero `args.len` bytes at `args.dst`.
///
/// # Safety
/// `args.dst` must be a device address valid for `args.len` bytes.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_page_zero(args: PageArgs) {
    let n = body::lanes(args.len);
    let mut i = global_index();
    let step = grid_stride();
    while i < n {
        // SAFETY: the host passes a valid device range; each lane is owned by one thread.
        unsafe { body::page_zero(i, args.dst as *mut u8, args.len) };
        i += step;
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: trap has no preconditions; it aborts the kernel.
    unsafe { nvptx::trap() }
}
