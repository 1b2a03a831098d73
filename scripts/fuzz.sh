#!/usr/bin/env bash
# Coverage-guided fuzzing of one delivery through parsing and routing (fuzz/fuzz_targets/route.rs),
# on stable Rust: libFuzzer from libfuzzer-sys, SanitizerCoverage given to the inboxd crate only
# (fuzz/instrument.sh). Usage: scripts/fuzz.sh [seconds] (default 60). New inputs go to
# target/fuzz/corpus/route (the committed seeds in fuzz/corpus/route are read, not written);
# a crash is saved under target/fuzz/artifacts/ and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
# The workspace's own target dir and dev profile, so every dependency built by the test build is
# reused: only the workspace crates are compiled again, under the wrapper (which gives them their
# own file names, so the plain artifacts stay as they are). Reused only if every dependency has
# the test build's features: those depend on the packages selected and on whether
# dev-dependencies count (tokio's test-util, criterion's and proptest's features), so select what
# the test build selects (`--workspace --all-features`) and make dev-dependencies count with
# `--examples` (the workspace has none, so it builds nothing more). `-p inboxd-fuzz` alone would
# compile ~40 dependencies again, wasmtime, sqlx and lapin among them.
export RUSTC_WORKSPACE_WRAPPER="$PWD/fuzz/instrument.sh"
cargo build --workspace --all-features --examples --bin route
binary="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/route"

corpus="target/fuzz/corpus/route"
artifacts="target/fuzz/artifacts/"
mkdir -p "$corpus" "$artifacts"
"$binary" "$corpus" fuzz/corpus/route \
    -dict=fuzz/route.dict \
    -max_total_time="$seconds" \
    -max_len=4096 \
    -artifact_prefix="$artifacts" \
    -print_final_stats=1
