#!/usr/bin/env bash
# Builds the Argo CD health-check harness (gopher-lua, pinned in go.mod/go.sum) into a cache keyed
# by the hash of its sources and prints the binary's path.
set -euo pipefail
exec bash "$(dirname "$0")/../build-go-tool.sh" module luahealth "$(dirname "$0")"
