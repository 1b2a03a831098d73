#!/usr/bin/env bash
# Installs chat21-server 0.2.21 from the npm registry for the side-by-side benchmark, as
# package-lock.json pins it; does nothing when it is installed already.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.package-lock.json
if [[ -e $stamp && ! package-lock.json -nt $stamp ]]; then exit 0; fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
echo "bench/chat21: chat21-server installed (npm ci)" >&2
