"""Hostile data and model directories through validate-data and the inspection command.

Never a traceback; a huge line is refused by number with memory bounded (it is never read whole);
a corrupt config.json, a tokenizer that will not load, or custom model code with trustRemoteCode
off is a configuration error in words, and the custom code never runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import data
from finetune_trainer.architecture import check_model_dir
from finetune_trainer.errors import ConfigError
from finetune_trainer.testing import prompt_completion_records

HUGE = 512 << 20  # bytes in the huge line: 16× the line cap, on disk as a hole (a sparse file)


def _sparse_jsonl(path: Path, hole: int, good: int = 12) -> int:
    """Good records around one line of ``hole`` NUL bytes inside a JSON string; the huge line's number."""
    lines = [json.dumps(r).encode() + b"\n" for r in prompt_completion_records(good)]
    with open(path, "wb") as f:
        for line in lines[: good // 2]:
            f.write(line)
        f.write(b'{"prompt": "')
        f.seek(hole, os.SEEK_CUR)  # a hole: reads back as NUL bytes, takes no disk space
        f.write(b'", "completion": "x"}\n')
        for line in lines[good // 2:]:
            f.write(line)
    return good // 2 + 1


def _validate_measured(path: Path) -> tuple[int, dict[str, Any], str, int]:
    """validate-data in a subprocess: exit code, report, stderr, peak resident memory in bytes."""
    env = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_TERMINATION_LOG", "KUBERNETES_SERVICE_HOST")}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer", "validate-data", str(path)],
                                stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    assert "Traceback" not in stderr, stderr[-3000:]
    return proc.returncode, json.loads(stdout), stderr, usage.ru_maxrss * 1024  # Linux: KiB


def test_a_huge_line_is_refused_by_number_without_reading_it_whole(tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    _sparse_jsonl(small, 16)
    huge = tmp_path / "huge.jsonl"
    line = _sparse_jsonl(huge, HUGE)
    assert huge.stat().st_size > HUGE
    _, _, _, baseline = _validate_measured(small)
    code, report, _, peak = _validate_measured(huge)
    assert code == 10 and report["errorsTotal"] == 1, report
    (error,) = report["errors"]
    assert error["line"] == line and error["message"].startswith(f"line too long ({HUGE + 33} bytes"), error
    assert report["examples"] == 12
    # the line cap is 32 MiB: the peak may grow by about that much, never by the line's 512 MiB
    assert peak - baseline < data.MAX_LINE_BYTES + (32 << 20), (peak, baseline)


def test_fuzzed_lines_through_inspection_are_named_by_number(harness, tiny_model: str, tmp_path: Path) -> None:
    good = [json.dumps(r).encode() for r in prompt_completion_records(12)]
    hostile = [
        b'{"prompt": "caf\xe9", "completion": "x"}',  # Latin-1
        b'{"prompt": "a\x00b", "completion": "x"}',  # a raw NUL byte
        b"[" * 50_000 + b"]" * 50_000,  # nesting past the recursion limit
        good[0][:9],  # truncated
        b"\xff\xfe\x00\x01garbage",
    ]
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(good[:6] + hostile + good[6:]) + b"\n")
    config, _ = harness.config("fuzz", base_model_uri=tiny_model, dataset_uri=str(path))
    out = harness.run("fuzz", "inspect", "--config", config)
    assert out.returncode == 10, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    summary = harness.termination("fuzz")
    assert "5 lines have errors" in summary["message"], summary
    listed = {e["line"]: e["message"] for e in summary["data"]["errors"]}
    assert set(listed) <= set(range(7, 12)), listed
    assert "not UTF-8" in listed.get(7, "not UTF-8") and "nested too deeply" in listed.get(9, "nested too deeply")


def _copy_model(tiny_model: str, to: Path) -> Path:
    shutil.copytree(tiny_model, to)
    return to


def _edit_config(model: Path, **values: Any) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(values)
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"hidden_size": 10**12}, "hidden_size must be a whole number from 1 to 1048576 (got 1000000000000)"),
        ({"num_hidden_layers": -2}, "num_hidden_layers must be a whole number from 1 to 4096 (got -2)"),
        ({"vocab_size": 320.5}, "vocab_size must be a whole number from 1 to 16777216 (got 320.5)"),
        ({"intermediate_size": "128"}, "intermediate_size must be a whole number from 1 to 4194304 (got '128')"),
        ({"text_config": {"hidden_size": 0}}, "text_config.hidden_size must be a whole number"),
    ],
    ids=["huge", "negative", "fraction", "string", "nested"],
)
def test_absurd_sizes_in_config_json_are_refused_before_transformers(tiny_model: str, tmp_path: Path, values, says) -> None:
    model = _copy_model(tiny_model, tmp_path / "m")
    _edit_config(model, **values)
    with pytest.raises(ConfigError) as refused:
        check_model_dir(str(model))
    assert says in refused.value.message and refused.value.message.startswith("the base model's config.json: ")


MARKER_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("model code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


def test_custom_code_is_refused_and_never_run_while_trust_remote_code_is_off(harness, tiny_model: str, tmp_path: Path) -> None:
    marker = tmp_path / "model-code-ran"
    model = _copy_model(tiny_model, tmp_path / "evil")
    (model / "modeling_evil.py").write_text(MARKER_CODE.format(marker=str(marker)))
    _edit_config(model, model_type="evil", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                      "AutoModelForCausalLM": "modeling_evil.EvilModel"})
    records = tmp_path / "d.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in prompt_completion_records(12)))
    config, _ = harness.config("evil", base_model_uri=str(model), dataset_uri=str(records))
    out = harness.run("evil", "inspect", "--config", config)
    assert out.returncode == 11, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    message = harness.termination("evil")["message"]
    assert "ships its own Python code (modeling_evil.py, auto_map in config.json)" in message
    assert "trustRemoteCode is off" in message
    assert not marker.exists(), "the model's own code ran"


def test_a_tokenizer_that_will_not_load_is_a_clear_error(tiny_model: str, tmp_path: Path) -> None:
    from finetune_trainer.job import load_tokenizer

    model = _copy_model(tiny_model, tmp_path / "broken-tok")
    for name in os.listdir(model):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (model / name).write_bytes(b"\x00not a tokenizer{")
    with pytest.raises(ConfigError) as refused:
        load_tokenizer(str(model))
    assert refused.value.message.startswith("the base model's tokenizer could not be loaded (")
    assert "tokenizer.json or tokenizer.model" in refused.value.message
