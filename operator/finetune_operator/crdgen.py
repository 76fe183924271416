"""Generate the FineTuneJob CRD from the pydantic models in ``api``.

Run ``python -m finetune_operator.crdgen > crds/finetunejobs.finetune.dev.yaml``.

Pydantic's JSON schema is not a structural schema: it uses ``$ref``/``$defs``, ``anyOf`` with
``null`` for optional fields, ``const``, ``title`` and ``additionalProperties: false``. This module
inlines references, drops the null branch (an absent field is how Kubernetes says "unset"; the
API server prunes nulls), turns ``int | str`` unions into ``x-kubernetes-int-or-string`` and
checks that every node has a type.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import yaml

from . import api
from . import conditions as cond

# Emitted in this order so the committed YAML reads top-down and diffs stay small.
_KEY_ORDER = (
    "description", "type", "format", "x-kubernetes-int-or-string", "enum", "default",
    "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "maxProperties", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "required",
    "properties", "additionalProperties", "items", "x-kubernetes-validations",
)
_DROPPED = {"title", "$defs"}
_BRANCH_KEYS_INT = ("minimum", "maximum")
_BRANCH_KEYS_STR = ("pattern", "maxLength", "minLength")


class SchemaError(ValueError):
    """The models produce something a structural CRD schema cannot express."""


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Convert one pydantic JSON-schema node (and its children) to a structural CRD node."""
    node = dict(node)
    if "$ref" in node:
        ref = node.pop("$ref")
        target = structural(defs[ref.rsplit("/", 1)[-1]], defs, path)
        node = _merge(target, node)
    if "allOf" in node and len(node["allOf"]) == 1:
        target = structural(node.pop("allOf")[0], defs, path)
        node = _merge(target, node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) == 1:
            node = _merge(structural(branches[0], defs, path), node)
        else:
            node = _int_or_string(node, [structural(b, defs, path) for b in branches], path)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        del node["default"]
    if "properties" in node:
        node.pop("additionalProperties", None)  # pruning drops unknown fields; kubectl's strict field validation rejects them
        node["properties"] = {k: structural(v, defs, f"{path}.{k}") for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs, f"{path}.*")
    if "items" in node:
        node["items"] = structural(node["items"], defs, f"{path}[]")
    for key in _DROPPED:
        node.pop(key, None)
    if node.get("default") == {} and "properties" in node:
        # The API server checks a default against the object's CEL rules *without* applying
        # the nested defaults, so `{}` would fail rules that read its fields: spell them out.
        node["default"] = _nested_defaults(node)
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path or '.'}: no type")
    unknown = set(node) - set(_KEY_ORDER)
    if unknown:
        raise SchemaError(f"{path or '.'}: unsupported keywords {sorted(unknown)}")
    return {k: node[k] for k in _KEY_ORDER if k in node}


def _nested_defaults(node: dict[str, Any]) -> dict[str, Any]:
    """The object the API server's defaulting produces from `{}` (already-converted children)."""
    out: dict[str, Any] = {}
    for key, child in (node.get("properties") or {}).items():
        if "default" in child:
            out[key] = child["default"]
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Field-level keys (description, default, rules) win over the referenced type's."""
    out = {**base, **extra}
    rules = base.get("x-kubernetes-validations", []) + extra.get("x-kubernetes-validations", [])
    if rules:
        out["x-kubernetes-validations"] = rules
    if "description" in base and "description" in extra:
        out["description"] = extra["description"]
    return out


def _int_or_string(node: dict[str, Any], branches: list[dict[str, Any]], path: str) -> dict[str, Any]:
    types = {b.get("type") for b in branches}
    if types != {"integer", "string"}:
        raise SchemaError(f"{path}: union of {sorted(map(str, types))} has no structural form")
    node["x-kubernetes-int-or-string"] = True
    for branch in branches:
        keys = _BRANCH_KEYS_INT if branch["type"] == "integer" else _BRANCH_KEYS_STR
        node.update({k: branch[k] for k in keys if k in branch})
        if branch["type"] == "string" and "enum" in branch:
            # enum would also reject the integers; a pattern is checked for strings only
            node["pattern"] = "^(" + "|".join(branch["enum"]) + ")$"
            node["maxLength"] = max(len(v) for v in branch["enum"])
    return node


def open_api_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the FineTuneJob resource."""
    spec = api.FineTuneJobSpec.model_json_schema(by_alias=True, mode="validation")
    status = api.FineTuneJobStatus.model_json_schema(by_alias=True, mode="validation")
    return {
        "description": "FineTuneJob fine-tunes a base model with LoRA/QLoRA and exports the adapter to S3.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(spec, spec.get("$defs", {}), ".spec"),
            "status": structural(status, status.get("$defs", {}), ".status"),
        },
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "State", "type": "string", "jsonPath": ".status.state"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.uri"},
    {"name": "GPU", "type": "string", "jsonPath": ".status.placement.gpuProduct"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent", "description": "Percent of training steps done"},
    {"name": "Loss", "type": "string", "jsonPath": ".status.progress.trainLoss"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "VRAM", "type": "string", "jsonPath": ".status.estimate.total", "priority": 1},
    {
        "name": "Reason", "type": "string", "priority": 1,
        "jsonPath": f'.status.conditions[?(@.type=="{cond.FAILED}")].reason',
    },
    {
        "name": "Message", "type": "string", "priority": 1,
        "jsonPath": f'.status.conditions[?(@.type=="{cond.FAILED}")].message',
    },
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": api.CRD_NAME},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["finetune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


# Strings a YAML 1.2 parser (the API server's, kubectl's) would read as numbers: "2e-4" is a
# plain string to PyYAML (YAML 1.1) and would be emitted unquoted.
_NUMBER_LIKE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # shared default lists must not become &id001 anchors
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "'" if _NUMBER_LIKE.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    """The CRD as the YAML committed in ``crds/``."""
    header = "# Generated by `python -m finetune_operator.crdgen` from finetune_operator/api.py. Do not edit.\n"
    return header + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
