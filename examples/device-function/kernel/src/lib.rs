//! A device recompute function for MMSB: the element-wise wrapping sum of
//! the parents, read as little-endian `u32` arrays (a parent shorter than
//! the output counts as 0 past its end; a trailing partial element of the
//! output is left zero).
//!
//! The entry point takes one [`RecomputeArgs`](shared_types::RecomputeArgs) by value, as every device
//! recompute function does: an array of [`DeviceInput`] (the parents'
//! device addresses and lengths, in declaration order) and the output,
//! which starts zeroed. The grid is one-dimensional and of any size, so the
//! kernel loops over the output with a grid stride. The arithmetic is in
//! [`sum_at`], a plain function that also compiles for the host, where
//! `cargo test` checks it.
#![no_std]
#![cfg_attr(target_arch = "nvptx64", feature(abi_ptx, stdarch_nvptx))]

use shared_types::DeviceInput;

/// The entry point's name, as the host registers it.
pub const ENTRY: &str = "mmsb_example_sum_u32";

/// Element `k` of the output: the wrapping sum of element `k` of every
/// parent that has it.
///
/// # Safety
/// `inputs` must point at `n` [`DeviceInput`]s, each naming memory readable
/// for its length.
#[inline(always)]
pub unsafe fn sum_at(inputs: *const DeviceInput, n: u64, k: u64) -> u32 {
    let mut acc = 0u32;
    for j in 0..n {
        // SAFETY: j < n, and the caller promises n readable entries.
        let input = unsafe { *inputs.add(j as usize) };
        if (k + 1) * 4 <= input.len {
            // SAFETY: bytes [4k, 4k + 4) are inside the input (checked
            // above); an unaligned read, as a parent's length need not be
            // a multiple of 4.
            let v = unsafe {
                core::ptr::read_unaligned((input.ptr as *const u8).add(k as usize * 4).cast::<u32>())
            };
            acc = acc.wrapping_add(u32::from_le(v));
        }
    }
    acc
}

/// The kernel: one output element per loop step of each thread.
///
/// # Safety
/// Launched by MMSB with a [`RecomputeArgs`](shared_types::RecomputeArgs) whose addresses are valid.
#[cfg(target_arch = "nvptx64")]
#[no_mangle]
pub unsafe extern "ptx-kernel" fn mmsb_example_sum_u32(args: shared_types::RecomputeArgs) {
    use core::arch::nvptx;
    // SAFETY: reading special registers has no preconditions.
    let (block, dim, thread, grid) = unsafe {
        (nvptx::_block_idx_x(), nvptx::_block_dim_x(), nvptx::_thread_idx_x(), nvptx::_grid_dim_x())
    };
    let mut k = u64::from(block) * u64::from(dim) + u64::from(thread);
    let step = u64::from(grid) * u64::from(dim);
    let elements = args.out_len / 4;
    let inputs = args.inputs as *const DeviceInput;
    while k < elements {
        // SAFETY: MMSB passes n_inputs valid entries, and element k is
        // inside the output (k < out_len / 4).
        unsafe {
            let v = sum_at(inputs, args.n_inputs, k);
            core::ptr::write_unaligned((args.out as *mut u8).add(k as usize * 4).cast::<u32>(), v.to_le());
        }
        k += step;
    }
}

#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: trap has no preconditions; it aborts the kernel.
    unsafe { core::arch::nvptx::trap() }
}

/// A host-side reference of the whole kernel, for tests.
#[cfg(test)]
fn reference(inputs: &[&[u8]], out: &mut [u8]) {
    for (k, o) in out.chunks_exact_mut(4).enumerate() {
        let mut acc = 0u32;
        for p in inputs {
            if let Some(b) = p.get(k * 4..k * 4 + 4) {
                acc = acc.wrapping_add(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        o.copy_from_slice(&acc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn sum_at_matches_the_reference() {
        let a: Vec<u8> = (0..40u8).collect();
        let b: Vec<u8> = (0..22u8).map(|x| x.wrapping_mul(37)).collect();
        let descs = [
            DeviceInput { ptr: a.as_ptr() as u64, len: 40 },
            DeviceInput { ptr: b.as_ptr() as u64, len: 22 },
        ];
        let mut want = [0u8; 40];
        reference(&[&a, &b], &mut want);
        for k in 0..10u64 {
            // SAFETY: two valid entries over live vectors.
            let got = unsafe { sum_at(descs.as_ptr(), 2, k) };
            assert_eq!(got.to_le_bytes(), want[k as usize * 4..k as usize * 4 + 4], "element {k}");
        }
    }
}
