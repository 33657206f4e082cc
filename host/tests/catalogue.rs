//! The builtin plugin catalogue end to end: `examples/catalogue/run.sh` starts a real server
//! with a fake GitHub on 127.0.0.1 and runs a pipeline using a notifier, an SCM status
//! reporter, two policies and three step executors; the script checks what the forge received
//! and the stored test results, and exits non-zero on any difference.

use std::process::Command;

#[test]
fn the_catalogue_example_passes() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/catalogue/run.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("CHENGIS", env!("CARGO_BIN_EXE_chengis"))
        .env("CHENGIS_LOG", "warn,chengis::plugins=info,chengis::plugins::dispatch=info")
        .output()
        .expect("run examples/catalogue/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the example failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("the catalogue example passed"), "{stdout}");
    assert!(stdout.contains("chengis/build    success"), "{stdout}");
}
