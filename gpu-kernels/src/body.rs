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

use shared_types::{kind, ApplyDesc, InlineApply, MergeArgs, RunDesc, INLINE_BYTES, INLINE_RUNS};

/// Bytes handled by one window.
pub const LANE: usize = 16;

/// Threads per block the host launches every kernel with.
pub const BLOCK: u32 = 256;

/// Threads per warp.
pub const WARP: u32 = 32;

/// Longest run the host hands to the sparse kernels (longer runs are
/// split): it bounds the work of one group of runs, so that the groups of
/// one page spread over the warps. Any length is correct.
pub const RUN_CHUNK: u64 = 256;

/// Length of the piece starting `o` bytes into a run of `len` bytes at page
/// offset `offset`, when runs are cut into pieces of at most `chunk` bytes
/// (rounded down to a multiple of 16, at least 16) whose inner boundaries
/// fall on 16-byte page offsets: every piece but the first starts on a
/// 16-byte boundary, so cutting a run adds no partial window. `o < len`.
#[inline(always)]
pub const fn piece_len(offset: u64, len: u64, o: u64, chunk: u64) -> u64 {
    let chunk = if chunk < 16 { 16 } else { chunk & !15 };
    let at = offset + o;
    let end = (at + chunk) & !15;
    let rest = len - o;
    if end - at < rest {
        end - at
    } else {
        rest
    }
}

/// Number of pieces [`piece_len`] cuts a run of `len` bytes at page offset
/// `offset` into.
#[inline(always)]
pub const fn pieces(offset: u64, len: u64, chunk: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let first = piece_len(offset, len, 0, chunk);
    let chunk = if chunk < 16 { 16 } else { chunk & !15 };
    1 + (len - first).div_ceil(chunk)
}

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
    let lo = base.saturating_sub(dst);
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
    if hi - lo == LANE as u64 && (src + lo).is_multiple_of(LANE as u64) {
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
    if hi - lo == LANE as u64 && (src + lo).is_multiple_of(LANE as u64) {
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
    if hi - lo == 16 && (a + lo).is_multiple_of(16) && (b + lo).is_multiple_of(16) {
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
    let aligned = (a.out_data + lo).is_multiple_of(16)
        && (a.data1 + lo).is_multiple_of(16)
        && (a.data2 + lo).is_multiple_of(16);
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

// ---------------------------------------------------------------------------
// Sparse apply
//
// Runs are applied in *groups* of up to [`GROUP`] consecutive runs, one warp
// per group. Lane `j` loads run `j` of the group and the warp takes an
// exclusive prefix sum of the runs' window counts, which flattens the group
// into one sequence of windows. The warp then sweeps that sequence: in each
// sweep lane `l` moves flattened windows `base + l`, `base + l + 32`, ...
// (four windows in the sparse kernel, two in the batched kernel, whose
// dense path needs the registers; every load is issued before the first
// store), finding the
// run of each window by a 5-step binary search over the prefix sums held by
// the lanes. Every lane is busy whatever the run lengths (a 16-byte run and
// a 1 KiB run cost the same per byte), consecutive lanes touch consecutive
// windows (coalesced), and there is no per-run launch or per-run warp.
//
// A window whose source bytes have the same alignment modulo 16 as the
// destination (always the case for the host's packer, which places run
// bytes congruent to their page address) is one 16-byte load; otherwise
// one or two 16-byte loads and a funnel shift. Full windows are one 16-byte
// store; partial head and tail windows store only their bytes, in aligned
// 8/4/2/1-byte pieces, so runs that share a 16-byte block never overwrite
// each other.
// ---------------------------------------------------------------------------

/// Runs per sparse group: one warp applies a group, lane `j` holding run `j`.
pub const GROUP: u64 = WARP as u64;

/// Windows each lane moves per sweep of a group: [`WIDE`] sweeps move four,
/// narrow ones two (fewer registers, for kernels that also run other paths).
pub const fn unroll(wide: bool) -> u64 {
    if wide {
        4
    } else {
        2
    }
}

/// Sweep width of the sparse kernel ([`unroll`]).
pub const WIDE: bool = true;
/// Sweep width of the batched kernel ([`unroll`]).
pub const NARROW: bool = false;

/// What one lane sees of a group of up to [`GROUP`] runs.
///
/// On the device the values live in the registers of the lane that loaded
/// run `j` and are fetched with warp shuffles, so **every lane of the warp
/// must call these methods together** (the sparse bodies only call them in
/// warp-uniform control flow). On the host ([`MemGroup`]) they are plain
/// array reads.
pub trait RunGroup {
    /// Descriptor of run `j < GROUP`; all zero past the group's end.
    fn run(&self, j: u32) -> RunDesc;
    /// First flattened window of run `j < GROUP`: the sum of the window
    /// counts of runs `0 .. j`. Runs past the group's end start at
    /// [`RunGroup::total`].
    fn start(&self, j: u32) -> u64;
    /// Windows in the whole group.
    fn total(&self) -> u64;
}

/// How a warp loads a group of runs (see [`RunGroup`]).
pub trait Lanes {
    /// The per-lane view of a loaded group.
    type Group: RunGroup;
    /// Load runs `r0 .. r0 + count` (`count <= GROUP`) of the array at
    /// `runs` for a page at `page`, as lane `lane`. Every lane of the warp
    /// calls it with the same arguments but `lane`.
    ///
    /// # Safety
    /// Runs `r0 .. r0 + count` must be readable [`RunDesc`]s.
    unsafe fn group(&self, page: u64, runs: u64, r0: u64, count: u64, lane: u32) -> Self::Group;
}

/// A group read from memory: the host model of a warp's group, used by the
/// CPU tests and by any caller that runs the bodies one lane at a time.
#[derive(Clone, Copy, Debug)]
pub struct MemGroup {
    runs: [RunDesc; GROUP as usize],
    starts: [u64; GROUP as usize],
    total: u64,
}

impl RunGroup for MemGroup {
    #[inline(always)]
    fn run(&self, j: u32) -> RunDesc {
        self.runs[j as usize]
    }
    #[inline(always)]
    fn start(&self, j: u32) -> u64 {
        self.starts[j as usize]
    }
    #[inline(always)]
    fn total(&self) -> u64 {
        self.total
    }
}

/// [`Lanes`] for callers that run one lane at a time: each lane reads the
/// whole group from memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemLanes;

impl Lanes for MemLanes {
    type Group = MemGroup;
    #[inline(always)]
    unsafe fn group(&self, page: u64, runs: u64, r0: u64, count: u64, _lane: u32) -> MemGroup {
        let mut g =
            MemGroup { runs: [RunDesc::default(); GROUP as usize], starts: [0; GROUP as usize], total: 0 };
        let mut j = 0;
        while j < GROUP as usize {
            g.starts[j] = g.total;
            if (j as u64) < count {
                // SAFETY: r0 + j < r0 + count, readable per the caller.
                g.runs[j] = unsafe { run_at(runs, r0 + j as u64) };
                g.total += run_windows(page, &g.runs[j]);
            }
            j += 1;
        }
        // Runs past the end start at the total, like the device's scan.
        let mut j = count as usize;
        while j < GROUP as usize {
            g.starts[j] = g.total;
            j += 1;
        }
        g
    }
}

/// The run of flattened window `s`: the largest `j` with `start(j) <= s`
/// (five uniform steps, so every lane shuffles together on the device).
#[inline(always)]
pub fn locate<G: RunGroup>(g: &G, s: u64) -> u32 {
    let mut lo = 0u32;
    let mut step = GROUP as u32 / 2;
    while step > 0 {
        let m = lo + step;
        if g.start(m) <= s {
            lo = m;
        }
        step /= 2;
    }
    lo
}

/// One loaded window waiting for its store: bytes `from .. to` of the
/// little-endian 128-bit value `(lo, hi)` go to the same bytes of the
/// 16-aligned block at `block`. Empty when `from >= to`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// 16-aligned destination block.
    pub block: u64,
    /// First byte of the block to write.
    pub from: u32,
    /// One past the last byte of the block to write.
    pub to: u32,
    /// Bytes 0..8 of the value.
    pub lo: u64,
    /// Bytes 8..16 of the value.
    pub hi: u64,
}

#[inline(always)]
fn lane_words(v: Lane) -> (u64, u64) {
    (u64::from(v.0[0]) | (u64::from(v.0[1]) << 32), u64::from(v.0[2]) | (u64::from(v.0[3]) << 32))
}

/// `(a, b) >> k` over the 256-bit little-endian value `b:a`, low 128 bits;
/// `0 < k < 128`.
#[inline(always)]
fn funnel_shr(a: (u64, u64), b: (u64, u64), k: u32) -> (u64, u64) {
    let (x0, x1, x2) = if k >= 64 { (a.1, b.0, b.1) } else { (a.0, a.1, b.0) };
    let r = k & 63;
    if r == 0 {
        (x0, x1)
    } else {
        ((x0 >> r) | (x1 << (64 - r)), (x1 >> r) | (x2 << (64 - r)))
    }
}

/// `a << k` over 128 bits; `0 < k < 128`.
#[inline(always)]
fn shl128(a: (u64, u64), k: u32) -> (u64, u64) {
    let (y0, y1) = if k >= 64 { (0, a.0) } else { (a.0, a.1) };
    let r = k & 63;
    if r == 0 {
        (y0, y1)
    } else {
        (y0 << r, (y1 << r) | (y0 >> (64 - r)))
    }
}

/// Load window `i` of run `run` (destination page at `page`, source bytes
/// at `data + run.data_offset`).
///
/// # Safety
/// The run must lie inside the page. The source is read in whole 16-aligned
/// blocks: every 16-aligned block that holds one of the run's source bytes
/// must be readable (true for any buffer whose allocation is 16-aligned and
/// a multiple of 16 bytes long).
#[inline(always)]
pub unsafe fn load_run_window(page: u64, data: u64, run: &RunDesc, i: u64) -> Loaded {
    let dst = page + run.offset;
    let (lo, hi) = window(dst, run.len, i);
    if lo >= hi {
        return Loaded::default();
    }
    let d = dst + lo;
    let s = data + run.data_offset + lo;
    let n = (hi - lo) as u32;
    let from = (d & 15) as u32;
    let sa = (s & 15) as u32;
    let first = s & !15;
    // SAFETY: first is the 16-aligned block holding source byte s.
    let a = lane_words(unsafe { load_lane(first) });
    let v = if sa == from {
        a
    } else if sa > from {
        // Byte s moves down to position `from`; the last bytes may come
        // from the next block.
        let b = if sa + n > 16 {
            // SAFETY: the next block holds source byte s + n - 1.
            lane_words(unsafe { load_lane(first + 16) })
        } else {
            (0, 0)
        };
        funnel_shr(a, b, 8 * (sa - from))
    } else {
        // sa + n <= from + n <= 16: every byte is in the first block.
        shl128(a, 8 * (from - sa))
    };
    Loaded { block: d & !15, from, to: from + n, lo: v.0, hi: v.1 }
}

/// Store a [`Loaded`] window: one 16-byte store when it is the whole
/// block, otherwise aligned 8/4/2/1-byte pieces of its bytes only.
///
/// # Safety
/// Bytes `from .. to` of the block must be writable and written by no
/// other thread meanwhile.
#[inline(always)]
pub unsafe fn store_loaded(w: &Loaded) {
    if w.from >= w.to {
        return;
    }
    if w.from == 0 && w.to == 16 {
        let v = Lane([w.lo as u32, (w.lo >> 32) as u32, w.hi as u32, (w.hi >> 32) as u32]);
        // SAFETY: the whole 16-aligned block is the caller's.
        unsafe { store_lane(w.block, v) };
        return;
    }
    let mut k = w.from;
    while k < w.to {
        let v = if k < 8 { w.lo >> (8 * k) } else { w.hi >> (8 * (k - 8)) };
        let rest = w.to - k;
        let at = w.block + u64::from(k);
        // SAFETY: each piece lies in bytes from .. to and is aligned to its
        // size (the block is 16-aligned and k a multiple of the size).
        unsafe {
            if k.is_multiple_of(8) && rest >= 8 {
                (at as *mut u64).write(v);
                k += 8;
            } else if k.is_multiple_of(4) && rest >= 4 {
                (at as *mut u32).write(v as u32);
                k += 4;
            } else if k.is_multiple_of(2) && rest >= 2 {
                (at as *mut u16).write(v as u16);
                k += 2;
            } else {
                (at as *mut u8).write(v as u8);
                k += 1;
            }
        }
    }
}

/// Move every window of a loaded group as lane `lane` of its warp (see the
/// section comment above).
///
/// # Safety
/// Every run of the group inside the page at `page` and readable at `data`
/// as [`load_run_window`] requires; no other thread writes the runs' bytes.
#[inline(always)]
pub unsafe fn sweep_group<G: RunGroup, const W: bool>(g: &G, page: u64, data: u64, lane: u64) {
    let total = g.total();
    let w = WARP as u64;
    let mut base = 0u64;
    while base < total {
        // Uniform part: every lane searches and shuffles, even past the end;
        // every load is issued before the first store (written out, so that
        // the values stay in registers).
        let s = base + lane;
        // SAFETY: per the caller.
        let a = unsafe { load_flat(g, page, data, total, s) };
        // SAFETY: per the caller.
        let b = unsafe { load_flat(g, page, data, total, s + w) };
        let (c, d) = if W {
            // SAFETY: per the caller.
            unsafe {
                (load_flat(g, page, data, total, s + 2 * w), load_flat(g, page, data, total, s + 3 * w))
            }
        } else {
            (Loaded::default(), Loaded::default())
        };
        // SAFETY: windows of runs are disjoint; per the caller. (`c` and `d`
        // are empty in narrow sweeps: no store.)
        unsafe {
            store_loaded(&a);
            store_loaded(&b);
            store_loaded(&c);
            store_loaded(&d);
        }
        base += unroll(W) * w;
    }
}

/// Load flattened window `s` of a group of `total` windows (an empty
/// [`Loaded`] past the end). Warp-uniform: every lane must call it.
///
/// # Safety
/// As [`sweep_group`].
#[inline(always)]
unsafe fn load_flat<G: RunGroup>(g: &G, page: u64, data: u64, total: u64, s: u64) -> Loaded {
    let j = locate(g, s);
    let (r, t) = (g.run(j), g.start(j));
    if s < total {
        // SAFETY: s < total, so window s - start(j) lies in run j; per the caller.
        unsafe { load_run_window(page, data, &r, s - t) }
    } else {
        Loaded::default()
    }
}

/// Sparse apply over runs: warp `warp` of `nwarps` takes groups `warp`,
/// `warp + nwarps`, ... of [`GROUP`] runs; `lane` is its lane.
///
/// # Safety
/// Every run must lie inside the page at `page`, and its source bytes
/// readable at `data` as [`load_run_window`] requires; runs do not overlap.
/// On the device every lane of the warp must call it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn apply_runs<L: Lanes, const W: bool>(
    lanes: &L,
    page: u64,
    data: u64,
    runs: u64,
    run_count: u64,
    warp: u64,
    nwarps: u64,
    lane: u64,
) {
    let groups = run_count.div_ceil(GROUP);
    let mut g = warp;
    while g < groups {
        let r0 = g * GROUP;
        let count = if run_count - r0 < GROUP { run_count - r0 } else { GROUP };
        // SAFETY: runs r0 .. r0 + count < run_count are readable.
        let grp = unsafe { lanes.group(page, runs, r0, count, lane as u32) };
        // SAFETY: per the caller.
        unsafe { sweep_group::<_, W>(&grp, page, data, lane) };
        g += nwarps;
    }
}

/// Apply one batch descriptor with a cooperating group of threads: thread
/// `tid` of `nthreads` (in warps of [`WARP`]). Dense and full deltas are
/// split by windows over all threads; sparse deltas by groups of runs over
/// the warps ([`apply_runs`]).
///
/// # Safety
/// The descriptor's addresses must be valid for its kind (see
/// [`ApplyDesc`] and [`load_run_window`]), and no other group may write
/// the bytes it selects. `nthreads` must be a positive multiple of [`WARP`]
/// and `tid < nthreads`; on the device every thread of the block calls it.
#[inline(always)]
pub unsafe fn apply_desc<L: Lanes>(d: &ApplyDesc, tid: u64, nthreads: u64, lanes: &L) {
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
            unsafe {
                apply_runs::<_, NARROW>(lanes, d.page, d.data, d.runs, d.run_count, warp, nwarps, lane)
            };
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Inline apply: a small delta carried in the launch's parameters
// ([`InlineApply`]), one thread per data byte. The run of byte `k` is found
// by a scan over the (at most 16) runs with a fixed trip count, so every
// lane runs the same instructions; bytes of different runs may share a
// word, and byte stores never write a neighbour's byte.
// ---------------------------------------------------------------------------

/// Bytes of `a`'s data the inline kernel writes: `a.bytes`, at most
/// [`INLINE_BYTES`].
#[inline(always)]
pub fn inline_len(a: &InlineApply) -> u64 {
    if a.bytes < INLINE_BYTES as u64 {
        a.bytes
    } else {
        INLINE_BYTES as u64
    }
}

/// Where byte `k < inline_len(a)` of an inline apply's data goes: the
/// device address in the last run in use whose `data_offset` is at most
/// `k`. Reads only the run table (constant indices after unrolling), so
/// the parameters stay in the parameter space on the device.
#[inline(always)]
pub fn inline_dst(a: &InlineApply, k: u64) -> u64 {
    let count = if a.count < INLINE_RUNS as u64 { a.count as usize } else { INLINE_RUNS };
    let mut run = a.runs[0];
    let mut j = 1;
    while j < INLINE_RUNS {
        let next = a.runs[j];
        if j < count && next.data_offset <= k {
            run = next;
        }
        j += 1;
    }
    run.offset.wrapping_add(k.wrapping_sub(run.data_offset))
}

/// CPU checks of every body against a naive version. `cargo test` in this
/// crate runs each one; the host crate runs [`selftest::ALL`] from its own
/// tests (feature `selftest`), so the workspace's test command covers them.
#[cfg(any(test, feature = "selftest"))]
pub mod selftest {
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

    /// Panics when the check fails.
    pub fn pieces_partition_runs_on_aligned_boundaries() {
        for chunk in [0u64, 1, 16, 17, 100, 256, 1024] {
            for offset in [0u64, 1, 3, 15, 16, 17, 4095] {
                for len in [1u64, 2, 15, 16, 17, 255, 256, 257, 1000, 1024, 1025, 5000] {
                    let mut o = 0;
                    let mut n = 0;
                    while o < len {
                        let k = piece_len(offset, len, o, chunk);
                        assert!(k >= 1 && k <= chunk.max(16), "{chunk} {offset} {len} {o} {k}");
                        if o > 0 {
                            assert_eq!((offset + o) % 16, 0, "inner cut not aligned");
                        }
                        o += k;
                        n += 1;
                    }
                    assert_eq!(o, len);
                    assert_eq!(pieces(offset, len, chunk), n, "{chunk} {offset} {len}");
                }
            }
        }
        assert_eq!(pieces(7, 0, 256), 0);
    }

    /// Panics when the check fails.
    pub fn window_partition_covers_each_byte_once() {
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

    /// Panics when the check fails.
    pub fn bit_tricks_match_naive() {
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

    /// Panics when the check fails.
    pub fn zero_and_copy_any_size_and_alignment() {
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

    /// Panics when the check fails.
    pub fn blend_matches_naive() {
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

    /// Panics when the check fails.
    pub fn compare_matches_naive() {
        let mut r = Rng(3);
        for len in LENS {
            for (aoff, boff) in [(0, 0), (1, 1), (0, 3)] {
                let mut a = Buf::new(len + 32);
                let mut b = Buf::new(len + 32);
                let x = r.bytes(len);
                let mut y = x.clone();
                for v in y.iter_mut() {
                    if r.next().is_multiple_of(3) {
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

    /// Panics when the check fails.
    pub fn merge_matches_naive() {
        let mut r = Rng(4);
        for len in LENS {
            for off in [0usize, 3] {
                let b1: Vec<bool> = (0..len).map(|_| r.next().is_multiple_of(3)).collect();
                let b2: Vec<bool> = (0..len).map(|_| r.next().is_multiple_of(3)).collect();
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

    /// Skew that places a run's bytes congruent to their page address.
    const SAME: u64 = u64::MAX;

    /// Apply `runs` (offset, len) of a page at `page_off` from a data buffer
    /// whose run bytes start at `data_off` + packed position + `skew(k)`,
    /// with the lane model, and compare with a byte loop.
    fn sparse_case(
        r: &mut Rng,
        len: usize,
        runs_v: &[(u64, u64)],
        page_off: usize,
        skews: &[u64],
        nwarps: u64,
    ) {
        let mut page = Buf::new(len + 32);
        let fill = r.bytes(page.bytes().len());
        page.bytes().copy_from_slice(&fill);
        let mut want = fill.clone();
        let pa = page.addr(page_off);
        let total: u64 = runs_v.iter().map(|&(_, l)| l + 16).sum();
        let mut data = Buf::new(total as usize + 64);
        let da = data.addr(0);
        let mut runs = Vec::new();
        let mut at = 0u64;
        for (k, &(o, l)) in runs_v.iter().enumerate() {
            at += match skews[k % skews.len()] {
                SAME => (pa + o).wrapping_sub(da + at) & 15,
                sk => sk,
            };
            let bytes = r.bytes(l as usize);
            data.bytes()[at as usize..(at + l) as usize].copy_from_slice(&bytes);
            want[page_off + o as usize..page_off + (o + l) as usize].copy_from_slice(&bytes);
            runs.push(RunDesc { offset: o, len: l, data_offset: at });
            at += l;
        }
        let (rp, rn) = (runs.as_ptr() as u64, runs.len() as u64);
        for wide in [WIDE, NARROW] {
            page.bytes()[..].copy_from_slice(&fill);
            for tid in 0..nwarps * 32 {
                let (w, l) = (tid / 32, tid % 32);
                // SAFETY: every run lies in the page; data blocks are in the buffer.
                unsafe {
                    if wide {
                        apply_runs::<_, WIDE>(&MemLanes, pa, da, rp, rn, w, nwarps, l)
                    } else {
                        apply_runs::<_, NARROW>(&MemLanes, pa, da, rp, rn, w, nwarps, l)
                    }
                };
            }
            assert_eq!(
                page.bytes(),
                &want[..],
                "wide {wide} len {len} page_off {page_off} skews {skews:?} runs {runs_v:?}"
            );
        }
    }

    /// Panics when the check fails.
    pub fn locate_finds_the_run_of_every_window() {
        let mut r = Rng(23);
        for _ in 0..2000 {
            // Window counts from 0 (an empty run) to long runs, a group of
            // 1 ..= 32 runs, the rest padding.
            let count = 1 + (r.next() % 32) as usize;
            let spread = [1u64, 2, 5, 17, 70][(r.next() % 5) as usize];
            let mut g = MemGroup {
                runs: [RunDesc::default(); GROUP as usize],
                starts: [0; GROUP as usize],
                total: 0,
            };
            for j in 0..GROUP as usize {
                g.starts[j] = g.total;
                if j < count {
                    g.total += r.next() % (spread + 1);
                }
            }
            for s in 0..g.total {
                let want = (0..GROUP as usize).rev().find(|&j| g.starts[j] <= s).unwrap_or(0);
                assert_eq!(locate(&g, s), want as u32, "window {s} {g:?}");
            }
        }
    }

    /// Panics when the check fails.
    pub fn sparse_groups_match_naive_for_any_run_size_and_alignment() {
        let mut r = Rng(11);
        // Fixed run sizes, as in the benchmark rows, plus odd ones.
        for run_len in [1u64, 3, 15, 16, 17, 64, 100, 256, 1000, 1024, 4096] {
            for gap in [1u64, 7, 16, 33] {
                let len = 9000usize;
                let mut runs_v = Vec::new();
                let mut o = gap % 5;
                while o + run_len <= len as u64 && runs_v.len() < 200 {
                    runs_v.push((o, run_len));
                    o += run_len + gap;
                }
                for page_off in [0usize, 5, 8] {
                    // Same alignment as the page (the packer's layout), and skewed.
                    for skews in [&[SAME][..], &[0], &[3], &[1, 14, 8, 0, 9]] {
                        for nwarps in [1u64, 3] {
                            sparse_case(&mut r, len, &runs_v, page_off, skews, nwarps);
                        }
                    }
                }
            }
        }
        // Random runs of mixed sizes, including zero-length ones, group edges.
        for round in 0..40 {
            let len = 1 + (r.next() % 20_000) as usize;
            let mut runs_v = Vec::new();
            let mut o = r.next() % 40;
            while o < len as u64 {
                let l = if round % 7 == 0 && r.next().is_multiple_of(9) {
                    0
                } else {
                    1 + r.next() % ((len as u64 - o).min(if r.next().is_multiple_of(4) { 3000 } else { 40 }))
                };
                runs_v.push((o, l));
                o += l + 1 + r.next() % 60;
            }
            let skews = [r.next() % 16, r.next() % 16, 0];
            let (page_off, nwarps) = ((r.next() % 16) as usize, 1 + r.next() % 4);
            sparse_case(&mut r, len, &runs_v, page_off, &skews, nwarps);
        }
    }

    /// Panics when the check fails.
    pub fn shifts_and_partial_stores_match_bytes() {
        let mut r = Rng(12);
        for _ in 0..2000 {
            let a = (r.next(), r.next());
            let b = (r.next(), r.next());
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&a.0.to_le_bytes());
            bytes[8..16].copy_from_slice(&a.1.to_le_bytes());
            bytes[16..24].copy_from_slice(&b.0.to_le_bytes());
            bytes[24..].copy_from_slice(&b.1.to_le_bytes());
            let k = 1 + (r.next() % 127) as u32;
            let (lo, hi) = funnel_shr(a, b, k);
            let got: u128 = u128::from(lo) | (u128::from(hi) << 64);
            let want = u128::from_le_bytes(bytes[..16].try_into().unwrap_or([0; 16])) >> k
                | u128::from_le_bytes(bytes[16..].try_into().unwrap_or([0; 16])) << (128 - k);
            assert_eq!(got, want, "shr {k}");
            let (lo, hi) = shl128(a, k);
            let want = (u128::from(a.0) | (u128::from(a.1) << 64)) << k;
            assert_eq!(u128::from(lo) | (u128::from(hi) << 64), want, "shl {k}");
        }
        for from in 0..16u32 {
            for to in from..=16u32 {
                let mut blk = Buf::new(16);
                blk.bytes().fill(0xEE);
                let v = (0x0706_0504_0302_0100u64, 0x0F0E_0D0C_0B0A_0908u64);
                let w = Loaded { block: blk.addr(0), from, to, lo: v.0, hi: v.1 };
                // SAFETY: the block is 16 aligned writable bytes.
                unsafe { store_loaded(&w) };
                for k in 0..16u32 {
                    let want = if k >= from && k < to { k as u8 } else { 0xEE };
                    assert_eq!(blk.bytes()[k as usize], want, "from {from} to {to} byte {k}");
                }
            }
        }
    }

    /// Panics when the check fails.
    pub fn batch_descriptors_apply_like_naive() {
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
                unsafe { apply_desc(&sparse, tid, 64, &MemLanes) };
            }
            assert_eq!(page.bytes(), &want[..], "sparse, page offset {page_off}");

            // Dense.
            let bits: Vec<bool> = (0..len).map(|_| r.next().is_multiple_of(2)).collect();
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
                unsafe { apply_desc(&dense, tid, 32, &MemLanes) };
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
                unsafe { apply_desc(&full, tid, 256, &MemLanes) };
            }
            want[page_off..page_off + len].copy_from_slice(&full_src);
            assert_eq!(page.bytes(), &want[..], "full, page offset {page_off}");
        }
    }

    /// Define [`ALL`] and one `#[test]` per check.
    macro_rules! checks {
        ($($name:ident),* $(,)?) => {
            /// Every check with its name.
            pub const ALL: &[(&str, fn())] = &[$((stringify!($name), $name)),*];
            #[cfg(test)]
            mod run {
                $(
                    #[test]
                    fn $name() {
                        super::$name()
                    }
                )*
            }
        };
    }
    checks!(
        pieces_partition_runs_on_aligned_boundaries,
        window_partition_covers_each_byte_once,
        bit_tricks_match_naive,
        zero_and_copy_any_size_and_alignment,
        blend_matches_naive,
        compare_matches_naive,
        merge_matches_naive,
        locate_finds_the_run_of_every_window,
        sparse_groups_match_naive_for_any_run_size_and_alignment,
        shifts_and_partial_stores_match_bytes,
        batch_descriptors_apply_like_naive,
    );
}
