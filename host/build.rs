//! Builds the builtin plugins (`plugins/*`) for `wasm32-wasip2`, so that
//! the binary embeds them and records them in the trust allowlist on first start. The target's
//! standard library is installed when missing (`rustup target add wasm32-wasip2`); without it the
//! build stops with the instruction. The components are built by a nested cargo into
//! `<target>/tmp/wasm-components` (shared with the plugin runtime's tests), one package at a
//! time because each enables a different world of the SDK. Beside each component it writes
//! its digest (`<name>.sha256`, `sha256:` and 64 hex digits), so that a start checks which
//! builtins are pinned without hashing megabytes of components.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const BUILTINS: &[&str] = &[
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
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("..");
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let target = out.ancestors().nth(4).map(Path::to_path_buf).unwrap_or_else(|| out.clone());
    let wasm_target = target.join("tmp/wasm-components");
    ensure_wasm_std();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for package in BUILTINS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "-p", package, "--target-dir"])
            .arg(&wasm_target)
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "true");
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CLIPPY_ARGS",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
        assert!(status.success(), "building the builtin plugin {package} for wasm32-wasip2 failed ({status})");
        let file = format!("{}.wasm", package.replace('-', "_"));
        let built = wasm_target.join("wasm32-wasip2/release").join(&file);
        let bytes = std::fs::read(&built).unwrap_or_else(|e| panic!("cannot read {}: {e}", built.display()));
        std::fs::write(out.join(&file), &bytes).unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
        let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let digest = out.join(format!("{}.sha256", package.replace('-', "_")));
        std::fs::write(&digest, format!("sha256:{hex}"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", digest.display()));
    }
}

/// Makes sure the wasm32-wasip2 standard library is installed, installing it with rustup when
/// it is missing.
fn ensure_wasm_std() {
    let has_std = || {
        let dir = Command::new("rustc").args(["--print", "target-libdir", "--target", "wasm32-wasip2"]).output();
        dir.ok().is_some_and(|o| {
            let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            std::fs::read_dir(dir)
                .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
                .unwrap_or(false)
        })
    };
    if has_std() {
        return;
    }
    let _ = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
    assert!(
        has_std(),
        "the Rust standard library for wasm32-wasip2 is not installed and `rustup target add wasm32-wasip2` \
         could not install it: run it by hand (or ../shared/tools/ensure-wasm-target.sh, which works offline)"
    );
}
