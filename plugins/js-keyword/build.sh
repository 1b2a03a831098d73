#!/usr/bin/env bash
# Builds keyword.js into a WASI-free component: js-keyword/build.sh OUT.wasm
# Needs node 20+ and `npm ci` run in this folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
node "$here/build.mjs" "${1:?usage: build.sh OUT.wasm}"
