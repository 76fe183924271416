"""The user's side through kubectl: apply, get with printer columns, explain, edit refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from localcluster.operator_runner import install_crd

REPO = Path(__file__).resolve().parents[2]


def _apply(kubectl: Any, namespace: str, body: dict[str, Any], check: bool = True) -> Any:
    # JSON, not PyYAML: YAML 1.1 would emit the decimal string "1e-3" unquoted, which kubectl reads as a number.
    return kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=check)


def test_user_workflow_with_kubectl(kubectl: Any, kubeconfig: Path, namespace: str) -> None:
    install_crd(kubeconfig)
    demo = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    demo["metadata"].pop("namespace", None)
    _apply(kubectl, namespace, demo)
    name = demo["metadata"]["name"]
    got = json.loads(kubectl("get", "ftj", name, "-n", namespace, "-o", "json").stdout)
    # Schema defaults are filled in by the API server (GitOps tools then see no drift).
    assert got["spec"]["runPolicy"]["suspend"] is False
    header = kubectl("get", "finetunejobs", "-n", namespace).stdout.splitlines()[0]
    for column in ("NAME", "STATE", "MODEL", "GPU", "PROGRESS", "LOSS", "AGE"):
        assert column in header
    explained = kubectl("explain", "finetunejob.spec.lora").stdout
    assert "targetModules" in explained
    # Changing the spec is refused with a message saying what to do; suspend may change.
    edited = json.loads(json.dumps(demo))
    edited["spec"]["lora"] = {**(edited["spec"].get("lora") or {}), "r": 4}
    refused = _apply(kubectl, namespace, edited, check=False)
    assert refused.returncode != 0
    assert "immutable" in refused.stderr and "re-create" in refused.stderr
    kubectl("patch", "ftj", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    assert json.loads(kubectl("get", "ftj", name, "-n", namespace, "-o", "json").stdout)["spec"]["runPolicy"]["suspend"]
