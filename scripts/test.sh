#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace (debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chengis-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo fmt --all --check
# No module of the chengis crate imports one that imports it back (crates are held by cargo).
python3 scripts/module-deps.py
cargo clippy --workspace --all-targets --locked -- -D warnings
# The plugin SDK and the components as WebAssembly (their wasm32-only code).
cargo clippy --locked --target wasm32-wasip2 --all-features \
  -p chengis-plugin-sdk -p chengis-plugin-console -p chengis-plugin-script -p chengis-plugin-slack \
  -p chengis-plugin-webhook -p chengis-plugin-email -p chengis-plugin-github-status -p chengis-plugin-gitlab-status \
  -p chengis-plugin-gitea-status -p chengis-plugin-bitbucket-status -p chengis-plugin-image-policy \
  -p chengis-plugin-branch-protection -p chengis-plugin-junit -p chengis-plugin-http -p chengis-test-hostile \
  -p chengis-test-bad-manifest -p chengis-test-policy -p chengis-test-future-version -p chengis-test-unknown-world \
  -- -D warnings
cargo test --workspace --locked
