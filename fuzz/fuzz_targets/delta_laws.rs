//! Arbitrary deltas on arbitrary pages against a naive byte-at-a-time
//! reference: apply replaces exactly the selected bytes (or fails and
//! leaves the page alone), merge composes, diff inverts apply, and the
//! payload encoding round-trips.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmsb::internals::codec::delta::{decode_payload, encode_payload};
use mmsb::{DenseDelta, Payload, SparseDelta};
use mmsb_fuzz::LIMITS;

#[derive(Arbitrary, Debug)]
enum P {
    /// One byte per page byte: `Some` selects it.
    Dense(Vec<Option<u8>>),
    /// (offset, bytes) runs, as given (may overlap or run out of range).
    Sparse(Vec<(u16, Vec<u8>)>),
    Full(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Case {
    page: Vec<u8>,
    a: P,
    b: P,
    new: Vec<u8>,
}

fn build(p: &P) -> Option<Payload> {
    match p {
        P::Dense(o) => DenseDelta::from_options(o).ok().map(Payload::Dense),
        P::Sparse(r) => {
            SparseDelta::from_pairs(r.iter().map(|(o, b)| (u64::from(*o), &b[..]))).ok().map(Payload::Sparse)
        }
        P::Full(b) => Some(Payload::Full(b.clone())),
    }
}

/// The reference: what the payload says, one byte at a time.
fn naive(page: &[u8], p: &P) -> Option<Vec<u8>> {
    let mut out = page.to_vec();
    match p {
        P::Dense(o) => {
            if o.len() != page.len() {
                return None;
            }
            for (i, b) in o.iter().enumerate() {
                if let Some(b) = b {
                    out[i] = *b;
                }
            }
        }
        P::Sparse(r) => {
            for (off, bytes) in r {
                for (k, b) in bytes.iter().enumerate() {
                    *out.get_mut(*off as usize + k)? = *b;
                }
            }
        }
        P::Full(b) => {
            if b.len() != page.len() {
                return None;
            }
            out.copy_from_slice(b);
        }
    }
    Some(out)
}

fuzz_target!(|c: Case| {
    if c.page.is_empty() {
        return;
    }
    let len = c.page.len() as u64;
    let mut states = vec![c.page.clone()];
    let mut ok = Vec::new();
    for p in [&c.a, &c.b] {
        let Some(d) = build(p) else { continue };
        let before = states.last().unwrap().clone();
        let mut after = before.clone();
        match d.apply_to(&mut after) {
            Ok(()) => {
                // Overlapping runs are rejected by from_pairs, so the naive
                // reference is unambiguous whenever apply succeeds.
                assert_eq!(Some(&after), naive(&before, p).as_ref(), "apply differs from the reference");
                states.push(after);
                ok.push(d.clone());
            }
            Err(_) => assert_eq!(after, before, "a failed apply changed the page"),
        }
        let mut enc = Vec::new();
        encode_payload(&d, &mut enc);
        assert_eq!(decode_payload(&enc, &LIMITS).expect("round trip"), d);
    }
    if let [d1, d2] = &ok[..] {
        let m = d1.merge(d2, len).expect("two deltas that applied merge");
        let mut once = c.page.clone();
        m.apply_to(&mut once).expect("merged delta applies");
        assert_eq!(&once, states.last().unwrap(), "merge law broken");
    }
    if c.new.len() == c.page.len() {
        let d = Payload::diff(&c.page, &c.new).expect("diff of equal lengths");
        let mut p = c.page.clone();
        d.apply_to(&mut p).expect("diff applies");
        assert_eq!(p, c.new, "diff law broken");
    }
});
