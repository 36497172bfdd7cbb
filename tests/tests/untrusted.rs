//! State directories from an untrusted source: every malformed input is an
//! error (or a reported, cut torn tail), never a panic, a hang, an
//! allocation past the limits, or a file touched outside the directory.
//! Also: files and directories are created owner-only.

use mmsb::internals::codec::page::decode_page;
use mmsb::internals::files::segment_name;
use mmsb::internals::log::writer::segment_header;
use mmsb::EdgeKind;
use mmsb::Limits;
use mmsb::RecoveryMode;
use mmsb::{Config, Mmsb, PageSpec, Payload, Result};
use std::path::Path;
use std::time::{Duration, Instant};

fn crc(b: &[u8]) -> u32 {
    mmsb::internals::codec::crc(b)
}

fn frame(kind: u8, lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(body);
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    out
}

/// A small state with a checkpoint and a log after it.
fn populated(dir: &Path) -> Result<u128> {
    let s = Mmsb::start(Config::at(dir))?;
    let p = s.create_page(PageSpec::new(100))?;
    s.update_page(p, Payload::Full(vec![3; 100]))?;
    s.checkpoint()?;
    s.update_page(p, Payload::Full(vec![4; 100]))?;
    let h = s.state_hash()?;
    s.stop()?;
    Ok(h)
}

fn small_limits() -> Limits {
    Limits { max_page_len: 1 << 20, max_record_len: 1 << 20 }
}

#[test]
fn symlinks_in_the_log_directory_are_not_followed() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let want = populated(&state)?;
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside)?;
    let secret = outside.join("secret");
    std::fs::write(&secret, b"not yours")?;
    let log = state.join("log");
    // Names that recovery would read, and the name of the next segment the
    // writer will create: a link there must not be written through.
    let mut names: Vec<String> =
        std::fs::read_dir(&log)?.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let max_seq =
        names.iter().filter_map(|n| mmsb::internals::files::parse_segment_name(n)).max().unwrap_or(0);
    for seq in max_seq + 1..max_seq + 4 {
        std::os::unix::fs::symlink(&secret, log.join(segment_name(seq)))?;
    }
    std::os::unix::fs::symlink(&secret, log.join(mmsb::internals::files::checkpoint_name(1 << 40)))?;
    // A link where a log file should be is named as a problem, not read
    // through and not passed over.
    let v = mmsb::history::tools::verify(&state);
    let p = v.problem.as_ref().expect("a link with a log file's name is a problem");
    assert!(p.reason.contains("not a regular file"), "{v}");
    // Opening either works from the real files or fails; it never writes
    // through a link.
    if let Ok(s) = Mmsb::start(Config::at(&state)) {
        assert_eq!(s.state_hash()?, want);
        s.stop()?;
    }
    assert_eq!(std::fs::read(&secret)?, b"not yours");
    assert_eq!(std::fs::read_dir(&outside)?.count(), 1);
    Ok(())
}

#[test]
fn a_log_directory_that_is_a_symlink_is_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    let elsewhere = root.path().join("elsewhere");
    populated(&elsewhere)?;
    let state = root.path().join("state");
    std::fs::create_dir(&state)?;
    std::os::unix::fs::symlink(elsewhere.join("log"), state.join("log"))?;
    let names = |d: &std::path::Path| -> Result<Vec<std::ffi::OsString>> {
        let mut v: Vec<_> =
            std::fs::read_dir(d)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
        v.sort();
        Ok(v)
    };
    // The state there held its lock file; without it, a lock taken
    // through the link would show as a new file.
    std::fs::remove_file(elsewhere.join("log").join(mmsb::internals::files::LOCK_NAME))?;
    let before = names(&elsewhere.join("log"))?;
    let Err(err) = Mmsb::start(Config::at(&state)) else { panic!("a symlinked log directory was opened") };
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!mmsb::history::tools::verify(&state).is_ok());
    // Nothing was created through the link (not even the lock file).
    assert_eq!(names(&elsewhere.join("log"))?, before);
    Ok(())
}

#[test]
fn a_fifo_with_a_segment_name_does_not_hang() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    populated(&state)?;
    let fifo = state.join("log").join(segment_name(999));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    // Refused, by name, at once: it is neither read nor passed over.
    let Err(err) = Mmsb::start(Config::at(&state)) else {
        panic!("a pipe in place of a segment is an error")
    };
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert!(!mmsb::history::tools::verify(&state).is_ok());
    assert!(t.elapsed() < Duration::from_secs(10));
    Ok(())
}

/// The state of `populated`, its segments' paths in order.
fn segments(state: &Path) -> Result<Vec<std::path::PathBuf>> {
    let log = state.join("log");
    let mut v: Vec<_> = std::fs::read_dir(&log)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(mmsb::internals::files::parse_segment_name)
                .is_some()
        })
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn a_segment_replaced_by_a_link_or_a_directory_is_a_problem_not_a_shorter_log() -> Result<()> {
    let root = tempfile::tempdir()?;
    for kind in ["link", "dir"] {
        let state = root.path().join(kind);
        populated(&state)?;
        let last = segments(&state)?.pop().expect("a segment");
        let moved = root.path().join(format!("{kind}-moved"));
        std::fs::rename(&last, &moved)?;
        if kind == "link" {
            std::os::unix::fs::symlink(&moved, &last)?;
        } else {
            std::fs::create_dir(&last)?;
        }
        let v = mmsb::history::tools::verify(&state);
        let p = v.problem.as_ref().unwrap_or_else(|| panic!("{kind}: verify said {v}"));
        assert_eq!(p.file.as_deref(), Some(last.as_path()), "{kind}: {v}");
        assert!(
            mmsb::history::tools::replay(&state, None).is_err(),
            "{kind}: replay went on without the segment"
        );
        assert!(Mmsb::start(Config::at(&state)).is_err(), "{kind}: opened without the segment");
    }
    Ok(())
}

#[test]
fn files_named_almost_like_log_files_are_problems() -> Result<()> {
    let root = tempfile::tempdir()?;
    for (i, name) in
        ["wal-00000000000000000002.log", "wal-1.log", "ckpt-99999999999999999999999.ckpt", "ckpt-x.ckpt"]
            .iter()
            .enumerate()
    {
        let state = root.path().join(i.to_string());
        populated(&state)?;
        std::fs::write(state.join("log").join(name), b"records?")?;
        let v = mmsb::history::tools::verify(&state);
        let p = v.problem.as_ref().unwrap_or_else(|| panic!("{name}: verify said {v}"));
        assert!(p.reason.contains("named like a log file"), "{name}: {v}");
        assert!(Mmsb::start(Config::at(&state)).is_err(), "{name}");
        // Files of other names are not the engine's business.
        std::fs::remove_file(state.join("log").join(name))?;
        std::fs::write(state.join("log").join("notes.txt"), b"mine")?;
        assert!(mmsb::history::tools::verify(&state).is_ok());
    }
    Ok(())
}

#[test]
fn a_whole_segment_header_of_another_version_is_an_error_not_a_torn_tail() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    populated(&state)?;
    let segs = segments(&state)?;
    let next = mmsb::internals::files::parse_segment_name(
        segs[segs.len() - 1].file_name().unwrap().to_str().unwrap(),
    )
    .unwrap()
        + 1;
    // A last segment whose header is whole (its CRC matches) and says
    // version 2: what a newer engine might write.
    let mut head = segment_header(1 << 20, next, 1 << 40).to_vec();
    head[8..12].copy_from_slice(&2u32.to_le_bytes());
    let c = crc(&head[..40]);
    head[40..44].copy_from_slice(&c.to_le_bytes());
    let path = state.join("log").join(segment_name(next));
    std::fs::write(&path, &head)?;
    let v = mmsb::history::tools::verify(&state);
    let p = v.problem.as_ref().expect("a problem");
    assert!(p.reason.contains("unsupported segment version 2"), "{v}");
    assert!(Mmsb::start(Config::at(&state)).is_err());
    // The same header with a CRC that does not match: a segment is named
    // only once its header is durable, so this was damaged after it was
    // written, not torn by a crash. Strict start refuses it; tolerant start
    // drops it and says so.
    head[40] ^= 1;
    std::fs::write(&path, &head)?;
    let v = mmsb::history::tools::verify(&state);
    assert!(v.problem.as_ref().is_some_and(|p| p.reason.contains("CRC mismatch")), "{v}");
    assert!(matches!(Mmsb::start(Config::at(&state)), Err(mmsb::Error::Corrupt { .. })));
    let s = Mmsb::start(Config::at(&state).recovery(mmsb::RecoveryMode::Tolerant))?;
    let r = s.recovery_report();
    assert!(r.dropped.iter().any(|d| d.file == path && d.offset == 0), "{r}");
    s.stop()?;
    Ok(())
}

#[test]
fn a_segment_header_naming_another_segment_is_corrupt() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    let mut seg = segment_header(1, 5, 1).to_vec();
    seg.extend_from_slice(&frame(1, 1, &create_body(1)));
    std::fs::write(log.join(segment_name(1)), &seg)?;
    let v = mmsb::history::tools::verify(&state);
    assert!(v.problem.as_ref().is_some_and(|p| p.reason.contains("the header is of segment")), "{v}");
    assert!(Mmsb::start(Config::at(&state)).is_err());
    Ok(())
}

#[test]
fn verify_finds_a_cycle_in_the_graph_a_log_builds() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    let mut seg = segment_header(1, 1, 1).to_vec();
    seg.extend_from_slice(&frame(1, 1, &create_body(1)));
    seg.extend_from_slice(&frame(1, 2, &create_body(2)));
    seg.extend_from_slice(&frame(0x10, 3, &[0u8, 1, 2, 1]));
    seg.extend_from_slice(&frame(0x10, 4, &[0u8, 2, 1, 1]));
    std::fs::write(log.join(segment_name(1)), &seg)?;
    let v = mmsb::history::tools::verify(&state);
    let p = v.problem.as_ref().unwrap_or_else(|| panic!("verify said {v}"));
    assert!(p.reason.contains("cycle"), "{v}");
    assert_eq!(v.commits, 4, "{v}");
    Ok(())
}

#[test]
fn verify_counts_what_it_checked_before_a_problem() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let s = Mmsb::start(Config::at(&state))?;
    let p = s.create_page(PageSpec::new(64))?;
    for i in 0..100u8 {
        s.update_page(p, Payload::Full(vec![i; 64]))?;
    }
    s.stop()?;
    let seg = segments(&state)?.pop().expect("a segment");
    let mut bytes = std::fs::read(&seg)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes)?;
    let v = mmsb::history::tools::verify(&state);
    assert!(v.problem.is_some(), "{v}");
    assert!(v.commits > 10 && v.last_lsn > 10, "{v}");
    Ok(())
}

#[test]
fn files_and_directories_are_owner_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir()?;
    let state = root.path().join("a").join("state");
    populated(&state)?;
    for d in [root.path().join("a"), state.clone(), state.join("log")] {
        let m = std::fs::metadata(&d)?.permissions().mode();
        assert_eq!(m & 0o077, 0, "{} has mode {m:o}", d.display());
    }
    let mut files = 0;
    for e in std::fs::read_dir(state.join("log"))? {
        let e = e?;
        let m = e.metadata()?.permissions().mode();
        assert_eq!(m & 0o077, 0, "{} has mode {m:o}", e.path().display());
        files += 1;
    }
    assert!(files >= 2, "a segment and a checkpoint");
    Ok(())
}

#[test]
fn huge_length_fields_are_errors_not_allocations() -> Result<()> {
    // A page image claiming a 2^60-byte page.
    let mut img = b"MSPG".to_vec();
    img.extend_from_slice(&2u16.to_le_bytes());
    img.extend_from_slice(&0u16.to_le_bytes());
    img.extend_from_slice(&68u64.to_le_bytes());
    img.extend_from_slice(&1u64.to_le_bytes());
    img.extend_from_slice(&0u64.to_le_bytes());
    img.extend_from_slice(&(1u64 << 60).to_le_bytes());
    img.extend_from_slice(&[0; 24]);
    let c = crc(&img);
    img.extend_from_slice(&c.to_le_bytes());
    assert!(decode_page(&img, 0, &Limits::default()).is_err());

    // A segment whose first record claims u32::MAX bytes, then one whose
    // record claims just over the limit, then a valid header only.
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    let mut seg = segment_header(1, 1, 1).to_vec();
    seg.extend_from_slice(&u32::MAX.to_le_bytes());
    seg.extend_from_slice(&[3, 0, 0, 0]);
    seg.extend_from_slice(&1u64.to_le_bytes());
    seg.extend_from_slice(&[0xAB; 64]);
    std::fs::write(log.join(segment_name(1)), &seg)?;
    for mode in [RecoveryMode::Strict, RecoveryMode::Tolerant] {
        let mut cfg = Config::at(&state).recovery(mode);
        cfg.limits = small_limits();
        let s = Mmsb::start(cfg)?;
        // The first open cuts and reports the tail; it stays cut after.
        if mode == RecoveryMode::Strict {
            assert!(s.recovery_report().torn_tail.is_some(), "reported as a torn tail");
        }
        assert!(s.page_ids().is_empty());
        s.stop()?;
    }

    // A create_page record for a page longer than the limit.
    let state = root.path().join("state2");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut seg = segment_header(1, 1, 1).to_vec();
    seg.extend_from_slice(&frame(1, 1, &body));
    std::fs::write(log.join(segment_name(1)), &seg)?;
    let mut cfg = Config::at(&state);
    cfg.limits = small_limits();
    assert!(Mmsb::start(cfg).is_err(), "a valid-CRC record that does not validate is corruption");
    Ok(())
}

#[test]
fn deeply_nested_or_garbage_graph_records_are_errors() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    let mut seg = segment_header(1, 1, 1).to_vec();
    // Postcard varints that never end, and a length prefix of 2^63.
    seg.extend_from_slice(&frame(0x10, 1, &[0xFF; 100_000]));
    std::fs::write(log.join(segment_name(1)), &seg)?;
    assert!(Mmsb::start(Config::at(&state)).is_err());
    let mut cfg = Config::at(&state).recovery(RecoveryMode::Tolerant);
    cfg.limits = small_limits();
    if let Ok(s) = Mmsb::start(cfg) {
        assert!(s.page_ids().is_empty());
    }
    Ok(())
}

#[test]
fn many_tiny_segments_open_in_bounded_time() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    // 3000 segments of one generation, each holding one create_page record.
    for seq in 1..=3000u64 {
        let mut seg = segment_header(1, seq, seq).to_vec();
        let mut body = seq.to_le_bytes().to_vec();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&0u32.to_le_bytes());
        seg.extend_from_slice(&frame(1, seq, &body));
        std::fs::write(log.join(segment_name(seq)), &seg)?;
    }
    let t = Instant::now();
    let s = Mmsb::start(Config::at(&state))?;
    assert_eq!(s.page_ids().len(), 3000);
    s.stop()?;
    let v = mmsb::history::tools::verify(&state);
    assert!(v.is_ok(), "{v}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    Ok(())
}

/// A create_page record body: page `id` of 4 bytes on the CPU, no metadata.
fn create_body(id: u64) -> Vec<u8> {
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&4u64.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&0u32.to_le_bytes());
    body
}

#[test]
fn a_graph_record_in_anything_but_its_canonical_encoding_is_corrupt() -> Result<()> {
    let root = tempfile::tempdir()?;
    // AddEdge { from: 1, to: 2, kind: Control }; then the same with `from`
    // as an overlong two-byte varint, and with a byte after the value.
    for (name, graph, ok) in [
        ("canonical", vec![0u8, 1, 2, 1], true),
        ("overlong", vec![0u8, 0x81, 0x00, 2, 1], false),
        ("trailing", vec![0u8, 1, 2, 1, 0], false),
    ] {
        let state = root.path().join(name);
        let log = state.join("log");
        std::fs::create_dir_all(&log)?;
        let mut seg = segment_header(1, 1, 1).to_vec();
        seg.extend_from_slice(&frame(1, 1, &create_body(1)));
        seg.extend_from_slice(&frame(1, 2, &create_body(2)));
        seg.extend_from_slice(&frame(0x10, 3, &graph));
        std::fs::write(log.join(segment_name(1)), &seg)?;
        match Mmsb::start(Config::at(&state)) {
            Ok(s) if ok => {
                assert_eq!(s.children(mmsb::PageId(1))?, vec![(mmsb::PageId(2), EdgeKind::Control)])
            }
            Err(mmsb::Error::Corrupt { .. }) if !ok => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_checkpoint_graph_section_with_trailing_bytes_or_a_nonzero_reserved_field_is_corrupt() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let path = {
        let s = Mmsb::start(Config::at(&state))?;
        let a = s.create_page(PageSpec::new(4))?;
        let b = s.create_page(PageSpec::new(4))?;
        s.add_edge(a, b, EdgeKind::Control)?;
        let ck = s.checkpoint()?;
        s.stop()?;
        ck.path
    };
    let good = std::fs::read(&path)?;
    let lim = Limits::default();
    assert!(mmsb::internals::checkpoint::read(&mmsb::vfs::StdVfs, &path, &lim).is_ok());
    let e = good.len() - 32;
    // Find the graph section: its length field sits just before its bytes,
    // which end where the trailer starts.
    let glen = (1..e - 8)
        .find(|&l| u64::from_le_bytes(good[e - l - 8..e - l].try_into().unwrap_or_default()) == l as u64)
        .ok_or_else(|| mmsb::Error::Invariant("no graph section found".into()))?;
    // The file with its trailer and CRC made consistent again.
    let seal = |mut f: Vec<u8>| -> Vec<u8> {
        let n = f.len();
        f[n - 16..n - 8].copy_from_slice(&(n as u64).to_le_bytes());
        let c = crc(&f[..n - 4]);
        f[n - 4..].copy_from_slice(&c.to_le_bytes());
        f
    };
    let mut trailing = good[..e].to_vec();
    trailing.extend_from_slice(&[0, 0]);
    let at = e - glen - 8;
    trailing[at..at + 8].copy_from_slice(&(glen as u64 + 2).to_le_bytes());
    trailing.extend_from_slice(&good[e..]);
    let mut reserved = good.clone();
    reserved[e + 24..e + 28].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    assert_eq!(seal(good.clone()), good, "sealing the good file changes nothing");
    for (name, bytes) in [("trailing bytes", seal(trailing)), ("reserved field", seal(reserved))] {
        std::fs::write(&path, &bytes)?;
        match mmsb::internals::checkpoint::read(&mmsb::vfs::StdVfs, &path, &lim) {
            Err(mmsb::Error::Corrupt { .. }) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_gap_behind_an_unreadable_segment_header_names_that_segment() -> Result<()> {
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir_all(&log)?;
    for (seq, lsn) in [(1u64, 1u64), (2, 2)] {
        let mut seg = segment_header(1, seq, lsn).to_vec();
        seg.extend_from_slice(&frame(1, lsn, &create_body(lsn)));
        std::fs::write(log.join(segment_name(seq)), &seg)?;
    }
    assert!(mmsb::history::tools::verify(&state).is_ok());
    let first = log.join(segment_name(1));
    let mut bytes = std::fs::read(&first)?;
    bytes[0] ^= 0xFF;
    std::fs::write(&first, &bytes)?;
    let err = mmsb::history::tools::replay(&state, None).expect_err("records 1..1 are unreadable");
    assert!(err.to_string().contains(&segment_name(1)) && err.to_string().contains("bad magic"), "{err}");
    let Err(err) = Mmsb::start(Config::at(&state)) else { panic!("opened without LSN 1") };
    assert!(err.to_string().contains(&segment_name(1)), "{err}");
    let rep = mmsb::history::tools::inspect(&state)?;
    assert!(
        rep.notes.iter().any(|n| n.contains(&segment_name(1)) && n.contains("bad magic")),
        "{:?}",
        rep.notes
    );
    Ok(())
}
