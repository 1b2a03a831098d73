#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup, format and lint checks, example plugins,
# unit tests and end-to-end tests against private RabbitMQ nodes. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

step() { printf '\n== %s\n' "$*" >&2; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "example plugins (Rust, JavaScript, Python, C)"
./plugins/build.sh
./plugins/build-languages.sh

step "build"
cargo build --workspace --all-targets --all-features

step "unit tests"
cargo test --workspace --exclude inboxd-e2e

step "end-to-end tests (private RabbitMQ nodes)"
cargo test -p inboxd-e2e --features e2e

step "load tool smoke run (a few hundred messages through inboxd with 3 plugins, none lost)"
cargo run -q -p inboxd-bench -- smoke

step "fuzzing routing (60 s of coverage-guided input, stable Rust; scripts/fuzz.sh)"
./scripts/fuzz.sh 60
