//! Runs the tuning script's own test suite (fixture /proc and /sys trees, and a
//! network-namespace check where permitted) as part of `cargo test`.

#[test]
fn cairn_tune_suite() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/tests/run.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tuning tests failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.ends_with("0 failed") && !last.starts_with("0 passed"),
        "unexpected summary: {last}"
    );
}
