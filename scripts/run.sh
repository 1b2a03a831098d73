#!/usr/bin/env bash
# Runs inboxd against a private RabbitMQ node (MQTT + JWT auth) with the example plugins.
# Installs what is missing; Ctrl-C stops the daemon and the node. Extra arg: a config file.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./plugins/build.sh
cargo build -p inboxd -p inboxd-e2e --bins
exec target/debug/inboxd-dev "$@"
