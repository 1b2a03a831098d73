#!/usr/bin/env bash
# Builds every example plugin (plugins/rust-*) for wasm32-wasip2 into target/plugins/<name>.wasm.
# Idempotent: installs the target if missing; cargo skips up-to-date builds, and a .wasm is only
# copied when it changed. Usage: plugins/build.sh   (env OUT=dir to choose the output folder)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="${OUT:-$root/target/plugins}"
target_dir="$root/target/plugins-build"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path "$here/Cargo.toml" --target-dir "$target_dir" --workspace

mkdir -p "$out"
for dir in "$here"/rust-*/; do
    name="$(basename "$dir")"
    built="$target_dir/wasm32-wasip2/release/${name//-/_}.wasm"
    if ! cmp -s "$built" "$out/$name.wasm"; then
        cp "$built" "$out/$name.wasm.tmp"
        mv "$out/$name.wasm.tmp" "$out/$name.wasm"
        echo "built $out/$name.wasm"
    fi
done
