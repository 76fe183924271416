"""Every exit-code class of the contract, produced by the real entry point (in process, for speed).

Interrupted (13) and Succeeded (0) are shown by the subprocess tests in test_resume_and_signals.py
and test_end_to_end.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from finetune_trainer.cli import main
from finetune_trainer.testing import chat_records


@pytest.fixture
def in_process(harness, monkeypatch, tmp_path: Path):
    for key, value in harness.env("inproc").items():
        monkeypatch.setenv(key, value)
    term = tmp_path / "inproc.termination"

    def read() -> dict:
        text = term.read_text()
        assert len(text.encode()) <= 4096
        return json.loads(text)

    return read


def test_unknown_key_is_a_config_error(harness, in_process):
    config, _ = harness.config("cfg", base_model_uri="s3://models/tiny/", dataset_uri="s3://datasets/x.jsonl", lora_rank=8)
    assert main(["--config", config]) == 11
    message = in_process()
    assert message["class"] == "ConfigError"
    assert "lora_rank" in message["message"]


def test_bad_value_is_a_config_error(harness, in_process):
    config, _ = harness.config("cfg", base_model_uri="s3://models/tiny/", dataset_uri="s3://d/x.jsonl", dtype="int3")
    assert main(["inspect", "--config", config]) == 11
    assert in_process()["message"].startswith("dtype: must be one of auto, bfloat16")


def test_unusable_data_is_a_data_error_without_dataset_text(harness, in_process, s3_model_uri):
    secret = "CONFIDENTIAL-CUSTOMER-TEXT"
    lines = [json.dumps(r) for r in chat_records(12)]
    lines[2] = '{"messages": [{"role": "user", "content": "' + secret + '"}'  # truncated JSON
    lines[5] = json.dumps({"messages": [{"role": "bot", "content": secret}, {"role": "assistant", "content": "x"}]})
    data_uri = harness.put_dataset("bad.jsonl", lines)
    config, cfg = harness.config("bad", base_model_uri=s3_model_uri, dataset_uri=data_uri)
    assert main(["inspect", "--config", config]) == 10
    message = in_process()
    assert message["class"] == "DataError"
    assert [e["line"] for e in message["data"]["errors"]] == [3, 6]
    assert "invalid JSON" in message["data"]["errors"][0]["message"]
    assert "messages[0].role is not one of system, user, assistant" in message["data"]["errors"][1]["message"]
    assert secret not in json.dumps(message) and "bot" not in json.dumps(message["data"]["errors"])
    # The full report is in S3 all the same.
    report = json.loads(harness.read(harness.prefix(cfg) + "reports/inspection.json"))
    assert report["verdict"] == "unusable" and report["data"]["errorsTotal"] == 2


def test_cuda_oom_is_classified_with_the_failing_shape(harness, in_process, s3_model_uri, monkeypatch):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(40))
    config, _ = harness.config("oom", base_model_uri=s3_model_uri, dataset_uri=data_uri, validation_split="0")
    monkeypatch.setenv("FINETUNE_TRAINER_TEST_HOOKS", json.dumps({"raise_at_step": 1, "raise": "oom"}))
    assert main(["--config", config]) == 12
    message = in_process()
    assert message["class"] == "CudaOutOfMemory"
    assert "per_device_train_batch_size=4" in message["message"] and "max_length=64" in message["message"]


def test_unexpected_error_is_other(harness, in_process, s3_model_uri, monkeypatch):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(40))
    config, _ = harness.config("other", base_model_uri=s3_model_uri, dataset_uri=data_uri, validation_split="0")
    monkeypatch.setenv("FINETUNE_TRAINER_TEST_HOOKS", json.dumps({"raise_at_step": 1, "raise": "runtime"}))
    assert main(["--config", config]) == 1
    assert in_process()["class"] == "Other"


def test_unreachable_s3_is_retryable(harness, in_process, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    config, _ = harness.config(
        "s3down", base_model_uri="s3://models/tiny/", dataset_uri="s3://datasets/x.jsonl",
        s3_endpoint=f"http://127.0.0.1:{port}",
    )
    assert main(["inspect", "--config", config]) == 14
    assert in_process()["class"] == "StorageRetryable"
