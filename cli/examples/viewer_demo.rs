//! A small state directory with a history to travel through in the viewer
//! (`mmsb serve DIR`): named pages, a typed page, a derived page, and one
//! commit per step (no checkpoint, so every LSN can be replayed).
//!
//! ```sh
//! cargo run --release -p mmsb-cli --example viewer_demo -- DIR 200      # a new state, 200 steps
//! cargo run --release -p mmsb-cli --example viewer_demo -- DIR 3 --append  # 3 more steps
//! ```

use bytemuck::{Pod, Zeroable};
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload, SparseDelta, Update};
use std::path::PathBuf;

/// The typed page's records (its layout is in the page's `type` metadata).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    mass: f32,
}

const PARTICLE_LAYOUT: &str = "Particle{pos:[f32;3],mass:f32}";
const PARTICLES: usize = 8;

/// The derived page: the wrapping sum of the counters page's u32s.
fn total(ins: &[&[u8]], out: &mut [u8]) {
    let s = ins[0]
        .chunks_exact(4)
        .fold(0u32, |a, c| a.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    out.copy_from_slice(&s.to_le_bytes());
}

fn page(state: &Mmsb, name: &str) -> mmsb::Result<PageId> {
    state.page_named(name).ok_or_else(|| mmsb::Error::Config(format!("the state has no page named {name}")))
}

/// Step `i`: bump one counter, move one particle, write a note.
fn step(state: &Mmsb, i: u64) -> mmsb::Result<()> {
    let (counters, particles, notes) =
        (page(state, "counters")?, page(state, "particles")?, page(state, "notes")?);
    let k = (i % 16) as usize;
    let mut c = [0u8; 4];
    c.copy_from_slice(&state.query_page(counters)?[k * 4..k * 4 + 4]);
    let v = u32::from_le_bytes(c).wrapping_add(1 + (i as u32 % 7));
    let p = (i as usize) % PARTICLES;
    let mut rec = Particle { pos: [i as f32, (i as f32) * 0.5, -(i as f32)], mass: 1.0 + (i % 5) as f32 };
    if i.is_multiple_of(3) {
        rec.mass = 0.25;
    }
    let note = format!("step {i}");
    state.update_batch(vec![
        Update::new(
            counters,
            Payload::Sparse(SparseDelta::from_pairs([((k * 4) as u64, &v.to_le_bytes()[..])])?),
        ),
        Update::new(
            particles,
            Payload::Sparse(SparseDelta::from_pairs([(
                (p * std::mem::size_of::<Particle>()) as u64,
                bytemuck::bytes_of(&rec),
            )])?),
        ),
        Update::new(notes, Payload::Sparse(SparseDelta::from_pairs([(((i % 8) * 32), note.as_bytes())])?)),
    ])?;
    Ok(())
}

fn main() -> mmsb::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || mmsb::Error::Config("usage: viewer_demo DIR STEPS [--append]".into());
    let dir = PathBuf::from(args.first().ok_or_else(usage)?);
    let steps: u64 = args.get(1).and_then(|s| s.parse().ok()).ok_or_else(usage)?;
    let append = match args.get(2).map(String::as_str) {
        None => false,
        Some("--append") => true,
        Some(_) => return Err(usage()),
    };
    let state = if append {
        let s = Mmsb::start(Config::existing(&dir))?;
        s.register_function("total", 1, total)?;
        s
    } else {
        let s = Mmsb::start(Config::at(&dir))?;
        if s.page_named("counters").is_some() {
            return Err(mmsb::Error::Config(format!(
                "{} already holds a state: use --append",
                dir.display()
            )));
        }
        let counters = s.create_page(PageSpec::new(64).named("counters"))?;
        s.create_page(
            PageSpec::new((PARTICLES * std::mem::size_of::<Particle>()) as u64)
                .named("particles")
                .meta("type", PARTICLE_LAYOUT),
        )?;
        s.create_page(PageSpec::new(256).named("notes"))?;
        s.register_function("total", 1, total)?;
        let t = s.create_page(PageSpec::new(4).named("total").meta("type", "Total{sum:u32}"))?;
        s.declare_derived(t, "total", &[counters])?;
        s
    };
    let first = state.page_named("notes").map_or(0, |_| state.lsn().0);
    for i in 0..steps {
        step(&state, first + i)?;
    }
    println!("LSN {}", state.lsn().0);
    println!("state hash: {:032x}", state.state_hash()?);
    state.stop()
}
