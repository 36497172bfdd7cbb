//! Error variants not covered by the other suites, each produced by feeding
//! the bad input through the public API.

use mmsb::replay::StateImage;
use mmsb::{Change, Config, Error, Location, Metadata, Mmsb, PageId, PageSpec, Payload};
use std::sync::atomic::{AtomicU8, Ordering};

#[test]
fn page_exists_when_a_change_list_creates_a_page_twice() {
    let create = Change::CreatePage { id: PageId(1), len: 4, location: Location::Cpu, meta: Metadata::new() };
    let mut img = StateImage::new();
    let err = img.apply_changes(&[create.clone(), create]).unwrap_err();
    assert!(matches!(err, Error::PageExists(PageId(1))), "{err}");
    assert!(img.pages.is_empty(), "nothing of the failed list was applied");
}

#[test]
fn invariant_when_a_recompute_function_is_not_deterministic() -> mmsb::Result<()> {
    static CALLS: AtomicU8 = AtomicU8::new(0);
    let s = Mmsb::start(Config::temporary())?;
    s.register_function("counter", 1, |_inputs: &[&[u8]], out: &mut [u8]| {
        out[0] = CALLS.fetch_add(1, Ordering::Relaxed);
    })?;
    let a = s.create_page(PageSpec::new(1))?;
    let c = s.create_page(PageSpec::new(1))?;
    s.declare_derived(c, "counter", &[a])?;
    s.update_page(a, Payload::Full(vec![1]))?;
    let err = s.verify_recompute().unwrap_err();
    assert!(matches!(err, Error::Invariant(_)), "{err}");
    Ok(())
}

#[test]
fn gpu_memory_when_a_device_page_cannot_fit() -> mmsb::Result<()> {
    if !mmsb_tests::gpu_available("gpu_memory_when_a_device_page_cannot_fit") {
        return Ok(());
    }
    let s = Mmsb::start(Config::temporary())?;
    // Far beyond any card's memory (64 TiB), yet a valid page length.
    let err = s.create_page(PageSpec::new(64 << 40).on(Location::Gpu(0))).unwrap_err();
    assert!(matches!(err, Error::GpuMemory { .. }), "{err}");
    assert!(s.page_ids().is_empty(), "no page was created");
    Ok(())
}
