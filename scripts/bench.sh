#!/usr/bin/env bash
# The side-by-side benchmark: relay baseline vs inboxd with 0 and 3 plugins on one private
# RabbitMQ node, release builds. Extra args go to `inboxd-bench compare` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./plugins/build.sh
cargo build --release -p inboxd -p inboxd-bench
exec target/release/inboxd-bench compare "$@"
