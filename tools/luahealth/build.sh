#!/usr/bin/env bash
# Builds the Argo CD health-check harness (gopher-lua, pinned in go.mod/go.sum, from the Go
# module proxy) into a cache keyed by the hash of its sources and prints the binary's path.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
KEY="$(cat "$HERE/main.go" "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16)"
BIN="$CACHE/tools/luahealth-$KEY/luahealth"
if [ ! -x "$BIN" ]; then
  echo "building luahealth ($KEY)" >&2
  mkdir -p "$(dirname "$BIN")"
  (cd "$HERE" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" .) 1>&2
  mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
