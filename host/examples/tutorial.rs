//! A tour of MMSB: pages, deltas, typed views, a derived page, a
//! checkpoint, a restart, replay and provenance.
//!
//! ```sh
//! cargo run --example tutorial -p mmsb
//! ```
//!
//! Every step checks what it claims with `assert!`, so this example is also
//! a test (CI runs it).

use bytemuck::{Pod, Zeroable};
use mmsb::history::provenance::{self, Origin};
use mmsb::history::replay;
use mmsb::vfs::StdVfs;
use mmsb::{Config, Event, Mmsb, PageSpec, Payload, SparseDelta, Update};

/// A plain-old-data record: any `bytemuck::Pod` type can view a page.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Account {
    id: u64,
    balance: i64,
    flags: u32,
    _pad: u32,
}

const ACCOUNT: u64 = std::mem::size_of::<Account>() as u64;

/// The recompute function of the derived page: the sum of the balances of
/// every account page it reads, as a little-endian i64. It must be
/// deterministic: replay never runs it, recovery trusts its logged output.
fn total(inputs: &[&[u8]], out: &mut [u8]) {
    let sum: i64 = inputs.iter().map(|b| bytemuck::pod_read_unaligned::<Account>(b).balance).sum();
    out.copy_from_slice(&sum.to_le_bytes());
}

fn main() -> mmsb::Result<()> {
    let dir = tempfile::tempdir()?;

    // 1. Start a state in a directory. Every change is logged there first.
    let state = Mmsb::start(Config::at(dir.path()))?;
    let events = state.subscribe();

    // 2. Pages: fixed-length byte arrays (here on the CPU; `PageSpec::on`
    //    places one on a GPU or in unified memory).
    let alice = state.create_page(PageSpec::new(ACCOUNT).named("alice"))?;
    let bob = state.create_page(PageSpec::new(ACCOUNT).named("bob"))?;
    let notes = state.create_page(PageSpec::new(64).named("notes"))?;

    // 3. Deltas: byte-level changes. A sparse delta replaces byte runs.
    let hello = SparseDelta::from_pairs([(0, &b"hello"[..]), (32, &b"world"[..])])?;
    let e = state.update_page(notes, Payload::Sparse(hello))?;
    assert_eq!(e.get(), 1, "every applied delta bumps the page's epoch");
    assert_eq!(&state.query_page(notes)?[32..37], b"world");

    // Batches are atomic, and `at_epoch` makes an update conditional.
    let stale = state.update_batch(vec![
        Update::new(notes, Payload::Full(vec![0; 64])),
        Update::new(notes, Payload::Full(vec![1; 64])).at_epoch(e),
    ]);
    assert!(
        matches!(stale, Err(mmsb::Error::StaleEpoch { .. })),
        "the second update expects epoch 1, sees 2"
    );
    assert_eq!(state.page_info(notes)?.epoch, e, "a refused batch changes nothing");

    // 4. Typed views: write through a closure; the change is captured as the
    //    smallest delta between the bytes before and after.
    state.write::<Account>(alice, |a| *a = Account { id: 1, balance: 100, flags: 0, _pad: 0 })?;
    state.write::<Account>(bob, |a| *a = Account { id: 2, balance: 50, flags: 0, _pad: 0 })?;

    // 5. A derived page: recomputed whenever a parent changes, and its
    //    deltas are logged with the function, version and parent epochs.
    state.register_function("total", 1, total)?;
    let sum = state.create_page(PageSpec::new(8).named("total"))?;
    state.declare_derived(sum, "total", &[alice, bob])?;
    assert_eq!(state.read::<i64>(sum)?, 150);

    // Changing one field of one account logs a sparse delta of just the
    // bytes of `balance` that differ, and propagates.
    state.write::<Account>(bob, |a| a.balance += 25)?;
    assert_eq!(state.read::<i64>(sum)?, 175);
    let last_user_write = events
        .drain()
        .into_iter()
        .filter_map(|ev| match ev {
            Event::DeltaApplied { page, bytes, .. } if page == bob => Some(bytes),
            _ => None,
        })
        .next_back();
    assert_eq!(last_user_write, Some(1), "50 -> 75 differs in one byte");

    // 6. A checkpoint: the whole state in one file; the log restarts after it.
    let ckpt = state.checkpoint()?;
    println!("checkpoint: {} pages, {} bytes at LSN {}", ckpt.pages, ckpt.bytes, ckpt.lsn.0);
    state.write::<Account>(alice, |a| a.balance -= 30)?;
    let hash = state.state_hash()?;
    println!("{}", state.stats());
    state.stop()?;
    drop(state);

    // 7. Restart: recovery loads the checkpoint and replays the log after
    //    it, bit-exactly. Functions are code: register them again (the
    //    recorded version recomputes nothing).
    let state = Mmsb::start(Config::at(dir.path()))?;
    state.register_function("total", 1, total)?;
    assert_eq!(state.state_hash()?, hash, "recovery rebuilds the same state");
    assert_eq!(state.read::<i64>(sum)?, 145);
    assert_eq!(state.derivation(sum)?.map(|d| d.parents), Some(vec![alice, bob]));
    state.stop()?;
    drop(state);

    // 8. Replay without opening the state: any point of the kept history.
    let limits = mmsb::Limits::default();
    let now = replay::replay_to_lsn(&StdVfs, dir.path(), None, &limits)?;
    assert_eq!(now.state_hash(), hash);
    let history = replay::page_history(&StdVfs, dir.path(), sum, &limits)?;
    let totals: Vec<i64> = history.iter().map(|v| bytemuck::pod_read_unaligned(&v.bytes)).collect();
    println!("versions of the total since the checkpoint: {totals:?}");
    assert_eq!(totals.last(), Some(&145));

    // 9. Provenance: how the latest total was computed, back to user writes.
    let chain = provenance::chain(dir.path(), sum)?;
    print!("{chain}");
    assert!(matches!(&chain.steps[0].origin, Origin::Derived { function, .. } if function == "total"));
    assert!(chain.roots().any(|s| s.page == alice && s.origin == Origin::User));
    println!("tutorial: ok");
    Ok(())
}
