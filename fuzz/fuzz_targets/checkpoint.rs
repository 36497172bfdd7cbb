//! Checkpoint decoder: never panics; header and trailer checksums can be
//! fixed up so that mutations reach the page images and graph section.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmsb::internals::checkpoint::decode;
use mmsb_fuzz::{fix_checkpoint, LIMITS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut buf = rest.to_vec();
    if mode & 1 == 1 {
        fix_checkpoint(&mut buf);
    }
    if let Ok(img) = decode(&buf, &LIMITS) {
        for p in img.pages.values() {
            assert!(p.bytes.len() as u64 <= LIMITS.max_page_len);
        }
    }
});
