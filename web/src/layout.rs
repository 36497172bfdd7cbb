//! Typed fields of a page whose metadata names its type.
//!
//! A page created with the metadata key [`TYPE_KEY`] holding a layout such
//! as `Particle{pos:[f32;3],mass:f32}` is shown as records of that type:
//! fields in order, each at the offset `#[repr(C)]` gives it (aligned to
//! its primitive's size), the record's size rounded up to its largest
//! alignment, little-endian, as many whole records as the page holds.
//! Primitives: `u8 i8 u16 i16 u32 i32 u64 i64 f32 f64`; arrays `[T;N]` of
//! a primitive. The layout is a description for viewers: the engine
//! neither reads nor checks it.

use serde::Serialize;

/// The metadata key that names a page's type.
pub const TYPE_KEY: &str = "type";

/// At most this many records of a page are decoded.
pub const MAX_RECORDS: usize = 256;

/// A parsed layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The type's name (may be empty).
    pub name: String,
    /// Fields in order.
    pub fields: Vec<Field>,
    /// Size of one record, padding included.
    pub size: usize,
}

/// One field of a [`Layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Its primitive type.
    pub prim: Prim,
    /// Elements (1 for a scalar).
    pub count: usize,
    /// Whether it was written as an array.
    pub array: bool,
    /// Byte offset inside the record.
    pub offset: usize,
}

/// A primitive type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prim {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Prim {
    fn parse(s: &str) -> Option<Prim> {
        Some(match s {
            "u8" => Prim::U8,
            "i8" => Prim::I8,
            "u16" => Prim::U16,
            "i16" => Prim::I16,
            "u32" => Prim::U32,
            "i32" => Prim::I32,
            "u64" => Prim::U64,
            "i64" => Prim::I64,
            "f32" => Prim::F32,
            "f64" => Prim::F64,
            _ => return None,
        })
    }

    /// Size (and alignment) in bytes.
    pub fn size(self) -> usize {
        match self {
            Prim::U8 | Prim::I8 => 1,
            Prim::U16 | Prim::I16 => 2,
            Prim::U32 | Prim::I32 | Prim::F32 => 4,
            Prim::U64 | Prim::I64 | Prim::F64 => 8,
        }
    }

    /// The value of `b` (exactly [`Prim::size`] bytes, little-endian) as text.
    fn show(self, b: &[u8]) -> String {
        fn a<const N: usize>(b: &[u8]) -> [u8; N] {
            let mut out = [0u8; N];
            out.copy_from_slice(&b[..N]);
            out
        }
        match self {
            Prim::U8 => b[0].to_string(),
            Prim::I8 => (b[0] as i8).to_string(),
            Prim::U16 => u16::from_le_bytes(a(b)).to_string(),
            Prim::I16 => i16::from_le_bytes(a(b)).to_string(),
            Prim::U32 => u32::from_le_bytes(a(b)).to_string(),
            Prim::I32 => i32::from_le_bytes(a(b)).to_string(),
            Prim::U64 => u64::from_le_bytes(a(b)).to_string(),
            Prim::I64 => i64::from_le_bytes(a(b)).to_string(),
            Prim::F32 => f32::from_le_bytes(a(b)).to_string(),
            Prim::F64 => f64::from_le_bytes(a(b)).to_string(),
        }
    }
}

/// Longest layout text accepted.
const MAX_LAYOUT: usize = 4096;
/// Largest record accepted (bytes).
const MAX_SIZE: usize = 1 << 20;

fn ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parse a layout (`Name{field:ty,...}`; spaces are ignored).
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse(text: &str) -> Result<Layout, String> {
    if text.len() > MAX_LAYOUT {
        return Err(format!("the layout is {} bytes long (at most {MAX_LAYOUT})", text.len()));
    }
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let (name, rest) = t.split_once('{').ok_or("expected `Name{field:type,...}`")?;
    let body = rest.strip_suffix('}').ok_or("the layout must end with `}`")?;
    if !name.is_empty() && !ident(name) {
        return Err(format!("`{name}` is not a type name"));
    }
    let mut fields = Vec::new();
    let (mut at, mut align) = (0usize, 1usize);
    for f in body.split(',').filter(|f| !f.is_empty()) {
        let (fname, ty) = f.split_once(':').ok_or_else(|| format!("field `{f}` has no `:type`"))?;
        if !ident(fname) {
            return Err(format!("`{fname}` is not a field name"));
        }
        let (prim, count, array) = match ty.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(inner) => {
                let (p, n) = inner.split_once(';').ok_or_else(|| format!("array `{ty}` has no `;N`"))?;
                let n: usize = n.parse().map_err(|_| format!("`{n}` is not an array length"))?;
                (p, n, true)
            }
            None => (ty, 1, false),
        };
        let prim = Prim::parse(prim).ok_or_else(|| format!("unknown type `{prim}`"))?;
        let a = prim.size();
        at = at.div_ceil(a) * a;
        align = align.max(a);
        fields.push(Field { name: fname.to_string(), prim, count, array, offset: at });
        at = count
            .checked_mul(a)
            .and_then(|s| at.checked_add(s))
            .filter(|&e| e <= MAX_SIZE)
            .ok_or_else(|| format!("the record is larger than {MAX_SIZE} bytes"))?;
    }
    if fields.is_empty() {
        return Err("the layout has no fields".into());
    }
    Ok(Layout { name: name.to_string(), fields, size: at.div_ceil(align) * align })
}

/// One record's fields as text.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Record {
    /// Byte offset of the record in the page.
    pub offset: usize,
    /// `(field name, value)`; an array's value is `[a, b, ...]`.
    pub fields: Vec<(String, String)>,
}

/// What [`decode`] shows of a page.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Typed {
    /// The type's name.
    pub name: String,
    /// Size of one record.
    pub size: usize,
    /// Whole records the page holds.
    pub records_in_page: usize,
    /// The first [`MAX_RECORDS`] of them.
    pub records: Vec<Record>,
    /// Bytes after the last whole record.
    pub trailing_bytes: usize,
}

/// The page `bytes` read as records of `layout`.
///
/// # Errors
/// A message when the page is shorter than one record.
pub fn decode(layout: &Layout, bytes: &[u8]) -> Result<Typed, String> {
    if bytes.len() < layout.size {
        return Err(format!(
            "the type {} needs {} bytes; the page has {}",
            layout.name,
            layout.size,
            bytes.len()
        ));
    }
    let n = bytes.len() / layout.size;
    let records = bytes
        .chunks_exact(layout.size)
        .take(MAX_RECORDS)
        .enumerate()
        .map(|(i, rec)| Record {
            offset: i * layout.size,
            fields: layout
                .fields
                .iter()
                .map(|f| {
                    let s = f.prim.size();
                    let vals: Vec<String> =
                        (0..f.count).map(|k| f.prim.show(&rec[f.offset + k * s..][..s])).collect();
                    let v = if f.array { format!("[{}]", vals.join(", ")) } else { vals.concat() };
                    (f.name.clone(), v)
                })
                .collect(),
        })
        .collect();
    Ok(Typed {
        name: layout.name.clone(),
        size: layout.size,
        records_in_page: n,
        records,
        trailing_bytes: bytes.len() - n * layout.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_c_offsets_and_values() {
        let l = parse("Particle { pos: [f32; 3], id: u8, mass: f64 }").unwrap();
        let offs: Vec<usize> = l.fields.iter().map(|f| f.offset).collect();
        // pos 0..12, id at 12, mass aligned to 16, size 24.
        assert_eq!(offs, vec![0, 12, 16]);
        assert_eq!(l.size, 24);
        let mut page = vec![0u8; 50];
        page[0..4].copy_from_slice(&1.5f32.to_le_bytes());
        page[8..12].copy_from_slice(&(-2.0f32).to_le_bytes());
        page[12] = 7;
        page[16..24].copy_from_slice(&0.25f64.to_le_bytes());
        page[24 + 12] = 9;
        let t = decode(&l, &page).unwrap();
        assert_eq!(t.records_in_page, 2);
        assert_eq!(t.trailing_bytes, 2);
        assert_eq!(t.records[0].fields[0], ("pos".to_string(), "[1.5, 0, -2]".to_string()));
        assert_eq!(t.records[0].fields[1].1, "7");
        assert_eq!(t.records[0].fields[2].1, "0.25");
        assert_eq!(t.records[1].offset, 24);
        assert_eq!(t.records[1].fields[1].1, "9");
    }

    #[test]
    fn signed_and_wide_integers() {
        let l = parse("{a:i16,b:u64,c:i64}").unwrap();
        assert_eq!(l.size, 24);
        let mut page = vec![0u8; 24];
        page[0..2].copy_from_slice(&(-3i16).to_le_bytes());
        page[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        page[16..24].copy_from_slice(&i64::MIN.to_le_bytes());
        let t = decode(&l, &page).unwrap();
        let v: Vec<&str> = t.records[0].fields.iter().map(|f| f.1.as_str()).collect();
        assert_eq!(v, vec!["-3", "18446744073709551615", "-9223372036854775808"]);
    }

    #[test]
    fn bad_layouts_are_errors() {
        for bad in [
            "",
            "P",
            "P{",
            "P{}",
            "P{x}",
            "P{x:u128}",
            "P{x:[u8;]}",
            "P{x:[u8;99999999999999999999]}",
            "P{x:[u64;1000000]}",
            "1P{x:u8}",
            "P{9:u8}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let l = parse("P{x:u64}").unwrap();
        assert!(decode(&l, &[0u8; 7]).is_err());
    }
}
