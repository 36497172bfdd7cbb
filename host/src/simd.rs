//! Runtime-dispatched vector kernels for the two hottest byte loops: the
//! dense masked blend and the CRC32C of small log records.
//!
//! Each kernel has a portable scalar version, which is the reference (and
//! what Miri and non-x86 targets run); the x86_64 versions are chosen at run
//! time by CPU feature detection and give bit-identical results (tested
//! against the scalar versions with proptest).

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

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support SSE4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn crc32c_short(bytes: &[u8]) -> u32 {
        let mut c = u64::from(!0u32);
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

    /// # Safety
    /// The CPU must support AVX-512BW (and F); `dst.len() == src.len()` and
    /// `words` holds at least `dst.len() / 64` words.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn blend_avx512(dst: &mut [u8], src: &[u8], words: &[u64]) {
        let full = (dst.len() / 64).min(words.len()).min(src.len() / 64);
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        for (i, &m) in words[..full].iter().enumerate() {
            if m == 0 {
                continue;
            }
            // SAFETY: i * 64 + 64 <= full * 64 <= len of both slices;
            // unaligned loads and stores are allowed.
            unsafe {
                let sv = _mm512_loadu_si512(s.add(i * 64).cast());
                let dv = _mm512_loadu_si512(d.add(i * 64).cast());
                _mm512_storeu_si512(d.add(i * 64).cast(), _mm512_mask_mov_epi8(dv, m, sv));
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
            let mut a = seed.clone();
            let mut b = seed.clone();
            blend(&mut a, &src, words);
            blend_scalar(&mut b, &src, words);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn crc_matches_library(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            prop_assert_eq!(crc32c(&bytes), crc32c::crc32c(&bytes));
        }
    }
}
