"""Prompt/completion data trains on completions only; W&B reporting works in offline mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.testing import prompt_completion_records


def test_prompt_completion_trains_on_completions_with_wandb_offline(harness, s3_model_uri, tmp_path: Path):
    pytest.importorskip("wandb", reason="wandb is optional (not in the trainer extra yet)")
    data_uri = harness.put_dataset("pc.jsonl", prompt_completion_records(40))
    config, cfg = harness.config(
        "pc", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=2, wandb_project="finetune-tests",
        checkpoint_interval_steps=0,
    )
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    result = harness.run("pc", "--config", config, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    assert result.returncode == 0, result.stderr[-4000:]

    manifest = json.loads(harness.read(harness.prefix(cfg) + "adapter/manifest.json"))
    assert manifest["lossMasking"] == "completion_only"
    assert manifest["dataset"]["format"] == "prompt_completion"
    # The offline run is written locally under the job's UID, so resumed attempts continue one run.
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(cfg["job_uid"])
