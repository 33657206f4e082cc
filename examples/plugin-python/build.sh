#!/usr/bin/env bash
# Builds the Python notifier into a WebAssembly component with componentize-py (from PyPI),
# for the notifier world of wit/chengis-plugin@0.1.0. Output: py-console.wasm next to this file
# (or the path given as the first argument).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/py-console.wasm}"
version=0.25.1
if ! command -v componentize-py >/dev/null 2>&1 || [ "$(componentize-py --version | awk '{print $2}')" != "$version" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$version" >&2
fi
cd "$here"
componentize-py -d "$here/../../wit/chengis-plugin@0.1.0" -w notifier componentize app -o "$out" >&2
echo "$out"
