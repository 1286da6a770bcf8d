#!/usr/bin/env bash
# Builds the native addon and the C programs (restore target) offline, against the headers of the
# Node that runs this script: node-gyp must never download headers (no network beyond the registry).
set -euo pipefail
cd "$(dirname "$0")/.."
nodedir="${npm_config_nodedir:-$(dirname "$(dirname "$(command -v node)")")}"
if [ ! -f "$nodedir/include/node/node_api.h" ]; then
  echo "faultline: no Node headers under $nodedir/include/node (install Node with its headers, or set npm_config_nodedir)" >&2
  exit 1
fi
for tool in make g++ cc python3; do
  command -v "$tool" >/dev/null || { echo "faultline: '$tool' is needed to build the native addon (apt-get install build-essential python3)" >&2; exit 1; }
done
gyp="$(command -v node-gyp || true)"
if [ -z "$gyp" ]; then
  npm_dir="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
  gyp="node $npm_dir/node_modules/node-gyp/bin/node-gyp.js"
fi
$gyp rebuild --nodedir="$nodedir" --jobs=2 >/dev/null
make -s -C native
