//! The [`mmsb!`](crate::mmsb) declaration macro.

/// Declare pages and derived pages on a state.
///
/// - `page NAME(LEN);` creates a CPU page named `NAME` and binds its
///   [`PageId`](crate::PageId) to a local variable of that name;
///   `page NAME(LEN) on LOCATION;` places it elsewhere.
/// - `derived NAME(LEN) = FUNC(PARENT, …);` creates a page and declares it
///   derived by the registered recompute function `"FUNC"` from the parents
///   in call order.
/// - `derived NAME(LEN) = FUNC@VERSION(PARENT, …) |inputs, out| { … };`
///   also registers the body as `"FUNC"` at `VERSION` (1 when `@VERSION` is
///   left out), unless that version is registered already. `inputs` is
///   `&[&[u8]]` (the parents' bytes), `out` is `&mut [u8]` (zeroed, the
///   page's length).
///
/// Errors propagate with `?`.
///
/// # Examples
/// ```
/// # fn main() -> mmsb::Result<()> {
/// use mmsb::{Config, Mmsb, Payload};
/// let state = Mmsb::start(Config::temporary())?;
/// mmsb::mmsb! { state;
///     page a(4);
///     page b(4) on mmsb::Location::Cpu;
///     derived sum(4) = add@1(a, b) |ins, out| {
///         for i in 0..out.len() { out[i] = ins[0][i].wrapping_add(ins[1][i]); }
///     };
///     derived twice(4) = add(sum, sum);
/// }
/// state.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
/// state.update_page(b, Payload::Full(vec![10; 4]))?;
/// assert_eq!(state.query_page(sum)?, [11, 12, 13, 14]);
/// assert_eq!(state.query_page(twice)?, [22, 24, 26, 28]);
/// assert_eq!(state.page_info(twice)?.meta["name"], b"twice");
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! mmsb {
    ($state:expr; $($rest:tt)*) => {
        $crate::__mmsb_decl!(($state) $($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mmsb_decl {
    (($state:expr)) => {};
    (($state:expr) page $name:ident ($len:expr) $(on $loc:expr)?; $($rest:tt)*) => {
        let $name = $state.create_page(
            $crate::PageSpec::new($len as u64).named(stringify!($name))$(.on($loc))?,
        )?;
        $crate::__mmsb_decl!(($state) $($rest)*);
    };
    (($state:expr) derived $name:ident ($len:expr) = $f:ident $(@ $ver:literal)? ($($p:ident),* $(,)?)
        |$ins:ident, $out:ident| $body:block; $($rest:tt)*) => {
        let $name = $state.create_page($crate::PageSpec::new($len as u64).named(stringify!($name)))?;
        {
            let version: u32 = $crate::__mmsb_ver!($($ver)?);
            if !$state.has_function(stringify!($f), version) {
                $state.register_function(stringify!($f), version, |$ins: &[&[u8]], $out: &mut [u8]| $body)?;
            }
        }
        $state.declare_derived($name, stringify!($f), &[$($p),*])?;
        $crate::__mmsb_decl!(($state) $($rest)*);
    };
    (($state:expr) derived $name:ident ($len:expr) = $f:ident ($($p:ident),* $(,)?); $($rest:tt)*) => {
        let $name = $state.create_page($crate::PageSpec::new($len as u64).named(stringify!($name)))?;
        $state.declare_derived($name, stringify!($f), &[$($p),*])?;
        $crate::__mmsb_decl!(($state) $($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mmsb_ver {
    () => {
        1
    };
    ($v:literal) => {
        $v
    };
}
