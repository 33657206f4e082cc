//! Making sure the `wasm32-wasip2` target that plugins are built for is installed, the way
//! editors with extension builders do it: check the sysroot, run `rustup target add` when it is
//! missing, and fail with a clear instruction when that is impossible.

use std::path::PathBuf;
use std::process::Command;
use thiserror::Error;

/// The target plugins are compiled for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Why the target could not be made available.
#[derive(Debug, Error)]
pub enum ToolchainError {
    /// `rustc` could not be run.
    #[error("cannot run `rustc`: {0}; install Rust with rustup (https://rustup.rs)")]
    NoRustc(String),
    /// rustup failed or is missing.
    #[error(
        "the {WASM_TARGET} target is not installed and `rustup target add {WASM_TARGET}` failed: {0}\n  fix: run `rustup target add {WASM_TARGET}` on a machine with network access, or install the target's standard library into {1}"
    )]
    InstallFailed(String, String),
}

fn rustc(args: &[&str]) -> Result<String, ToolchainError> {
    let out = Command::new("rustc").args(args).output().map_err(|e| ToolchainError::NoRustc(e.to_string()))?;
    if !out.status.success() {
        return Err(ToolchainError::NoRustc(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True when the target's standard library is in the active toolchain.
pub fn wasm_target_installed() -> Result<bool, ToolchainError> {
    let libdir = PathBuf::from(rustc(&["--print", "target-libdir", "--target", WASM_TARGET])?);
    let has_std = std::fs::read_dir(&libdir).map(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    });
    Ok(has_std.unwrap_or(false))
}

/// Installs the target when it is missing; says what it did.
pub fn ensure_wasm_target() -> Result<String, ToolchainError> {
    if wasm_target_installed()? {
        return Ok(format!("{WASM_TARGET} is installed"));
    }
    let dest = PathBuf::from(rustc(&["--print", "sysroot"])?).join("lib/rustlib").display().to_string();
    let out = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .output()
        .map_err(|e| ToolchainError::InstallFailed(format!("cannot run rustup: {e}"), dest.clone()))?;
    if !out.status.success() || !wasm_target_installed()? {
        return Err(ToolchainError::InstallFailed(String::from_utf8_lossy(&out.stderr).trim().to_string(), dest));
    }
    Ok(format!("installed {WASM_TARGET} with rustup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_leaves_the_target_installed() {
        // `.ci/run` installs the target first; here ensuring it must find it (or install it).
        let said = ensure_wasm_target().unwrap();
        assert!(said.contains(WASM_TARGET), "{said}");
        assert!(wasm_target_installed().unwrap());
    }
}
