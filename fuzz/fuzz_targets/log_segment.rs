//! Log records and whole segments: frame parsing, record decoding, and a
//! recovery scan (strict and tolerant) over a segment built from the input,
//! all without panics; tolerant recovery always opens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmsb::internals::log::reader::{decode_record, read_frame, scan};
use mmsb::internals::log::SEGMENT_HEAD_LEN;
use mmsb::RecoveryMode;
use mmsb::vfs::{SimVfs, Vfs};
use mmsb_fuzz::{segment, LIMITS};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let seg = if mode & 1 == 0 { segment(1, 1, 1, rest) } else { rest.to_vec() };
    // Record by record, as recovery reads them.
    let mut pos = SEGMENT_HEAD_LEN.min(seg.len());
    let mut lsn = 1;
    while let Ok(raw) = read_frame(&seg, pos, lsn, &LIMITS) {
        let _ = decode_record(&raw, &LIMITS);
        pos += raw.framed;
        lsn += 1;
    }
    // The whole segment through the scanner.
    let vfs = SimVfs::new();
    let dir = Path::new("/s/log");
    vfs.create_dir_all(dir).unwrap();
    let mut f = vfs.create(&dir.join(mmsb::internals::files::segment_name(1))).unwrap();
    f.write_all(&seg).unwrap();
    f.sync().unwrap();
    for m in [RecoveryMode::Strict, RecoveryMode::Tolerant] {
        let _ = scan(&vfs, dir, 0, m, &LIMITS, &mut |_| Ok(true));
    }
    if mode & 2 == 2 {
        let mut cfg =
            mmsb::Config::at("/s").vfs(std::sync::Arc::new(vfs.clone())).recovery(RecoveryMode::Tolerant);
        cfg.limits = LIMITS;
        cfg.propagation_threads = 1;
        if let Ok(s) = mmsb::Mmsb::start(cfg) {
            let _ = s.state_hash();
            let _ = s.verify();
        }
    }
});
