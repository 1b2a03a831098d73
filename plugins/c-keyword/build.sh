#!/usr/bin/env bash
# Builds keyword.c into a WASI-free component: c-keyword/build.sh OUT.wasm [WORK_DIR]
# Needs clang-19, lld-19 and wasi-libc (apt), wit-bindgen 0.63.0 (cargo install) and
# wasm-tools (pip, see requirements.txt; found in .venv/bin or on PATH). Generated bindings
# and the core module go to WORK_DIR (default: target/plugins-build/<this folder>).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUT.wasm [WORK_DIR]}"
work="${2:-$here/../../target/plugins-build/$(basename "$here")}"
wasm_tools="$here/.venv/bin/wasm-tools"
[ -x "$wasm_tools" ] || wasm_tools=wasm-tools

mkdir -p "$work"
rm -rf "$work/gen"
if ! generated=$(wit-bindgen c "$here/../../wit" --world policy --out-dir "$work/gen" 2>&1); then
    printf '%s\n' "$generated" >&2
    exit 1
fi
# reactor: no main, the host calls the exports; -Os and stripped: a ~20 KB component.
clang-19 --target=wasm32-wasi -mexec-model=reactor -Os -Wall -Wextra -Werror -Wl,--strip-all \
    -I"$work/gen" "$work/gen/policy.c" "$work/gen/policy_component_type.o" "$here/keyword.c" -o "$work/core.wasm"
"$wasm_tools" component new "$work/core.wasm" -o "$out"
