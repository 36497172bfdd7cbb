//! Builds `gpu-kernels` to PTX with rustc's NVPTX backend and hands the path
//! to the library through `MMSB_PTX_PATH` (embedded with `include_str!`).
//!
//! A nested cargo runs in its own target directory (sharing the outer one
//! deadlocks on its lock) for `nvptx64-nvidia-cuda` with `-Zbuild-std=core`
//! and `-Cpanic=immediate-abort`, so every panic path is a `trap` and the PTX
//! has no unresolved externs. The toolchain is stable; `RUSTC_BOOTSTRAP=1`
//! unlocks the two unstable flags for this nested build only.
//!
//! `-Zbuild-std` needs the toolchain's `rust-src` component. Where it is
//! missing the library still builds for the CPU: the build prints a warning,
//! embeds no kernels and sets `MMSB_PTX_SKIPPED` to the reason, which a GPU
//! backend's start returns as `Error::Gpu`. `MMSB_REQUIRE_PTX=1` (CI and
//! `scripts/gpu-check.sh`) turns that case into a build failure. Any other
//! failure of the kernel build always fails the build.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "nvptx64-nvidia-cuda";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = manifest_dir.join("../gpu-kernels");
    let shared = manifest_dir.join("../shared-types");
    for dir in [&kernels, &shared] {
        println!("cargo::rerun-if-changed={}", dir.join("src").display());
        println!("cargo::rerun-if-changed={}", dir.join("Cargo.toml").display());
    }
    println!("cargo::rerun-if-env-changed=MMSB_PTX_TARGET_CPU");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Under Miri (`cargo miri test`) no kernel can run: skip the nested
    // build and embed an empty module; the PTX tests are cfg(not(miri)).
    // cfg(miri) is invisible to build scripts; cargo-miri's settings are not.
    println!("cargo::rerun-if-env-changed=MIRI_SYSROOT");
    if env::var_os("CARGO_CFG_MIRI").is_some() || env::var_os("MIRI_SYSROOT").is_some() {
        skip(&out_dir, "the PTX build is skipped under Miri");
        return;
    }
    // The storage layer alone (no `engine` feature) has no GPU layer.
    if env::var_os("CARGO_FEATURE_ENGINE").is_none() {
        skip(&out_dir, "the PTX build is skipped without the engine feature");
        return;
    }
    println!("cargo::rerun-if-env-changed=MMSB_REQUIRE_PTX");
    let target_dir = out_dir.join("ptx-target");
    let cpu = env::var("MMSB_PTX_TARGET_CPU").unwrap_or_else(|_| "sm_70".to_string());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&kernels)
        .args(["rustc", "--lib", "--release", "--target", TARGET, "-Zbuild-std=core", "--target-dir"])
        .arg(&target_dir)
        .args(["--", "--emit=asm", "-Ccodegen-units=1"])
        .arg(format!("-Ctarget-cpu={cpu}"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-Zunstable-options -Cpanic=immediate-abort");
    // Settings of the outer build must not leak into the nested one.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_LLVM_COV",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().unwrap_or_else(|e| panic!("could not run {cargo} for the PTX build: {e}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let no_src = stderr.contains("rust-src") || stderr.contains("library/Cargo.lock");
        let required = env::var_os("MMSB_REQUIRE_PTX").is_some_and(|v| !v.is_empty() && v != "0");
        if no_src && !required {
            // Installing the component must rebuild the kernels: rustup
            // rewrites the toolchain's list of components when it does.
            if let Some(list) = sysroot().map(|s| s.join("lib/rustlib/components")).filter(|p| p.is_file()) {
                println!("cargo::rerun-if-changed={}", list.display());
            }
            println!(
                "cargo::warning=GPU kernels not built: the toolchain lacks rust-src \
                 (`rustup component add rust-src`, then rebuild); the CPU backend is unaffected"
            );
            skip(&out_dir, "this binary was built without the GPU kernels: the toolchain lacked the rust-src component (run `rustup component add rust-src` and rebuild)");
            return;
        }
        let hint = if no_src {
            "\nThe PTX build needs the rust-src component: run `rustup component add rust-src`."
        } else {
            ""
        };
        panic!("building gpu-kernels for {TARGET} failed:\n{stderr}{hint}");
    }

    let deps = target_dir.join(TARGET).join("release").join("deps");
    let ptx = newest_asm(&deps).unwrap_or_else(|| panic!("no gpu_kernels-*.s in {}", deps.display()));
    let dest = out_dir.join("mmsb_kernels.ptx");
    std::fs::copy(&ptx, &dest).expect("copy PTX into OUT_DIR");
    println!("cargo::rustc-env=MMSB_PTX_PATH={}", dest.display());
}

/// Embeds an empty module and the reason no kernels were built.
fn skip(out_dir: &Path, why: &str) {
    let dest = out_dir.join("mmsb_kernels.ptx");
    std::fs::write(&dest, "// no kernels in this build\n").expect("write placeholder PTX");
    println!("cargo::rustc-env=MMSB_PTX_PATH={}", dest.display());
    println!("cargo::rustc-env=MMSB_PTX_SKIPPED={why}");
}

/// The sysroot of the compiler cargo builds with.
fn sysroot() -> Option<PathBuf> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn newest_asm(deps: &Path) -> Option<PathBuf> {
    std::fs::read_dir(deps)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "s")
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("gpu_kernels-"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}
