//! Writes the seed corpora under fuzz/seeds/ from a small real state
//! directory: `cargo run --example make_seeds` (in fuzz/).
use mmsb::internals::codec::delta::{encode_delta, encode_delta_body, encode_payload};
use mmsb::internals::codec::page::encode_page;
use mmsb::internals::log::{Durability, RECORD_HEAD_LEN, RECORD_TAIL_LEN, SEGMENT_HEAD_LEN};
use mmsb::{Config, Delta, DenseDelta, Mmsb, PageSpec, Payload, SparseDelta, Update};
use std::path::Path;

fn put(target: &str, name: &str, mode: u8, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = vec![mode];
    b.extend_from_slice(bytes);
    std::fs::write(dir.join(name), b).unwrap();
}

fn main() -> mmsb::Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let s = Mmsb::start(Config::at(tmp.path()).durability(Durability::SYNC))?;
    let a = s.create_page(PageSpec::new(200).meta("name", "a"))?;
    let b = s.create_page(PageSpec::new(4096))?;
    s.update_page(a, Payload::Full((0..200).map(|i| i as u8).collect()))?;
    s.update_page(
        b,
        Payload::Sparse(SparseDelta::from_pairs([(10, &[1u8, 2, 3][..]), (3000, &[9u8; 70][..])])?),
    )?;
    let opts: Vec<Option<u8>> = (0..200).map(|i| (i % 3 == 0).then_some(i as u8)).collect();
    s.update_batch(vec![
        Update::new(a, Payload::Dense(DenseDelta::from_options(&opts)?)),
        Update::new(b, Payload::Sparse(SparseDelta::from_pairs([(0, &[5u8; 5][..])])?)),
    ])?;
    s.checkpoint()?;
    s.update_page(a, Payload::Sparse(SparseDelta::from_pairs([(199, &[7u8][..])])?))?;
    let c = s.create_page(PageSpec::new(64))?;
    s.delete_page(c)?;
    s.stop()?;
    drop(s);
    let log = tmp.path().join("log");
    let mut names: Vec<_> = std::fs::read_dir(&log).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in &names {
        let bytes = std::fs::read(p).unwrap();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.ends_with(".ckpt") {
            put("checkpoint", &n, 0, &bytes);
        } else if n.ends_with(".log") {
            put("log_segment", &n, 3, &bytes);
            // The same records in the fix-up form (type, u16 length, body).
            let mut pos = SEGMENT_HEAD_LEN;
            let mut fx = Vec::new();
            while pos + RECORD_HEAD_LEN + RECORD_TAIL_LEN <= bytes.len() {
                let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
                fx.push(bytes[pos + 4]);
                fx.extend_from_slice(&(len as u16).to_le_bytes());
                fx.extend_from_slice(&bytes[pos + RECORD_HEAD_LEN..pos + RECORD_HEAD_LEN + len]);
                pos += RECORD_HEAD_LEN + len + RECORD_TAIL_LEN;
            }
            put("log_segment", &format!("{n}.framed"), 0, &fx);
        }
    }
    let mut img = Vec::new();
    let bytes: Vec<u8> = (0..300).map(|i| if i < 64 || i > 250 { 0 } else { i as u8 }).collect();
    encode_page(a, 3.into(), mmsb::Location::Cpu, &Default::default(), &bytes, &mut img)?;
    put("page_image", "sparse-300", 0, &img);
    let mut img = Vec::new();
    encode_page(b, 0.into(), mmsb::Location::Cpu, &Default::default(), &[0u8; 4096], &mut img)?;
    put("page_image", "zero-4096", 0, &img);
    for (i, p) in [
        Payload::Full(vec![1, 2, 3]),
        Payload::Sparse(SparseDelta::from_pairs([(4, &[1u8, 2][..]), (9, &[3u8][..])])?),
        Payload::Dense(DenseDelta::from_options(&[
            Some(1),
            None,
            Some(3),
            None,
            None,
            None,
            None,
            None,
            Some(9),
        ])?),
    ]
    .into_iter()
    .enumerate()
    {
        let mut enc = Vec::new();
        encode_payload(&p, &mut enc);
        put("delta_blob", &format!("payload-{i}"), 2, &enc);
        let d = Delta {
            id: (i as u64 + 1).into(),
            page: a,
            base_epoch: (i == 1).then_some(2.into()),
            payload: p,
            source: mmsb::Source::User,
            tag: (i == 2).then(|| "seed".to_string()),
            timestamp: 5,
        };
        let mut body = Vec::new();
        encode_delta_body(&d, &mut body)?;
        put("delta_blob", &format!("body-{i}"), 0, &body);
        put("delta_blob", &format!("blob-{i}"), 1, &encode_delta(&d)?);
    }
    println!("seeds written");
    Ok(())
}
