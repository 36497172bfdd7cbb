//! Device exports (`Mmsb::export_device`, `Mmsb::commit_device_writes`):
//! what is refused and what a commit without foreign writes does. The
//! foreign writes themselves (a PyTorch kernel through DLPack) are tested
//! from Python (python/tests/test_mmsb_gpu.py) on the device machine.
//! Without a device the GPU tests print `SKIPPED: no CUDA device (...)`.

use mmsb::{Config, Epoch, Error, Location, Mmsb, PageSpec, Payload};
use mmsb_tests::gpu_available;

#[test]
fn export_of_a_cpu_page_is_refused() -> mmsb::Result<()> {
    let state = Mmsb::start(Config::temporary())?;
    let p = state.create_page(PageSpec::new(64))?;
    assert!(matches!(
        state.export_device(p),
        Err(Error::UnsupportedLocation { op: "export_device", location: Location::Cpu })
    ));
    assert!(matches!(state.export_device(mmsb::PageId(99)), Err(Error::PageNotFound(_))));
    Ok(())
}

#[test]
fn gpu_export_commit_rules() -> mmsb::Result<()> {
    if !gpu_available("gpu_export_commit_rules") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let state = Mmsb::start(Config::at(dir.path()))?;
    let p = state.create_page(PageSpec::new(4096).on(Location::Gpu(0)))?;
    state.update_page(p, Payload::Full(vec![3; 4096]))?;
    let (export, epoch) = state.export_device(p)?;
    assert_eq!((export.len(), export.device(), epoch), (4096, 0, Epoch(1)));
    assert_ne!(export.address(), 0);
    // The same memory on a second export.
    assert_eq!(state.export_device(p)?.0.address(), export.address());
    let mut before = state.query_page(p)?;
    // Nothing written through the export: nothing to log.
    assert_eq!(state.commit_device_writes(p, &export, &mut before, epoch)?, None);
    // A wrong length is refused.
    let mut short = vec![3; 10];
    assert!(matches!(
        state.commit_device_writes(p, &export, &mut short, epoch),
        Err(Error::InvalidDelta { .. })
    ));
    // A write through MMSB since the capture: refused as stale.
    state.update_page(p, Payload::Full(vec![4; 4096]))?;
    assert!(matches!(
        state.commit_device_writes(p, &export, &mut before, epoch),
        Err(Error::StaleEpoch { .. })
    ));
    // The page moved: the export no longer names its memory.
    state.migrate_page(p, Location::Cpu)?;
    let e2 = state.page_info(p)?.epoch;
    let mut now = state.query_page(p)?;
    assert!(matches!(state.commit_device_writes(p, &export, &mut now, e2), Err(Error::InvalidDelta { .. })));
    // The export keeps its allocation after the page is deleted.
    state.delete_page(p)?;
    export.synchronize()?;
    assert_eq!(export.len(), 4096);
    Ok(())
}
