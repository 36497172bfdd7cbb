//! Page image v2 decoder: never panics, allocates at most `max_page_len`,
//! and whatever it accepts re-encodes to the same bytes (canonical form).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmsb::internals::codec::page::{decode_page, encode_page};
use mmsb_fuzz::{fix_page_image, LIMITS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut buf = rest.to_vec();
    if mode & 1 == 1 {
        fix_page_image(&mut buf);
    }
    if let Ok((img, used)) = decode_page(&buf, 0, &LIMITS) {
        assert!(used <= buf.len());
        assert!(img.bytes.len() as u64 <= LIMITS.max_page_len);
        let mut again = Vec::new();
        encode_page(img.id, img.epoch, img.location, &img.meta, &img.bytes, &mut again).expect("re-encode");
        assert_eq!(again, buf[..used], "accepted a non-canonical page image");
    }
});
