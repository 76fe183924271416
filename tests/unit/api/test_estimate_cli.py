"""The estimate command: exit codes, JSON, node file formats, same verdict as placement.plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ftj_testdata import FLEET, REPO, make_spec

from finetune_operator import api, catalog, estimate_cli, gpus, placement
from localcluster.fleet import node_objects


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = estimate_cli.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    """The test fleet's Node objects as a kind: List (what --nodes reads)."""
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": node_objects(FLEET)}))
    return path


def job(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "j"}, "spec": spec}))
    return path


def test_fits_exit_0_with_breakdown_and_products(capsys: pytest.CaptureFixture[str], fleet_file: Path) -> None:
    code, doc = run(capsys, str(REPO / "examples" / "llama-3.3-70b-qlora.yaml"), "--nodes", str(fleet_file))
    assert code == 0 and doc["fits"] is True
    assert doc["placement"]["eligibleProducts"] == ["NVIDIA-H100-80GB-HBM3"]
    assert set(doc["estimate"]["breakdown"]) >= {"linearWeights", "adapter", "activations", "logits", "overhead", "safetyMargin"}
    assert doc["estimate"]["totalParams"] > 70e9 and doc["estimate"]["calibrated"] is False
    why = {p["product"]: p["whyNot"] for p in doc["products"]}
    assert why["NVIDIA-H100-80GB-HBM3"] == [] and why["Tesla-T4"]


def test_none_fits_exit_1_with_suggestions(capsys: pytest.CaptureFixture[str], fleet_file: Path) -> None:
    code, doc = run(capsys, str(REPO / "examples" / "llama-3.3-70b-lora.yaml"), "--nodes", str(fleet_file))
    assert code == 1 and doc["state"] == "Unschedulable" and doc["suggestions"]


def test_invalid_spec_exit_2_with_field_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc = run(capsys, str(job(tmp_path, make_spec(lora={"r": 512}))))
    assert code == 2 and doc["errors"] == ["spec.lora.r: must be ≤ 256 (got 512)"]


def test_unknown_model_needs_model_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = make_spec(baseModel={"uri": "s3://models/tiny/"})
    code, doc = run(capsys, str(job(tmp_path, spec)))
    assert code == 2 and "--model-config" in doc["errors"][0]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "intermediate_size": 128, "vocab_size": 1000}))
    code, doc = run(capsys, str(job(tmp_path, spec)), "--model-config", str(config), "--gpu", "Tesla-T4")
    assert code == 0 and [p["product"] for p in doc["products"]] == ["Tesla-T4"]


def test_node_list_and_catalog_modes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": node_objects(FLEET)}))
    path = str(job(tmp_path, make_spec()))
    code, doc = run(capsys, path, "--nodes", str(nodes))
    assert code == 0 and "NVIDIA-A10G" in doc["placement"]["eligibleProducts"]
    code, doc = run(capsys, path)  # no nodes: every catalog GPU
    assert code == 0 and len(doc["products"]) == len(gpus.BUILTIN_CATALOG.entries)


def test_same_verdict_as_the_operator_code_path(capsys: pytest.CaptureFixture[str], tmp_path: Path, fleet_file: Path) -> None:
    for spec in (make_spec(), make_spec(method="lora", baseModel={"uri": "hf://meta-llama/Llama-3.1-70B"})):
        code, doc = run(capsys, str(job(tmp_path, spec)), "--nodes", str(fleet_file))
        arch = catalog.lookup(spec["baseModel"]["uri"])
        assert arch is not None
        decision = placement.plan(api.FineTuneJobSpec.model_validate(spec), arch, gpus.inventory_from_nodes(node_objects(FLEET)))
        assert doc["state"] == decision.state and doc["placement"]["eligibleProducts"] == decision.eligible_products
        assert doc["estimate"]["totalBytes"] == decision.estimate.total_bytes  # type: ignore[union-attr]
        assert code == (0 if decision.fits else 1)


def test_the_local_cluster_nodes_are_read_and_its_fleet_file_is_pointed_there(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from localcluster.__main__ import main as localcluster_main

    assert localcluster_main(["nodes"]) == 0
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(capsys.readouterr().out)
    example = str(REPO / "examples" / "llama-3.3-70b-qlora.yaml")
    code, doc = run(capsys, example, "--nodes", str(nodes))
    assert code == 0 and doc["placement"]["eligibleProducts"] == ["NVIDIA-H100-80GB-HBM3"]
    fleet = REPO / "localcluster" / "fleet.yaml"
    code, doc = run(capsys, example, "--nodes", str(fleet))
    assert code == 2 and "fleet file" in doc["errors"][0] and "python -m localcluster nodes" in doc["errors"][0]


def test_refuses_what_the_api_server_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """snake_case keys were sized at their value; unquoted numbers were read as strings (YAML 1.1)."""
    path = tmp_path / "job.yaml"
    path.write_text(
        f"apiVersion: {api.API_VERSION}\nkind: {api.KIND}\nmetadata: {{name: j}}\nspec:\n"
        "  baseModel: {uri: hf://meta-llama/Llama-3.1-8B}\n"
        "  dataset: {trainUri: s3://data/t.jsonl, max_seq_length: 16384}\n"
        "  training: {maxSteps: 1, learningRate: 2e-4}\n"
        "  output: {uri: s3://adapters/team/}\n"
    )
    code, doc = run(capsys, str(path))
    assert code == estimate_cli.EXIT_INVALID
    assert doc["errors"] == [
        "spec.dataset.max_seq_length: unknown field; fields are camelCase: write maxSeqLength",
        'spec.training.learningRate: must be a string: quote decimals, e.g. learningRate: "0.0002"',
    ]


def test_prices_from_the_operator_configuration(capsys: pytest.CaptureFixture[str], tmp_path: Path, fleet_file: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu_prices": {"NVIDIA-H100-80GB-HBM3": "0.50", "NVIDIA-A100-SXM4-40GB": "3.00"}}))
    code, doc = run(capsys, str(job(tmp_path, make_spec())), "--nodes", str(fleet_file), "--config", str(config))
    assert code == 0 and doc["placement"]["eligibleProducts"][:2] == ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB"]


def test_headroom_that_is_not_a_number_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc = run(capsys, str(job(tmp_path, make_spec())), "--headroom", "ten percent")
    assert code == 2 and doc["errors"] == ["--headroom: 'ten percent' is not a decimal fraction such as 0.1"]
