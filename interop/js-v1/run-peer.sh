#!/bin/sh
# Run the js-libp2p 0.42 (circuit relay v1 only) interop test peer.
# js-libp2p 0.42 runs on the machine's Node (>= 16; tested with Node 20), so no
# bundled Node binary is needed. Set NODE=/path/to/node to override.
# Usage: interop/js-v1/run-peer.sh relay|listen|dial ARGS...   (see README.md)
set -e
dir=$(cd "$(dirname "$0")" && pwd)
node="${NODE:-node}"
if [ ! -d "$dir/node_modules/libp2p" ]; then
  echo "ERROR js-v1 peer not installed: run 'npm ci' in $dir"
  echo "missing $dir/node_modules/libp2p; run: cd $dir && npm ci" >&2
  exit 1
fi
exec "$node" "$dir/peer.mjs" "$@"
