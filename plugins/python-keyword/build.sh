#!/usr/bin/env bash
# Builds keyword_filter.py into a component: python-keyword/build.sh OUT.wasm
# Needs componentize-py (pip install -r requirements.txt, into .venv or on PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUT.wasm}"
componentize="$here/.venv/bin/componentize-py"
[ -x "$componentize" ] || componentize=componentize-py

cd "$here"
# The default build imports WASI 0.2.9, which the host links deny-by-default (inert); it keeps
# per-instance random hash seeds, which `--stub-wasi` would bake into the component.
"$componentize" -d ../../wit -w policy componentize keyword_filter -o "$out" >/dev/null
