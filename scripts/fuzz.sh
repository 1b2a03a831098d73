#!/usr/bin/env bash
# Coverage-guided fuzzing of one delivery through parsing and routing (fuzz/fuzz_targets/route.rs),
# on stable Rust: libFuzzer from libfuzzer-sys, SanitizerCoverage given to the inboxd crate only
# (fuzz/instrument.sh). Usage: scripts/fuzz.sh [seconds] (default 60). New inputs go to
# target/fuzz/corpus/route (the committed seeds in fuzz/corpus/route are read, not written);
# a crash is saved under target/fuzz/artifacts/ and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
export CARGO_TARGET_DIR="$PWD/target/fuzz"
export RUSTC_WRAPPER="$PWD/fuzz/instrument.sh"
cargo build --manifest-path fuzz/Cargo.toml --release --bin route

corpus="$CARGO_TARGET_DIR/corpus/route"
artifacts="$CARGO_TARGET_DIR/artifacts/"
mkdir -p "$corpus" "$artifacts"
"$CARGO_TARGET_DIR/release/route" "$corpus" fuzz/corpus/route \
    -dict=fuzz/route.dict \
    -max_total_time="$seconds" \
    -max_len=4096 \
    -artifact_prefix="$artifacts" \
    -print_final_stats=1
