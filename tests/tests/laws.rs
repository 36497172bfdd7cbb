//! The laws of deltas, checked by proptest against a byte-at-a-time model.

use mmsb::{DenseDelta, Payload, Run, SparseDelta};
use proptest::prelude::*;

/// The reference semantics: each selected byte replaced, one at a time.
fn model_apply(page: &[u8], p: &Payload) -> Vec<u8> {
    let mut out = page.to_vec();
    match p {
        Payload::Full(b) => out.copy_from_slice(b),
        Payload::Sparse(s) => {
            for (r, bytes) in s.iter() {
                for (i, b) in bytes.iter().enumerate() {
                    out[r.offset as usize + i] = *b;
                }
            }
        }
        Payload::Dense(d) => {
            for (i, b) in out.iter_mut().enumerate() {
                if d.mask()[i] {
                    *b = d.data()[i];
                }
            }
        }
    }
    out
}

fn apply(page: &[u8], p: &Payload) -> Vec<u8> {
    let mut out = page.to_vec();
    p.apply_to(&mut out).expect("payload fits");
    out
}

fn dense(len: usize) -> impl Strategy<Value = Payload> {
    (prop::collection::vec(any::<bool>(), len), prop::collection::vec(any::<u8>(), len)).prop_map(|(m, d)| {
        let opts: Vec<Option<u8>> = m.iter().zip(&d).map(|(&m, &b)| m.then_some(b)).collect();
        Payload::Dense(DenseDelta::from_options(&opts).expect("non-empty"))
    })
}

fn sparse(len: usize) -> impl Strategy<Value = Payload> {
    prop::collection::vec((0..len as u64, 1..40u64, any::<u8>()), 0..8).prop_map(move |mut cuts| {
        cuts.sort();
        let mut runs = Vec::new();
        let mut data = Vec::new();
        let mut next_free = 0u64;
        for (off, l, seed) in cuts {
            let off = off.max(next_free);
            if off >= len as u64 {
                break;
            }
            let l = l.min(len as u64 - off);
            runs.push(Run { offset: off, len: l });
            data.extend((0..l).map(|i| seed.wrapping_add((i as u8).wrapping_mul(7))));
            next_free = off + l;
        }
        Payload::Sparse(SparseDelta::new(runs, data).expect("constructed valid"))
    })
}

fn full(len: usize) -> impl Strategy<Value = Payload> {
    prop::collection::vec(any::<u8>(), len).prop_map(Payload::Full)
}

fn payload(len: usize) -> impl Strategy<Value = Payload> {
    prop_oneof![dense(len), sparse(len), full(len)]
}

/// A page length with one or three payloads and a starting page.
fn case(n: usize) -> impl Strategy<Value = (Vec<u8>, Vec<Payload>)> {
    (1usize..300).prop_flat_map(move |len| {
        (prop::collection::vec(any::<u8>(), len), prop::collection::vec(payload(len), n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn apply_matches_the_byte_model((page, ps) in case(1)) {
        prop_assert_eq!(apply(&page, &ps[0]), model_apply(&page, &ps[0]));
    }

    #[test]
    fn merge_composes((page, ps) in case(2)) {
        let len = page.len() as u64;
        let m = ps[0].merge(&ps[1], len).unwrap();
        prop_assert_eq!(apply(&apply(&page, &ps[0]), &ps[1]), apply(&page, &m));
    }

    #[test]
    fn merge_is_associative((page, ps) in case(3)) {
        let len = page.len() as u64;
        let left = ps[0].merge(&ps[1], len).unwrap().merge(&ps[2], len).unwrap();
        let right = ps[0].merge(&ps[1].merge(&ps[2], len).unwrap(), len).unwrap();
        prop_assert_eq!(apply(&page, &left), apply(&page, &right));
        // Canonical forms make the merged values themselves equal.
        prop_assert_eq!(left, right);
    }

    #[test]
    fn diff_turns_old_into_new_and_is_smallest((page, ps) in case(1)) {
        let new = apply(&page, &ps[0]);
        let d = Payload::diff(&page, &new).unwrap();
        prop_assert_eq!(apply(&page, &d), new.clone());
        // No other encoding of this change may be smaller.
        let full = Payload::Full(new.clone());
        prop_assert!(d.encoded_len() <= full.encoded_len());
        let dense_exact = Payload::Dense(DenseDelta::from_options(
            &page.iter().zip(&new).map(|(a, b)| (a != b).then_some(*b)).collect::<Vec<_>>()).unwrap());
        prop_assert!(d.encoded_len() <= dense_exact.encoded_len());
        // The diff never selects more than the input payload did, byte for byte cost.
        if let Payload::Sparse(s) = &ps[0] {
            prop_assert!(d.encoded_len() <= Payload::Sparse(s.clone()).encoded_len());
        }
    }

    #[test]
    fn merge_never_loses_selected_bytes((page, ps) in case(2)) {
        let len = page.len() as u64;
        let m = ps[0].merge(&ps[1], len).unwrap();
        prop_assert!(m.touched() >= ps[0].touched().max(ps[1].touched()));
    }
}
