//! The `mmsb` command end to end: demo leaves a state that verify, inspect
//! and replay agree on; corruption is reported with file and offset; no
//! input makes the command panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn mmsb(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_mmsb")).args(args).output()?)
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Exit status is a clean failure (1 or clap's 2), never a panic (101) or a signal.
fn assert_clean_failure(o: &Output, what: &str) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "{what}: expected failure\n{out}\n{err}");
    assert!(matches!(o.status.code(), Some(1 | 2)), "{what}: status {:?}\n{out}\n{err}", o.status);
    assert!(!err.contains("panicked"), "{what}: panicked\n{err}");
}

fn hash_line(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|l| l.strip_prefix("state hash: ")).map(str::to_owned)
}

/// Run the demo into `dir`; return its printed state hash and checkpoint path.
fn demo(dir: &Path, deltas: u64) -> Result<(String, PathBuf)> {
    let o = mmsb(&["demo", "--dir", dir.to_str().ok_or("path")?, "--deltas", &deltas.to_string()])?;
    let (out, err) = text(&o);
    assert!(o.status.success(), "demo failed\n{out}\n{err}");
    let hash = hash_line(&out).ok_or("no state hash line")?;
    let ckpt = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("checkpoint"))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("no checkpoint line")?;
    Ok((hash, PathBuf::from(ckpt)))
}

#[test]
fn demo_then_verify_inspect_replay_agree() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let (hash, ckpt) = demo(&dir, 3_000)?;
    assert!(
        ckpt.starts_with(&dir) && ckpt.is_file(),
        "checkpoint {} not in {}",
        ckpt.display(),
        dir.display()
    );
    let d = dir.to_str().ok_or("path")?;

    let o = mmsb(&["verify", d])?;
    assert!(o.status.success(), "verify: {:?}", text(&o));
    assert!(text(&o).0.contains("OK"));

    let o = mmsb(&["verify", "--recompute", d])?;
    assert!(o.status.success(), "verify --recompute: {:?}", text(&o));
    assert!(text(&o).0.contains("1 declared"), "{:?}", text(&o));

    let o = mmsb(&["inspect", d])?;
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains("checkpoints: 1"), "{out}");
    assert!(out.contains("records by type:") && out.contains("LSN range"), "{out}");
    assert!(out.contains(ckpt.file_name().and_then(|n| n.to_str()).ok_or("name")?), "{out}");

    let o = mmsb(&["replay", d])?;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let last = out.lines().last().ok_or("no output")?;
    assert_eq!(last, format!("state hash: {hash}"), "replay's last line is the demo's hash");
    Ok(())
}

#[test]
fn replay_to_lsn_and_time_before_any_checkpoint() -> Result {
    // A log without a checkpoint, written through the library.
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let (h1, h_end) = {
        let s = mmsb::Mmsb::start(mmsb::Config::at(&dir))?;
        let p = s.create_page(mmsb::PageSpec::new(16))?;
        s.update_page(p, mmsb::Payload::Full(vec![1; 16]))?;
        let h1 = s.state_hash()?;
        s.update_page(p, mmsb::Payload::Full(vec![2; 16]))?;
        let h = s.state_hash()?;
        s.stop()?;
        (h1, h)
    };
    let d = dir.to_str().ok_or("path")?;
    let o = mmsb(&["replay", d, "--to", "2"])?;
    assert_eq!(hash_line(&text(&o).0), Some(format!("{h1:032x}")), "{:?}", text(&o));
    let o = mmsb(&["replay", d, "--to-time", "2"])?;
    assert_eq!(hash_line(&text(&o).0), Some(format!("{h1:032x}")), "{:?}", text(&o));
    let o = mmsb(&["replay", d])?;
    assert_eq!(hash_line(&text(&o).0), Some(format!("{h_end:032x}")));
    Ok(())
}

/// A corrupt checkpoint whose log is retired (the demo's checkpoint) is
/// named by every command: verify with its offset, replay and stats as the
/// checkpoint the state cannot be rebuilt without, inspect as invalid.
#[test]
fn a_corrupt_checkpoint_is_named_by_every_command() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let (_, ckpt) = demo(&dir, 500)?;
    let mut bytes = std::fs::read(&ckpt)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&ckpt, &bytes)?;
    let o = mmsb(&["verify", dir.to_str().ok_or("path")?])?;
    assert_clean_failure(&o, "verify of a corrupt checkpoint");
    let (out, err) = text(&o);
    let name = ckpt.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    assert!(err.contains(name) && err.contains("at offset"), "{out}\n{err}");
    for cmd in ["replay", "stats"] {
        let o = mmsb(&[cmd, dir.to_str().ok_or("path")?])?;
        assert_clean_failure(&o, &format!("{cmd} with a corrupt checkpoint"));
        let (out, err) = text(&o);
        assert!(err.contains(name) && err.contains("does not verify"), "{cmd}: {out}\n{err}");
    }
    let o = mmsb(&["inspect", dir.to_str().ok_or("path")?])?;
    let (out, err) = text(&o);
    assert!(out.contains(name) && out.contains("INVALID"), "{out}\n{err}");
    assert!(out.contains("no checkpoint that verifies") && !out.contains("unreadable"), "{out}\n{err}");
    Ok(())
}

#[test]
fn replay_before_the_oldest_history_kept_says_so() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    demo(&dir, 500)?;
    let d = dir.to_str().ok_or("path")?;
    for args in [&["replay", d, "--to", "1"][..], &["replay", d, "--to-time", "1"][..]] {
        let o = mmsb(args)?;
        assert_clean_failure(&o, &format!("{args:?}"));
        let (out, err) = text(&o);
        assert!(err.contains("before the oldest history kept") && !err.contains("corrupt"), "{out}\n{err}");
        // Both ways of naming a point are given for the oldest one kept.
        assert!(err.contains("checkpoint is at LSN") && err.contains("(logical time "), "{err}");
    }
    Ok(())
}

#[test]
fn replay_notes_a_torn_tail() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let hash = {
        let s = mmsb::Mmsb::start(mmsb::Config::at(&dir))?;
        let p = s.create_page(mmsb::PageSpec::new(64))?;
        for i in 0..20u8 {
            s.update_page(p, mmsb::Payload::Full(vec![i; 64]))?;
        }
        let h = s.state_hash()?;
        s.update_page(p, mmsb::Payload::Full(vec![99; 64]))?;
        s.stop()?;
        h
    };
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("log"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    // What a writer that crashed leaves: no empty segment closing the log
    // (the stop started one, holding its header only).
    let closing = segs.pop().ok_or("no segment")?;
    assert_eq!(std::fs::metadata(&closing)?.len(), 48);
    std::fs::remove_file(&closing)?;
    let seg = segs.pop().ok_or("no segment")?;
    // Cut the last record (the write of 99s) short.
    let len = std::fs::metadata(&seg)?.len();
    std::fs::OpenOptions::new().write(true).open(&seg)?.set_len(len - 10)?;
    let o = mmsb(&["replay", dir.to_str().ok_or("path")?])?;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(hash_line(&out), Some(format!("{hash:032x}")), "{out}\n{err}");
    assert!(err.contains("torn tail") && err.contains("offset"), "{err}");
    Ok(())
}

#[test]
fn demo_refuses_a_directory_that_holds_a_state() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    demo(&dir, 300)?;
    let listing = |d: &Path| -> Result<Vec<(String, u64)>> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d.join("log"))?
            .filter_map(|e| e.ok())
            .map(|e| Ok((e.file_name().to_string_lossy().into_owned(), e.metadata()?.len())))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let before = listing(&dir)?;
    let o = mmsb(&["demo", "--dir", dir.to_str().ok_or("path")?, "--deltas", "300"])?;
    assert_clean_failure(&o, "demo over an existing state");
    assert!(text(&o).1.contains("already holds an MMSB state"), "{:?}", text(&o));
    assert_eq!(listing(&dir)?, before, "the state was left as it was");
    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    demo(&empty, 300)?;
    Ok(())
}

#[test]
fn a_closed_output_pipe_ends_no_command_in_a_panic() -> Result {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmsb"))
        .args(["demo", "--deltas", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The reader goes before the command writes its report.
    drop(child.stdout.take());
    let o = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}\n{err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

#[test]
fn corrupt_log_byte_names_segment_and_offset() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    {
        let s = mmsb::Mmsb::start(mmsb::Config::at(&dir))?;
        let p = s.create_page(mmsb::PageSpec::new(4096))?;
        for i in 0..200u8 {
            s.update_page(p, mmsb::Payload::Full(vec![i; 4096]))?;
        }
        s.stop()?;
    }
    let seg = std::fs::read_dir(dir.join("log"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .ok_or("no segment")?;
    let mut bytes = std::fs::read(&seg)?;
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes)?;
    let o = mmsb(&["verify", dir.to_str().ok_or("path")?])?;
    assert_clean_failure(&o, "verify of a corrupt segment");
    let (_, err) = text(&o);
    let name = seg.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    assert!(err.contains(name) && err.contains("at offset"), "{err}");
    Ok(())
}

/// Deterministic garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn garbage_directories_fail_cleanly() -> Result {
    let tmp = tempfile::tempdir()?;
    // Not a state directory at all.
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain)?;
    std::fs::write(plain.join("junk"), garbage(1, 1000))?;
    // A missing path, and a file where a directory is expected.
    let missing = tmp.path().join("missing");
    let file = plain.join("junk");
    for d in [&plain, &missing, &file] {
        for cmd in ["inspect", "verify", "replay", "stats"] {
            let o = mmsb(&[cmd, d.to_str().ok_or("path")?])?;
            assert_clean_failure(&o, &format!("{cmd} {}", d.display()));
        }
    }
    // A log directory full of garbage under valid-looking names.
    for seed in 0..6u64 {
        let d = tmp.path().join(format!("g{seed}"));
        std::fs::create_dir_all(d.join("log"))?;
        let len = [0usize, 3, 47, 48, 100, 5000][seed as usize];
        let mut seg = garbage(seed + 7, len);
        if seed >= 4 {
            // A plausible header start.
            seg[..8].copy_from_slice(b"MMSBWAL\0");
        }
        std::fs::write(d.join("log").join("wal-0000000000000001.log"), &seg)?;
        let mut ck = garbage(seed + 99, 200 + len);
        ck[..8].copy_from_slice(b"MMSBCKPT");
        std::fs::write(d.join("log").join(format!("ckpt-{:020}.ckpt", seed)), &ck)?;
        let ds = d.to_str().ok_or("path")?;
        let o = mmsb(&["verify", ds])?;
        assert_clean_failure(&o, "verify of garbage");
        for cmd in ["inspect", "replay", "stats"] {
            let o = mmsb(&[cmd, ds])?;
            assert!(!text(&o).1.contains("panicked"), "{cmd} panicked: {:?}", text(&o));
            assert!(matches!(o.status.code(), Some(0 | 1)), "{cmd}: {:?}", o.status);
        }
    }
    Ok(())
}

#[cfg(unix)]
#[test]
fn links_out_of_the_directory_are_not_followed() -> Result {
    let tmp = tempfile::tempdir()?;
    let real = tmp.path().join("real");
    {
        let s = mmsb::Mmsb::start(mmsb::Config::at(&real))?;
        s.create_page(mmsb::PageSpec::new(8))?;
        s.checkpoint()?;
        s.stop()?;
    }
    // DIR/log is a link to another state's log.
    let linked = tmp.path().join("linked");
    std::fs::create_dir(&linked)?;
    std::os::unix::fs::symlink(real.join("log"), linked.join("log"))?;
    let o = mmsb(&["inspect", linked.to_str().ok_or("path")?])?;
    assert_clean_failure(&o, "inspect through a linked log/");
    assert!(text(&o).1.contains("symbolic link"), "{:?}", text(&o));
    // Files inside log/ that are links are named and not read through
    // (nor passed over as if the log were shorter).
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(mixed.join("log"))?;
    for e in std::fs::read_dir(real.join("log"))? {
        let e = e?;
        std::os::unix::fs::symlink(e.path(), mixed.join("log").join(e.file_name()))?;
    }
    for cmd in ["inspect", "verify", "replay", "stats"] {
        let o = mmsb(&[cmd, mixed.to_str().ok_or("path")?])?;
        assert_clean_failure(&o, cmd);
        let err = text(&o).1;
        assert!(err.contains("symbolic link") || err.contains("not a regular file"), "{cmd}: {err}");
    }
    Ok(())
}

#[test]
fn demo_gpu_flag_runs_with_or_without_a_device() -> Result {
    let o = mmsb(&["demo", "--gpu", "--deltas", "300"])?;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("GPU 0:") || out.contains("no usable GPU"), "{out}");
    assert!(hash_line(&out).is_some());
    Ok(())
}

#[test]
fn bench_writes_its_rows_and_their_targets() -> Result {
    let tmp = tempfile::tempdir()?;
    let json = tmp.path().join("rows.json");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let o = mmsb(&[
        "bench",
        "--quick",
        "--only",
        "durable",
        "--json",
        json.to_str().ok_or("path")?,
        "--scratch",
        scratch.to_str().ok_or("path")?,
    ])?;
    let (out, err) = text(&o);
    assert!(o.status.success(), "bench failed\n{out}\n{err}");
    assert!(out.contains("log_commit_durable_small"), "{out}");
    assert!(out.contains("GPU rows: absent (not selected by --only)."), "{out}");
    let line = out.lines().find(|l| l.starts_with("targets: ")).ok_or("no targets line")?;
    assert!(line == "targets: all 1 met" || line.contains("missed: log_commit_durable_small"), "{line}");
    // The JSON array has the fields the table shows, one object per row.
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let rows = rows.as_array().ok_or("not an array")?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["name"], "log_commit_durable_small");
    assert_eq!(r["unit"], "commits/s");
    assert_eq!(r["target"], 0.8);
    for key in ["value", "limit_value", "ratio"] {
        let v = r[key].as_f64().ok_or(key)?;
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    let ratio = r["value"].as_f64().ok_or("value")? / r["limit_value"].as_f64().ok_or("limit")?;
    assert!((ratio - r["ratio"].as_f64().ok_or("ratio")?).abs() < 1e-9 * ratio.max(1.0));
    assert!(r["limit_name"].as_str().is_some_and(|s| s.contains("fdatasync")), "{r}");
    assert!(r["device"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert_eq!(r["meets_target"].as_bool(), Some(r["ratio"].as_f64().ok_or("ratio")? >= 0.8));
    // The engine's scratch files are gone; the directory given is left.
    assert!(scratch.is_dir());
    assert_eq!(std::fs::read_dir(&scratch)?.count(), 0, "scratch left behind");
    Ok(())
}

/// A binary built without the `peers` feature refuses `--peers` (and
/// `--only peers`) before measuring anything, naming the cargo command that
/// builds one with the peers.
#[cfg(not(feature = "peers"))]
#[test]
fn bench_peers_without_the_feature_names_the_build_command() -> Result {
    for args in [&["bench", "--quick", "--peers"][..], &["bench", "--quick", "--only", "peers"]] {
        let o = mmsb(args)?;
        assert_clean_failure(&o, "--peers in a build without the peers");
        let (out, err) = text(&o);
        assert!(err.contains("cargo build --release -p mmsb-cli --features peers"), "{err}");
        assert!(!err.contains("mmsb bench: CPU"), "started measuring:\n{err}");
        assert!(out.is_empty(), "printed rows:\n{out}");
    }
    Ok(())
}

#[test]
fn bench_refuses_bad_arguments_before_measuring() -> Result {
    let tmp = tempfile::tempdir()?;
    let o = mmsb(&["bench", "--quick", "--only", "nothing"])?;
    assert_clean_failure(&o, "unknown section");
    // An output file that cannot be created fails at once, naming it.
    let bad = tmp.path().join("no-such-dir").join("rows.json");
    let o = mmsb(&["bench", "--quick", "--only", "durable", "--json", bad.to_str().ok_or("path")?])?;
    assert_clean_failure(&o, "unwritable json");
    let (out, err) = text(&o);
    assert!(err.contains("rows.json"), "{out}\n{err}");
    assert!(!out.contains("log_commit_durable_small"), "measured before failing:\n{out}");
    // A scratch directory that is not there fails before the first row
    // (the apply rows come first), and an earlier output file is left as
    // it was.
    let prev = tmp.path().join("prev.json");
    std::fs::write(&prev, b"[]")?;
    let missing = tmp.path().join("no-scratch");
    let o = mmsb(&[
        "bench",
        "--quick",
        "--only",
        "apply,durable",
        "--scratch",
        missing.to_str().ok_or("path")?,
        "--json",
        prev.to_str().ok_or("path")?,
    ])?;
    assert_clean_failure(&o, "missing scratch");
    let (out, err) = text(&o);
    assert!(err.contains("--scratch") && !out.contains("cpu_apply"), "{out}\n{err}");
    assert_eq!(std::fs::read(&prev)?, b"[]");
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 1, "a temporary output file was left behind");
    // One file for both outputs is refused.
    let o = mmsb(&[
        "bench",
        "--quick",
        "--json",
        prev.to_str().ok_or("path")?,
        "--plot",
        prev.to_str().ok_or("path")?,
    ])?;
    assert_clean_failure(&o, "same file twice");
    assert!(text(&o).1.contains("same file"), "{:?}", text(&o));
    Ok(())
}

#[cfg(unix)]
#[test]
fn an_interrupted_demo_removes_its_temporary_directory() -> Result {
    let tmp = tempfile::tempdir()?;
    let child = Command::new(env!("CARGO_BIN_EXE_mmsb"))
        .args(["demo", "--deltas", "1000000000"])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Wait for its state directory, then for it to be under way.
    let t = std::time::Instant::now();
    while std::fs::read_dir(tmp.path())?.count() == 0 && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(std::fs::read_dir(tmp.path())?.count() > 0, "the demo made no state directory");
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    assert!(killed.success());
    let o = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted after"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 0, "the temporary directory was left behind");
    Ok(())
}
