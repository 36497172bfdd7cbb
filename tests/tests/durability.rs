//! Durability under the crash model of docs/RELIABILITY.md: what a crash can
//! leave is recovered, anything else is refused in strict mode (never read
//! as a shorter log), a full disk anywhere loses nothing acknowledged, the
//! single-writer lock holds when its file goes, and a state has one LSN.
//!
//! The exhaustive tests damage every bit and cut every byte of a small
//! state's files; strict start must refuse, or open exactly the state the
//! writer acknowledged.

use mmsb::history::replay::Until;
use mmsb::vfs::{CrashMode, SimVfs, Vfs};
use mmsb::{
    Config, Durability, Error, Lsn, Mmsb, PageId, PageSpec, Payload, RecoveryMode, Result, SparseDelta,
};
use mmsb::{Update, MIN_SEGMENT_BYTES};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STATE: &str = "/state";

fn log_dir() -> PathBuf {
    mmsb::internals::files::log_dir(Path::new(STATE))
}

fn cfg(v: &SimVfs) -> Config {
    let mut c = Config::at(STATE).vfs(Arc::new(v.clone())).durability(Durability::SYNC);
    c.segment_bytes = MIN_SEGMENT_BYTES;
    c
}

fn sparse(off: u64, b: &[u8]) -> Payload {
    Payload::Sparse(SparseDelta::from_pairs([(off, b)]).expect("runs"))
}

/// What the writer acknowledged last: state hash, LSN, logical time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Acked {
    hash: u128,
    lsn: Lsn,
    time: u64,
}

fn acked(s: &Mmsb) -> Result<Acked> {
    Ok(Acked { hash: s.state_hash()?, lsn: s.lsn(), time: s.timestamp() })
}

/// A small state: two pages, a few commits, a checkpoint, then single
/// updates and batches over several segments of the log. Returns what was
/// acknowledged after each step.
fn workload(s: &Mmsb) -> Result<Vec<Acked>> {
    let mut out = vec![acked(s)?];
    let a = s.create_page(PageSpec::new(64).named("a"))?;
    out.push(acked(s)?);
    let b = s.create_page(PageSpec::new(40))?;
    out.push(acked(s)?);
    s.update_page(a, sparse(3, &[1, 2, 3]))?;
    out.push(acked(s)?);
    s.checkpoint()?;
    for i in 0..6u8 {
        s.update_page(a, sparse(u64::from(i) * 7, &[i + 10; 5]))?;
        out.push(acked(s)?);
        s.update_batch(vec![
            Update::new(b, sparse(u64::from(i), &[i; 3])),
            Update::new(a, sparse(60, &[i; 4])),
        ])?;
        out.push(acked(s)?);
    }
    Ok(out)
}

/// The files of the log directory (segments and checkpoints), by name.
fn files(v: &SimVfs) -> Vec<PathBuf> {
    let mut names = v.list(&log_dir()).expect("log dir");
    names.sort();
    names
        .into_iter()
        .filter(|n| n.ends_with(".log") || n.ends_with(".ckpt"))
        .map(|n| log_dir().join(n))
        .collect()
}

/// A closed state (stopped) and everything it acknowledged.
fn closed_state() -> Result<(SimVfs, Vec<Acked>)> {
    let v = SimVfs::new();
    let s = Mmsb::start(cfg(&v))?;
    let acks = workload(&s)?;
    s.stop()?;
    Ok((v, acks))
}

/// The same state left by a writer that died (every byte it wrote reached
/// the disk, but it never closed the log).
fn crashed_state() -> Result<(SimVfs, Vec<Acked>)> {
    let v = SimVfs::new();
    let s = Mmsb::start(cfg(&v))?;
    let acks = workload(&s)?;
    v.crash(CrashMode::KeepAll);
    drop(s);
    Ok((v, acks))
}

/// How a strict start went on a damaged copy.
#[derive(Default, Debug)]
struct Tally {
    refused: u64,
    exact: u64,
}

/// Strict start on `v`: refused with a corruption error naming a file, or
/// exactly `want`. Never another state.
fn strict_start(v: &SimVfs, want: Acked, what: &str, t: &mut Tally) {
    match Mmsb::start(cfg(v)) {
        Ok(s) => {
            let got = acked(&s).expect("hash");
            assert_eq!(got, want, "{what}: strict start opened another state\n{}", s.recovery_report());
            t.exact += 1;
        }
        Err(Error::Corrupt { file: Some(_), .. }) => t.refused += 1,
        Err(e) => panic!("{what}: strict start failed with {e}, not a corruption error naming a file"),
    }
}

/// Tolerant start on `v`: opens, and when it does not open `want` exactly
/// its report says what it dropped and the state is one the writer
/// acknowledged on the way. What it kept is the log from then on: a
/// commit and a stop later, strict start opens exactly that.
fn tolerant_start(v: &SimVfs, acks: &[Acked], what: &str) {
    let want = *acks.last().expect("acks");
    let s = Mmsb::start(cfg(v).recovery(RecoveryMode::Tolerant))
        .unwrap_or_else(|e| panic!("{what}: tolerant start failed: {e}"));
    let got = acked(&s).expect("hash");
    let r = s.recovery_report();
    if got != want {
        assert!(!r.is_clean(), "{what}: tolerant start lost commits and reported nothing\n{r}");
        assert!(acks.iter().any(|a| a.hash == got.hash), "{what}: not an acknowledged state\n{r}");
    }
    let p = s.create_page(PageSpec::new(8)).expect("create");
    s.update_page(p, Payload::Full(vec![9; 8])).expect("update");
    let after = acked(&s).expect("hash");
    s.stop().expect("stop");
    let s = Mmsb::start(cfg(v)).unwrap_or_else(|e| panic!("{what}: strict start after a tolerant one: {e}"));
    assert_eq!(acked(&s).expect("hash"), after, "{what}: strict start after a tolerant one");
}

/// The segment files of `v`'s log, by name.
fn segment_files(v: &SimVfs) -> Vec<PathBuf> {
    files(v).into_iter().filter(|f| f.extension().is_some_and(|e| e == "log")).collect()
}

#[test]
fn a_clean_stop_and_start_add_no_file_and_a_crash_starts_a_new_generation() -> Result<()> {
    let v = SimVfs::new();
    let s = Mmsb::start(cfg(&v))?;
    let p = s.create_page(PageSpec::new(8))?;
    s.update_page(p, Payload::Full(vec![1; 8]))?;
    let generation = s.recovery_report().generation;
    s.stop()?;
    let closed = segment_files(&v);
    // Stop and start again, with and without writes in between: the log
    // goes on in the closing segment, in the same generation.
    for round in 0..3u8 {
        let s = Mmsb::start(cfg(&v))?;
        assert_eq!(s.recovery_report().generation, generation, "round {round}");
        assert_eq!(segment_files(&v), closed, "round {round}: a start added a file");
        s.stop()?;
        assert_eq!(segment_files(&v), closed, "round {round}: a stop without writes added a file");
    }
    let s = Mmsb::start(cfg(&v))?;
    s.update_page(p, Payload::Full(vec![2; 8]))?;
    let want = acked(&s)?;
    // The writer dies: the log ends in records, intact, not closed.
    v.crash(CrashMode::KeepAll);
    drop(s);
    let s = Mmsb::start(cfg(&v))?;
    assert_eq!(acked(&s)?, want);
    assert!(s.recovery_report().is_clean(), "{}", s.recovery_report());
    assert!(s.recovery_report().generation > generation, "a start after a crash begins a new generation");
    assert_eq!(segment_files(&v).len(), closed.len() + 1, "{:?}", segment_files(&v));
    Ok(())
}

#[test]
fn every_bit_flip_and_every_cut_of_a_closed_state_is_refused_or_harmless() -> Result<()> {
    let (vfs, acks) = closed_state()?;
    let want = *acks.last().expect("acks");
    let files = files(&vfs);
    let segments = files.iter().filter(|f| f.extension().is_some_and(|e| e == "log")).count();
    assert!(segments >= 3, "the workload spans several segments: {files:?}");
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "ckpt")), "{files:?}");
    let mut t = Tally::default();
    for f in &files {
        let len = vfs.read(f)?.len();
        let is_segment = f.extension().is_some_and(|e| e == "log");
        for bit in 0..len * 8 {
            let v = vfs.snapshot();
            v.corrupt(f, |b| b[bit / 8] ^= 1 << (bit % 8))?;
            let what = format!("bit {bit} of {}", f.display());
            strict_start(&v, want, &what, &mut t);
            if is_segment && bit % 8 == 0 {
                tolerant_start(&vfs_with(&vfs, f, |b| b[bit / 8] ^= 1)?, &acks, &what);
            }
        }
        for cut in 0..len {
            let v = vfs.snapshot();
            v.corrupt(f, |b| b.truncate(cut))?;
            let what = format!("cut at {cut} of {}", f.display());
            strict_start(&v, want, &what, &mut t);
            if is_segment {
                tolerant_start(&vfs_with(&vfs, f, |b| b.truncate(cut))?, &acks, &what);
            }
        }
    }
    eprintln!("closed state, {} files: {t:?}", files.len());
    assert!(t.refused > 0, "{t:?}");
    Ok(())
}

/// A copy of `vfs` with file `f` changed by `change`.
fn vfs_with(vfs: &SimVfs, f: &Path, change: impl FnOnce(&mut Vec<u8>)) -> Result<SimVfs> {
    let v = vfs.snapshot();
    v.corrupt(f, change)?;
    Ok(v)
}

/// The byte range of the last record of the log (the last segment that
/// holds records).
fn last_record(v: &SimVfs) -> Result<(PathBuf, std::ops::Range<usize>)> {
    let mut segs: Vec<PathBuf> =
        files(v).into_iter().filter(|f| f.extension().is_some_and(|e| e == "log")).collect();
    while let Some(seg) = segs.pop() {
        let bytes = v.read(&seg)?;
        let mut pos = mmsb::internals::log::SEGMENT_HEAD_LEN;
        let mut last = None;
        while pos + 20 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            last = Some(pos..pos + 20 + len);
            pos += 20 + len;
        }
        if let Some(r) = last {
            return Ok((seg, r));
        }
    }
    Err(Error::Invariant("no record".into()))
}

#[test]
fn every_bit_flip_of_a_crashed_state_but_in_its_last_record_is_refused_or_harmless() -> Result<()> {
    let (vfs, acks) = crashed_state()?;
    let want = *acks.last().expect("acks");
    let (last_seg, last) = last_record(&vfs)?;
    let mut t = Tally::default();
    let before_last = acks[acks.len() - 2];
    for f in &files(&vfs) {
        let len = vfs.read(f)?.len();
        for bit in 0..len * 8 {
            if *f == last_seg && last.contains(&(bit / 8)) {
                // The last record may read as torn: then the last commit
                // is cut, from its start to the end of the segment, and
                // nothing before it.
                let v = vfs.snapshot();
                v.corrupt(f, |b| b[bit / 8] ^= 1 << (bit % 8))?;
                let s = Mmsb::start(cfg(&v))?;
                let r = s.recovery_report();
                let t = r.torn_tail.as_ref().unwrap_or_else(|| panic!("bit {bit}: no torn tail\n{r}"));
                assert!(t.offset <= last.start as u64 && t.offset + t.bytes == len as u64, "bit {bit}: {r}");
                assert_eq!(acked(&s)?, Acked { lsn: before_last.lsn, ..before_last }, "bit {bit}");
                continue;
            }
            let v = vfs.snapshot();
            v.corrupt(f, |b| b[bit / 8] ^= 1 << (bit % 8))?;
            strict_start(&v, want, &format!("bit {bit} of {}", f.display()), &mut t);
        }
        // Cuts anywhere but the last segment's records: earlier segments
        // are pinned by the headers after them, and the last segment's
        // header is whole once it has a name.
        let cuts = if *f == last_seg { 0..mmsb::internals::log::SEGMENT_HEAD_LEN } else { 0..len };
        for cut in cuts {
            let v = vfs.snapshot();
            v.corrupt(f, |b| b.truncate(cut))?;
            strict_start(&v, want, &format!("cut at {cut} of {}", f.display()), &mut t);
        }
    }
    eprintln!("crashed state: {t:?}");
    assert!(t.refused > 0, "{t:?}");
    Ok(())
}

#[test]
fn a_flipped_bit_in_the_newest_segment_header_is_named_not_cut() -> Result<()> {
    // The outside report: a checkpoint, then 20 committed batches, the
    // writer killed; one bit of the newest segment's header flipped.
    let v0 = SimVfs::new();
    let mut c = cfg(&v0);
    c.segment_bytes = 1 << 20;
    let s = Mmsb::start(c.clone())?;
    let p = s.create_page(PageSpec::new(256))?;
    let q = s.create_page(PageSpec::new(256))?;
    s.checkpoint()?;
    for i in 0..20u8 {
        s.update_batch(vec![
            Update::new(p, sparse(u64::from(i), &[i; 9])),
            Update::new(q, sparse(7, &[i; 3])),
        ])?;
    }
    let want = acked(&s)?;
    v0.crash(CrashMode::KeepAll);
    drop(s);
    let newest = files(&v0).into_iter().rfind(|f| f.extension().is_some_and(|e| e == "log"));
    let newest = newest.ok_or_else(|| Error::Invariant("no segment".into()))?;
    for bit in 0..mmsb::internals::log::SEGMENT_HEAD_LEN * 8 {
        let v = v0.snapshot();
        v.corrupt(&newest, |b| b[bit / 8] ^= 1 << (bit % 8))?;
        match Mmsb::start(c.clone().vfs(Arc::new(v.clone()))) {
            Err(Error::Corrupt { file: Some(f), offset: Some(_), .. }) => assert_eq!(f, newest, "bit {bit}"),
            Err(e) => panic!("bit {bit}: {e}"),
            Ok(s) => panic!("bit {bit}: strict start opened\n{}", s.recovery_report()),
        }
        let verify = mmsb::history::tools::verify_with(&v, Path::new(STATE), &Default::default());
        assert!(verify.problem.is_some(), "bit {bit}: verify said {verify}");
        // Tolerant start keeps what precedes the segment and names it.
        let s = Mmsb::start(c.clone().vfs(Arc::new(v.clone())).recovery(RecoveryMode::Tolerant))?;
        let r = s.recovery_report().clone();
        let set_aside =
            r.dropped.iter().find(|d| d.file == newest && d.offset == 0).and_then(|d| d.set_aside.clone());
        let set_aside = set_aside.unwrap_or_else(|| panic!("bit {bit}: not dropped and set aside\n{r}"));
        assert!(v.read(&set_aside).is_ok() && v.read(&newest).is_err(), "bit {bit}");
        let kept = acked(&s)?;
        assert_ne!(kept.hash, want.hash);
        drop(s);
        // From then on the damaged segment is out of the log: strict start
        // opens what the tolerant one kept, and inspect names the file.
        assert_eq!(acked(&Mmsb::start(c.clone().vfs(Arc::new(v.clone())))?)?, kept, "bit {bit}");
        let notes = mmsb::history::tools::inspect_with(&v, Path::new(STATE), &Default::default())?.notes;
        assert!(
            notes.iter().any(|n| n.starts_with("set aside") && n.contains(".dropped")),
            "bit {bit}: {notes:?}"
        );
    }
    Ok(())
}

/// The steps of the full-disk workload: every kind of file write the
/// engine makes (segment creation at start and at rotation, appends, a
/// checkpoint's temporary file and rename, directory syncs, the closing
/// segment at stop).
fn full_disk_steps() -> Vec<fn(&Mmsb) -> Result<()>> {
    vec![
        |s| s.create_page(PageSpec::new(300)).map(drop),
        |s| s.update_page(PageId(1), sparse(0, &[1; 100])).map(drop),
        |s| s.update_page(PageId(1), sparse(100, &[2; 150])).map(drop),
        |s| s.checkpoint().map(drop),
        |s| s.create_page(PageSpec::new(500)).map(drop),
        |s| {
            s.update_batch(vec![
                Update::new(PageId(1), Payload::Full(vec![3; 300])),
                Update::new(PageId(2), Payload::Full(vec![4; 500])),
            ])
            .map(drop)
        },
        |s| s.update_page(PageId(2), sparse(10, &[5; 200])).map(drop),
        |s| s.checkpoint().map(drop),
        |s| s.update_page(PageId(1), sparse(5, &[6; 20])).map(drop),
        |s| s.stop(),
    ]
}

/// No temporary file is left in the log directory.
fn no_temporaries(v: &SimVfs, what: &str) {
    let names = v.list(&log_dir()).unwrap_or_default();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{what}: temporary files left: {names:?}");
}

#[test]
fn a_full_disk_at_any_write_loses_no_acknowledged_commit() -> Result<()> {
    let steps = full_disk_steps();
    // Hashes after each step, on a disk that never fills.
    let v = SimVfs::new();
    let s = Mmsb::start(cfg(&v))?;
    let mut want = vec![s.state_hash()?];
    for step in &steps {
        step(&s)?;
        want.push(s.state_hash()?);
    }
    let total = v.ops();
    let mut cases = 0;
    for k in 1..=total {
        for crash in [false, true] {
            let v = SimVfs::new();
            v.disk_full_after(k);
            let mut done = 0;
            let mut failed = None;
            if let Ok(s) = Mmsb::start(cfg(&v)) {
                for step in &steps {
                    if let Err(e) = step(&s) {
                        failed = Some(e);
                        break;
                    }
                    done += 1;
                }
            }
            let what =
                format!("disk full from operation {k} (crash after: {crash}), {done} steps acknowledged");
            if let Some(e) = &failed {
                let full =
                    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
                assert!(full || matches!(e, Error::Poisoned(_)), "{what}: {e}");
            }
            no_temporaries(&v, &what);
            // A start while the disk is still full fails cleanly, or opens
            // (continuing the log needs no space) and refuses writes with
            // a typed error; either way it leaves nothing that blocks the
            // next one.
            if done < steps.len() {
                if let Ok(s) = Mmsb::start(cfg(&v)) {
                    let p = s.create_page(PageSpec::new(8));
                    assert!(matches!(p, Err(Error::Io { .. } | Error::Poisoned(_))), "{what}: {p:?}");
                }
                no_temporaries(&v, &what);
            }
            v.free_space();
            if crash {
                v.crash(CrashMode::DropUnsynced);
            }
            let s =
                Mmsb::start(cfg(&v)).unwrap_or_else(|e| panic!("{what}: strict start with space freed: {e}"));
            let h = s.state_hash()?;
            // The step in flight may have reached the disk before it failed.
            let ok = h == want[done] || (done < steps.len() && h == want[done + 1]);
            assert!(ok, "{what}: {}", s.recovery_report());
            s.stop()?;
            cases += 1;
        }
    }
    eprintln!("full-disk points checked: {cases}");
    Ok(())
}

/// A tmpfs of `kib` KiB mounted at a fresh directory, unmounted on drop;
/// `None` (with the reason) where this machine does not allow mounting.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(kib: u64) -> std::result::Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_real_full_disk_loses_no_acknowledged_commit() -> Result<()> {
    let fs = match Tmpfs::mount(2048) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED a_real_full_disk_loses_no_acknowledged_commit: cannot mount a tmpfs here ({why})"
            );
            return Ok(());
        }
    };
    let dir = fs.dir.path().join("state");
    let filler = fs.dir.path().join("filler");
    let start = || Mmsb::start(Config::at(&dir).durability(Durability::SYNC));
    let s = start()?;
    let p = s.create_page(PageSpec::new(4096))?;
    // Fill the disk but for a little room.
    std::fs::write(&filler, vec![7u8; 2048 * 1024 - 64 * 1024]).ok();
    let (mut acked_hash, mut n, mut failure) = (s.state_hash()?, 0u32, None);
    for i in 0..10_000u32 {
        let b = (i % 251) as u8;
        match s.update_page(p, Payload::Full(vec![b; 4096])) {
            Ok(_) => {
                acked_hash = s.state_hash()?;
                n += 1;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.ok_or_else(|| Error::Invariant("the disk never filled".into()))?;
    // Whatever room a page or two still had goes too.
    {
        use std::io::Write;
        if let Ok(mut rest) = std::fs::File::create(fs.dir.path().join("filler2")) {
            while rest.write_all(&[0u8; 4096]).is_ok() {}
        }
    }
    assert!(
        matches!(&failure, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "{failure}"
    );
    assert!(n > 0);
    drop(s);
    // Still full: a start fails cleanly (its new segment has no room), or
    // refuses writes.
    if let Ok(s) = start() {
        assert!(s.update_page(p, Payload::Full(vec![0; 4096])).is_err(), "a write on a full disk succeeded");
    }
    std::fs::remove_file(&filler)?;
    std::fs::remove_file(fs.dir.path().join("filler2")).ok();
    let s = start()?;
    assert_eq!(s.state_hash()?, acked_hash, "{}", s.recovery_report());
    let names: Vec<String> = std::fs::read_dir(dir.join("log"))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    s.stop()?;
    eprintln!("real full disk: {n} commits acknowledged before ENOSPC, all recovered");
    Ok(())
}

/// Lines of a child process's stdout.
struct Child {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Child {
    fn spawn(dir: &Path) -> Child {
        let mut child =
            std::process::Command::new(mmsb_tests::bin_exe("writer", env!("CARGO_BIN_EXE_writer")))
                .arg(dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn writer");
        let out = child.stdout.take().expect("stdout");
        Child { child, lines: std::io::BufRead::lines(std::io::BufReader::new(out)) }
    }
    fn line(&mut self) -> String {
        self.lines.next().and_then(|l| l.ok()).unwrap_or_default()
    }
    fn say(&mut self, cmd: &str) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write");
        stdin.flush().expect("flush");
        self.line()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_deleted_or_replaced_lock_file_admits_no_second_writer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let mut first = Child::spawn(&dir);
    assert_eq!(first.line(), "open");
    assert_eq!(first.say("w 1"), "ack");
    let lock = dir.join("log").join("LOCK");
    for round in 0..2 {
        // Deleted, then replaced by a file of the same name.
        std::fs::remove_file(&lock).ok();
        if round == 1 {
            std::fs::write(&lock, b"")?;
        }
        let mut second = Child::spawn(&dir);
        assert_eq!(second.line(), "in-use", "round {round}: a second process opened the directory");
        assert!(matches!(Mmsb::start(Config::at(&dir)), Err(Error::InUse { .. })), "round {round}");
        assert_eq!(first.say(&format!("w {}", 2 + round)), "ack");
    }
    for b in 10..15 {
        assert_eq!(first.say(&format!("w {b}")), "ack");
    }
    assert_eq!(first.say("q"), "stopped");
    let _ = first.child.wait();
    let s = Mmsb::start(Config::existing(&dir))?;
    let p = s.page_named("writer").ok_or_else(|| Error::Invariant("no page".into()))?;
    assert_eq!(s.query_page(p)?, vec![14; 8]);
    assert_eq!(s.page_info(p)?.epoch.get(), 8);
    Ok(())
}

#[test]
fn replay_inside_a_commit_gives_the_state_before_it() -> Result<()> {
    let v = SimVfs::new();
    let s = Mmsb::start(cfg(&v))?;
    let a = s.create_page(PageSpec::new(16))?;
    let b = s.create_page(PageSpec::new(16))?;
    let before = acked(&s)?;
    let epochs = s.update_batch(vec![
        Update::new(a, Payload::Full(vec![1; 16])),
        Update::new(b, Payload::Full(vec![2; 16])),
        Update::new(a, sparse(0, &[3])),
    ])?;
    assert_eq!(epochs.len(), 3);
    let after = acked(&s)?;
    // Begin marker, three deltas, end marker.
    assert_eq!(after.lsn.0, before.lsn.0 + 5);
    s.stop()?;
    let replay = |l: u64| {
        mmsb::history::replay::replay_to(&v, Path::new(STATE), Until::Lsn(Lsn(l)), &Default::default())
    };
    for l in before.lsn.0..after.lsn.0 {
        let img = replay(l)?.image;
        assert_eq!((img.state_hash(), img.lsn), (before.hash, before.lsn.0), "replay to {l}");
    }
    let img = replay(after.lsn.0)?.image;
    assert_eq!((img.state_hash(), img.lsn), (after.hash, after.lsn.0));
    Ok(())
}

mod lsn_model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Create(u16),
        Write(u8, u16, Vec<u8>),
        Batch(Vec<(u8, u16, Vec<u8>)>),
        Delete(u8),
        Checkpoint,
    }

    fn op() -> impl Strategy<Value = Op> {
        let write = (any::<u8>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 1..20));
        prop_oneof![
            2 => (1u16..300).prop_map(Op::Create),
            4 => write.clone().prop_map(|(p, o, b)| Op::Write(p, o, b)),
            3 => proptest::collection::vec(write, 2..5).prop_map(Op::Batch),
            1 => any::<u8>().prop_map(Op::Delete),
            1 => Just(Op::Checkpoint),
        ]
    }

    /// An update of page number `p` (modulo the pages there are) at offset
    /// `o` (modulo its length), clipped to the page.
    fn update(s: &Mmsb, p: u8, o: u16, b: &[u8]) -> Option<Update> {
        let ids = s.page_ids();
        let id = *ids.get(usize::from(p) % ids.len().max(1))?;
        let len = s.page_info(id).ok()?.len;
        let off = u64::from(o) % len;
        let n = (len - off).min(b.len() as u64) as usize;
        Some(Update::new(id, sparse(off, &b[..n])))
    }

    fn run(s: &Mmsb, op: &Op) -> Result<()> {
        match op {
            Op::Create(len) => s.create_page(PageSpec::new(u64::from(*len))).map(drop),
            Op::Write(p, o, b) => match update(s, *p, *o, b) {
                Some(u) => s.update_batch(vec![u]).map(drop),
                None => Ok(()),
            },
            Op::Batch(us) => {
                let us: Vec<Update> = us.iter().filter_map(|(p, o, b)| update(s, *p, *o, b)).collect();
                if us.is_empty() {
                    Ok(())
                } else {
                    s.update_batch(us).map(drop)
                }
            }
            Op::Delete(p) => match s.page_ids().get(usize::from(*p) % s.page_ids().len().max(1)) {
                Some(id) => s.delete_page(*id),
                None => Ok(()),
            },
            Op::Checkpoint => s.checkpoint().map(drop),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// At random points of a random workload, the live LSN and hash;
        /// replaying to each LSN gives that hash, and every reader of the
        /// directory gives the same LSN for the final state.
        #[test]
        fn every_reader_agrees_on_the_lsn_of_a_state(ops in proptest::collection::vec(op(), 1..40)) {
            let v = SimVfs::new();
            let s = Mmsb::start(cfg(&v)).expect("start");
            let mut points = vec![acked(&s).expect("ack")];
            for op in &ops {
                run(&s, op).expect("op");
                let a = acked(&s).expect("ack");
                prop_assert_eq!(s.snapshot().expect("snapshot").lsn, a.lsn.0);
                points.push(a);
            }
            let last = *points.last().expect("points");
            s.stop().expect("stop");
            let dir = Path::new(STATE);
            let limits = mmsb::Limits::default();
            let oldest = mmsb::internals::checkpoint::list(&v, &log_dir()).expect("list").last().map_or(0, |c| c.0);
            for (i, p) in points.iter().enumerate() {
                // The point itself, and every LSN inside the next commit.
                let upto = points.get(i + 1).map_or(p.lsn.0 + 1, |n| n.lsn.0);
                for l in p.lsn.0..upto.max(p.lsn.0 + 1) {
                    match mmsb::history::replay::replay_to(&v, dir, Until::Lsn(Lsn(l)), &limits) {
                        Ok(r) => {
                            prop_assert_eq!(r.image.state_hash(), p.hash, "replay to {}", l);
                            prop_assert_eq!(r.image.lsn, p.lsn.0, "replay to {}", l);
                        }
                        Err(Error::Config(_)) => prop_assert!(l < oldest, "replay to {} refused", l),
                        Err(e) => prop_assert!(false, "replay to {}: {}", l, e),
                    }
                }
            }
            let rep = mmsb::history::tools::replay_with(&v, dir, None, &limits).expect("replay");
            prop_assert_eq!((rep.lsn, rep.hash), (last.lsn, last.hash));
            let st = mmsb::stats::dir_stats_with(&v, dir, &limits).expect("stats");
            prop_assert_eq!(st.lsn, last.lsn.0);
            let ver = mmsb::history::tools::verify_with(&v, dir, &limits);
            prop_assert!(ver.is_ok(), "{}", ver);
            prop_assert_eq!(ver.last_lsn, last.lsn.0);
            let ins = mmsb::history::tools::inspect_with(&v, dir, &limits).expect("inspect");
            if let Some((_, end)) = ins.lsn_range {
                prop_assert_eq!(end, last.lsn.0);
            }
            let s = Mmsb::start(cfg(&v)).expect("reopen");
            prop_assert_eq!(acked(&s).expect("ack"), last);
        }
    }
}
