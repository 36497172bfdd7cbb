//! What a replica of the log tells its subscribers: the state-change events
//! `StateImage::events_of` derives from each logged commit equal, in
//! order, the events the live handle sent when it committed them; and a
//! state image written as a checkpoint (`checkpoint::write_image`, what a
//! follower stores) reads back as the same state.

use mmsb::internals::checkpoint;
use mmsb::internals::files::log_dir;
use mmsb::internals::image::StateImage;
use mmsb::internals::log::reader;
use mmsb::internals::recovery::RecoveryMode;
use mmsb::internals::vfs::StdVfs;
use mmsb::{Config, Event, Limits, Mmsb, PageId, PageSpec, Payload, Result, SparseDelta, Update};
use mmsb_tests::Rng;
use std::sync::Arc;

/// Live-only events (propagation work, checkpoints) are not in the log.
fn state_change(e: &Event) -> bool {
    !matches!(
        e,
        Event::PropagationStarted { .. }
            | Event::Recomputed { .. }
            | Event::PropagationFinished { .. }
            | Event::CheckpointWritten { .. }
    )
}

#[test]
fn events_of_logged_commits_are_the_live_events_in_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let live = s.subscribe();
    s.register_function("sum", 1, |ins: &[&[u8]], out: &mut [u8]| {
        let v = ins.iter().flat_map(|b| b.iter()).fold(0u8, |a, x| a.wrapping_add(*x));
        out.fill(v);
    })?;
    let a = s.create_page(PageSpec::new(64))?;
    let b = s.create_page(PageSpec::new(32))?;
    let d = s.create_page(PageSpec::new(8))?;
    s.declare_derived(d, "sum", &[a, b])?;
    let mut rng = Rng::new(0xC0FF_EE00_1234_5678);
    let mut pages: Vec<PageId> = vec![a, b];
    for _ in 0..300 {
        match rng.below(8) {
            0 => pages.push(s.create_page(PageSpec::new(16 + rng.below(100)))?),
            1 if pages.len() > 3 => {
                let p = pages.remove(2 + rng.below(pages.len() as u64 - 2) as usize);
                s.delete_page(p)?;
            }
            2 => {
                // A batch of writes, two to the same page.
                let p = pages[rng.below(pages.len() as u64) as usize];
                let q = pages[rng.below(pages.len() as u64) as usize];
                let one = |x: u8| Payload::Sparse(SparseDelta::from_pairs([(0u64, &[x; 4][..])]).unwrap());
                s.update_batch(vec![Update::new(p, one(1)), Update::new(q, one(2)), Update::new(p, one(3))])?;
            }
            _ => {
                let p = pages[rng.below(pages.len() as u64) as usize];
                let len = s.page_info(p)?.len;
                let at = rng.below(len - 4);
                let v = [rng.next_u64() as u8; 4];
                s.update_page(p, Payload::Sparse(SparseDelta::from_pairs([(at, &v[..])])?))?;
            }
        }
    }
    s.propagate()?;
    let end = (s.lsn(), s.state_hash()?);
    s.stop()?;
    let sent: Vec<Event> = live.drain().into_iter().filter(state_change).collect();
    assert!(sent.iter().any(|e| matches!(e, Event::DeltaApplied { page, .. } if *page == d)));
    assert!(sent.iter().any(|e| matches!(e, Event::PageDeleted { .. })));

    // The log read back, commit by commit, as a follower applies it.
    let mut image = StateImage::default();
    let mut derived = Vec::new();
    reader::scan(&StdVfs, &log_dir(dir.path()), 0, RecoveryMode::Strict, &Limits::default(), &mut |c| {
        derived.extend(image.events_of(&c));
        image.apply_commit(c)?;
        Ok(true)
    })?;
    assert_eq!((mmsb::Lsn(image.lsn), image.state_hash()), end);
    assert_eq!(derived.len(), sent.len());
    for (k, (x, y)) in derived.iter().zip(&sent).enumerate() {
        assert_eq!(x, y, "event {k} of the log differs from the live one");
    }

    // The same image as a checkpoint file reads back as the same state.
    let out = tempfile::tempdir()?;
    let (path, bytes) = checkpoint::write_image(Arc::new(StdVfs), out.path(), 1, &image)?;
    assert_eq!(std::fs::metadata(&path)?.len(), bytes);
    let back = checkpoint::read(&StdVfs, &path, &Limits::default())?;
    assert_eq!(back, image);
    assert_eq!(checkpoint::decode(&std::fs::read(&path)?, &Limits::default())?, image);
    Ok(())
}
