#!/usr/bin/env bash
# Regenerates bindings/ (policy.h, policy.c, policy_component_type.o) from wit/ with
# wit-bindgen-cli 0.63.0 (installed with only the C generator if missing, a ~3 min Rust build),
# and records the WIT's hash in bindings/wit.sha256 so build.sh can tell stale bindings.
# Run it after changing wit/policy.wit; the bindings are committed so builds need no wit-bindgen.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version=0.63.0

if [ "$(wit-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    CARGO_TARGET_DIR="$root/target/plugins-build/wit-bindgen-cli" cargo install --quiet --locked \
        wit-bindgen-cli --version "$version" --no-default-features --features c
fi
gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
wit-bindgen c "$root/wit" --world policy --out-dir "$gen" >/dev/null
cp "$gen"/policy.h "$gen"/policy.c "$gen"/policy_component_type.o "$here/bindings/"
sha256sum <"$root/wit/policy.wit" | cut -d' ' -f1 >"$here/bindings/wit.sha256"
echo "bindgen: bindings/ regenerated for wit/policy.wit ($(cat "$here/bindings/wit.sha256"))"
