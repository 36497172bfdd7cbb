//! The GPU kernel bodies on the CPU: every check of `body::selftest` (each
//! body against a naive version, for any size, alignment and run layout).
//! The kernels crate is its own workspace, so this is how the workspace's
//! test command runs them; no device is needed.

#[test]
fn kernel_bodies_match_naive_versions() {
    for (name, check) in gpu_kernels::body::selftest::ALL {
        eprintln!("kernel body check: {name}");
        check();
    }
    assert!(gpu_kernels::body::selftest::ALL.len() >= 11, "checks were lost");
}
