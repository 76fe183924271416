#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and etcd from pinned
# releases with the ordinary Go toolchain, through the Go module proxy, into a cache
# directory keyed by version. Prints the bin directory. A second call is a no-op.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-3.6.8}"   # the etcd client release k8s.io/kubernetes v1.36.3 requires
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
BIN="$CACHE/control-plane/k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION/bin"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)

have_all() {
  for c in "${COMPONENTS[@]}" etcd; do [ -x "$BIN/$c" ] || return 1; done
}
if have_all; then echo "$BIN"; exit 0; fi

mkdir -p "$BIN"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# k8s.io/kubernetes replaces its staging modules with ./staging paths that do not exist
# in the module zip; pin each to the matching published v0.X.Y (kubernetes/kubernetes#79384).
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
  kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-controller streaming)
STAGING_VERSION="v0.${K8S_VERSION#1.}"

build_k8s() {
  local work="$CACHE/build/k8s-v$K8S_VERSION"
  mkdir -p "$work"
  cd "$work"
  {
    echo "module localcluster/k8sbuild"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    for m in "${STAGING[@]}"; do echo "	k8s.io/$m => k8s.io/$m $STAGING_VERSION"; done
    echo ")"
  } > go.mod
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for c in "${COMPONENTS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ")"
  } > tools.go
  go mod tidy
  local pkg="k8s.io/component-base/version"
  local minor="${K8S_VERSION#1.}"; minor="${minor%%.*}"
  local ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  for c in "${COMPONENTS[@]}"; do
    if [ ! -x "$BIN/$c" ]; then
      echo "building $c v$K8S_VERSION" >&2
      go build -trimpath -ldflags "$ldflags" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
      mv "$BIN/$c.tmp" "$BIN/$c"
    fi
  done
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return 0
  local work="$CACHE/build/etcd-v$ETCD_VERSION"
  mkdir -p "$work"
  cd "$work"
  printf 'module localcluster/etcdbuild\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod tidy
  echo "building etcd v$ETCD_VERSION" >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_etcd 1>&2
build_k8s 1>&2
have_all
echo "$BIN"
