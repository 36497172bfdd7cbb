//! Kernel bodies: plain functions of a work index, shared by the PTX entry
//! points and the CPU tests.
//!
//! # Windows
//!
//! Most bodies work on 16-byte *windows*. For a range `[dst, dst + len)` the
//! windows are the 16-byte-aligned blocks of the address space that touch it
//! ([`windows`] counts them; window 0 holds `dst`). A window that lies wholly
//! inside the range is *full* and is moved with one 16-byte load/store
//! ([`Lane`], which LLVM lowers to `ld/st.v4.u32`) when the source address is
//! 16-aligned too; the partial head and tail windows and any window whose
//! source is misaligned relative to the destination go byte by byte, writing
//! only bytes inside the range. Two windows never write the same byte, so
//! threads need no synchronisation, and bodies that work on different ranges
//! may share a 16-byte block.
//!
//! The compare and merge bodies write one 16-bit mask piece per window and
//! therefore use page-offset windows instead: window `i` is page bytes
//! `[16 i, 16 i + 16)`. They take the vector path when every pointer involved
//! is 16-aligned at the window, which holds for whole device pages.
//!
//! # Masks
//!
//! A mask is an array of little-endian `u32` words; bit `i % 32` of word
//! `i / 32` selects byte `i`. In memory this is identical to the host's
//! `u64` `Lsb0` bit vectors.
//!
//! # Safety of the bodies
//!
//! Every body is `unsafe`: the caller guarantees that the addresses it passes
//! are valid for the lengths it passes (reads for sources, writes for
//! destinations), that destination ranges do not overlap source ranges, and
//! that no other thread touches the bytes a window writes while it runs.

use shared_types::{kind, ApplyDesc, MergeArgs, RunDesc};

/// Bytes handled by one window.
pub const LANE: usize = 16;

/// Threads per block the host launches every kernel with.
pub const BLOCK: u32 = 256;

/// Threads per warp.
pub const WARP: u32 = 32;

/// Longest run the host hands to the sparse kernels: one warp moves a run
/// with at most `RUN_CHUNK / 512 + 1` window sweeps. Longer runs are split.
pub const RUN_CHUNK: u64 = 1024;

/// A 16-byte, 16-aligned vector of four `u32` words.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lane(pub [u32; 4]);

/// Number of 16-byte windows touching `[dst, dst + len)`.
#[inline(always)]
pub const fn windows(dst: u64, len: u64) -> u64 {
    if len == 0 {
        0
    } else {
        ((dst + len + 15) >> 4) - (dst >> 4)
    }
}

/// Number of page-offset windows of a `len`-byte page (`ceil(len / 16)`).
#[inline(always)]
pub const fn lanes(len: u64) -> u64 {
    len.div_ceil(LANE as u64)
}

/// Byte range `[lo, hi)`, relative to `dst`, of window `i` of `[dst, dst + len)`.
/// Empty (`lo >= hi`) when `i` is out of range.
#[inline(always)]
pub const fn window(dst: u64, len: u64, i: u64) -> (u64, u64) {
    let base = (dst & !15) + 16 * i;
    let lo = if base > dst { base - dst } else { 0 };
    let end = base + 16;
    let hi = if end < dst + len { end - dst } else { len };
    (lo, hi)
}

/// `n` (at most 16) mask bits starting at bit `pos` of the words at `mask`.
///
/// # Safety
/// The mask words holding bits `pos .. pos + n` must be readable and
/// 4-aligned.
#[inline(always)]
pub unsafe fn mask_bits(mask: u64, pos: u64, n: u32) -> u32 {
    let w = (pos / 32) as usize;
    let sh = (pos % 32) as u32;
    let words = mask as *const u32;
    // SAFETY: the caller guarantees word `pos / 32` is readable.
    let mut v = unsafe { words.add(w).read() } >> sh;
    if sh + n > 32 {
        // SAFETY: bit pos + n - 1 lives in word w + 1, readable per the caller.
        v |= unsafe { words.add(w + 1).read() } << (32 - sh);
    }
    if n >= 32 {
        v
    } else {
        v & ((1u32 << n) - 1)
    }
}

/// Expand 4 mask bits into a 32-bit byte mask (bit `k` → byte `k` = 0xFF).
#[inline(always)]
pub const fn expand4(bits: u32) -> u32 {
    (((bits & 0xF).wrapping_mul(0x0020_4081)) & 0x0101_0101).wrapping_mul(0xFF)
}

/// Compress a word to 4 bits: bit `k` is set when byte `k` is non-zero.
#[inline(always)]
pub const fn nonzero_bytes4(x: u32) -> u32 {
    let mut t = x | (x >> 4);
    t |= t >> 2;
    t |= t >> 1;
    t &= 0x0101_0101;
    (t.wrapping_mul(0x0102_0408) >> 24) & 0xF
}

#[cfg(not(target_arch = "nvptx64"))]
#[inline(always)]
unsafe fn load_lane(addr: u64) -> Lane {
    // SAFETY: the caller guarantees 16 readable, 16-aligned bytes.
    unsafe { (addr as *const Lane).read() }
}

#[cfg(not(target_arch = "nvptx64"))]
#[inline(always)]
unsafe fn store_lane(addr: u64, v: Lane) {
    // SAFETY: the caller guarantees 16 writable, 16-aligned bytes.
    unsafe { (addr as *mut Lane).write(v) }
}

// On the device the 16-byte moves are written out: a plain load feeding a
// store of the same aggregate becomes a memcpy, which LLVM lowers to two
// 8-byte moves instead of one `v4` access.
#[cfg(target_arch = "nvptx64")]
#[inline(always)]
unsafe fn load_lane(addr: u64) -> Lane {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees 16 readable, 16-aligned bytes.
    unsafe {
        core::arch::asm!(
            "ld.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
            p = in(reg64) addr,
            a = out(reg32) a,
            b = out(reg32) b,
            c = out(reg32) c,
            d = out(reg32) d,
            options(nostack, readonly, preserves_flags),
        );
    }
    Lane([a, b, c, d])
}

#[cfg(target_arch = "nvptx64")]
#[inline(always)]
unsafe fn store_lane(addr: u64, v: Lane) {
    // SAFETY: the caller guarantees 16 writable, 16-aligned bytes.
    unsafe {
        core::arch::asm!(
            "st.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};",
            p = in(reg64) addr,
            a = in(reg32) v.0[0],
            b = in(reg32) v.0[1],
            c = in(reg32) v.0[2],
            d = in(reg32) v.0[3],
            options(nostack, preserves_flags),
        );
    }
}

#[inline(always)]
unsafe fn load_u8(addr: u64) -> u8 {
    // SAFETY: the caller guarantees one readable byte.
    unsafe { (addr as *const u8).read() }
}

#[inline(always)]
unsafe fn store_u8(addr: u64, v: u8) {
    // SAFETY: the caller guarantees one writable byte.
    unsafe { (addr as *mut u8).write(v) }
}

#[inline(always)]
unsafe fn store_u16(addr: u64, v: u16) {
    // SAFETY: the caller guarantees two writable, 2-aligned bytes.
    unsafe { (addr as *mut u16).write(v) }
}

/// Zero window `i` of `[dst, dst + len)`.
///
/// # Safety
/// See the module docs: `dst` valid for writes of `len` bytes.
#[inline(always)]
pub unsafe fn zero_window(dst: u64, len: u64, i: u64) {
    let (lo, hi) = window(dst, len, i);
    if lo >= hi {
        return;
    }
    if hi - lo == LANE as u64 {
        // SAFETY: a full window is 16 aligned bytes inside the range.
        unsafe { store_lane(dst + lo, Lane([0; 4])) };
    } else {
        let mut k = lo;
        while k < hi {
            // SAFETY: lo <= k < hi <= len.
            unsafe { store_u8(dst + k, 0) };
            k += 1;
        }
    }
}

/// Copy window `i` of `[dst, dst + len)` from `[src, src + len)`.
///
/// # Safety
/// See the module docs: `dst` writable and `src` readable for `len` bytes,
/// not overlapping.
#[inline(always)]
pub unsafe fn copy_window(dst: u64, src: u64, len: u64, i: u64) {
    let (lo, hi) = window(dst, len, i);
    if lo >= hi {
        return;
    }
    if hi - lo == LANE as u64 && (src + lo) % LANE as u64 == 0 {
        // SAFETY: full window, both sides 16-aligned and inside their ranges.
        unsafe { store_lane(dst + lo, load_lane(src + lo)) };
    } else {
        let mut k = lo;
        while k < hi {
            // SAFETY: lo <= k < hi <= len.
            unsafe { store_u8(dst + k, load_u8(src + k)) };
            k += 1;
        }
    }
}

/// Masked apply of window `i`: byte `k` of `[dst, dst + len)` takes `src[k]`
/// where mask bit `k` is set.
///
/// # Safety
/// See the module docs: `dst` writable and `src` readable for `len` bytes,
/// `mask` readable for `ceil(len / 32)` 4-aligned words.
#[inline(always)]
pub unsafe fn blend_window(dst: u64, src: u64, mask: u64, len: u64, i: u64) {
    let (lo, hi) = window(dst, len, i);
    if lo >= hi {
        return;
    }
    // SAFETY: bits lo .. hi are inside the mask (hi <= len).
    let bits = unsafe { mask_bits(mask, lo, (hi - lo) as u32) };
    if bits == 0 {
        return;
    }
    if hi - lo == LANE as u64 && (src + lo) % LANE as u64 == 0 {
        // SAFETY: full window, both sides 16-aligned and inside their ranges.
        unsafe {
            let s = load_lane(src + lo);
            if bits == 0xFFFF {
                store_lane(dst + lo, s);
            } else {
                let d = load_lane(dst + lo);
                let mut o = [0u32; 4];
                let mut w = 0;
                while w < 4 {
                    let m = expand4(bits >> (4 * w));
                    o[w] = (d.0[w] & !m) | (s.0[w] & m);
                    w += 1;
                }
                store_lane(dst + lo, Lane(o));
            }
        }
    } else {
        let mut k = lo;
        while k < hi {
            if (bits >> (k - lo)) & 1 == 1 {
                // SAFETY: lo <= k < hi <= len.
                unsafe { store_u8(dst + k, load_u8(src + k)) };
            }
            k += 1;
        }
    }
}

/// Compare page-offset window `i` of `a` and `b` (`len` bytes each): write
/// its 16 difference bits as the `u16` at index `i` of `mask_out` (and a zero
/// `u16` after the last window when the window count is odd, so every mask
/// word is written) and return the number of differing bytes.
///
/// # Safety
/// See the module docs: `a`, `b` readable for `len` bytes, `mask_out`
/// writable for `ceil(len / 32)` 4-aligned words.
#[inline(always)]
pub unsafe fn compare_window(a: u64, b: u64, mask_out: u64, len: u64, i: u64) -> u32 {
    let lo = 16 * i;
    if lo >= len {
        return 0;
    }
    let hi = if len - lo < 16 { len } else { lo + 16 };
    let mut bits = 0u32;
    if hi - lo == 16 && (a + lo) % 16 == 0 && (b + lo) % 16 == 0 {
        // SAFETY: full window, both sides 16-aligned and inside their ranges.
        let (x, y) = unsafe { (load_lane(a + lo), load_lane(b + lo)) };
        let mut w = 0;
        while w < 4 {
            bits |= nonzero_bytes4(x.0[w] ^ y.0[w]) << (4 * w);
            w += 1;
        }
    } else {
        let mut k = lo;
        while k < hi {
            // SAFETY: lo <= k < hi <= len.
            if unsafe { load_u8(a + k) != load_u8(b + k) } {
                bits |= 1 << (k - lo);
            }
            k += 1;
        }
    }
    // SAFETY: u16 piece i lies in word i / 2 < ceil(len / 32).
    unsafe { store_u16(mask_out + 2 * i, bits as u16) };
    let n = lanes(len);
    if i + 1 == n && n % 2 == 1 {
        // SAFETY: the upper half of the last mask word.
        unsafe { store_u16(mask_out + 2 * (i + 1), 0) };
    }
    bits.count_ones()
}

/// Add `n` to the `u64` counter at `out` atomically.
///
/// # Safety
/// `out` must be a valid, 8-aligned `u64` that is only accessed atomically
/// while kernels run.
#[inline(always)]
pub unsafe fn add_count(out: u64, n: u64) {
    if n != 0 {
        // SAFETY: per the caller, out is a valid aligned u64 accessed atomically.
        let c = unsafe { core::sync::atomic::AtomicU64::from_ptr(out as *mut u64) };
        c.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Merge page-offset window `i` of two dense deltas (see [`MergeArgs`]):
/// `out_mask = mask1 | mask2`, `out_data = mask2 ? data2 : (mask1 ? data1 : 0)`.
///
/// # Safety
/// See the module docs and [`MergeArgs`]: every buffer valid for its length,
/// outputs not overlapping inputs.
#[inline(always)]
pub unsafe fn merge_window(a: &MergeArgs, i: u64) {
    let len = a.len;
    let lo = 16 * i;
    if lo >= len {
        return;
    }
    let hi = if len - lo < 16 { len } else { lo + 16 };
    let n = (hi - lo) as u32;
    // SAFETY: bits lo .. hi are inside both masks.
    let (m1, m2) = unsafe { (mask_bits(a.mask1, lo, n), mask_bits(a.mask2, lo, n)) };
    let aligned = (a.out_data + lo) % 16 == 0 && (a.data1 + lo) % 16 == 0 && (a.data2 + lo) % 16 == 0;
    if n == 16 && aligned {
        // SAFETY: full window, all three data buffers 16-aligned here.
        unsafe {
            let d1 = load_lane(a.data1 + lo);
            let d2 = load_lane(a.data2 + lo);
            let mut o = [0u32; 4];
            let mut w = 0;
            while w < 4 {
                let e1 = expand4(m1 >> (4 * w));
                let e2 = expand4(m2 >> (4 * w));
                o[w] = (d2.0[w] & e2) | (d1.0[w] & e1 & !e2);
                w += 1;
            }
            store_lane(a.out_data + lo, Lane(o));
        }
    } else {
        let mut k = lo;
        while k < hi {
            let s = k - lo;
            // SAFETY: lo <= k < hi <= len.
            unsafe {
                let v = if (m2 >> s) & 1 == 1 {
                    load_u8(a.data2 + k)
                } else if (m1 >> s) & 1 == 1 {
                    load_u8(a.data1 + k)
                } else {
                    0
                };
                store_u8(a.out_data + k, v);
            }
            k += 1;
        }
    }
    // SAFETY: u16 piece i lies in word i / 2 of the output mask.
    unsafe { store_u16(a.out_mask + 2 * i, (m1 | m2) as u16) };
    let nw = lanes(len);
    if i + 1 == nw && nw % 2 == 1 {
        // SAFETY: the upper half of the last output mask word.
        unsafe { store_u16(a.out_mask + 2 * (i + 1), 0) };
    }
}

/// Read run descriptor `r` of the array at `runs`.
///
/// # Safety
/// `runs` must hold at least `r + 1` readable, 8-aligned [`RunDesc`]s.
#[inline(always)]
pub unsafe fn run_at(runs: u64, r: u64) -> RunDesc {
    // SAFETY: per the caller.
    unsafe { (runs as *const RunDesc).add(r as usize).read() }
}

/// Number of windows of run `run` of a page at `page`.
#[inline(always)]
pub const fn run_windows(page: u64, run: &RunDesc) -> u64 {
    windows(page + run.offset, run.len)
}

/// Window `i` of run `run`: copy from the delta data at `data` into the page
/// at `page`.
///
/// # Safety
/// The run must lie inside the page and its bytes inside the data buffer.
#[inline(always)]
pub unsafe fn run_window(page: u64, data: u64, run: &RunDesc, i: u64) {
    // SAFETY: per the caller.
    unsafe { copy_window(page + run.offset, data + run.data_offset, run.len, i) }
}

/// Apply one batch descriptor with a cooperating group of threads: thread
/// `tid` of `nthreads` (in warps of [`WARP`]). Dense and full deltas are
/// split by windows over all threads; sparse deltas give each warp whole runs
/// (the host keeps runs at most [`RUN_CHUNK`] bytes long).
///
/// # Safety
/// The descriptor's addresses must be valid for its kind (see
/// [`ApplyDesc`]), and no other group may write the bytes it selects.
/// `nthreads` must be a positive multiple of [`WARP`] and `tid < nthreads`.
#[inline(always)]
pub unsafe fn apply_desc(d: &ApplyDesc, tid: u64, nthreads: u64) {
    match d.kind {
        kind::DENSE => {
            let n = windows(d.page, d.len);
            let mut i = tid;
            while i < n {
                // SAFETY: per the caller.
                unsafe { blend_window(d.page, d.data, d.mask, d.len, i) };
                i += nthreads;
            }
        }
        kind::FULL => {
            let n = windows(d.page, d.len);
            let mut i = tid;
            while i < n {
                // SAFETY: per the caller.
                unsafe { copy_window(d.page, d.data, d.len, i) };
                i += nthreads;
            }
        }
        kind::SPARSE => {
            let warp = tid / WARP as u64;
            let lane = tid % WARP as u64;
            let nwarps = nthreads / WARP as u64;
            // SAFETY: per the caller.
            unsafe { apply_runs(d.page, d.data, d.runs, d.run_count, warp, nwarps, lane) };
        }
        _ => {}
    }
}

/// Sparse apply over runs: warp `warp` of `nwarps` takes runs `warp`,
/// `warp + nwarps`, ...; its `lane` sweeps the run's windows.
///
/// # Safety
/// Every run must lie inside the page at `page` and inside the data buffer.
#[inline(always)]
pub unsafe fn apply_runs(page: u64, data: u64, runs: u64, run_count: u64, warp: u64, nwarps: u64, lane: u64) {
    let mut r = warp;
    while r < run_count {
        // SAFETY: r < run_count.
        let run = unsafe { run_at(runs, r) };
        let n = run_windows(page, &run);
        let mut i = lane;
        while i < n {
            // SAFETY: per the caller.
            unsafe { run_window(page, data, &run, i) };
            i += WARP as u64;
        }
        r += nwarps;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// Deterministic byte stream.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// A buffer with a 16-aligned base, so `off` controls the alignment.
    struct Buf {
        words: Vec<Lane>,
    }
    impl Buf {
        fn new(n: usize) -> Self {
            Self { words: vec![Lane([0; 4]); n.div_ceil(16) + 2] }
        }
        fn bytes(&mut self) -> &mut [u8] {
            let n = self.words.len() * 16;
            // SAFETY: Lane is plain u32 data; the slice covers exactly the vector.
            unsafe { core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), n) }
        }
        fn addr(&mut self, off: usize) -> u64 {
            self.bytes()[off..].as_mut_ptr() as u64
        }
    }

    fn mask_words(bits: &[bool]) -> Vec<u32> {
        let mut w = vec![0u32; bits.len().div_ceil(32)];
        for (i, &b) in bits.iter().enumerate() {
            if b {
                w[i / 32] |= 1 << (i % 32);
            }
        }
        w
    }

    const LENS: [usize; 12] = [1, 2, 15, 16, 17, 31, 32, 33, 63, 100, 1000, 4099];

    #[test]
    fn window_partition_covers_each_byte_once() {
        for len in LENS {
            for off in 0..17u64 {
                let dst = 4096 + off;
                let mut seen = vec![0u8; len];
                for i in 0..windows(dst, len as u64) {
                    let (lo, hi) = window(dst, len as u64, i);
                    assert!(lo < hi, "empty window {i}");
                    for k in lo..hi {
                        seen[k as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "len {len} off {off}");
                let (lo, hi) = window(dst, len as u64, windows(dst, len as u64));
                assert!(lo >= hi, "window past the end is empty");
            }
        }
    }

    #[test]
    fn bit_tricks_match_naive() {
        for b in 0..16u32 {
            let mut m = 0u32;
            for k in 0..4 {
                if b >> k & 1 == 1 {
                    m |= 0xFF << (8 * k);
                }
            }
            assert_eq!(expand4(b), m);
        }
        let mut r = Rng(7);
        for _ in 0..10_000 {
            let mut x = r.next() as u32;
            // Force some zero bytes.
            x &= expand4((r.next() & 0xF) as u32);
            let naive = (0..4).fold(0, |acc, k| acc | (((x >> (8 * k)) & 0xFF != 0) as u32) << k);
            assert_eq!(nonzero_bytes4(x), naive, "{x:#x}");
        }
        let words = [0xDEAD_BEEFu32, 0x0123_4567, 0x89AB_CDEF];
        let bit = |i: u64| (words[(i / 32) as usize] >> (i % 32)) & 1;
        for pos in 0..80u64 {
            for n in 1..=16u32 {
                if pos + n as u64 > 96 {
                    continue;
                }
                // SAFETY: the words cover bits pos .. pos + n.
                let got = unsafe { mask_bits(words.as_ptr() as u64, pos, n) };
                let want = (0..n as u64).fold(0, |acc, k| acc | bit(pos + k) << k);
                assert_eq!(got, want, "pos {pos} n {n}");
            }
        }
    }

    #[test]
    fn zero_and_copy_any_size_and_alignment() {
        let mut r = Rng(1);
        for len in LENS {
            for (doff, soff) in [(0, 0), (1, 1), (3, 7), (15, 0), (0, 9), (8, 8)] {
                let mut d = Buf::new(len + 32);
                let mut s = Buf::new(len + 32);
                let fill = r.bytes(d.bytes().len());
                d.bytes().copy_from_slice(&fill);
                let src = r.bytes(len);
                s.bytes()[soff..soff + len].copy_from_slice(&src);
                let (da, sa) = (d.addr(doff), s.addr(soff));
                for i in (0..windows(da, len as u64)).rev() {
                    // SAFETY: both buffers hold len bytes past their offsets.
                    unsafe { copy_window(da, sa, len as u64, i) };
                }
                let mut want = fill.clone();
                want[doff..doff + len].copy_from_slice(&src);
                assert_eq!(d.bytes(), &want[..], "copy len {len} doff {doff} soff {soff}");
                for i in 0..windows(da, len as u64) {
                    // SAFETY: as above.
                    unsafe { zero_window(da, len as u64, i) };
                }
                want[doff..doff + len].fill(0);
                assert_eq!(d.bytes(), &want[..], "zero len {len} doff {doff}");
            }
        }
    }

    #[test]
    fn blend_matches_naive() {
        let mut r = Rng(2);
        for len in LENS {
            for (doff, soff) in [(0, 0), (5, 5), (3, 11), (0, 1)] {
                for density in [0u64, 1, 2, 3] {
                    let bits: Vec<bool> = (0..len)
                        .map(|_| match density {
                            0 => false,
                            3 => true,
                            d => r.next() % 4 < d,
                        })
                        .collect();
                    let mw = mask_words(&bits);
                    let mut d = Buf::new(len + 32);
                    let mut s = Buf::new(len + 32);
                    let fill = r.bytes(d.bytes().len());
                    d.bytes().copy_from_slice(&fill);
                    let src = r.bytes(len);
                    s.bytes()[soff..soff + len].copy_from_slice(&src);
                    let (da, sa) = (d.addr(doff), s.addr(soff));
                    for i in 0..windows(da, len as u64) {
                        // SAFETY: buffers hold len bytes; mw holds ceil(len/32) words.
                        unsafe { blend_window(da, sa, mw.as_ptr() as u64, len as u64, i) };
                    }
                    let mut want = fill.clone();
                    for k in 0..len {
                        if bits[k] {
                            want[doff + k] = src[k];
                        }
                    }
                    assert_eq!(d.bytes(), &want[..], "len {len} doff {doff} soff {soff} density {density}");
                }
            }
        }
    }

    #[test]
    fn compare_matches_naive() {
        let mut r = Rng(3);
        for len in LENS {
            for (aoff, boff) in [(0, 0), (1, 1), (0, 3)] {
                let mut a = Buf::new(len + 32);
                let mut b = Buf::new(len + 32);
                let x = r.bytes(len);
                let mut y = x.clone();
                for v in y.iter_mut() {
                    if r.next() % 3 == 0 {
                        *v ^= 1 + (r.next() % 255) as u8;
                    }
                }
                a.bytes()[aoff..aoff + len].copy_from_slice(&x);
                b.bytes()[boff..boff + len].copy_from_slice(&y);
                let mut out = vec![0xFFFF_FFFFu32; len.div_ceil(32)];
                let mut count = 0u64;
                let (aa, ba) = (a.addr(aoff), b.addr(boff));
                for i in 0..lanes(len as u64) {
                    // SAFETY: buffers hold len bytes; out holds ceil(len/32) words.
                    count +=
                        u64::from(unsafe { compare_window(aa, ba, out.as_mut_ptr() as u64, len as u64, i) });
                }
                let diff: Vec<bool> = x.iter().zip(&y).map(|(p, q)| p != q).collect();
                assert_eq!(out, mask_words(&diff), "len {len} aoff {aoff} boff {boff}");
                assert_eq!(count, diff.iter().filter(|&&d| d).count() as u64);
            }
        }
        let mut c = 5u64;
        // SAFETY: c is a valid u64 only touched here.
        unsafe { add_count(&mut c as *mut u64 as u64, 7) };
        assert_eq!(c, 12);
    }

    #[test]
    fn merge_matches_naive() {
        let mut r = Rng(4);
        for len in LENS {
            for off in [0usize, 3] {
                let b1: Vec<bool> = (0..len).map(|_| r.next() % 3 == 0).collect();
                let b2: Vec<bool> = (0..len).map(|_| r.next() % 3 == 0).collect();
                let (m1, m2) = (mask_words(&b1), mask_words(&b2));
                let mut d1 = Buf::new(len + 32);
                let mut d2 = Buf::new(len + 32);
                let mut od = Buf::new(len + 32);
                let x1 = r.bytes(len);
                let x2 = r.bytes(len);
                d1.bytes()[off..off + len].copy_from_slice(&x1);
                d2.bytes()[off..off + len].copy_from_slice(&x2);
                let mut om = vec![0xAAAA_AAAAu32; len.div_ceil(32)];
                let args = MergeArgs {
                    out_mask: om.as_mut_ptr() as u64,
                    out_data: od.addr(off),
                    mask1: m1.as_ptr() as u64,
                    data1: d1.addr(off),
                    mask2: m2.as_ptr() as u64,
                    data2: d2.addr(off),
                    len: len as u64,
                };
                for i in 0..lanes(len as u64) {
                    // SAFETY: every buffer holds its length.
                    unsafe { merge_window(&args, i) };
                }
                let bo: Vec<bool> = b1.iter().zip(&b2).map(|(p, q)| *p || *q).collect();
                assert_eq!(om, mask_words(&bo));
                let want: Vec<u8> = (0..len)
                    .map(|k| {
                        if b2[k] {
                            x2[k]
                        } else if b1[k] {
                            x1[k]
                        } else {
                            0
                        }
                    })
                    .collect();
                assert_eq!(&od.bytes()[off..off + len], &want[..], "len {len} off {off}");
            }
        }
    }

    #[test]
    fn batch_descriptors_apply_like_naive() {
        let mut r = Rng(5);
        let len = 777usize;
        for page_off in [0usize, 3] {
            let mut page = Buf::new(len + 32);
            let fill = r.bytes(page.bytes().len());
            page.bytes().copy_from_slice(&fill);
            let mut want = fill.clone();
            let pa = page.addr(page_off);

            // Sparse: runs at odd offsets, data packed back to back.
            let runs_v = [(0u64, 5u64), (9, 40), (100, 1), (130, 300), (700, 77)];
            let mut data = Buf::new(1024);
            let mut runs = Vec::new();
            let mut at = 1u64;
            for &(o, l) in &runs_v {
                let bytes = r.bytes(l as usize);
                data.bytes()[at as usize..(at + l) as usize].copy_from_slice(&bytes);
                want[page_off + o as usize..page_off + (o + l) as usize].copy_from_slice(&bytes);
                runs.push(RunDesc { offset: o, len: l, data_offset: at - 1 });
                at += l;
            }
            let sparse = ApplyDesc {
                page: pa,
                len: len as u64,
                data: data.addr(1),
                runs: runs.as_ptr() as u64,
                run_count: runs.len() as u64,
                kind: kind::SPARSE,
                ..ApplyDesc::default()
            };
            for tid in (0..64).rev() {
                // SAFETY: the descriptor's buffers are live and sized.
                unsafe { apply_desc(&sparse, tid, 64) };
            }
            assert_eq!(page.bytes(), &want[..], "sparse, page offset {page_off}");

            // Dense.
            let bits: Vec<bool> = (0..len).map(|_| r.next() % 2 == 0).collect();
            let mw = mask_words(&bits);
            let mut dd = Buf::new(len);
            let src = r.bytes(len);
            dd.bytes()[..len].copy_from_slice(&src);
            let dense = ApplyDesc {
                page: pa,
                len: len as u64,
                data: dd.addr(0),
                mask: mw.as_ptr() as u64,
                kind: kind::DENSE,
                ..ApplyDesc::default()
            };
            for tid in 0..32 {
                // SAFETY: as above.
                unsafe { apply_desc(&dense, tid, 32) };
            }
            for k in 0..len {
                if bits[k] {
                    want[page_off + k] = src[k];
                }
            }
            assert_eq!(page.bytes(), &want[..], "dense, page offset {page_off}");

            // Full.
            let full_src = r.bytes(len);
            let mut fd = Buf::new(len);
            fd.bytes()[..len].copy_from_slice(&full_src);
            let full = ApplyDesc {
                page: pa,
                len: len as u64,
                data: fd.addr(0),
                kind: kind::FULL,
                ..ApplyDesc::default()
            };
            for tid in 0..256 {
                // SAFETY: as above.
                unsafe { apply_desc(&full, tid, 256) };
            }
            want[page_off..page_off + len].copy_from_slice(&full_src);
            assert_eq!(page.bytes(), &want[..], "full, page offset {page_off}");
        }
    }
}
