//! Kernel bodies: plain functions of a thread index, shared by the PTX entry
//! points and the CPU tests.

/// Bytes handled by one thread in the vectorised kernels.
pub const LANE: usize = 16;

/// Number of work items (threads) needed to cover `len` bytes.
#[inline(always)]
pub const fn lanes(len: u64) -> u64 {
    len.div_ceil(LANE as u64)
}

/// Zero the 16-byte lane `i` of the `len`-byte buffer at `dst`.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes and no other thread may
/// access lane `i` concurrently.
#[inline(always)]
pub unsafe fn page_zero(i: u64, dst: *mut u8, len: u64) {
    let start = i * LANE as u64;
    if start >= len {
        return;
    }
    let end = if len - start < LANE as u64 { len } else { start + LANE as u64 };
    // SAFETY: start < len, the caller guarantees `dst..dst+len` is writable.
    let p = unsafe { dst.add(start as usize) };
    if end - start == LANE as u64 && (p as usize) % LANE == 0 {
        // SAFETY: 16 writable, 16-aligned bytes.
        unsafe { (p as *mut u128).write_volatile(0) };
    } else {
        let mut k = 0;
        while k < (end - start) as usize {
            // SAFETY: start + k < end <= len.
            unsafe { p.add(k).write(0) };
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn page_zero_covers_odd_lengths_and_offsets() {
        for len in [1usize, 15, 16, 17, 31, 33, 1000] {
            for off in 0..3 {
                let mut buf = vec![0xAAu8; len + off + 1];
                let dst = buf[off..].as_mut_ptr();
                for i in 0..lanes(len as u64) {
                    // SAFETY: dst is valid for len bytes; lanes are visited one at a time.
                    unsafe { page_zero(i, dst, len as u64) };
                }
                assert!(buf[off..off + len].iter().all(|&b| b == 0));
                assert_eq!(buf[off + len], 0xAA, "wrote past the end");
                assert!(buf[..off].iter().all(|&b| b == 0xAA), "wrote before the start");
            }
        }
    }
}
