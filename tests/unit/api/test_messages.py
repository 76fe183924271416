"""Spec errors say in words what a field accepts: never a regex, never a pydantic type name."""

from __future__ import annotations

from typing import Any

import pytest
from ftj_testdata import make_spec

from finetune_operator import api


def _patterns(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found.add(node["pattern"])
        for value in node.values():
            found |= _patterns(value)
    elif isinstance(node, list):
        for value in node:
            found |= _patterns(value)
    return found


def test_every_spec_pattern_has_words() -> None:
    patterns = _patterns(api.FineTuneJobSpec.model_json_schema(by_alias=True))
    assert patterns and patterns <= set(api._PATTERN_WORDS), patterns - set(api._PATTERN_WORDS)


@pytest.mark.parametrize(("sections", "expected"), [
    ({"training": {"maxSteps": 1, "learningRate": 0.0002}},
     'spec.training.learningRate: must be a string: quote decimals, e.g. learningRate: "0.0002"'),
    ({"dataset": {"trainUri": "s3://data/t.jsonl", "max_seq_length": 16384}},
     "spec.dataset.max_seq_length: unknown field; fields are camelCase: write maxSeqLength"),
    ({"resources": {"memory": "lots"}},
     "spec.resources.memory: must be a Kubernetes quantity such as 16Gi, 500Mi or 4 (got 'lots')"),
    ({"resources": {"gpus": "2"}},
     "spec.resources.gpus: must be a whole number without quotes, e.g. gpus: 2 (got the string '2')"),
    ({"output": {"uri": "s3://adapters/team"}},
     "spec.output.uri: must be s3://bucket/prefix/ with a lowercase bucket name (3-63 letters, digits, '.' or '-') "
     "and a trailing slash (got 's3://adapters/team')"),
    ({"lora": {"dropout": "0.5.1"}},
     'spec.lora.dropout: must be a quoted decimal from 0 up to (not including) 1 with at most 6 decimals, e.g. "0.05" (got \'0.5.1\')'),
    ({"runPolicy": {"suspend": "yes"}},
     "spec.runPolicy.suspend: must be true or false without quotes (got 'yes')"),
])
def test_messages_in_words(sections: dict[str, Any], expected: str) -> None:
    errors = api.spec_errors(make_spec(**sections))
    assert errors == [expected]
    for line in errors:
        assert "constrained-" not in line and "Input should" not in line and "^" not in line
