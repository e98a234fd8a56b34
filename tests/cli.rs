//! The standalone `jarvis-perf` binary built by cargo (no Python involved).

use std::path::Path;
use std::process::Command;

fn jarvis_perf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jarvis-perf"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

#[test]
fn inspect_run_and_bench() {
    let out = jarvis_perf(&["inspect", "models/digits_cnn.onnx"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("input: float32 [?, 1, 8, 8]"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("logits.npy");
    let out = jarvis_perf(&[
        "run",
        "models/digits_cnn.onnx",
        "--input",
        "models/digits_sample.npy",
        "--output",
        logits.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(Path::new(&logits).exists());

    let out = jarvis_perf(&["bench", "models/digits_mlp.onnx", "--iterations", "5"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("median"));
}

#[test]
fn errors_print_one_line_and_exit_1() {
    let out = jarvis_perf(&["inspect", "nope.onnx"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("jarvis-perf: error: model file not found"), "{err}");
    let out = jarvis_perf(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A model that makes tract panic while it is analysed (the fuzzer's Conv) is an error on
/// the int8 path too, which loaded it unguarded and crashed with exit code 101.
#[test]
fn a_model_tract_panics_on_is_an_error_not_a_crash() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fuzz-load-conv-kernel-rank.onnx");
    let calib = concat!(env!("CARGO_MANIFEST_DIR"), "/models/digits_calib.npy");
    let x = concat!(env!("CARGO_MANIFEST_DIR"), "/models/digits_sample.npy");
    for args in [
        &["run", data, "--input", x][..],
        &["run", data, "--int8", "--calib", calib, "--input", x][..],
    ] {
        let out = jarvis_perf(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("jarvis-perf: error: cannot load model"), "{err}");
    }
}
