#!/usr/bin/env bash
# Installs chat21's JavaScript clients for the e2e tests (tests/src/js.rs) from the npm registry,
# exactly as package-lock.json pins them; does nothing when they are installed already.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.package-lock.json
if [[ -e $stamp && ! package-lock.json -nt $stamp ]]; then exit 0; fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
echo "tests/js: chat21's clients installed (npm ci)" >&2
