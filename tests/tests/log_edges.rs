//! The log reader at its edges, on logs built byte by byte: where a torn
//! tail may start, which frames are refused whatever their CRC says, how
//! segments must join, and what the recovery report says.

use mmsb::internals::files::segment_name;
use mmsb::internals::log::writer::segment_header;
use mmsb::Limits;
use mmsb::RecoveryMode;
use mmsb::{Config, Error, Mmsb, PageSpec, Payload, Result};
use std::path::{Path, PathBuf};

fn frame_with(kind: u8, flags: u8, lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&[kind, flags, 0, 0]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(body);
    let c = mmsb::internals::codec::crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    out
}

fn frame(kind: u8, lsn: u64, body: &[u8]) -> Vec<u8> {
    frame_with(kind, 0, lsn, body)
}

/// A create_page record body: page `id` of 4 bytes on the CPU, no metadata.
fn create(id: u64) -> Vec<u8> {
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&4u64.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&0u32.to_le_bytes());
    body
}

const CREATE: u8 = 0x01;
const DELETE: u8 = 0x02;

/// A segment: header (generation, seq, first LSN), then `frames`.
fn segment(generation: u64, seq: u64, first: u64, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut s = segment_header(generation, seq, first).to_vec();
    for f in frames {
        s.extend_from_slice(f);
    }
    s
}

/// A state directory holding `segments` (by sequence number).
fn state(segments: &[(u64, Vec<u8>)]) -> Result<(tempfile::TempDir, PathBuf)> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("state");
    let log = dir.join("log");
    std::fs::create_dir_all(&log)?;
    for (seq, bytes) in segments {
        std::fs::write(log.join(segment_name(*seq)), bytes)?;
    }
    Ok((root, dir))
}

/// Pages creates 1..=n, one record each, LSNs 1..=n.
fn creates(n: u64) -> Vec<Vec<u8>> {
    (1..=n).map(|i| frame(CREATE, i, &create(i))).collect()
}

fn strict(dir: &Path) -> Result<Mmsb> {
    Mmsb::start(Config::at(dir))
}

fn corrupt_at(r: Result<Mmsb>, file: &Path, offset: u64, what: &str) {
    match r {
        Err(Error::Corrupt { file: Some(f), offset: Some(o), reason }) => {
            assert_eq!((f.as_path(), o), (file, offset), "{what}: {reason}");
        }
        Err(e) => panic!("{what}: {e}"),
        Ok(s) => panic!("{what}: opened\n{}", s.recovery_report()),
    }
}

#[test]
fn a_bad_frame_before_a_small_valid_record_at_the_very_end_is_corruption() -> Result<()> {
    // The last record is a delete: 28 bytes framed, well inside the last
    // 64 bytes of the file.
    let mut frames = creates(3);
    let mut bad = frame(CREATE, 4, &create(4));
    bad[20] ^= 1;
    let bad_at = 48 + frames.iter().map(Vec::len).sum::<usize>();
    frames.push(bad);
    frames.push(frame(DELETE, 5, &1u64.to_le_bytes()));
    let (_root, dir) = state(&[(1, segment(1, 1, 1, &frames))])?;
    let seg = dir.join("log").join(segment_name(1));
    corrupt_at(strict(&dir), &seg, bad_at as u64, "bad frame, then a delete");
    // Tolerant: the three creates, and the rest reported as dropped.
    let s = Mmsb::start(Config::at(&dir).recovery(RecoveryMode::Tolerant))?;
    let r = s.recovery_report();
    assert_eq!(s.page_ids().len(), 3);
    assert_eq!(r.dropped.len(), 1, "{r}");
    assert_eq!((r.dropped[0].offset, r.dropped[0].bytes), (bad_at as u64, 28 + 20 + 28), "{r}");
    Ok(())
}

#[test]
fn a_torn_tail_starts_at_the_first_bad_byte_and_covers_the_rest() -> Result<()> {
    let frames = creates(4);
    let whole = segment(1, 1, 1, &frames);
    let last_at = whole.len() - frames[3].len();
    for cut in last_at..whole.len() {
        let (_root, dir) = state(&[(1, whole[..cut].to_vec())])?;
        let s = strict(&dir)?;
        let r = s.recovery_report();
        assert_eq!(s.page_ids().len(), 3, "cut {cut}");
        if cut == last_at {
            assert!(r.torn_tail.is_none(), "cut {cut}: a whole log, one record shorter\n{r}");
        } else {
            let t = r.torn_tail.as_ref().unwrap_or_else(|| panic!("cut {cut}: no torn tail\n{r}"));
            assert_eq!((t.offset, t.bytes), (last_at as u64, (cut - last_at) as u64), "cut {cut}");
        }
        assert_eq!(r.last_lsn.0, 3);
        assert!(r.dropped.is_empty() && r.invalid_checkpoints.is_empty());
    }
    Ok(())
}

#[test]
fn a_whole_frame_at_the_tail_that_is_not_the_next_record_is_corruption() -> Result<()> {
    // CRC-valid frames a crash cannot leave: the wrong LSN (ahead, or
    // behind), type 0, non-zero flags. Each is the last bytes of the log.
    let base = creates(2);
    let at = (48 + base.iter().map(Vec::len).sum::<usize>()) as u64;
    for (what, f) in [
        ("an LSN ahead", frame(CREATE, 9, &create(3))),
        ("an LSN behind", frame(CREATE, 2, &create(3))),
        ("type 0", frame(0, 3, &create(3))),
        ("flags", frame_with(CREATE, 1, 3, &create(3))),
    ] {
        let mut frames = base.clone();
        frames.push(f);
        let (_root, dir) = state(&[(1, segment(1, 1, 1, &frames))])?;
        corrupt_at(strict(&dir), &dir.join("log").join(segment_name(1)), at, what);
    }
    Ok(())
}

#[test]
fn a_record_over_the_length_limit_is_refused_even_with_a_valid_crc() -> Result<()> {
    let limit = 4096u64;
    let limits = Limits { max_page_len: 1 << 20, max_record_len: limit };
    // A delete record padded to a body of `len` bytes: the decoder refuses
    // the padding, but the frame check comes first.
    // At the end of the log too: a whole frame whose CRC matches is no
    // torn tail, whatever its length.
    for (len, refused_by_frame, last) in
        [(limit, false, false), (limit + 1, true, false), (limit, false, true), (limit + 1, true, true)]
    {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.resize(len as usize, 0);
        let mut frames = creates(1);
        frames.push(frame(DELETE, 2, &body));
        if !last {
            frames.push(frame(CREATE, 3, &create(2)));
        }
        let (_root, dir) = state(&[(1, segment(1, 1, 1, &frames))])?;
        let mut cfg = Config::at(&dir);
        cfg.limits = limits;
        match Mmsb::start(cfg) {
            Err(Error::Corrupt { offset: Some(o), reason, .. }) => {
                if refused_by_frame {
                    assert_eq!(o, 48 + frames[0].len() as u64, "{reason}");
                    assert!(reason.contains("exceeds the limit"), "{reason}");
                } else {
                    assert!(reason.contains("delete record"), "len {len}: {reason}");
                }
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn segments_of_one_generation_must_join_exactly() -> Result<()> {
    // Segment 1 holds LSNs 1..=3; segment 2 starts at `first`.
    for (first, ok) in [(3, false), (4, true), (5, false)] {
        let s2: Vec<Vec<u8>> = (first..first + 2).map(|l| frame(CREATE, l, &create(l))).collect();
        let (_root, dir) = state(&[(1, segment(1, 1, 1, &creates(3))), (2, segment(1, 2, first, &s2))])?;
        match strict(&dir) {
            Ok(s) => {
                assert!(ok, "segment 2 starting at LSN {first} was accepted");
                assert_eq!(s.page_ids().len(), 5);
            }
            Err(Error::Corrupt { file: Some(f), .. }) => {
                assert!(!ok, "first {first}");
                assert_eq!(f, dir.join("log").join(segment_name(1)), "first {first}");
            }
            Err(e) => panic!("first {first}: {e}"),
        }
    }
    Ok(())
}

#[test]
fn a_middle_segment_whose_header_does_not_read_is_corruption() -> Result<()> {
    let s3: Vec<Vec<u8>> = (5..7).map(|l| frame(CREATE, l, &create(l))).collect();
    let s2: Vec<Vec<u8>> = (4..5).map(|l| frame(CREATE, l, &create(l))).collect();
    let mut middle = segment(1, 2, 4, &s2);
    middle[33] ^= 1; // first LSN, under the header CRC
    let (_root, dir) = state(&[(1, segment(1, 1, 1, &creates(3))), (2, middle), (3, segment(1, 3, 5, &s3))])?;
    let seg2 = dir.join("log").join(segment_name(2));
    corrupt_at(strict(&dir), &seg2, 40, "middle header");
    let v = mmsb::history::tools::verify(&dir);
    assert!(v.problem.as_ref().is_some_and(|p| p.file.as_deref() == Some(seg2.as_path())), "{v}");
    // Tolerant: segment 1 kept, segments 2 and 3 reported.
    let s = Mmsb::start(Config::at(&dir).recovery(RecoveryMode::Tolerant))?;
    let r = s.recovery_report();
    assert_eq!(s.page_ids().len(), 3);
    let dropped: Vec<&Path> = r.dropped.iter().map(|d| d.file.as_path()).collect();
    assert_eq!(dropped, vec![seg2.as_path(), dir.join("log").join(segment_name(3)).as_path()], "{r}");
    Ok(())
}

#[test]
fn the_report_names_a_skipped_checkpoint_and_counts_what_it_replayed() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("state");
    let (hash, newest) = {
        let s = Mmsb::start(Config::at(&dir))?;
        let p = s.create_page(PageSpec::new(16))?;
        s.update_page(p, Payload::Full(vec![1; 16]))?;
        s.checkpoint()?;
        s.update_page(p, Payload::Full(vec![2; 16]))?;
        s.update_page(p, Payload::Full(vec![3; 16]))?;
        // Keep the older checkpoint and its log: copy them aside, take a
        // second checkpoint, then put them back.
        let log = dir.join("log");
        let keep: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&log)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ckpt" || x == "log"))
            .map(|p| std::fs::read(&p).map(|b| (p, b)))
            .collect::<std::io::Result<_>>()?;
        let newest = s.checkpoint()?.path;
        s.update_page(p, Payload::Full(vec![4; 16]))?;
        let hash = s.state_hash()?;
        s.stop()?;
        for (p, b) in keep {
            if !p.exists() {
                std::fs::write(p, b)?;
            }
        }
        (hash, newest)
    };
    // The newest checkpoint damaged: recovery starts from the older one and
    // replays the log after it, and says so.
    let mut bytes = std::fs::read(&newest)?;
    bytes[100] ^= 1;
    std::fs::write(&newest, bytes)?;
    let s = strict(&dir)?;
    let r = s.recovery_report().clone();
    assert_eq!(s.state_hash()?, hash);
    assert_eq!(r.invalid_checkpoints.len(), 1, "{r}");
    assert_eq!(r.invalid_checkpoints[0].0, newest);
    assert!(!r.is_clean(), "a skipped checkpoint is not a clean recovery");
    // The log after the older checkpoint: the writes of 2, 3 and 4.
    assert_eq!((r.commits_replayed, r.changes_replayed), (3, 3), "{r}");
    assert!(r.to_string().contains("skipped invalid checkpoint"), "{r}");
    Ok(())
}
