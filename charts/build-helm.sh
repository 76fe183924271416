#!/usr/bin/env bash
# Builds a pinned helm with the Go toolchain (through the Go module proxy) into a cache
# keyed by version and prints its path; the chart tests render and lint the chart with it.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-3.22.0}"
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
BIN="$CACHE/tools/helm-v$HELM_VERSION"
if [ ! -x "$BIN/helm" ]; then
  mkdir -p "$BIN"
  echo "building helm v$HELM_VERSION" >&2
  GOBIN="$BIN" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" 1>&2
fi
echo "$BIN/helm"
