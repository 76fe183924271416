"""The generated CRD: committed copy up to date, structural, bounded for CEL, defaults as in the models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from ftj_testdata import REPO

from finetune_operator import api, crdgen

CRD_PATH = REPO / "crds" / "finetunejobs.finetune.dev.yaml"


def _schema() -> dict[str, Any]:
    return crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_committed_crd_matches_the_models() -> None:
    assert CRD_PATH.read_text() == crdgen.render(), (
        "crds/finetunejobs.finetune.dev.yaml is stale: run "
        "`python -m finetune_operator.crdgen > crds/finetunejobs.finetune.dev.yaml`"
    )


def test_identity() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    assert spec["group"] == api.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FineTuneJob" and spec["names"]["plural"] == "finetunejobs"
    assert spec["names"]["shortNames"] == ["ftj"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "$defs" not in node and "const" not in node, path
        assert "anyOf" not in node and "oneOf" not in node and "allOf" not in node, path
        assert "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path
        assert node.get("nullable") is not True, path


def test_every_spec_string_list_and_map_is_bounded() -> None:
    """Unbounded values make the CEL cost estimate assume the largest request and reject the CRD."""
    for path, node in _walk(_schema()["properties"]["spec"]):
        kind = node.get("type")
        if kind == "string" or node.get("x-kubernetes-int-or-string"):
            assert "maxLength" in node or "enum" in node, f"{path}: unbounded string"
        if kind == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if kind == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: unbounded map"


def test_status_is_precise_with_condition_list_map() -> None:
    status = _schema()["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert "observedGeneration" in item["properties"]
    assert set(status["properties"]["state"]["enum"]) == set(api.STATES)


def test_immutability_rules_cover_the_whole_spec_except_suspend() -> None:
    spec = _schema()["properties"]["spec"]
    spec_rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    for name, child in spec["properties"].items():
        if name == "runPolicy":
            rules = " ".join(r["rule"] for r in child["x-kubernetes-validations"])
            for field in child["properties"]:
                assert (field in rules) == (field != "suspend"), field
        elif child.get("type") == "object":
            assert any(r["rule"] == "self == oldSelf" for r in child["x-kubernetes-validations"]), name
            if "default" not in child and name not in spec.get("required", []):
                assert f"has(self.{name}) == has(oldSelf.{name})" in spec_rules, name
        else:
            assert f"self.{name} == oldSelf.{name}" in spec_rules, name


def test_defaults_match_the_models() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["method"]["default"] == "qlora"
    # Object defaults are spelled out: the API server checks a default against the object's CEL
    # rules without applying nested defaults, so `{}` would be rejected.
    assert spec["lora"]["default"] == api.LoraSpec().model_dump(by_alias=True, exclude_none=True)
    assert spec["lora"]["properties"]["targetModules"]["default"] == ["auto"]
    assert spec["lora"]["properties"]["dropout"]["default"] == api.LoraSpec().dropout
    assert spec["training"]["properties"]["gradientCheckpointing"]["default"] is True
    assert spec["training"]["properties"]["microBatchSize"]["default"] == 1
    assert spec["dataset"]["properties"]["validationSplit"]["default"] == "0.1"
    assert spec["runPolicy"]["default"] == api.RunPolicySpec().model_dump(by_alias=True, exclude_none=True) and spec["runPolicy"]["properties"]["suspend"]["default"] is False
    assert "default" not in spec["training"]["properties"]["epochs"]  # one of epochs/maxSteps: no default


def test_micro_batch_is_int_or_string() -> None:
    node = _schema()["properties"]["spec"]["properties"]["training"]["properties"]["microBatchSize"]
    assert node["x-kubernetes-int-or-string"] is True
    assert node["pattern"] == "^(auto)$" and node["minimum"] == 1


def test_printer_columns_select_conditions_by_type() -> None:
    columns = crdgen.crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns if c.get("priority", 0) == 0]
    assert names == ["State", "Model", "GPU", "Progress", "Loss", "Age"]
    for column in columns:
        assert "[0]" not in column["jsonPath"] and "[*]" not in column["jsonPath"]
        if "conditions" in column["jsonPath"]:
            assert '[?(@.type=="' in column["jsonPath"]
