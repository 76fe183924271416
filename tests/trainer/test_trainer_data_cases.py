"""The data people bring, through the real tokenizer and chat templates: validate-data, inspection and training agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_trainer.testing import chat_records, tool_chat_records, with_chat_template, write_jsonl

STOCK = Path(__file__).parent / "fixtures" / "stock_templates"


@pytest.fixture(scope="module")
def qwen_model(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model with Qwen2.5's published template (tools, default system prompt)."""
    # Qwen's tools preamble alone is ~400 tokens of the tiny vocabulary: give it a longer context.
    return with_chat_template(tiny_model, str(tmp_path_factory.mktemp("qwen")), (STOCK / "qwen2_5.jinja").read_text(),
                              max_positions=1024)


def _validate(harness, *args: str) -> tuple[int, dict]:
    out = harness.run("validate", "validate-data", *args)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout)


def test_tool_calling_trains_through_the_model_template(harness, qwen_model, tmp_path: Path):
    data = write_jsonl(str(tmp_path / "tools.jsonl"), tool_chat_records(40))
    code, report = _validate(harness, data, "--tokenizer", qwen_model)
    assert code == 0, report
    assert report["chatTemplate"] == {"family": "chatml", "marked": True, "variant": "qwen2_5", "tools": True}
    assert report["lossMasking"]["mode"] == "assistant_only" and report["lossMasking"]["zeroWeightMessages"] > 0

    config, cfg = harness.config("tools", base_model_uri=qwen_model, dataset_uri=data, max_steps=2,
                                 max_length=1024, per_device_train_batch_size=2, checkpoint_interval_steps=0)
    inspect = harness.run("tools-inspect", "inspect", "--config", config)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    summary = harness.termination("tools-inspect")
    assert summary["lossMasking"] == report["lossMasking"] | {"zeroWeightMessages": summary["data"]["train"]}
    assert summary["data"]["tokens"]["p50"] == report["tokens"]["p50"]  # same rendering, tools included

    train = harness.run("tools", "--config", config)
    assert train.returncode == 0, train.stderr[-5000:]
    manifest = json.loads(harness.read(harness.prefix(cfg) + "adapter/manifest.json"))
    assert manifest["chatTemplate"]["variant"] == "qwen2_5" and manifest["lossMasking"] == "assistant_only"
    assert manifest["lossMaskingDetails"]["zeroWeightMessages"] == manifest["dataset"]["train"]
    assert manifest["results"]["globalStep"] == 2 and manifest["checks"]["loraTensorsChanged"] > 0
    assert harness.termination("tools")["lossMasking"]["chatTemplate"] == "qwen2_5"


def test_tool_calling_is_refused_naming_the_templates_that_can(harness, tiny_model, tmp_path: Path):
    data = write_jsonl(str(tmp_path / "tools.jsonl"), tool_chat_records(20))
    code, report = _validate(harness, data, "--tokenizer", tiny_model)  # plain ChatML: no tools
    assert code == 10
    (fatal,) = report["fatal"]
    assert "cannot express tools" in fatal and "(chatml)" in fatal
    assert "Qwen2.5-Instruct" in fatal and "Llama-3.2-Instruct" in fatal
    config, _ = harness.config("no-tools", base_model_uri=tiny_model, dataset_uri=data)
    inspect = harness.run("no-tools", "inspect", "--config", config)
    assert inspect.returncode == 10
    assert "cannot express tools" in harness.termination("no-tools")["message"]


def test_a_template_refusal_is_reported_per_line(harness, tiny_model, tmp_path: Path):
    gemma = with_chat_template(tiny_model, str(tmp_path / "gemma"), (STOCK / "gemma.jinja").read_text())
    records = chat_records(20, system_prompt=None)
    records[4] = chat_records(1)[0]  # a system prompt: Gemma's template has no system role
    code, report = _validate(harness, write_jsonl(str(tmp_path / "d.jsonl"), records), "--tokenizer", gemma)
    assert code == 10 and report["errorsTotal"] == 1
    (error,) = report["errors"]
    assert error["line"] == 5 and "refuses this conversation (System role not supported)" in error["message"]


def test_loss_masking_is_explicit_for_an_unmarked_template(harness, tiny_model, tmp_path: Path):
    odd = "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
    model = with_chat_template(tiny_model, str(tmp_path / "odd"), odd)
    data = write_jsonl(str(tmp_path / "d.jsonl"), chat_records(20))
    code, report = _validate(harness, data, "--tokenizer", model)
    assert code == 10 and "set train_on_inputs: true" in report["fatal"][0]
    code, report = _validate(harness, data, "--tokenizer", model, "--train-on-inputs")
    assert code == 0 and report["lossMasking"]["mode"] == "all_tokens"
    config, _ = harness.config("odd", base_model_uri=model, dataset_uri=data, train_on_inputs=True)
    inspect = harness.run("odd", "inspect", "--config", config)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    assert harness.termination("odd")["lossMasking"] == {
        "mode": "all_tokens", "trainOnInputs": True, "chatTemplate": "unmarked", "zeroWeightMessages": 0}


def test_bom_array_and_csv_through_validate_data(harness, tiny_model, tmp_path: Path):
    lines = [json.dumps(r) for r in chat_records(12)]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    code, report = _validate(harness, str(bom), "--tokenizer", tiny_model)
    assert code == 0 and report["examples"] == 12
    array = tmp_path / "array.json"
    array.write_text(json.dumps([json.loads(x) for x in lines], indent=1))
    code, report = _validate(harness, str(array))
    assert code == 10 and report["errorsTotal"] == 0 and "one JSON array of 12 records" in report["fatal"][0]


def test_validate_data_cli_errors_have_documented_codes(tmp_path: Path):
    cmd = [sys.executable, "-m", "finetune_trainer", "validate-data"]
    missing = subprocess.run([*cmd, str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert missing.returncode == 11 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    uri = subprocess.run([*cmd, "s3://bucket/train.jsonl"], capture_output=True, text=True)
    assert uri.returncode == 11 and "validate-data, which reads a local file" in uri.stderr
