//! Checkpoint decoder (full checkpoints and increments): never panics;
//! header and trailer checksums can be fixed up so that mutations reach the
//! increment section, the page images and patches, and the graph section.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmsb::internals::checkpoint::{decode_file, CheckpointFile};
use mmsb::internals::codec::page::PageEntry;
use mmsb_fuzz::{fix_checkpoint, LIMITS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut buf = rest.to_vec();
    if mode & 1 == 1 {
        fix_checkpoint(&mut buf);
    }
    match decode_file(&buf, &LIMITS).map(|d| d.file) {
        Ok(CheckpointFile::Full(img)) => {
            for p in img.pages.values() {
                assert!(p.bytes.len() as u64 <= LIMITS.max_page_len);
            }
        }
        Ok(CheckpointFile::Increment(inc)) => {
            for e in &inc.entries {
                match e {
                    PageEntry::Full(p) => assert!(p.bytes.len() as u64 <= LIMITS.max_page_len),
                    PageEntry::Patch(p) => {
                        assert!(p.len <= LIMITS.max_page_len);
                        assert_eq!(p.ranges.iter().map(|r| r.len()).sum::<usize>(), p.data.len());
                        assert!(p.ranges.last().is_none_or(|r| r.end as u64 <= p.len));
                    }
                }
            }
        }
        Err(_) => {}
    }
});
