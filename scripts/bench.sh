#!/usr/bin/env bash
# The side-by-side benchmarks on one private RabbitMQ node, release builds:
#   scripts/bench.sh [options]          relay baseline vs inboxd with 0 and 3 plugins (`compare`)
#   scripts/bench.sh versus [options]   chat21-server 0.2.21 (from npm) vs inboxd as users run it
#                                       (`versus --preset chat21` unless another --preset is given)
# Extra args go to `inboxd-bench compare` / `inboxd-bench versus` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./plugins/build.sh
cargo build --release -p inboxd -p inboxd-bench
if [[ ${1:-} == versus ]]; then
    shift
    ./scripts/npm-ci.sh bench/chat21
    # The issue's shape unless another preset is given (e.g. `--preset many`).
    [[ " $* " == *" --preset "* || " $* " == *" --preset="* ]] || set -- --preset chat21 "$@"
    exec target/release/inboxd-bench versus "$@"
fi
exec target/release/inboxd-bench compare "$@"
