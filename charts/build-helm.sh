#!/usr/bin/env bash
# Builds a pinned helm into the cache and prints its path; the chart tests render and lint the chart with it.
set -euo pipefail
exec bash "$(dirname "$0")/../tools/build-go-tool.sh" install helm "${HELM_VERSION:-3.22.0}" helm.sh/helm/v3/cmd/helm
