//! `chengis plugin new` scaffolds a plugin crate of each kind that passes its own test out of
//! the box (natively, against the SDK's fake host) and builds as a component.

use std::path::Path;
use std::process::Command;

#[test]
fn scaffolded_plugins_pass_their_tests_and_build_for_wasm() {
    let tmp = tempfile::tempdir().unwrap();
    // One target directory for the four crates, kept between runs.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffolds");
    for (kind, name) in
        [("notifier", "my-notifier"), ("step", "my-step"), ("scm-status", "my-status"), ("policy", "my-policy")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
            .args(["plugin", "new", name, "--kind", kind, "--dir"])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dir = tmp.path().join(name);
        assert!(dir.join("src/lib.rs").exists() && dir.join("README.md").exists());
        let test = Command::new(env!("CARGO"))
            .args(["test", "--offline", "--quiet", "--target-dir"])
            .arg(&target)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            test.status.success(),
            "{kind}: cargo test failed:\n{}\n{}",
            String::from_utf8_lossy(&test.stdout),
            String::from_utf8_lossy(&test.stderr)
        );
        assert!(String::from_utf8_lossy(&test.stdout).contains("1 passed"), "{kind}: its test did not run");
    }
    let dir = tmp.path().join("my-notifier");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let wasm = target.join("wasm32-wasip2/release/my_notifier.wasm");
    let inspect = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["plugin", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("inspect")
        .arg(&wasm)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    assert!(text.contains("name:        my-notifier") && text.contains("world:       notifier"), "{text}");

    let again = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["plugin", "new", "my-notifier", "--kind", "notifier", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
