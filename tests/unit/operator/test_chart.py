"""The Helm chart's static contract: its CRD copy is current, values are schema-checked."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "finetune-operator"


def test_chart_crd_is_the_generated_crd() -> None:
    assert (CHART / "files" / "finetunejobs.finetune.dev.yaml").read_text() == \
        (REPO / "crds" / "finetunejobs.finetune.dev.yaml").read_text(), "run `make crds`"


def _described(schema: dict, path: str = "") -> list[str]:  # type: ignore[type-arg]
    missing = []
    for key, sub in (schema.get("properties") or {}).items():
        if "description" not in sub:
            missing.append(f"{path}{key}")
        missing += _described(sub, f"{path}{key}.")
    return missing


def test_values_schema_describes_and_closes_every_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert _described(schema) == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    assert set(values["config"]) <= set(schema["properties"]["config"]["properties"])


def test_chart_config_keys_are_operator_config_keys() -> None:
    """Every key the chart renders into config.yaml is one the operator accepts."""
    from finetune_operator.config import OperatorConfig

    template = (CHART / "templates" / "configmap.yaml").read_text()
    keys = [line.split(":")[0].strip() for line in template.splitlines()
            if line.startswith("    ") and not line.startswith("      ") and ":" in line and "{{-" not in line]
    assert keys, "no keys found in the template"
    for key in keys:
        assert key in OperatorConfig.model_fields, key


def test_operator_cluster_role_never_touches_secrets() -> None:
    role = yaml.safe_load((CHART / "files" / "clusterrole.yaml").read_text())
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"]
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
