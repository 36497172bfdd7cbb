//! A whole state directory from untrusted bytes: the input becomes files
//! (segments, checkpoints, temporaries, junk, symlinks pointing outside) in
//! a temporary directory, then `Mmsb::start` (strict and tolerant),
//! `tools::verify` and `tools::inspect` run on it. They return errors;
//! they never panic, hang, allocate past the limits, or touch the file
//! outside the directory that a symlink points at.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmsb::RecoveryMode;
use mmsb::vfs::StdVfs;
use mmsb_fuzz::{fix_checkpoint, segment, LIMITS};

#[derive(Arbitrary, Debug)]
enum Kind {
    /// A segment: valid header + CRC-framed records from the bytes.
    Segment { generation: u8, first_lsn: u8 },
    /// A segment file with exactly these bytes.
    RawSegment,
    /// A checkpoint with fixed-up header CRC and trailer.
    Checkpoint,
    /// A checkpoint file with exactly these bytes.
    RawCheckpoint,
    /// A leftover temporary checkpoint.
    Tmp,
    /// A symlink with a segment or checkpoint name, pointing outside.
    Symlink { checkpoint: bool },
    /// A file whose name means nothing to MMSB.
    Junk,
}

#[derive(Arbitrary, Debug)]
struct File<'a> {
    kind: Kind,
    num: u8,
    bytes: &'a [u8],
}

#[derive(Arbitrary, Debug)]
struct Dir<'a> {
    files: Vec<File<'a>>,
    log_is_symlink: bool,
}

const SECRET: &[u8] = b"outside the state directory";

fuzz_target!(|d: Dir<'_>| {
    if d.files.len() > 16 {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let secret = outside.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let state = root.path().join("state");
    let log = state.join("log");
    std::fs::create_dir(&state).unwrap();
    if d.log_is_symlink {
        std::os::unix::fs::symlink(&outside, &log).unwrap();
    } else {
        std::fs::create_dir(&log).unwrap();
    }
    for f in &d.files {
        let n = u64::from(f.num);
        let (name, bytes) = match f.kind {
            Kind::Segment { generation, first_lsn } => {
                (mmsb::internals::files::segment_name(n), segment(generation.into(), n, first_lsn.max(1).into(), f.bytes))
            }
            Kind::RawSegment => (mmsb::internals::files::segment_name(n), f.bytes.to_vec()),
            Kind::Checkpoint => {
                let mut b = f.bytes.to_vec();
                fix_checkpoint(&mut b);
                (mmsb::internals::files::checkpoint_name(n), b)
            }
            Kind::RawCheckpoint => (mmsb::internals::files::checkpoint_name(n), f.bytes.to_vec()),
            Kind::Tmp => (format!("ckpt-{n:020}.tmp"), f.bytes.to_vec()),
            Kind::Symlink { checkpoint } => {
                let name = if checkpoint {
                    mmsb::internals::files::checkpoint_name(n)
                } else {
                    mmsb::internals::files::segment_name(n)
                };
                // Through a symlinked `log` this would plant the link in the
                // outside directory itself; only a real `log` gets one.
                if !d.log_is_symlink {
                    let _ = std::os::unix::fs::symlink(&secret, log.join(name));
                }
                continue;
            }
            Kind::Junk => (format!("junk-{n}"), f.bytes.to_vec()),
        };
        // `fs::write` follows links: never write through a link this input
        // planted under the same name (that would be the harness writing
        // outside, not the library).
        let path = log.join(name);
        if !d.log_is_symlink && std::fs::symlink_metadata(&path).is_err() {
            let _ = std::fs::write(path, bytes);
        }
    }
    let _ = mmsb::history::tools::verify_with(&StdVfs, &state, &LIMITS);
    let _ = mmsb::history::tools::inspect_with(&StdVfs, &state, &LIMITS);
    for mode in [RecoveryMode::Strict, RecoveryMode::Tolerant] {
        let mut cfg = mmsb::Config::at(&state).recovery(mode);
        cfg.limits = LIMITS;
        cfg.propagation_threads = 1;
        if let Ok(s) = mmsb::Mmsb::start(cfg) {
            let _ = s.state_hash();
            s.verify().expect("a state that opened verifies");
            let _ = s.stop();
        }
    }
    assert_eq!(std::fs::read(&secret).unwrap(), SECRET, "a file outside the state directory was changed");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "a file was created outside the state directory"
    );
});
