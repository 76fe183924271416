#!/usr/bin/env bash
# Builds a pinned kwok (sigs.k8s.io/kwok, the node/pod simulator Kubernetes' own scalability
# tests use) with the Go toolchain, through the Go module proxy, into a cache keyed by version,
# and prints its path. The scale benchmark and its smoke test simulate GPU nodes with it.
set -euo pipefail
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
BIN="$CACHE/tools/kwok-v$KWOK_VERSION"
if [ ! -x "$BIN/kwok" ]; then
  mkdir -p "$BIN"
  echo "building kwok v$KWOK_VERSION" >&2
  GOBIN="$BIN" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" 1>&2
fi
echo "$BIN/kwok"
