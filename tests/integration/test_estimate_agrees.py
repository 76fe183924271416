"""The estimate command and the real API server accept and refuse the same manifests.

Each manifest is YAML text (so unquoted numbers stay unquoted), sent once through the API server
(``kubectl create --dry-run=server``: the CRD's schema, CEL rules and strict field validation) and
once through ``python -m finetune_operator estimate``. Both verdicts must match the expected one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetune_operator import api
from localcluster.pytest_plugin import Kubectl
from operator_env import crd  # noqa: F401 - the session fixture applying the CRD


HEAD = f"""apiVersion: {api.API_VERSION}
kind: {api.KIND}
metadata:
  name: agree
spec:
  baseModel:
    uri: hf://meta-llama/Llama-3.1-8B-Instruct
  output:
    uri: s3://adapters/team/
"""


def manifest(body: str) -> str:
    return HEAD + body


DATASET = "  dataset:\n    trainUri: s3://data/train.jsonl\n"
TRAINING = "  training:\n    maxSteps: 10\n"

# (case, YAML, accepted?)
CASES = [
    ("minimal", manifest(DATASET + TRAINING), True),
    ("quoted-learning-rate", manifest(DATASET + TRAINING + '    learningRate: "2e-4"\n'), True),
    ("auto-micro-batch", manifest(DATASET + "  training:\n    maxSteps: 10\n    microBatchSize: auto\n    batchSize: 16\n"), True),
    ("quantity-memory", manifest(DATASET + TRAINING + "  resources:\n    memory: 32Gi\n    gpus: 1\n"), True),
    ("snake-case-key", manifest("  dataset:\n    trainUri: s3://data/train.jsonl\n    max_seq_length: 16384\n" + TRAINING), False),
    ("unquoted-exponent", manifest(DATASET + TRAINING + "    learningRate: 2e-4\n"), False),
    ("unquoted-decimal", manifest(DATASET + TRAINING + "    learningRate: 0.0002\n"), False),
    ("unquoted-dropout", manifest(DATASET + TRAINING + "  lora:\n    dropout: 0.05\n"), False),
    ("quoted-integer", manifest(DATASET + TRAINING + '  resources:\n    gpus: "2"\n'), False),
    ("flash-attention-2", manifest(DATASET + TRAINING + "    attentionImplementation: flash_attention_2\n"), False),
    ("unknown-field", manifest(DATASET + TRAINING + "  epochs: 3\n"), False),
    ("bad-output-uri", HEAD.replace("s3://adapters/team/", "s3://adapters/team") + DATASET + TRAINING, False),
    ("bad-quantity", manifest(DATASET + TRAINING + "  resources:\n    memory: lots\n"), False),
    ("both-epochs-and-steps", manifest(DATASET + "  training:\n    maxSteps: 10\n    epochs: 1\n"), False),
]


@pytest.mark.parametrize(("case", "text", "accepted"), CASES, ids=[c[0] for c in CASES])
def test_estimate_and_api_server_agree(
    crd: str, kubectl: Kubectl, namespace: str, tmp_path: Path, case: str, text: str, accepted: bool,
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    server = kubectl("create", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    estimate = subprocess.run(
        [sys.executable, "-m", "finetune_operator", "estimate", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert estimate.returncode in (0, 1, 2), estimate.stderr
    server_accepts = server.returncode == 0
    estimate_accepts = estimate.returncode != 2
    assert server_accepts == accepted, f"API server: {server.stderr or server.stdout}"
    assert estimate_accepts == accepted, f"estimate: {estimate.stderr}"
    if not accepted:
        # the estimate's refusal names the field in words, never a regex or a pydantic type
        assert "error: spec." in estimate.stderr
        assert "constrained-" not in estimate.stderr and "^" not in estimate.stderr and "Input should" not in estimate.stderr
