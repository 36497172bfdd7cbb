//! A recompute function's panic is reported as the typed error only: the
//! panic hook does not print it. Its own test binary: a panic hook is
//! global to the process.

use mmsb::{Config, Error, Mmsb, PageSpec, Payload, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn a_recompute_panic_is_the_typed_error_only() -> Result<()> {
    // A hook set by the program before: it sees every other panic.
    let printed = Arc::new(AtomicUsize::new(0));
    let seen = printed.clone();
    std::panic::set_hook(Box::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    let s = Mmsb::start(Config::temporary())?;
    let src = s.create_page(PageSpec::new(4))?;
    let out = s.create_page(PageSpec::new(4))?;
    s.register_function("boom", 1, |inputs, out| {
        assert!(inputs[0][0] != 7, "seven is not allowed");
        out.copy_from_slice(inputs[0]);
    })?;
    s.declare_derived(out, "boom", &[src])?;
    let hash = s.state_hash()?;
    match s.update_page(src, Payload::Full(vec![7; 4])) {
        Err(Error::Recompute { page, function, reason }) => {
            assert_eq!((page, function.as_str()), (out, "boom"));
            assert!(reason.contains("seven is not allowed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.state_hash()?, hash, "a failed propagation changes nothing");
    assert_eq!(printed.load(Ordering::SeqCst), 0, "the recompute panic reached the panic hook");
    // Other panics still reach the program's hook.
    let r = std::panic::catch_unwind(|| panic!("elsewhere"));
    assert!(r.is_err());
    assert_eq!(printed.load(Ordering::SeqCst), 1);
    let _ = std::panic::take_hook();
    Ok(())
}
