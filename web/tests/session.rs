//! The viewer's core over a real state directory's bytes: the state and
//! hash at every commit equal the engine's own replay of the directory on
//! disk; diff, typed fields, provenance and the live tail's appends.

use mmsb::history::replay::{replay_dir, Until};
use mmsb::{Config, Lsn, Mmsb, PageSpec, Payload};
use mmsb_web::Session;
use std::path::Path;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn load(dir: &Path) -> R<Session> {
    let mut s = Session::new();
    for e in std::fs::read_dir(dir.join("log"))? {
        let e = e?;
        let name = e.file_name().into_string().map_err(|_| "name")?;
        if name.starts_with("wal-") || name.starts_with("ckpt-") {
            s.set_file(&name, std::fs::read(e.path())?);
        }
    }
    Ok(s)
}

fn hash_on_disk(dir: &Path, until: Until) -> R<String> {
    Ok(format!("{:032x}", replay_dir(dir, until)?.image.state_hash()))
}

/// A state with a derived page, a typed page and `n` commits.
fn state(dir: &Path, n: u8) -> R {
    let s = Mmsb::start(Config::at(dir))?;
    let a = s.create_page(PageSpec::new(16).named("a").meta("type", "A{x:u32,y:f32,z:[u16;4]}"))?;
    s.register_function("double", 1, |ins: &[&[u8]], out: &mut [u8]| {
        for (o, i) in out.iter_mut().zip(ins[0]) {
            *o = i.wrapping_mul(2);
        }
    })?;
    let d = s.create_page(PageSpec::new(16).named("d"))?;
    s.declare_derived(d, "double", &[a])?;
    for i in 0..n {
        let mut b = vec![0u8; 16];
        b[0] = i;
        b[4..8].copy_from_slice(&(f32::from(i) * 0.5).to_le_bytes());
        s.update_page(a, Payload::Full(b))?;
    }
    s.stop()?;
    Ok(())
}

#[test]
fn every_commit_replays_to_the_engines_state_and_hash() -> R {
    let dir = tempfile::tempdir()?;
    state(dir.path(), 12)?;
    let mut s = load(dir.path())?;
    let t = s.timeline()?.clone();
    assert_eq!(t.start.lsn, 0);
    assert!(t.commits.len() >= 12, "{} commits", t.commits.len());
    for p in std::iter::once(t.start).chain(t.commits.iter().copied()) {
        let v = s.goto_lsn(Some(p.lsn))?;
        assert_eq!(v.lsn, p.lsn);
        assert_eq!(v.time, p.time);
        assert_eq!(v.hash, hash_on_disk(dir.path(), Until::Lsn(Lsn(p.lsn)))?, "LSN {}", p.lsn);
    }
    // The end of the log, and logical time.
    let end = s.goto_lsn(None)?;
    assert_eq!(end.hash, hash_on_disk(dir.path(), Until::End)?);
    assert_eq!(end.lsn, t.commits.last().ok_or("no commits")?.lsn);
    let mid = t.commits[5];
    assert_eq!(s.goto_time(mid.time)?.hash, hash_on_disk(dir.path(), Until::Time(mid.time))?);
    Ok(())
}

#[test]
fn pages_typed_fields_diff_and_provenance() -> R {
    let dir = tempfile::tempdir()?;
    state(dir.path(), 6)?;
    let mut s = load(dir.path())?;
    let t = s.timeline()?.clone();
    let end = s.goto_lsn(None)?;
    let a = end.pages.iter().find(|p| p.name.as_deref() == Some("a")).ok_or("no page a")?;
    let d = end.pages.iter().find(|p| p.name.as_deref() == Some("d")).ok_or("no page d")?;
    assert_eq!((a.len, a.location.as_str()), (16, "cpu"));
    assert_eq!(d.derived.as_deref(), Some("double"));
    assert_eq!(s.page_bytes(a.id, 0, 4)?, vec![5, 0, 0, 0]);
    assert_eq!(s.page_bytes(d.id, 0, 100)?.len(), 16);
    let typed = s.typed(a.id)?;
    assert_eq!(typed.records[0].fields[0], ("x".to_string(), "5".to_string()));
    assert_eq!(typed.records[0].fields[1], ("y".to_string(), "2.5".to_string()));
    assert!(s.typed(d.id).is_err());

    // The derived page's value came from `double` reading page a.
    let chain = s.provenance(d.id)?;
    let rows = mmsb_web::chain_rows(&chain);
    assert_eq!(rows[0].origin, "derived");
    assert_eq!(rows[0].function.as_deref(), Some("double v1"));
    assert!(rows.iter().any(|r| r.page == a.id && r.origin == "user"));

    // Compare the end with two commits earlier: only the written bytes differ.
    let earlier = t.commits[t.commits.len() - 3].lsn;
    s.compare_lsn(earlier)?;
    let diff = s.diff()?;
    let da = diff.iter().find(|x| x.id == a.id).ok_or("no diff of a")?;
    assert_eq!(da.status, "changed");
    assert!(da.ranges.contains(&(0, 1)), "{:?}", da.ranges);
    // Before any page existed, every page is new.
    s.compare_lsn(0)?;
    assert!(s.diff()?.iter().all(|x| x.status == "added"));
    s.clear_compare();
    assert!(s.diff().is_err());
    Ok(())
}

#[test]
fn appended_bytes_extend_the_history_and_bad_input_is_an_error() -> R {
    let dir = tempfile::tempdir()?;
    state(dir.path(), 2)?;
    let mut s = load(dir.path())?;
    let before = s.timeline()?.commits.len();
    let held: Vec<(String, u64)> = s.files();
    // More commits by another handle; the viewer fetches the new bytes.
    let h = Mmsb::start(Config::existing(dir.path()))?;
    h.register_function("double", 1, |ins: &[&[u8]], out: &mut [u8]| out.copy_from_slice(ins[0]))?;
    let a = h.page_named("a").ok_or("no a")?;
    h.update_page(a, Payload::Full(vec![7; 16]))?;
    h.stop()?;
    for e in std::fs::read_dir(dir.path().join("log"))? {
        let e = e?;
        let name = e.file_name().into_string().map_err(|_| "name")?;
        if !name.starts_with("wal-") {
            continue;
        }
        let bytes = std::fs::read(e.path())?;
        match held.iter().find(|(n, _)| *n == name) {
            Some((_, len)) => {
                // Out-of-order bytes are refused and change nothing.
                assert!(s.append_file(&name, len + 1, &bytes[*len as usize..]).is_err());
                s.append_file(&name, *len, &bytes[*len as usize..])?;
            }
            None => s.set_file(&name, bytes),
        }
    }
    assert!(s.timeline()?.commits.len() > before);
    assert_eq!(s.goto_lsn(None)?.hash, hash_on_disk(dir.path(), Until::End)?);

    // A damaged record is the engine's typed error, never a panic.
    let (name, len) = s.files().into_iter().find(|(n, _)| n.starts_with("wal-")).ok_or("no segment")?;
    let mut bytes = std::fs::read(dir.path().join("log").join(&name))?;
    let at = (len as usize / 2).max(40);
    bytes[at] ^= 0xff;
    s.set_file(&name, bytes);
    let r = s.timeline().map(|_| ());
    let r2 = s.goto_lsn(None).map(|_| ());
    assert!(r.is_err() || r2.is_err() || s.timeline().is_ok_and(|t| t.torn_bytes.is_some()));
    // Garbage and empty input.
    let mut g = Session::new();
    g.set_file("wal-0000000000000001.log", vec![0xAB; 100]);
    assert!(g.timeline().is_err() || g.goto_lsn(None).is_err());
    let mut empty = Session::new();
    assert_eq!(empty.goto_lsn(None)?.pages.len(), 0);
    Ok(())
}
