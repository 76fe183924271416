"""Data parallel on one node: two CPU processes (gloo) under torchrun, as several GPUs would run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from finetune_trainer.testing import chat_records


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_data_parallel_run(harness, s3_model_uri):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(60))
    config, cfg = harness.config("ddp", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=4)
    prefix = harness.prefix(cfg)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "finetune_trainer", "--config", config,
    ]
    result = subprocess.run(cmd, env=harness.env("ddp"), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-5000:]

    manifest = json.loads(harness.read(prefix + "adapter/manifest.json"))
    assert manifest["hyperparameters"]["worldSize"] == 2
    assert manifest["results"]["globalStep"] == 4
    assert manifest["checks"]["loraTensorsChanged"] == manifest["checks"]["loraTensors"] > 0
    assert manifest["checks"]["baseWeightsUnchanged"] is True
    # Each rank's RNG state is part of the checkpoint, so a resumed run continues both streams.
    marker = json.loads(harness.read(prefix + "checkpoints/checkpoint-4/_COMPLETE"))
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])
    # Only rank 0 wrote the adapter: one manifest, one termination message.
    assert harness.termination("ddp")["class"] == "Succeeded"
