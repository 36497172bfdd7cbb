//! A short run of the kill loop (`src/bin/kill_loop.rs`) inside the test
//! suite; CI runs it with hundreds of kills (`scripts/kill-loop.sh`).

#[test]
fn acknowledged_commits_survive_sigkill() {
    let kills = std::env::var("MMSB_TEST_KILLS").unwrap_or_else(|_| "20".into());
    let out = std::process::Command::new(mmsb_tests::bin_exe("kill_loop", env!("CARGO_BIN_EXE_kill_loop")))
        .args(["--kills", &kills, "--seed", "7"])
        .output()
        .expect("run kill_loop");
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kill loop failed");
    assert!(text.contains("final verify"), "no summary printed");
}
