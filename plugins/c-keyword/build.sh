#!/usr/bin/env bash
# Builds keyword.c into a WASI-free component: c-keyword/build.sh OUT.wasm [WORK_DIR]
# Needs clang-19, lld-19 and wasi-libc (apt) and wasm-tools (pip, see requirements.txt; found
# in .venv/bin or on PATH). The wit-bindgen bindings are committed in bindings/ (bindgen.sh
# regenerates them); a WIT change without regenerating them is refused here. The core module
# goes to WORK_DIR (default: target/plugins-build/<this folder>).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUT.wasm [WORK_DIR]}"
work="${2:-$here/../../target/plugins-build/$(basename "$here")}"
wasm_tools="$here/.venv/bin/wasm-tools"
[ -x "$wasm_tools" ] || wasm_tools=wasm-tools

wit_hash=$(sha256sum <"$here/../../wit/policy.wit" | cut -d' ' -f1)
if [ "$wit_hash" != "$(cat "$here/bindings/wit.sha256")" ]; then
    echo "c-keyword: bindings/ were generated from another wit/policy.wit; run plugins/c-keyword/bindgen.sh" >&2
    exit 1
fi
mkdir -p "$work"
gen="$here/bindings"
# reactor: no main, the host calls the exports; -Os and stripped: a ~20 KB component.
clang-19 --target=wasm32-wasi -mexec-model=reactor -Os -Wall -Wextra -Werror -Wl,--strip-all \
    -I"$gen" "$gen/policy.c" "$gen/policy_component_type.o" "$here/keyword.c" -o "$work/core.wasm"
"$wasm_tools" component new "$work/core.wasm" -o "$out"
