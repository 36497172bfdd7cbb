//! A derived page computed on its GPU by a device recompute function
//! written in Rust (`examples/device-function/kernel`), checked against the
//! same function run on the CPU.
//!
//! ```sh
//! bash examples/device-function/build.sh          # the kernel, to PTX
//! cargo run --release --example device_function -p mmsb [-- KERNEL.ptx]
//! ```
//!
//! Without a CUDA device it prints that it skipped and exits 0. With one, it
//! makes two counter pages (`u32` arrays) on device 0 and a total derived
//! from them by the kernel. Random writes follow; after each, the total
//! must equal the same sum computed on the CPU from the parents' bytes,
//! and at the end a reopen with no function registered must replay to the
//! same state hash. It prints how many bytes crossed the bus for one write.

use mmsb::gpu::DeviceFunction;
use mmsb::{Config, Location, Mmsb, PageSpec, Payload, SparseDelta};

const ENTRY: &str = "mmsb_example_sum_u32";
const LEN: u64 = 4 << 20;

/// The kernel's sum, on the CPU.
fn sum_u32(ins: &[&[u8]], out: &mut [u8]) {
    for (k, o) in out.chunks_exact_mut(4).enumerate() {
        let mut acc = 0u32;
        for p in ins {
            if let Some(b) = p.get(k * 4..k * 4 + 4) {
                acc = acc.wrapping_add(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        o.copy_from_slice(&acc.to_le_bytes());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Err(e) = mmsb::gpu::probe() {
        println!("SKIPPED: no CUDA device ({e})");
        return Ok(());
    }
    let path = std::env::args().nth(1).unwrap_or_else(|| "target/device-function/example_kernel.ptx".into());
    let ptx = std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e} (build it with `bash examples/device-function/build.sh`)"))?;
    // SAFETY: the kernel reads each input inside its length and writes the
    // output's whole u32 elements only (examples/device-function/kernel).
    let kernel = unsafe { DeviceFunction::from_ptx(ptx, ENTRY) }?;

    let dir = tempfile::tempdir()?;
    let state = Mmsb::start(Config::at(dir.path()))?;
    let gpu = Location::Gpu(0);
    let a = state.create_page(PageSpec::new(LEN).on(gpu).named("a"))?;
    let b = state.create_page(PageSpec::new(LEN).on(gpu).named("b"))?;
    let total = state.create_page(PageSpec::new(LEN).on(gpu).named("total"))?;
    state.register_device_function("sum_u32", 1, kernel)?;
    state.declare_derived(total, "sum_u32", &[a, b])?;

    let moved = |s: &Mmsb| {
        s.stats().gpus.iter().find(|(d, _)| *d == 0).map_or((0, 0), |(_, g)| (g.h2d_bytes, g.d2h_bytes))
    };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 0..50 {
        let page = if next() % 2 == 0 { a } else { b };
        let at = (next() % (LEN / 4 - 16)) * 4;
        let bytes: Vec<u8> = (0..64).map(|_| next() as u8).collect();
        state.update_page(page, Payload::Sparse(SparseDelta::from_pairs([(at, &bytes[..])])?))?;
        let mut want = vec![0u8; LEN as usize];
        sum_u32(&[&state.query_page(a)?, &state.query_page(b)?], &mut want);
        if state.query_page(total)? != want {
            return Err(format!("step {step}: the kernel and the CPU function disagree").into());
        }
    }
    // What one small write costs: its delta goes up, the derived delta
    // comes down, with the comparison's mask.
    let before = moved(&state);
    state.update_page(a, Payload::Sparse(SparseDelta::from_pairs([(4096, &[1u8, 2, 3, 4][..])])?))?;
    let after = moved(&state);
    println!(
        "one 4-byte write below a derived {} MiB page: {} bytes up, {} bytes down",
        LEN >> 20,
        after.0 - before.0,
        after.1 - before.1
    );
    let hash = state.state_hash()?;
    state.stop()?;
    let again = Mmsb::start(Config::at(dir.path()))?;
    if again.state_hash()? != hash {
        return Err("the replayed state differs".into());
    }
    println!("device function and CPU function agree after 50 writes; replay gives state hash {hash:032x}");
    Ok(())
}
