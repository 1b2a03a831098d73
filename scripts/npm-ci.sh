#!/usr/bin/env bash
# Installs the npm packages of a folder (tests/js: chat21's clients for the e2e tests;
# bench/chat21: chat21-server for the side-by-side benchmark) exactly as its package-lock.json
# pins them; does nothing when they are installed already. Usage: scripts/npm-ci.sh DIR
set -euo pipefail
cd "$1"
stamp=node_modules/.package-lock.json
if [[ -e $stamp && ! package-lock.json -nt $stamp ]]; then exit 0; fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
echo "$1: npm packages installed (npm ci)" >&2
