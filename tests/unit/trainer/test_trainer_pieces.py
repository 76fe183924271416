"""Small trainer pieces: progress channel, error classification, termination message, templates, run store."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from finetune_trainer.checkpoints import complete_checkpoints, prune
from finetune_trainer.errors import (
    ExitCode,
    Interrupted,
    classify,
    fit_message,
)
from finetune_trainer.progress import ProgressReporter, decimal_str
from finetune_trainer.runstore import LocalRunStore


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_PATCH(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(
            {
                "path": self.path,
                "auth": self.headers["Authorization"],
                "type": self.headers["Content-Type"],
                "body": json.loads(body),
            }
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_server():
    _Recorder.requests = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.requests
    server.shutdown()
    server.server_close()


def test_progress_patches_the_configmap_with_the_token_and_throttles(api_server, tmp_path: Path):
    url, requests = api_server
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    reporter = ProgressReporter("job-progress", "ns1", interval_seconds=60, api_url=url, token_path=str(token))
    assert reporter.update(phase="training", step=1, trainLoss=decimal_str(1.23456))
    assert not reporter.update(phase="training", step=2)  # throttled
    assert reporter.update(phase="checkpointing", step=3)  # a phase change is always written
    assert len(requests) == 2
    first = requests[0]
    assert first["path"] == "/api/v1/namespaces/ns1/configmaps/job-progress"
    assert first["auth"] == "Bearer sa-token" and first["type"] == "application/merge-patch+json"
    doc = json.loads(first["body"]["data"]["progress.json"])
    assert doc["phase"] == "training" and doc["step"] == 1 and doc["trainLoss"] == "1.2346"
    assert doc["updatedAt"].endswith("Z")


def test_progress_outside_a_cluster_only_logs(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    reporter = ProgressReporter("job-progress", "ns1")
    assert not reporter.enabled
    assert not reporter.update(phase="training", step=1)


def test_progress_failure_never_raises():
    reporter = ProgressReporter("cm", "ns", api_url="http://127.0.0.1:9", token_path="/nonexistent")
    assert not reporter.update(phase="training")
    assert reporter.failures == 1


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_client_error("SlowDown", 503), ExitCode.STORAGE_RETRYABLE),
        (_client_error("InternalError", 500), ExitCode.STORAGE_RETRYABLE),
        (EndpointConnectionError(endpoint_url="http://x"), ExitCode.STORAGE_RETRYABLE),
        (_client_error("AccessDenied", 403), ExitCode.CONFIG_ERROR),
        (_client_error("NoSuchBucket", 404), ExitCode.CONFIG_ERROR),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (Interrupted("x"), ExitCode.INTERRUPTED),
        (ValueError("boom"), ExitCode.OTHER),
    ],
)
def test_classification(exc, code):
    assert classify(exc).code == code


def test_oom_classification_names_the_shape():
    import torch

    err = classify(torch.OutOfMemoryError("CUDA out of memory"), {"per_device_train_batch_size": 8, "max_length": 4096})
    assert err.code == ExitCode.CUDA_OUT_OF_MEMORY
    assert "per_device_train_batch_size=8, max_length=4096" in err.message


def test_termination_message_fits_4k():
    payload = {
        "class": "DataError",
        "message": "m" * 10000,
        "architecture": {"model_type": "llama", "module_names": ["x" * 50] * 200},
        "data": {"errors": [{"line": i, "message": "e" * 100} for i in range(100)]},
    }
    text = fit_message(payload)
    assert len(text.encode()) <= 4096
    out = json.loads(text)
    assert out["class"] == "DataError" and out["message"]


def test_prune_keeps_newest_complete_and_newer_partial(tmp_path: Path):
    store = LocalRunStore(str(tmp_path))
    for step in (2, 4, 6, 8):
        store.put_bytes(f"checkpoints/checkpoint-{step}/adapter_model.safetensors", b"w")
        if step != 8:
            store.put_bytes(f"checkpoints/checkpoint-{step}/_COMPLETE", b"{}")
    store.put_bytes("checkpoints/checkpoint-3/optimizer.pt", b"partial")
    assert [c.step for c in complete_checkpoints(store)] == [2, 4, 6]
    assert prune(store, keep=2) == [2, 3]
    assert store.list_dirs("checkpoints") == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]


def test_local_store_conditional_put(tmp_path: Path):
    store = LocalRunStore(str(tmp_path))
    assert store.put_bytes("adapter/manifest.json", b"1", if_none_match=True)
    assert not store.put_bytes("adapter/manifest.json", b"2", if_none_match=True)
    assert store.read_bytes("adapter/manifest.json") == b"1"


def test_overfitting_warning():
    from finetune_trainer.train import overfitting_warning

    assert "overfitting" in (overfitting_warning(1.0, 1.2, [2.0, 1.5, 0.9]) or "")
    assert overfitting_warning(1.0, 0.9, [2.0, 0.9]) is None  # eval improved
    assert overfitting_warning(1.0, 1.2, [0.9, 1.1]) is None  # train did not fall either
    assert overfitting_warning(None, 1.2, [2.0, 0.9]) is None  # no validation set


def test_launcher_reports_the_most_telling_rank():
    from finetune_trainer.launcher import _pick

    ok = {"class": "Succeeded", "exitCode": 0}
    other = {"class": "Other", "exitCode": 1}
    oom = {"class": "CudaOutOfMemory", "exitCode": 12}
    interrupted = {"class": "Interrupted", "exitCode": 13}
    assert _pick({0: ok, 1: ok}) == ok
    assert _pick({0: interrupted, 1: interrupted}) == interrupted
    assert _pick({0: other, 1: oom}) == oom  # rank 0 only saw the collective fail
    assert _pick({0: other, 1: other}) == other
    assert _pick({1: oom}) == oom
    assert _pick({}) is None


def test_only_rank_zero_writes_under_plain_torchrun(monkeypatch, tmp_path):
    from finetune_trainer.errors import termination_path

    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "t"))
    monkeypatch.delenv("FINETUNE_RANK_TERMINATION_DIR", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert termination_path() is None
    monkeypatch.setenv("RANK", "0")
    assert termination_path() == str(tmp_path / "t")
    monkeypatch.setenv("FINETUNE_RANK_TERMINATION_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert termination_path() == str(tmp_path / "rank-1.json")


def test_a_pod_given_gpus_that_sees_none_fails_at_once(monkeypatch):
    import torch

    from finetune_trainer.errors import ConfigError
    from finetune_trainer.train import check_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("FINETUNE_TRAINER_TEST_HOOKS", raising=False)
    check_gpus(0)  # CPU jobs (and inspection) never need one
    with pytest.raises(ConfigError) as err:
        check_gpus(1)
    assert err.value.code == 11
    assert "NVIDIA driver" in err.value.message and "device plugin" in err.value.message
    # Only the local cluster's stand-in image sets this switch.
    monkeypatch.setenv("FINETUNE_TRAINER_TEST_HOOKS", json.dumps({"allow_cpu_without_gpu": True}))
    check_gpus(1)


def test_the_real_image_never_sets_the_cpu_switch():
    root = Path(__file__).resolve().parents[3]
    assert "allow_cpu_without_gpu" not in (root / "trainer_image" / "Dockerfile").read_text()
    import yaml

    images = yaml.safe_load((root / "localcluster" / "images.yaml").read_text())["images"]
    stand_in = images["ghcr.io/finetune-operator/trainer[:@]*"]
    assert json.loads(stand_in["env"]["FINETUNE_TRAINER_TEST_HOOKS"])["allow_cpu_without_gpu"] is True


def test_trainable_adapter_tensors_go_back_to_fp32_and_frozen_ones_stay():
    import torch

    from finetune_trainer.weights import keep_adapter_in_fp32

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    frozen, lora = model[0], model[1]
    frozen.to(torch.bfloat16).requires_grad_(False)  # what the base's unquantized parts may be in
    lora.to(torch.bfloat16)  # what TRL makes of a quantized model's trainable adapter
    values = lora.weight.detach().clone()
    assert keep_adapter_in_fp32(model) == 2
    assert {p.dtype for p in lora.parameters()} == {torch.float32}
    assert torch.equal(lora.weight.detach(), values.float())  # exact: fp32 holds every bfloat16
    assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16}
    assert keep_adapter_in_fp32(model) == 0


@pytest.mark.parametrize(
    ("code", "status", "absent"),
    [
        ("NoSuchKey", 404, True),  # GET of a missing key
        ("404", 404, True),  # HEAD of a missing key: no body, the code is the status
        ("NotFound", 404, True),
        ("NoSuchBucket", 404, False),  # a wrong bucket is a configuration error, not an absent key
        ("AccessDenied", 403, False),
        ("PreconditionFailed", 412, False),
    ],
)
def test_a_missing_key_is_told_apart_from_a_missing_bucket_or_a_refusal(code, status, absent):
    from finetune_trainer.storage import not_found

    assert not_found(_client_error(code, status)) is absent
