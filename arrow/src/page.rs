//! A live page as Arrow memory, without a copy: a [`Buffer`] over the
//! page's bytes that owns the page's read guard ([`mmsb::SharedPageRef`]),
//! and, for a page that holds values of one [`bytemuck::Pod`] type, a
//! [`PrimitiveArray`] over the same bytes.
//!
//! The guard lives as long as the buffer or any array, slice or clone
//! made from it: until the last is dropped, every write to the page (on
//! any thread) is refused with [`Error::PageBorrowed`], so the values an
//! Arrow consumer sees never change under it. Reads go on as usual.

use arrow_array::types::ArrowPrimitiveType;
use arrow_array::PrimitiveArray;
use arrow_buffer::{Buffer, ScalarBuffer};
use mmsb::{Error, Mmsb, PageId, Result, SharedPageRef};
use std::panic::RefUnwindSafe;
use std::ptr::NonNull;
use std::sync::Arc;

/// The owner of a page buffer's memory: the page's read guard.
struct PageOwner {
    /// Held, never read: its drop releases the page.
    _guard: SharedPageRef,
}

// The guard's lock is never touched through a shared reference to the
// owner (only dropped with it): a panic cannot leave it half-updated.
impl RefUnwindSafe for PageOwner {}

/// The bytes of CPU page `id` of `state` as an Arrow [`Buffer`], without a
/// copy; the buffer holds the page's read guard.
///
/// # Errors
/// [`Error::PageNotFound`]; [`Error::UnsupportedLocation`] for a page
/// whose bytes are not in host memory.
pub fn page_buffer(state: &Mmsb, id: PageId) -> Result<Buffer> {
    let guard = state.read_page_shared(id)?;
    let bytes = guard.bytes();
    let (ptr, len) = (NonNull::from(bytes).cast::<u8>(), bytes.len());
    // SAFETY: `ptr` points at the page's `len` bytes, which stay allocated,
    // unmoved and unwritten while the read guard lives (a write or a
    // migration needs the page's write lock); the guard is the buffer's
    // owner, dropped only when the last user of the buffer is.
    Ok(unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(PageOwner { _guard: guard })) })
}

/// CPU page `id` of `state` as an Arrow array of `T` values, without a
/// copy: for a page that holds `len / size_of::<T::Native>()` values of
/// one [`bytemuck::Pod`] type (an `f32` page as a `Float32Array`, ...).
///
/// # Errors
/// As [`page_buffer`]; [`Error::TypeLayout`] when the page's length is not
/// a multiple of the type's size or its bytes are not aligned for it.
///
/// ```
/// use arrow_array::types::Float32Type;
/// use mmsb::{Config, Mmsb, PageSpec, Payload};
/// # fn main() -> mmsb::Result<()> {
/// let state = Mmsb::start(Config::temporary())?;
/// let p = state.create_page(PageSpec::new(16))?;
/// let values = [1.5f32, 2.0, -3.0, 0.25];
/// state.update_page(p, Payload::Full(bytemuck::cast_slice(&values).to_vec()))?;
/// let array = mmsb_arrow::page_array::<Float32Type>(&state, p)?;
/// assert_eq!(array.values().as_ref(), &values);
/// // Writes wait for the view to go.
/// assert!(state.update_page(p, Payload::Full(vec![0; 16])).is_err());
/// drop(array);
/// state.update_page(p, Payload::Full(vec![0; 16]))?;
/// # Ok(())
/// # }
/// ```
pub fn page_array<T>(state: &Mmsb, id: PageId) -> Result<PrimitiveArray<T>>
where
    T: ArrowPrimitiveType,
    T::Native: bytemuck::Pod,
{
    let size = std::mem::size_of::<T::Native>();
    let buffer = page_buffer(state, id)?;
    let layout = |reason: &'static str| Error::TypeLayout {
        page: id,
        ty: std::any::type_name::<T::Native>(),
        size,
        offset: 0,
        len: buffer.len() as u64,
        reason,
    };
    if size == 0 || buffer.len() % size != 0 {
        return Err(layout("the page's length is not a multiple of the type's size"));
    }
    if buffer.as_ptr().align_offset(std::mem::align_of::<T::Native>()) != 0 {
        return Err(layout("the page's bytes are not aligned for the type"));
    }
    let n = buffer.len() / size;
    Ok(PrimitiveArray::new(ScalarBuffer::new(buffer, 0, n), None))
}
