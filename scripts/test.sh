#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup, format and lint checks, example plugins,
# unit tests and end-to-end tests against private RabbitMQ nodes. CI runs exactly this.
# Each phase's wall time is printed when it ends, and a table of all of them at the end (also
# when a phase fails), so every CI log has the breakdown.
#
# Compile time is most of the run on a bare machine, so every cargo command below builds with the
# same dependency features and reuses what the previous one compiled: the workspace is compiled
# once (lint and build together), and the test, e2e, smoke and fuzz phases compile no dependency
# again (see the comments at each).
set -euo pipefail
cd "$(dirname "$0")/.."

phases=() # "name seconds" of each finished phase
phase_name="" phase_start=0 run_start=$(date +%s)

phase_end() {
    [[ -n $phase_name ]] || return 0
    local took=$(($(date +%s) - phase_start))
    phases+=("$phase_name $took")
    printf '== %s: %d s\n' "$phase_name" "$took" >&2
    phase_name=""
}

# step NAME DESCRIPTION: ends the running phase and starts the next.
step() {
    phase_end
    phase_name=$1 phase_start=$(date +%s)
    printf '\n== %s: %s\n' "$1" "$2" >&2
}

summary() {
    local status=$?
    local failed=$phase_name
    phase_end
    {
        printf '\n== phase wall times\n'
        local entry
        for entry in "${phases[@]}"; do
            printf '%-8s %6d s\n' ${entry}
        done
        printf '%-8s %6d s\n' total $(($(date +%s) - run_start))
        if ((status != 0)); then printf 'FAILED in %s (exit %d)\n' "${failed:-?}" "$status"; fi
    } >&2
}
trap summary EXIT

step setup "tools and packages (scripts/setup.sh)"
./scripts/setup.sh

# The example plugins build in the background while the workspace compiles: on a bare machine
# most of their time is downloads (the wasm32-wasip2 target, npm, pip, apt) and single-threaded
# tool runs, which use the cores the compile leaves idle. chat21's JavaScript clients for the e2e
# tests (tests/js) install alongside. Nothing in the Rust build reads them;
# the plugins phase waits for them before the tests do.
plugins_log=target/plugins-build/build.log
mkdir -p "$(dirname "$plugins_log")"
(./plugins/build.sh && ./plugins/build-languages.sh && ./scripts/npm-ci.sh tests/js) >"$plugins_log" 2>&1 &
plugins_pid=$!

step fmt "format"
cargo fmt --all -- --check

# Lint and build in one compile. `cargo clippy` is `cargo check` with clippy-driver as the
# workspace's rustc wrapper (RUSTC_WORKSPACE_WRAPPER, lint flags in CLIPPY_ARGS); a check compiles
# every dependency a second time (metadata only, which `cargo build` cannot reuse). Here the same
# wrapper runs under `cargo build`: dependencies are compiled once by plain rustc, the workspace
# crates by clippy-driver (rustc with clippy's lints), with the same lints and flags as
# `cargo clippy --workspace --all-targets --all-features -- -D warnings`. The wrapper stays set
# for the test phases, so they reuse these artifacts (it is part of their fingerprint). A lint
# fails the build; any warning at all fails the phase too, so lints cannot pass unseen if
# clippy-driver ever stopped reading CLIPPY_ARGS.
step build "lint (clippy -D warnings) and build"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
CLIPPY_ARGS="-Dwarnings"
build_log=target/lint-build.log
cargo build --workspace --all-targets --all-features 2>&1 | tee "$build_log"
if grep -q '^warning' "$build_log"; then
    echo "test.sh: the lint and build printed warnings (see above); fix them" >&2
    exit 1
fi

step plugins "example plugins (Rust, JavaScript, Python, C) and chat21's JS clients, in the background since setup"
plugins_status=0
wait "$plugins_pid" || plugins_status=$?
cat "$plugins_log" >&2
((plugins_status == 0)) || { echo "test.sh: building the example plugins failed" >&2; exit 1; }

# The test phases select the whole workspace, as the build did, so cargo resolves the same
# dependency features. `-p inboxd-e2e --features e2e` alone would leave out the dev-dependencies'
# features (tokio's test-util, criterion's and proptest's) and compile ~50 dependencies again
# (wasmtime, sqlx, lapin, hyper, tokio...).
# Unit: every test that needs no broker (the e2e test binary needs the `e2e` feature).
# A failing test's error is printed with anyhow's backtrace when RUST_BACKTRACE is set, and a CI
# log shows only the head and tail of a long output: the backtrace would push the error itself
# out of view. Panics keep theirs (RUST_LIB_BACKTRACE only concerns anyhow's and std's Backtrace).
export RUST_LIB_BACKTRACE=0
step unit "unit tests"
cargo test --workspace

step e2e "end-to-end tests (private RabbitMQ nodes)"
cargo test --workspace --all-features --test e2e

# The load tool the build phase built (`cargo run -p inboxd-bench` would resolve other features,
# as above); it runs the inboxd binary next to it.
step smoke "load tool smoke run (a few hundred messages through inboxd with 3 plugins, none lost)"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/debug/inboxd-bench" smoke

# fuzz.sh compiles the workspace crates again under its own wrapper (coverage instrumentation).
step fuzz "fuzzing routing (60 s of coverage-guided input, stable Rust; scripts/fuzz.sh)"
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
./scripts/fuzz.sh 60
