# One-command set-up: every target that needs the environment builds it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Transformers and friends must never try the network: everything is built locally.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: all venv control-plane tools luahealth kwok bench-scale bench-faults test test-unit cluster-up cluster-down demo crds lint clean

all: test

venv: $(STAMP)

# constraints.txt is the resolved set (a lock): installs take seconds to resolve, never backtrack.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "pip>=24,<27"
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[trainer,test]"
	touch $@

# kube-apiserver, controller-manager, scheduler and etcd, built once and cached by version.
control-plane: venv
	bash localcluster/build-control-plane.sh

# helm (pinned, built with go install and cached) renders and lints the chart in the tests.
tools:
	bash charts/build-helm.sh >/dev/null

# The Argo CD health check's harness (gopher-lua, pinned in tools/luahealth/go.sum), cached by its sources' hash.
luahealth:
	bash tools/luahealth/build.sh >/dev/null

# kwok (pinned, built with go install and cached) simulates the scale bench's GPU nodes.
kwok:
	bash localcluster/build-kwok.sh >/dev/null

# Two pytest runs side by side: the cluster tiers and the CPU tiers (tools/run-tests.sh).
test: venv control-plane tools luahealth kwok
	PYTHON=$(BIN)/python bash tools/run-tests.sh

test-unit: venv tools luahealth
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit

# The operator at platform scale (kwok nodes, simulated trainers); not a test. BENCH_ARGS e.g.
# "--nodes 50 --jobs 20 --train-seconds 60" or "--operator-src ../other-tree/operator --label after".
bench-scale: venv control-plane kwok
	$(BIN)/python bench/scale_bench.py $(BENCH_ARGS)

# The long fault run: a trainer pod deleted five times (make test deletes it twice); not a test of timing.
bench-faults: venv control-plane tools
	FTO_FAULT_DELETIONS=5 $(BIN)/python -m pytest -p no:cacheprovider -s tests/integration/test_recovery.py -k again_and_again

cluster-up: venv control-plane
	$(BIN)/python -m localcluster up --with-s3

cluster-down: venv
	$(BIN)/python -m localcluster down

demo: venv control-plane
	$(BIN)/python -m localcluster.demo $(DEMO_ARGS)

# The CRD is generated from the pydantic models; the chart carries a copy (Helm reads only its own files).
crds: venv
	$(BIN)/python -m finetune_operator.crdgen > crds/finetunejobs.finetune.dev.yaml
	cp crds/finetunejobs.finetune.dev.yaml charts/finetune-operator/files/finetunejobs.finetune.dev.yaml

lint: venv
	$(BIN)/hadolint trainer_image/Dockerfile operator/Dockerfile
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
