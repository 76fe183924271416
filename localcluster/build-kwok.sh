#!/usr/bin/env bash
# Builds a pinned kwok (sigs.k8s.io/kwok, the node/pod simulator Kubernetes' own scalability
# tests use) into the cache and prints its path. The scale benchmark and its smoke test simulate
# GPU nodes with it.
set -euo pipefail
exec bash "$(dirname "$0")/../tools/build-go-tool.sh" install kwok "${KWOK_VERSION:-0.8.0}" sigs.k8s.io/kwok/cmd/kwok
