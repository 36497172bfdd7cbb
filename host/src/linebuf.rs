//! Byte storage that starts on a cache line.
//!
//! A sparse delta's bytes are read run by run and stored into a page, and
//! every page of the engine starts on a 64-byte line. When the delta's bytes
//! start on a line too, a run that sits on whole lines of the page (the
//! common shape of line-granular writes) is read from whole lines as well;
//! from a heap `Vec<u8>`, which the system allocator places 16 bytes past a
//! line, every 64-byte load of such a run straddles two lines. Some parts
//! (measured on Sapphire Rapids class hosts) copy such runs at well under
//! memcpy's speed.
//!
//! [`LineBuf`] keeps its bytes in a `Vec` of 64-byte, 64-aligned lines and
//! exposes them through `bytemuck`, so it needs no unsafe code. [`ByteBuf`]
//! holds up to [`INLINE`] bytes inside itself (small writes allocate
//! nothing) and spills to a [`LineBuf`]; it can also adopt a caller's
//! `Vec<u8>` as it is, with no copy, where the allocator placed it.

use bytemuck::{Pod, Zeroable};

/// Bytes per line.
const LINE: usize = 64;

/// One cache line of bytes, aligned as one.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; LINE]);

/// Bytes on whole 64-byte lines: the first byte is 64-byte aligned.
#[derive(Clone, Default)]
pub(crate) struct LineBuf {
    lines: Vec<Line>,
    /// Bytes in use: the first `len` bytes of `lines`; the rest of the last
    /// line is zero.
    len: usize,
}

impl LineBuf {
    /// Empty, with room for `bytes` bytes.
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self { lines: Vec::with_capacity(bytes.div_ceil(LINE)), len: 0 }
    }

    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self { lines: vec![Line::zeroed(); len.div_ceil(LINE)], len }
    }

    /// Append `bytes`.
    pub(crate) fn extend_from_slice(&mut self, mut bytes: &[u8]) {
        // Fill the last line's free tail first.
        let used = self.len % LINE;
        if used != 0 {
            let take = bytes.len().min(LINE - used);
            if let Some(last) = self.lines.last_mut() {
                last.0[used..used + take].copy_from_slice(&bytes[..take]);
            }
            self.len += take;
            bytes = &bytes[take..];
        }
        if bytes.is_empty() {
            return;
        }
        self.lines.reserve(bytes.len().div_ceil(LINE));
        let mut chunks = bytes.chunks_exact(LINE);
        self.lines.extend(chunks.by_ref().map(|c| {
            let mut l = Line::zeroed();
            l.0.copy_from_slice(c);
            l
        }));
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut l = Line::zeroed();
            l.0[..rest.len()].copy_from_slice(rest);
            self.lines.push(l);
        }
        self.len += bytes.len();
    }

    /// The bytes.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len]
    }

    /// The bytes, to write in place.
    #[inline]
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Line, u8>(&mut self.lines)[..self.len]
    }
}

/// Bytes held inline by a [`ByteBuf`] before it spills to a [`LineBuf`].
pub(crate) const INLINE: usize = 16;

/// Up to [`INLINE`] bytes inline, more on whole cache lines, or a
/// caller's vector adopted as it is.
#[derive(Clone)]
pub(crate) enum ByteBuf {
    /// `bytes[..len]`; the rest is zero.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// More than [`INLINE`] bytes, or a buffer sized for more when built.
    Lines(LineBuf),
    /// More than [`INLINE`] bytes in a vector taken over from a caller.
    Adopted(Vec<u8>),
}

impl Default for ByteBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl ByteBuf {
    /// Empty, inline.
    pub(crate) const fn new() -> Self {
        Self::Inline { len: 0, bytes: [0; INLINE] }
    }

    /// Empty, with room for `bytes` bytes (inline when they fit).
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        if bytes <= INLINE {
            Self::new()
        } else {
            Self::Lines(LineBuf::with_capacity(bytes))
        }
    }

    /// [`ByteBuf::with_capacity`], or `None` when the allocator refuses
    /// the room.
    pub(crate) fn try_with_capacity(bytes: usize) -> Option<Self> {
        if bytes <= INLINE {
            return Some(Self::new());
        }
        let mut lines = Vec::new();
        lines.try_reserve_exact(bytes.div_ceil(LINE)).ok()?;
        Some(Self::Lines(LineBuf { lines, len: 0 }))
    }

    /// A copy of `bytes`.
    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        let mut b = Self::with_capacity(bytes.len());
        b.extend_from_slice(bytes);
        b
    }

    /// `v`'s bytes: inline when they fit (`v` is then freed), else `v`
    /// itself, not copied.
    pub(crate) fn from_vec(v: Vec<u8>) -> Self {
        if v.len() <= INLINE {
            Self::from_slice(&v)
        } else {
            Self::Adopted(v)
        }
    }

    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        if len <= INLINE {
            // `len` fits in a u8: INLINE is far below 256.
            Self::Inline { len: len as u8, bytes: [0; INLINE] }
        } else {
            Self::Lines(LineBuf::zeroed(len))
        }
    }

    /// Append `more`, spilling to cache lines when the bytes no longer fit
    /// inline.
    pub(crate) fn extend_from_slice(&mut self, more: &[u8]) {
        match self {
            Self::Inline { len, bytes } => {
                let n = usize::from(*len);
                if n + more.len() <= INLINE {
                    bytes[n..n + more.len()].copy_from_slice(more);
                    *len = (n + more.len()) as u8;
                } else {
                    let mut lines = LineBuf::with_capacity(n + more.len());
                    lines.extend_from_slice(&bytes[..n]);
                    lines.extend_from_slice(more);
                    *self = Self::Lines(lines);
                }
            }
            Self::Lines(lines) => lines.extend_from_slice(more),
            Self::Adopted(v) => v.extend_from_slice(more),
        }
    }

    /// Whether the bytes are inline (no heap allocation).
    #[cfg(test)]
    pub(crate) fn is_inline(&self) -> bool {
        matches!(self, Self::Inline { .. })
    }
}

impl std::ops::Deref for ByteBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Lines(lines) => lines.as_slice(),
            Self::Adopted(v) => v,
        }
    }
}

impl std::ops::DerefMut for ByteBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Inline { len, bytes } => &mut bytes[..usize::from(*len)],
            Self::Lines(lines) => lines.as_mut_slice(),
            Self::Adopted(v) => v,
        }
    }
}

impl PartialEq for ByteBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for ByteBuf {}

impl std::fmt::Debug for ByteBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of appends holds the bytes appended, in order, and
        /// a spilled buffer starts on a line.
        #[test]
        fn appends_keep_every_byte(parts in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..150), 0..8)) {
            let mut b = ByteBuf::new();
            let mut want = Vec::new();
            for p in &parts {
                b.extend_from_slice(p);
                want.extend_from_slice(p);
                prop_assert_eq!(&*b, &want[..]);
            }
            prop_assert_eq!(b.is_inline(), want.len() <= INLINE);
            if !b.is_inline() {
                prop_assert_eq!(b.as_ptr() as usize % LINE, 0);
            }
            prop_assert_eq!(ByteBuf::from_slice(&want), b.clone());
            prop_assert_eq!(&*ByteBuf::zeroed(want.len()), &vec![0u8; want.len()][..]);
            // A vector adopted whole (not copied when it does not fit
            // inline), then appended to.
            let first = parts.first().cloned().unwrap_or_default();
            let (at, n) = (first.as_ptr(), first.len());
            let mut a = ByteBuf::from_vec(first);
            prop_assert_eq!(a.is_inline(), n <= INLINE);
            if !a.is_inline() {
                prop_assert_eq!(a.as_ptr(), at);
            }
            for p in parts.iter().skip(1) {
                a.extend_from_slice(p);
            }
            prop_assert_eq!(&*a, &want[..]);
        }
    }

    #[test]
    fn writes_in_place_stay_within_the_length() {
        let mut b = ByteBuf::zeroed(70);
        b[69] = 9;
        b[0] = 1;
        assert_eq!(b.len(), 70);
        assert_eq!((b[0], b[69]), (1, 9));
        // The tail of the last line is not part of the bytes; appending
        // after an in-place write keeps both.
        b.extend_from_slice(&[5; 60]);
        assert_eq!(b.len(), 130);
        assert_eq!((b[69], b[70], b[129]), (9, 5, 5));
        let mut i = ByteBuf::zeroed(3);
        i[2] = 4;
        assert_eq!(&*i, &[0, 0, 4]);
        assert!(i.is_inline());
    }
}
