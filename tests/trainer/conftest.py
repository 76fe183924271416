"""Trainer tier: a real S3 server (SeaweedFS) and a tiny Llama-style model built locally, once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.s3 import SeaweedS3

# Nothing in this tier may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

BUCKETS = ("models", "datasets", "runs")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"), buckets=BUCKETS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from finetune_trainer.testing import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def s3_model_uri(s3: SeaweedS3, tiny_model: str) -> str:
    client = s3.boto3_client()
    for name in os.listdir(tiny_model):
        client.upload_file(os.path.join(tiny_model, name), "models", f"tiny/{name}")
    return "s3://models/tiny/"


class Harness:
    """Builds configs and runs the trainer as a subprocess, the way the pod does."""

    def __init__(self, s3: SeaweedS3, root: Path) -> None:
        self.s3 = s3
        self.root = root
        self.client = s3.boto3_client()

    def put_dataset(self, name: str, records: list[Any]) -> str:
        body = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
        key = f"{uuid.uuid4().hex[:8]}/{name}"
        self.client.put_object(Bucket="datasets", Key=key, Body=body.encode())
        return f"s3://datasets/{key}"

    def config(self, name: str, **values: Any) -> tuple[str, dict[str, Any]]:
        cfg: dict[str, Any] = {
            "job_uid": str(uuid.uuid4()),
            "job_name": name,
            "job_namespace": "default",
            "output_uri": "s3://runs/jobs/",
            "s3_endpoint": self.s3.endpoint,
            "s3_region": "us-east-1",
            "s3_path_style": True,
            "dtype": "float32",
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "learning_rate": 0.002,
            "max_length": 64,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_target_modules": ["q_proj", "v_proj"],
            "checkpoint_interval_steps": 2,
            "keep_checkpoints": 2,
            "validation_split": "0.1",
            "dataloader_num_workers": 0,
        }
        cfg.update(values)
        path = self.root / f"{name}-{cfg['job_uid'][:8]}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path), cfg

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.s3.env)
        env.update(
            {
                "FINETUNE_TERMINATION_LOG": str(self.root / f"{name}.termination"),
                "FINETUNE_WORK_DIR": str(self.root / f"{name}-work"),
                "HF_HOME": str(self.root / "hf-home"),
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "finetune_trainer", *args]

    def run(self, name: str, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), env=self.env(name, **env), capture_output=True, text=True, timeout=timeout
        )

    def popen(self, name: str, *args: str, **env: str) -> subprocess.Popen[str]:
        # The child inherits the descriptor; ours is closed at once (no ResourceWarning).
        with open(self.root / f"{name}.log", "w") as log:
            return subprocess.Popen(self.command(*args), env=self.env(name, **env), stdout=log,
                                    stderr=subprocess.STDOUT, text=True)

    def termination(self, name: str) -> dict[str, Any]:
        text = (self.root / f"{name}.termination").read_text()
        assert len(text.encode()) <= 4096
        result: dict[str, Any] = json.loads(text)
        return result

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    @staticmethod
    def prefix(cfg: dict[str, Any]) -> str:
        """The run's key prefix in the `runs` bucket (contract §2)."""
        return f"jobs/{cfg['job_name']}-{cfg['job_uid']}/"

    def read(self, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket="runs", Key=key)["Body"].read()
        return data


@pytest.fixture
def harness(s3: SeaweedS3, tmp_path: Path) -> Harness:
    return Harness(s3, tmp_path)

