#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace (debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chengis-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo fmt --all --check
# No module of the chengis or chengis-agent crate imports one that imports it back (crates are
# held by cargo), and the agent crate links no database, HTTP server, templates or password hashing.
python3 scripts/module-deps.py host/src
python3 scripts/module-deps.py host/agent/src
if cargo tree --locked -p chengis-agent -e normal --prefix none | grep -E '^(sqlx|axum|askama|argon2) '; then
  echo "chengis-agent must not depend on the crates above" >&2
  exit 1
fi
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
