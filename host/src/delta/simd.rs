//! Runtime-dispatched vector kernels for the hottest byte loops: the dense
//! masked blend, the run copy of sparse deltas and the CRC32C of small log
//! records.
//!
//! Each kernel has a portable scalar version, which is the reference (and
//! what Miri and non-x86 targets run); the x86_64 versions are chosen at run
//! time by CPU feature detection and give bit-identical results (tested
//! against the scalar versions with proptest).

use crate::delta::{NarrowRun, Run, RunStore, SparseDelta};

/// Expands 8 mask bits into a 64-bit byte mask (bit `i` → byte `i` = 0xFF).
const EXPAND: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u64;
        let mut i = 0;
        while i < 8 {
            if b & (1 << i) != 0 {
                v |= 0xFF << (8 * i);
            }
            i += 1;
        }
        t[b] = v;
        b += 1;
    }
    t
};

/// The 64-bit byte mask of 8 mask bits.
#[inline]
pub(crate) fn expand8(bits: u8) -> u64 {
    EXPAND[bits as usize]
}

/// Copy `src` bytes into `dst` where the mask bit is set (bit `i % 64` of
/// `words[i / 64]` selects byte `i`). `src` and `dst` have equal lengths and
/// `words` covers them; `src` is in canonical form (zero where the mask is
/// clear).
#[inline]
pub(crate) fn blend(dst: &mut [u8], src: &[u8], words: &[u64]) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if dst.len() >= 256 {
            if std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: the CPU supports AVX-512BW (checked just above).
                unsafe { x86::blend_avx512(dst, src, words) };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { x86::blend_avx2(dst, src, words) };
                return;
            }
            if std::arch::is_x86_feature_detected!("sse4.1") {
                // SAFETY: the CPU supports SSE4.1 and so SSSE3 (checked
                // just above).
                unsafe { x86::blend_sse41(dst, src, words) };
                return;
            }
        }
    }
    blend_scalar(dst, src, words);
}

/// The portable blend: a machine word at a time.
pub(crate) fn blend_scalar(dst: &mut [u8], src: &[u8], words: &[u64]) {
    let full = dst.len() / 64;
    let (dst_body, dst_tail) = dst.split_at_mut(full * 64);
    let (src_body, src_tail) = src.split_at(full * 64);
    for ((d, s), &m) in dst_body.chunks_exact_mut(64).zip(src_body.chunks_exact(64)).zip(words) {
        blend_chunk_scalar(d, s, m);
    }
    blend_tail(dst_tail, src_tail, words.get(full).copied().unwrap_or(0));
}

#[inline]
fn blend_chunk_scalar(d: &mut [u8], s: &[u8], m: u64) {
    if m == 0 {
        return;
    }
    if m == u64::MAX {
        d.copy_from_slice(s);
        return;
    }
    // Expand all eight mask bytes first, then blend eight words: no
    // data-dependent branches inside the chunk, so it pipelines well.
    let mut bm = [0u64; 8];
    for (g, b) in bm.iter_mut().enumerate() {
        *b = EXPAND[((m >> (8 * g)) & 0xFF) as usize];
    }
    for (g, &b) in bm.iter().enumerate() {
        let dw = &mut d[8 * g..8 * g + 8];
        let x = u64::from_le_bytes((&*dw).try_into().unwrap_or_default());
        let y = u64::from_le_bytes(s[8 * g..8 * g + 8].try_into().unwrap_or_default());
        dw.copy_from_slice(&((x & !b) | (y & b)).to_le_bytes());
    }
}

/// The last partial chunk (fewer than 64 bytes), bit by bit.
#[inline]
fn blend_tail(dst: &mut [u8], src: &[u8], m: u64) {
    for (k, (d, s)) in dst.iter_mut().zip(src).enumerate() {
        if m >> k & 1 == 1 {
            *d = *s;
        }
    }
}

/// Copy the bytes of a sparse delta into `page` and return true; return
/// false and copy nothing when the delta reaches past the page's end.
#[inline]
pub(crate) fn copy_sparse(page: &mut [u8], s: &SparseDelta) -> bool {
    if s.end() > page.len() as u64 {
        return false;
    }
    match s.store() {
        // SAFETY: a sparse delta's runs are sorted and apart and its data
        // holds exactly their bytes (every constructor of `SparseDelta`
        // ensures it and its fields are private); its end, checked just
        // above, is inside the page, so every run is.
        RunStore::Narrow(runs) => unsafe { copy_runs_valid(page, runs, s.data()) },
        // Runs past byte `u32::MAX` of a page: the portable copy.
        RunStore::Wide(runs) => copy_runs_scalar(page, runs.iter().copied(), s.data()),
    }
    true
}

/// Copy the bytes of each run into `page`, `data` holding the runs' bytes
/// one after the other, for runs already known to be valid: no per-run
/// checks.
///
/// # Safety
/// `runs` are sorted by offset and do not overlap, each ends at or before
/// `page.len()` (so the last one's end bounds them all), and their lengths
/// sum to exactly `data.len()`: what a [`crate::SparseDelta`] guarantees,
/// once its end has been checked against the page.
#[inline]
unsafe fn copy_runs_valid(page: &mut [u8], runs: &[NarrowRun], data: &[u8]) {
    debug_assert!(runs.windows(2).all(|w| w[0].offset + w[0].len <= w[1].offset));
    debug_assert!(runs.last().is_none_or(|r| r.offset as usize + r.len as usize <= page.len()));
    debug_assert_eq!(runs.iter().map(|r| r.len as usize).sum::<usize>(), data.len());
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if runs.len() >= 8 && x86::has_avx512_bw_vl() {
            // SAFETY: the CPU supports AVX-512BW and VL (checked just
            // above); the runs are valid for `page` and `data` (this
            // function's contract).
            unsafe { x86::copy_runs_valid_avx512(page, runs, data) };
            return;
        }
    }
    copy_runs_scalar(page, runs.iter().map(|r| r.wide()), data);
}

/// The portable run copy: runs of up to 64 bytes with two overlapping
/// fixed-size moves (inline, no `memcpy` call), longer ones with `memcpy`.
/// Stops at the first run that does not fit `page` or whose bytes `data`
/// lacks, so it is safe for any input.
pub(crate) fn copy_runs_scalar(page: &mut [u8], runs: impl IntoIterator<Item = Run>, data: &[u8]) {
    let mut at = 0usize;
    for r in runs {
        let (o, n) = (r.offset as usize, r.len as usize);
        let (Some(dst), Some(src)) = (page.get_mut(o..o.saturating_add(n)), data.get(at..at + n)) else {
            return;
        };
        copy_small(dst, src);
        at += n;
    }
}

/// `dst.copy_from_slice(src)` (equal lengths), inline (no `memcpy` call)
/// up to 64 bytes: the copies small deltas and log records make.
#[inline(always)]
pub(crate) fn copy_small(dst: &mut [u8], src: &[u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        // One masked move for every length up to 32: lengths of short
        // writes vary, and the branches below would be mispredicted.
        if dst.len() <= 32 && src.len() == dst.len() && x86::has_avx512_bw_vl() {
            // SAFETY: the CPU supports AVX-512BW and VL (checked just
            // above); the slices are distinct, of equal length, at most 32.
            unsafe { x86::copy_upto32(src.as_ptr(), dst.as_mut_ptr(), dst.len()) };
            return;
        }
    }
    // Head and tail blocks of K bytes; they overlap when the length < 2K.
    fn two<const K: usize>(dst: &mut [u8], src: &[u8]) {
        let n = dst.len();
        if let (Ok(h), Ok(t)) = (<[u8; K]>::try_from(&src[..K]), <[u8; K]>::try_from(&src[n - K..])) {
            dst[..K].copy_from_slice(&h);
            dst[n - K..].copy_from_slice(&t);
        }
    }
    match dst.len() {
        0 => {}
        1..=3 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        4..=7 => two::<4>(dst, src),
        8..=15 => two::<8>(dst, src),
        16..=31 => two::<16>(dst, src),
        32..=64 => two::<32>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// The CRC32C of `bytes` appended to data whose CRC32C is `crc` (identical
/// to `crc32c::crc32c_append`).
#[inline]
pub(crate) fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if bytes.len() <= 512 && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2 (checked just above).
            return unsafe { x86::crc32c_short_append(crc, bytes) };
        }
    }
    crc32c::crc32c_append(crc, bytes)
}

/// Reflected CRC32C polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the CRC32C polynomial, both reflected (bit 31 is x^0).
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ CRC32C_POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k]` = x^(2^k) modulo the polynomial (reflected).
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    t[0] = 1 << 30;
    let mut k = 1;
    while k < t.len() {
        t[k] = mul_mod_p(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// The CRC32C of `A ‖ B` from `crc32c(A)`, `crc32c(B)` and the length of
/// `B`, in O(log len) without touching the bytes (identical to
/// `crc32c::crc32c_combine`).
pub(crate) fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    // crc(A ‖ B) = crc_a · x^(8 len_b) + crc_b (the pre- and
    // post-conditioning cancel out in the sum).
    let mut xp = 1u32 << 31;
    let (mut n, mut k) = (len_b, 3);
    while n != 0 {
        if n & 1 != 0 {
            xp = mul_mod_p(X2N[k], xp);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod_p(xp, crc_a) ^ crc_b
}

/// CRC32C (Castagnoli) of `bytes`, identical to `crc32c::crc32c`.
#[inline]
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        // Log records are mostly short: a plain loop over the CRC
        // instruction beats the library's setup for long inputs.
        if bytes.len() <= 512 && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2 (checked just above).
            return unsafe { x86::crc32c_short(bytes) };
        }
    }
    crc32c::crc32c(bytes)
}

/// Write a dense payload as the log holds it: the `selected` bytes, in
/// page order, to the bytes of `page` whose bit is set in `mask` (bit `k`
/// of mask byte `j`: page byte `8j + k`). The caller has checked the
/// payload (`mask` covers `page`, one selected byte per set bit).
#[inline]
pub(crate) fn scatter_selected(page: &mut [u8], mask: &[u8], selected: &[u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if mask.len() >= 16 && std::arch::is_x86_feature_detected!("bmi2") {
            // SAFETY: the CPU supports BMI2 (checked just above).
            unsafe { x86::scatter_selected_bmi2(page, mask, selected) };
            return;
        }
    }
    scatter_selected_scalar(page, mask, selected, 0, 0);
}

/// The portable [`scatter_selected`] from mask byte `from` on, whose first
/// selected byte is `selected[at]`: a byte at a time.
pub(crate) fn scatter_selected_scalar(
    page: &mut [u8],
    mask: &[u8],
    selected: &[u8],
    from: usize,
    mut at: usize,
) {
    for (i, &m) in mask.iter().enumerate().skip(from) {
        match m {
            0 => {}
            0xFF => {
                page[8 * i..8 * i + 8].copy_from_slice(&selected[at..at + 8]);
                at += 8;
            }
            _ => {
                let mut bits = m;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    page[8 * i + b] = selected[at];
                    at += 1;
                    bits &= bits - 1;
                }
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod x86 {
    use crate::delta::NarrowRun;
    use std::arch::x86_64::*;

    /// [`super::scatter_selected`] a mask byte at a time: the next eight
    /// selected bytes deposited (`pdep`) into the page word at the set
    /// bytes of the mask byte's 64-bit byte mask, and the word's other
    /// bytes kept; the last bytes (a page word cut short, fewer than eight
    /// selected bytes left) the portable way.
    #[target_feature(enable = "bmi2")]
    pub(super) fn scatter_selected_bmi2(page: &mut [u8], mask: &[u8], selected: &[u8]) {
        let mut at = 0usize;
        let mut i = 0usize;
        let words = mask.len().min(page.len() / 8);
        while i < words {
            let m = mask[i];
            if m != 0 {
                let Some(src) = selected.get(at..).and_then(|s| s.first_chunk::<8>()) else { break };
                let Some(dst) = page.get_mut(8 * i..).and_then(|p| p.first_chunk_mut::<8>()) else { break };
                let bm = super::expand8(m);
                let word = u64::from_le_bytes(*dst);
                *dst = ((word & !bm) | _pdep_u64(u64::from_le_bytes(*src), bm)).to_le_bytes();
                at += m.count_ones() as usize;
            }
            i += 1;
        }
        super::scatter_selected_scalar(page, mask, selected, i, at);
    }

    /// How far ahead (in 64-byte lines) the dense blend prefetches.
    const PREFETCH_LINES: usize = 16;
    /// Pages from this length on are blended with prefetching (smaller ones
    /// sit in the L1 or L2 cache, where it only costs instructions).
    const PREFETCH_MIN: usize = 64 << 10;

    /// Whether the dense blend's software prefetch pays on this CPU: on
    /// Intel parts (measured on a Sapphire Rapids class host, 2 MiB of L2
    /// per core) it lifts the 1 MiB blend by 4 to 13 %; on AMD parts
    /// (measured on an AVX-512 EPYC, 1 MiB of L2) it cost the same blend 13
    /// to 20 %.
    /// Decided once from the CPUID vendor string.
    #[inline]
    fn prefetch_pays() -> bool {
        static INTEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *INTEL.get_or_init(|| {
            let leaf = __cpuid(0);
            // "GenuineIntel": EBX, EDX, ECX in that order.
            (leaf.ebx, leaf.edx, leaf.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
        })
    }

    /// Whether the CPU has AVX-512BW and VL (masked moves of 32 bytes).
    #[inline]
    pub(super) fn has_avx512_bw_vl() -> bool {
        std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vl")
    }

    /// Copy `n <= 32` bytes from `s0` to `d0` with one masked load and store.
    ///
    /// # Safety
    /// The CPU must support AVX-512BW and VL; `n <= 32` bytes at `s0` are
    /// readable, `n` bytes at `d0` writable, and the two do not overlap.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,bmi2")]
    pub(super) unsafe fn copy_upto32(s0: *const u8, d0: *mut u8, n: usize) {
        let k: __mmask32 = _bzhi_u32(u32::MAX, n as u32);
        // SAFETY: only the first `n` lanes are read and written, inside the
        // caller's ranges; masked-off lanes neither fault nor write.
        unsafe {
            let v = _mm256_maskz_loadu_epi8(k, s0.cast());
            _mm256_mask_storeu_epi8(d0.cast(), k, v);
        }
    }

    /// Copy `n` bytes, 32 <= n <= 64, from `s0` to `d0`: two 32-byte moves,
    /// overlapping when `n < 64`.
    ///
    /// # Safety
    /// The CPU must support AVX2; `n` bytes at `s0` are readable, `n` bytes
    /// at `d0` writable, and the two do not overlap.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn copy_32_to_64(s0: *const u8, d0: *mut u8, n: usize) {
        // SAFETY: both blocks lie inside the n bytes at each pointer
        // (32 <= n <= 64).
        unsafe {
            let h = _mm256_loadu_si256(s0.cast());
            let t = _mm256_loadu_si256(s0.add(n - 32).cast());
            _mm256_storeu_si256(d0.cast(), h);
            _mm256_storeu_si256(d0.add(n - 32).cast(), t);
        }
    }

    /// # Safety
    /// The CPU must support SSE4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn crc32c_short(bytes: &[u8]) -> u32 {
        let len = bytes.len();
        let Some(first) = bytes.first_chunk::<8>() else {
            // SAFETY: same requirement as this function's.
            return unsafe { crc32c_short_append(0, bytes) };
        };
        // The `r = len % 8` leading bytes go first, in one step and with no
        // branch on `r`: placed at the top of a word whose low bytes are
        // zero, from a zero register (zeros leave a zero register as it
        // is); the CRC being linear, the initial register's effect over `r`
        // bytes is then added from a table.
        let r = len % 8;
        let head = u64::from_le_bytes(*first).checked_shl(8 * (8 - r) as u32).unwrap_or(0);
        let mut c = _mm_crc32_u64(0, head) ^ u64::from(INIT_OVER_ZEROS[r]);
        for w in bytes[r..].chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            c = _mm_crc32_u64(c, u64::from_le_bytes(a));
        }
        !(c as u32)
    }

    /// The CRC32C register after `r` zero bytes from the initial register
    /// (all ones), for `r` in 0..8.
    const INIT_OVER_ZEROS: [u32; 8] = {
        let mut t = [0u32; 8];
        let mut reg = u32::MAX;
        let mut r = 0;
        while r < 8 {
            t[r] = reg;
            let mut bit = 0;
            while bit < 8 {
                reg = (reg >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(reg & 1));
                bit += 1;
            }
            r += 1;
        }
        t
    };

    /// # Safety
    /// The CPU must support SSE4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn crc32c_short_append(crc: u32, bytes: &[u8]) -> u32 {
        let mut c = u64::from(!crc);
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            c = _mm_crc32_u64(c, u64::from_le_bytes(a));
        }
        // The last 0..=7 bytes in at most three steps (4, 2, 1 bytes).
        let mut c = c as u32;
        let mut rest = words.remainder();
        if let Some((w, r)) = rest.split_first_chunk::<4>() {
            c = _mm_crc32_u32(c, u32::from_le_bytes(*w));
            rest = r;
        }
        if let Some((w, r)) = rest.split_first_chunk::<2>() {
            c = _mm_crc32_u16(c, u16::from_le_bytes(*w));
            rest = r;
        }
        if let Some(&b) = rest.first() {
            c = _mm_crc32_u8(c, b);
        }
        !c
    }

    /// # Safety
    /// The CPU must support AVX2; `dst.len() == src.len()` and `words`
    /// holds at least `dst.len() / 64` words.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn blend_avx2(dst: &mut [u8], src: &[u8], words: &[u64]) {
        let full = (dst.len() / 64).min(words.len()).min(src.len() / 64);
        // Byte k of a 32-byte lane group takes mask byte k / 8, bit k % 8.
        let shuffle = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        for (i, &m) in words[..full].iter().enumerate() {
            if m == 0 {
                continue;
            }
            for half in 0..2 {
                let at = i * 64 + half * 32;
                let m32 = (m >> (32 * half)) as u32;
                // SAFETY: at + 32 <= full * 64 <= len of both slices;
                // unaligned loads and stores are allowed.
                unsafe {
                    let sv = _mm256_loadu_si256(s.add(at).cast());
                    if m32 == u32::MAX {
                        _mm256_storeu_si256(d.add(at).cast(), sv);
                        continue;
                    }
                    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(m32 as i32), shuffle);
                    let sel = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
                    let dv = _mm256_loadu_si256(d.add(at).cast());
                    _mm256_storeu_si256(d.add(at).cast(), _mm256_blendv_epi8(dv, sv, sel));
                }
            }
        }
        let tail = full * 64;
        super::blend_tail(&mut dst[tail..], &src[tail..], words.get(full).copied().unwrap_or(0));
    }

    /// [`blend_avx2`] with 16-byte vectors, for CPUs (and virtual machines)
    /// that offer SSE4.1 but not AVX2.
    ///
    /// # Safety
    /// The CPU must support SSE4.1 and SSSE3; `dst.len() == src.len()` and
    /// `words` holds at least `dst.len() / 64` words.
    #[target_feature(enable = "ssse3,sse4.1")]
    pub(super) unsafe fn blend_sse41(dst: &mut [u8], src: &[u8], words: &[u64]) {
        let full = (dst.len() / 64).min(words.len()).min(src.len() / 64);
        // Byte k of the 16-byte block `q` of a 64-byte chunk takes mask
        // byte 2q + k / 8, bit k % 8.
        let shuffles = [0i8, 2, 4, 6].map(|b| {
            _mm_setr_epi8(b, b, b, b, b, b, b, b, b + 1, b + 1, b + 1, b + 1, b + 1, b + 1, b + 1, b + 1)
        });
        let bits = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        for (i, &m) in words[..full].iter().enumerate() {
            if m == 0 {
                continue;
            }
            let mv = _mm_set1_epi64x(m as i64);
            for (q, &shuffle) in shuffles.iter().enumerate() {
                let at = i * 64 + q * 16;
                // SAFETY: at + 16 <= full * 64 <= len of both slices;
                // unaligned loads and stores are allowed.
                unsafe {
                    let sel = _mm_cmpeq_epi8(_mm_and_si128(_mm_shuffle_epi8(mv, shuffle), bits), bits);
                    let sv = _mm_loadu_si128(s.add(at).cast());
                    let dv = _mm_loadu_si128(d.add(at).cast());
                    _mm_storeu_si128(d.add(at).cast(), _mm_blendv_epi8(dv, sv, sel));
                }
            }
        }
        let tail = full * 64;
        super::blend_tail(&mut dst[tail..], &src[tail..], words.get(full).copied().unwrap_or(0));
    }

    /// Deltas with at most this many bytes issue the eight loads of a
    /// group of eight one-line runs before its eight stores; larger ones
    /// four loads, four stores, twice. Measured on a Sapphire Rapids class
    /// host with runs of 64 bytes every 128 (`mmsb bench` apply rows,
    /// alternated builds, the huge-page round in
    /// docs/BENCHMARKS-HISTORY.md): at 4 KiB pages (2 KiB of
    /// data, in the L1 cache) eight loads first met 0.7 of memcpy in 8 of
    /// 11 runs against 5 of 11, and in a probe of eight processes ran at
    /// 0.93-0.95 against 0.78-0.85; at 1 MiB pages (data and page from the
    /// L2 cache and beyond) it ran below four at a time in two calls
    /// (medians 0.59 and 0.60 against 0.73 and 0.67).
    const EIGHTS_MAX: usize = 32 << 10;

    /// # Safety
    /// The CPU must support AVX-512BW and VL (and F), and the runs must be
    /// valid for `page` and `data` as [`super::copy_runs_valid`] requires.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,bmi2")]
    pub(super) unsafe fn copy_runs_valid_avx512(page: &mut [u8], runs: &[NarrowRun], data: &[u8]) {
        // SAFETY: this function's own requirements.
        unsafe {
            if data.len() <= EIGHTS_MAX {
                copy_runs_by8::<false>(page, runs, data)
            } else {
                copy_runs_by8::<true>(page, runs, data)
            }
        }
    }

    /// [`copy_runs_valid_avx512`] eight runs a step while all eight are
    /// one cache line long: the eight runs (8 bytes each) are one 64-byte
    /// vector, their lengths tested with one compare and one branch; the
    /// eight loads are issued before the eight stores, or, when `SPLIT`,
    /// four loads before four stores twice. `one_run` run by run otherwise.
    ///
    /// # Safety
    /// As [`copy_runs_valid_avx512`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,bmi2")]
    pub(super) unsafe fn copy_runs_by8<const SPLIT: bool>(page: &mut [u8], runs: &[NarrowRun], data: &[u8]) {
        // A run is {offset, len} as two u32 (`#[repr(C)]`): eight runs fill
        // one 64-byte vector, their lengths in the odd lanes.
        const _: () =
            assert!(std::mem::size_of::<NarrowRun>() == 8 && std::mem::offset_of!(NarrowRun, len) == 4);
        const LENS: __mmask16 = 0xAAAA;
        let (d, s) = (page.as_mut_ptr(), data.as_ptr());
        let line = _mm512_set1_epi32(64);
        let mut at = 0usize;
        let mut groups = runs.chunks_exact(8);
        for g in &mut groups {
            // SAFETY: `g` is eight runs, 64 readable bytes; bytes o .. o +
            // n of the page and at .. at + n of data are in bounds for each
            // run, since the runs are valid and `at` is the sum of the
            // lengths before it; the 64-byte moves have n == 64 for all
            // eight runs (the compare just checked), and the runs do not
            // overlap.
            unsafe {
                let lens = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(g.as_ptr().cast()), line);
                if lens & LENS == LENS {
                    // Each offset by a plain load of its own: left to
                    // itself the compiler takes them out of the compare's
                    // vector, eleven shuffles a group, and at 4 KiB pages
                    // that costs a fifth of the copy.
                    let o = |k: usize| {
                        let at = std::ptr::addr_of!((*g.as_ptr().add(k)).offset).read_volatile();
                        d.add(at as usize).cast::<__m512i>()
                    };
                    let x = |k: usize| _mm512_loadu_si512(s.add(at + 64 * k).cast());
                    if SPLIT {
                        for h in [0, 4] {
                            let (x0, x1, x2, x3) = (x(h), x(h + 1), x(h + 2), x(h + 3));
                            _mm512_storeu_si512(o(h), x0);
                            _mm512_storeu_si512(o(h + 1), x1);
                            _mm512_storeu_si512(o(h + 2), x2);
                            _mm512_storeu_si512(o(h + 3), x3);
                            // Keeps the second half's loads after the first
                            // half's stores (the compiler would hoist them).
                            std::arch::asm!("", options(nostack, preserves_flags));
                        }
                    } else {
                        let (x0, x1, x2, x3, x4, x5, x6, x7) =
                            (x(0), x(1), x(2), x(3), x(4), x(5), x(6), x(7));
                        _mm512_storeu_si512(o(0), x0);
                        _mm512_storeu_si512(o(1), x1);
                        _mm512_storeu_si512(o(2), x2);
                        _mm512_storeu_si512(o(3), x3);
                        _mm512_storeu_si512(o(4), x4);
                        _mm512_storeu_si512(o(5), x5);
                        _mm512_storeu_si512(o(6), x6);
                        _mm512_storeu_si512(o(7), x7);
                    }
                    at += 512;
                } else {
                    for r in g {
                        one_run(s.add(at), d.add(r.offset as usize), r.len as usize);
                        at += r.len as usize;
                    }
                }
            }
        }
        for r in groups.remainder() {
            // SAFETY: as for the groups.
            unsafe { one_run(s.add(at), d.add(r.offset as usize), r.len as usize) };
            at += r.len as usize;
        }
    }

    /// Copy `n` bytes from `s0` to `d0`: one 64-byte move for a run of one
    /// cache line (tested first: the common length), a length class
    /// otherwise.
    ///
    /// # Safety
    /// The CPU must support AVX-512BW and VL; `n` bytes at `s0` are
    /// readable, `n` bytes at `d0` writable, and the two do not overlap.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,bmi2")]
    unsafe fn one_run(s0: *const u8, d0: *mut u8, n: usize) {
        // SAFETY: every access stays inside the n bytes at each pointer:
        // the helpers' bounds on n hold in their branches, and two 64-byte
        // blocks overlap when n is between one and two blocks long.
        unsafe {
            if n == 64 {
                _mm512_storeu_si512(d0.cast(), _mm512_loadu_si512(s0.cast()));
            } else if n < 32 {
                copy_upto32(s0, d0, n);
            } else if n <= 64 {
                copy_32_to_64(s0, d0, n);
            } else if n <= 128 {
                let h = _mm512_loadu_si512(s0.cast());
                let t = _mm512_loadu_si512(s0.add(n - 64).cast());
                _mm512_storeu_si512(d0.cast(), h);
                _mm512_storeu_si512(d0.add(n - 64).cast(), t);
            } else {
                core::ptr::copy_nonoverlapping(s0, d0, n);
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512BW (and F); `dst.len() == src.len()` and
    /// `words` holds at least `dst.len() / 64` words.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn blend_avx512(dst: &mut [u8], src: &[u8], words: &[u64]) {
        if dst.len() >= PREFETCH_MIN && prefetch_pays() {
            // SAFETY: this function's own requirements.
            unsafe { blend_avx512_with::<true>(dst, src, words) }
        } else {
            // SAFETY: this function's own requirements.
            unsafe { blend_avx512_with::<false>(dst, src, words) }
        }
    }

    /// [`blend_avx512`], prefetching ahead when `PREFETCH`.
    ///
    /// # Safety
    /// As [`blend_avx512`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn blend_avx512_with<const PREFETCH: bool>(dst: &mut [u8], src: &[u8], words: &[u64]) {
        let full = (dst.len() / 64).min(words.len()).min(src.len() / 64);
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        for (i, &m) in words[..full].iter().enumerate() {
            if PREFETCH {
                // Three streams (data, mask, page) are more than the
                // hardware prefetcher keeps ahead of on pages past the L2:
                // ask for the data and page lines a kilobyte ahead. A
                // prefetch never faults, and past the end it only fetches a
                // line it need not have.
                _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add((i + PREFETCH_LINES) * 64).cast());
                _mm_prefetch::<_MM_HINT_T0>(d.wrapping_add((i + PREFETCH_LINES) * 64).cast());
            }
            if m == 0 {
                continue;
            }
            // SAFETY: i * 64 + 64 <= full * 64 <= len of both slices;
            // unaligned loads and stores are allowed, and the masked store
            // writes only the selected bytes (the page is not read).
            unsafe {
                let sv = _mm512_loadu_si512(s.add(i * 64).cast());
                _mm512_mask_storeu_epi8(d.add(i * 64).cast(), m, sv);
            }
        }
        let tail = full * 64;
        super::blend_tail(&mut dst[tail..], &src[tail..], words.get(full).copied().unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scatter_selected_matches_the_scalar_version() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Miri interprets the portable version only: small pages suffice.
        let larger: &[usize] = if cfg!(miri) { &[] } else { &[4096, 4099, 65_536 + 3] };
        for len in (1..if cfg!(miri) { 40 } else { 300 }).chain(larger.iter().copied()) {
            let mask: Vec<u8> = (0..len.div_ceil(8))
                .map(|i| {
                    let r = next();
                    let m = [0u8, 0xFF, r as u8][(r >> 62) as usize % 3];
                    // No bit past the page's end.
                    if 8 * i + 8 > len {
                        m & ((1u16 << (len - 8 * i)) - 1) as u8
                    } else {
                        m
                    }
                })
                .collect();
            let n: usize = mask.iter().map(|m| m.count_ones() as usize).sum();
            let selected: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let page: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut want = page.clone();
            scatter_selected_scalar(&mut want, &mask, &selected, 0, 0);
            let mut got = page.clone();
            scatter_selected(&mut got, &mask, &selected);
            assert_eq!(got, want, "len {len}");
            // The reference: every set bit takes the next selected byte.
            let mut at = 0;
            for (b, p) in page.iter().enumerate() {
                if mask[b / 8] >> (b % 8) & 1 == 1 {
                    assert_eq!(want[b], selected[at]);
                    at += 1;
                } else {
                    assert_eq!(want[b], *p);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn blend_matches_scalar(
            seed in proptest::collection::vec(any::<u8>(), 1..1500),
            words in proptest::collection::vec(prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()], 24),
        ) {
            let len = seed.len();
            let words = &words[..len.div_ceil(64)];
            let mut src: Vec<u8> = seed.iter().map(|b| b.wrapping_mul(7)).collect();
            for (i, b) in src.iter_mut().enumerate() {
                if words[i / 64] >> (i % 64) & 1 == 0 {
                    *b = 0;
                }
            }
            let mut want = seed.clone();
            blend_scalar(&mut want, &src, words);
            let mut a = seed.clone();
            blend(&mut a, &src, words);
            prop_assert_eq!(&a, &want);
            // Every vector kernel this CPU runs, not only the one `blend`
            // picks here.
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            {
                type Kernel = unsafe fn(&mut [u8], &[u8], &[u64]);
                let avx512 = std::arch::is_x86_feature_detected!("avx512bw");
                // Both forms of the AVX-512 loop: which one a large page
                // gets depends on the CPU's vendor.
                let kernels: [(&str, bool, Kernel); 4] = [
                    ("avx512bw", avx512, x86::blend_avx512_with::<false>),
                    ("avx512bw, prefetching", avx512, x86::blend_avx512_with::<true>),
                    ("avx2", std::arch::is_x86_feature_detected!("avx2"), x86::blend_avx2),
                    ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1"), x86::blend_sse41),
                ];
                for (feature, present, kernel) in kernels {
                    if present {
                        let mut v = seed.clone();
                        // SAFETY: the CPU has the kernel's feature; equal
                        // lengths and enough mask words.
                        unsafe { kernel(&mut v, &src, words) };
                        prop_assert_eq!(&v, &want, "{}", feature);
                    }
                }
            }
        }

        #[test]
        fn run_copy_matches_scalar(
            lens in proptest::collection::vec(0u64..200, 0..40),
            gaps in proptest::collection::vec(0u64..70, 40),
            extra in 0u64..3,
            shape in 0u8..4,
        ) {
            // Runs from lengths and gaps; `extra` > 0 makes the last run (or
            // the data) too short, which both versions must stop at. Shape 1:
            // lengths of 30 to 66 (the two-block moves of 32 to 64 bytes,
            // and the one-move path of runs of exactly 64); shapes 2 and 3:
            // three runs in four, or fifteen in sixteen, of exactly 64 bytes
            // (groups of eight one-line runs, and groups with another
            // length among them, in any place).
            let lens: Vec<u64> = match shape {
                1 => lens.iter().map(|l| 30 + l % 37).collect(),
                2 => lens.iter().map(|&l| if l % 4 == 0 { l } else { 64 }).collect(),
                3 => lens.iter().map(|&l| if l % 16 == 0 { l } else { 64 }).collect(),
                _ => lens,
            };
            let mut runs = Vec::new();
            let mut at = 0u32;
            for (l, g) in lens.iter().zip(&gaps) {
                at += *g as u32;
                runs.push(NarrowRun { offset: at, len: *l as u32 });
                at += *l as u32;
            }
            let at = u64::from(at);
            let total: u64 = lens.iter().sum();
            let page_len = (at + 7).saturating_sub(if extra == 1 { 8 } else { 0 });
            let data_len = total.saturating_sub(if extra == 2 { 1 } else { 0 });
            let data: Vec<u8> = (0..data_len).map(|i| (i * 31 + 7) as u8).collect();
            let seed: Vec<u8> = (0..page_len).map(|i| (i * 13) as u8).collect();
            let mut a = seed.clone();
            copy_runs_scalar(&mut a, runs.iter().map(|r| r.wide()), &data);
            if extra == 0 {
                let mut b = seed.clone();
                // SAFETY: sorted, apart, inside the page, lengths summing
                // to the data's.
                unsafe { copy_runs_valid(&mut b, &runs, &data) };
                prop_assert_eq!(&a, &b);
                // Both orders of loads and stores, whatever the size picks.
                #[cfg(all(target_arch = "x86_64", not(miri)))]
                if x86::has_avx512_bw_vl() {
                    for split in [false, true] {
                        let mut c = seed.clone();
                        // SAFETY: as above; the CPU has AVX-512BW and VL.
                        unsafe {
                            if split {
                                x86::copy_runs_by8::<true>(&mut c, &runs, &data)
                            } else {
                                x86::copy_runs_by8::<false>(&mut c, &runs, &data)
                            }
                        };
                        prop_assert_eq!(&a, &c, "four loads at a time: {}", split);
                    }
                }
                let mut want = seed.clone();
                let mut k = 0usize;
                for r in runs.iter().map(|r| r.wide()) {
                    let (o, n) = (r.offset as usize, r.len as usize);
                    want[o..o + n].copy_from_slice(&data[k..k + n]);
                    k += n;
                }
                prop_assert_eq!(a, want);
            }
        }

        #[test]
        fn crc_matches_library(bytes in proptest::collection::vec(any::<u8>(), 0..1200), seed: u32) {
            prop_assert_eq!(crc32c(&bytes), crc32c::crc32c(&bytes));
            prop_assert_eq!(crc32c_append(seed, &bytes), crc32c::crc32c_append(seed, &bytes));
        }

        #[test]
        fn combine_matches_library(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            let c = crc32c_combine(crc32c(&a), crc32c(&b), b.len() as u64);
            prop_assert_eq!(c, crc32c(&whole));
            prop_assert_eq!(c, crc32c::crc32c_combine(crc32c(&a), crc32c(&b), b.len()));
        }

        #[test]
        fn combine_of_long_lengths_matches_library(x: u32, y: u32, n in 0u64..(1 << 44)) {
            prop_assert_eq!(crc32c_combine(x, y, n), crc32c::crc32c_combine(x, y, n as usize));
        }
    }
}
