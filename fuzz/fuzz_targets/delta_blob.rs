//! Delta blob, delta body and payload decoders: never panic, and what they
//! accept round-trips through the encoder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmsb::internals::codec::delta::{decode_delta, decode_delta_body, decode_payload, encode_delta, encode_payload};
use mmsb_fuzz::{crc, LIMITS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            // A blob whose header and CRC are made valid around the body.
            let mut buf = b"MSDL".to_vec();
            buf.extend_from_slice(&1u16.to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes());
            buf.extend_from_slice(&(rest.len() as u32).to_le_bytes());
            buf.extend_from_slice(rest);
            let c = crc(&buf);
            buf.extend_from_slice(&c.to_le_bytes());
            if let Ok(d) = decode_delta(&buf, &LIMITS) {
                let again = encode_delta(&d).expect("re-encode");
                assert_eq!(decode_delta(&again, &LIMITS).expect("decode re-encoded"), d);
            }
        }
        1 => {
            if let Ok(d) = decode_delta_body(rest, &LIMITS) {
                let again = encode_delta(&d).expect("re-encode");
                assert_eq!(decode_delta(&again, &LIMITS).expect("decode re-encoded"), d);
            }
            let _ = decode_delta(rest, &LIMITS);
        }
        _ => {
            if let Ok(p) = decode_payload(rest, &LIMITS) {
                let mut again = Vec::new();
                encode_payload(&p, &mut again);
                assert_eq!(again.len() as u64, p.encoded_len());
                assert_eq!(decode_payload(&again, &LIMITS).expect("decode re-encoded"), p);
            }
        }
    }
});
