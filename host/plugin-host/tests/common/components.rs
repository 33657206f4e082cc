//! Builds the plugin components (the builtin plugins and the hostile test components) for
//! `wasm32-wasip2` with cargo, once per test process, into a target directory of their own,
//! and returns their bytes. Shared by the integration tests and the benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The crates built as components, by package name.
const PACKAGES: &[&str] = &[
    "chengis-plugin-console",
    "chengis-plugin-script",
    "chengis-plugin-slack",
    "chengis-plugin-webhook",
    "chengis-plugin-email",
    "chengis-plugin-github-status",
    "chengis-plugin-gitlab-status",
    "chengis-plugin-gitea-status",
    "chengis-plugin-bitbucket-status",
    "chengis-plugin-image-policy",
    "chengis-plugin-branch-protection",
    "chengis-plugin-junit",
    "chengis-plugin-http",
    "chengis-test-hostile",
    "chengis-test-bad-manifest",
    "chengis-test-unknown-world",
    "chengis-test-policy",
    "chengis-test-future-version",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn has_wasm_std() -> bool {
    let libdir = Command::new("rustc").args(["--print", "target-libdir", "--target", "wasm32-wasip2"]).output();
    libdir.ok().is_some_and(|out| {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
            .unwrap_or(false)
    })
}

/// Builds `package` for wasm32-wasip2 (once per test process) and returns the `.wasm` path.
/// One cargo run per package: each enables a different world feature of the SDK, and a
/// component must carry exactly one world.
fn build(package: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-components");
    let path = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.iter().any(|p| p == package) {
        return path;
    }
    assert!(
        has_wasm_std(),
        "the Rust standard library for wasm32-wasip2 is not installed; plugins cannot be built. \
         Install it with `rustup target add wasm32-wasip2` (or ../shared/tools/ensure-wasm-target.sh)"
    );
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "-p", package, "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(status.success(), "building {package} for wasm32-wasip2 failed ({status})");
    built.push(package.to_string());
    path
}

/// The bytes of the component built from `package` (e.g. `chengis-plugin-console`).
pub fn component(package: &str) -> Vec<u8> {
    assert!(PACKAGES.contains(&package), "{package} is not a component crate");
    let path = build(package);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The bytes of the Python notifier of `examples/plugin-python`, built once per test process by
/// its `build.sh` (componentize-py from PyPI) into the target directory.
pub fn python_notifier() -> Vec<u8> {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    let path = FILE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-console.wasm");
        let script = workspace_root().join("examples/plugin-python/build.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} failed ({status}); it needs python3 and pip (componentize-py from PyPI)",
            script.display()
        );
        out
    });
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
