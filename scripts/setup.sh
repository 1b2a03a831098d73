#!/usr/bin/env bash
# Installs what inboxd's build, tests and dev run need on a fresh Debian bookworm machine
# (idempotent; sourced by run.sh and test.sh). Needs root or sudo for apt-get.
set -euo pipefail

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

need_apt() { # $1 = a file the package provides, rest = packages
  local probe=$1; shift
  [[ -e $probe ]] && return 0
  echo "setup: installing $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
    { as_root apt-get update -qq && as_root apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

# RabbitMQ with the MQTT, web-MQTT, management and OAuth2 plugins (all in the Debian package).
# Only its scripts are used: tests and the dev run start private nodes, never the system one.
need_apt /usr/lib/rabbitmq/bin/rabbitmq-server rabbitmq-server

# PostgreSQL 15 for the store tests. Only its binaries are used (initdb and postgres in
# /usr/lib/postgresql/15/bin): the test harness starts a private server per test binary, never
# the system one. A policy-rc.d that refuses every start keeps the install from starting the
# package's own cluster (where no policy-rc.d was there before; removed again afterwards).
need_postgresql() {
  local initdb=/usr/lib/postgresql/15/bin/initdb no_start=/usr/sbin/policy-rc.d
  [[ -e $initdb ]] && return 0
  if [[ -e $no_start ]]; then
    need_apt "$initdb" postgresql
    return
  fi
  printf '#!/bin/sh\n# setup.sh: no service starts while PostgreSQL is installed\nexit 101\n' |
    as_root tee "$no_start" >/dev/null
  as_root chmod 755 "$no_start"
  local status=0
  need_apt "$initdb" postgresql || status=$?
  as_root rm -f "$no_start"
  return "$status"
}
need_postgresql

# MQTT command-line clients, for trying the dev run by hand.
need_apt /usr/bin/mosquitto_pub mosquitto-clients

# Chromium and its WebDriver server, for the moderation console's browser tests
# (tests/src/browser.rs starts a private chromedriver per test binary).
need_apt /usr/bin/chromedriver chromium chromium-driver

# A C++ compiler: libfuzzer-sys builds libFuzzer from source (the fuzz target, a workspace member).
need_apt /usr/bin/g++ g++

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
