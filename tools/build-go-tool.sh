#!/usr/bin/env bash
# Builds a Go tool with the ordinary Go toolchain (modules through the Go module proxy) into the
# project's cache and prints the binary's path; a second call finds the cached binary and only prints.
#
#   build-go-tool.sh install NAME VERSION PACKAGE   go install PACKAGE@vVERSION into tools/NAME-vVERSION/
#   build-go-tool.sh module NAME DIR                go build the module in DIR (pinned by its go.sum) into
#                                                   tools/NAME-<hash of its sources>/
#
# Static, stripped, reproducible (-trimpath) builds; the cache is $FTO_CACHE or ~/.cache/finetune-operator.
set -euo pipefail
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
export GOTOOLCHAIN=local CGO_ENABLED=0
mode="${1:?usage: build-go-tool.sh install NAME VERSION PACKAGE | module NAME DIR}"
name="${2:?tool name missing}"
case "$mode" in
  install)
    version="${3:?version missing}"
    package="${4:?package missing}"
    bin="$CACHE/tools/$name-v$version/$name"
    if [ ! -x "$bin" ]; then
      mkdir -p "$(dirname "$bin")"
      echo "building $name v$version" >&2
      GOBIN="$(dirname "$bin")" GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" "$package@v$version" 1>&2
    fi
    ;;
  module)
    dir="$(cd "${3:?module directory missing}" && pwd)"
    key="$(cat "$dir"/*.go "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)"
    bin="$CACHE/tools/$name-$key/$name"
    if [ ! -x "$bin" ]; then
      mkdir -p "$(dirname "$bin")"
      echo "building $name ($key)" >&2
      # Built to a temporary name and moved: an interrupted build never leaves a binary that looks cached.
      (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .) 1>&2
      mv "$bin.tmp" "$bin"
    fi
    ;;
  *)
    echo "build-go-tool.sh: unknown mode '$mode' (install or module)" >&2
    exit 2
    ;;
esac
echo "$bin"
