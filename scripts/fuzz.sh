#!/usr/bin/env bash
# Fuzzes the pipeline linter for a bounded time (default 60 s): `scripts/fuzz.sh [SECONDS]`.
# Not part of the test command. cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP enables them
# on the stable toolchain this machine has.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p corpus/lint
for f in ../tests/pipelines/good/*.yml ../tests/pipelines/broken/*.yml ../examples/*.yml; do
  cp "$f" "corpus/lint/$(echo "${f#../}" | tr / _)"
done
RUSTC_BOOTSTRAP=1 cargo fuzz run lint corpus/lint -- -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048
