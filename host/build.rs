//! Builds `gpu-kernels` to PTX with rustc's NVPTX backend and hands the path
//! to the library through `MMSB_PTX_PATH` (embedded with `include_str!`).
//!
//! A nested cargo runs in its own target directory (sharing the outer one
//! deadlocks on its lock) for `nvptx64-nvidia-cuda` with `-Zbuild-std=core`
//! and `-Cpanic=immediate-abort`, so every panic path is a `trap` and the PTX
//! has no unresolved externs. The toolchain is stable; `RUSTC_BOOTSTRAP=1`
//! unlocks the two unstable flags for this nested build only.
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
        let dest = out_dir.join("mmsb_kernels.ptx");
        std::fs::write(&dest, "// PTX build skipped under Miri\n").expect("write placeholder PTX");
        println!("cargo::rustc-env=MMSB_PTX_PATH={}", dest.display());
        return;
    }
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
        let hint = if stderr.contains("rust-src") || stderr.contains("library/Cargo.lock") {
            "\nThe PTX build needs the rust-src component: run `rustup component add rust-src` \
             (rust-toolchain.toml lists it, so a rustup-managed cargo installs it by itself)."
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
