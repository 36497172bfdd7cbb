//! Integration tests for MMSB live in `tests/`; this library holds their
//! shared helpers: a deterministic random source, random deltas, and the
//! one macro that runs the same case on the CPU and on the GPU.

use mmsb::{DenseDelta, Location, Payload, Run, SparseDelta};

/// A small deterministic random source (xorshift64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A source seeded with `seed` (zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let w = self.next_u64().to_le_bytes();
            v.extend_from_slice(&w[..(n - v.len()).min(8)]);
        }
        v
    }
}

/// A random valid payload for a page of `len` bytes: dense (random density),
/// sparse (unaligned runs of mixed lengths) or full.
pub fn random_payload(rng: &mut Rng, len: u64) -> Payload {
    match rng.below(10) {
        0..=3 => {
            let per_mille = [1, 50, 500, 999][rng.below(4) as usize];
            let mut words = vec![0u64; len.div_ceil(64) as usize];
            for i in 0..len {
                if rng.below(1000) < per_mille {
                    words[(i / 64) as usize] |= 1 << (i % 64);
                }
            }
            let data = rng.bytes(len as usize);
            Payload::Dense(DenseDelta::from_words(words, data).expect("valid dense delta"))
        }
        4..=8 => {
            let mut runs = Vec::new();
            let mut at = rng.below(len.min(64));
            while at < len && runs.len() < 200 {
                let cap = match rng.below(8) {
                    0 => 4096,
                    1 => 100_000,
                    _ => 24,
                };
                let l = 1 + rng.below((len - at).min(cap));
                runs.push(Run { offset: at, len: l });
                at += l + 1 + rng.below((len / 8).clamp(1, 4096));
            }
            let total: u64 = runs.iter().map(|r| r.len).sum();
            let data = rng.bytes(total as usize);
            Payload::Sparse(SparseDelta::new(runs, data).expect("valid sparse delta"))
        }
        _ => Payload::Full(rng.bytes(len as usize)),
    }
}

/// Whether a CUDA device is usable. When there is none, prints
/// `SKIPPED: no CUDA device (reason)` for `test` and returns `false`.
///
/// # Panics
/// When a device is present but cannot be started (a build without the
/// kernels, a driver failure): a GPU test must not pass by skipping there.
pub fn gpu_available(test: &str) -> bool {
    match mmsb::gpu::probe() {
        Ok(_) => true,
        Err(e @ mmsb::Error::NoDevice { .. }) => {
            // Straight to the process's stderr: the test harness captures
            // `println!`, and a skip must be seen even when the test passes.
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED: no CUDA device ({e}) in {test}");
            false
        }
        Err(e) => panic!("{test}: a CUDA device is present but unusable: {e}"),
    }
}

/// Locations a differential case runs on: always the CPU, and device 0 and
/// unified memory when a GPU is present.
pub fn locations(test: &str, unified: bool) -> Vec<Location> {
    let mut v = vec![Location::Cpu];
    if gpu_available(test) {
        v.push(Location::Gpu(0));
        if unified && mmsb::gpu::probe().is_ok_and(|i| i.managed_memory) {
            v.push(Location::Unified);
        }
    }
    v
}

/// Run the same case on the CPU and on the GPU and require identical results.
///
/// `on_cpu_and_gpu!(name, |location| -> mmsb::Result<T> { ... })` calls the
/// closure with [`Location::Cpu`], then (when a device is present) with
/// `Location::Gpu(0)` and `Location::Unified`, and asserts every result
/// equals the CPU's. Without a device it prints the `SKIPPED` line for the
/// GPU half and checks the CPU half alone.
#[macro_export]
macro_rules! on_cpu_and_gpu {
    ($name:expr, $case:expr) => {{
        let case = $case;
        let locs = $crate::locations($name, true);
        let cpu = case(mmsb::Location::Cpu).expect("CPU run");
        for loc in locs.into_iter().skip(1) {
            let got = case(loc).unwrap_or_else(|e| panic!("{} on {loc}: {e}", $name));
            assert!(got == cpu, "{}: {loc} differs from the CPU", $name);
        }
        cpu
    }};
}

/// The path of this package's binary `name`, whose build-time path is
/// `built` (`env!("CARGO_BIN_EXE_<name>")`): nextest's run-time
/// `NEXTEST_BIN_EXE_<name>` first, which points into an extracted test
/// archive on another machine, then the build-time path.
pub fn bin_exe(name: &str, built: &str) -> std::path::PathBuf {
    std::env::var_os(format!("NEXTEST_BIN_EXE_{name}")).map_or_else(|| built.into(), Into::into)
}
