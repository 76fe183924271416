"""The operator ↔ trainer contract (docs/contract.md): what the operator renders for a
FineTuneJob parses with the trainer's own parser, and both sides agree on exit codes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from mounted_config import mounted_config

from finetune_operator import builders
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]
BODY: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
    "metadata": {"name": "contract", "namespace": "ns", "uid": "11111111-2222-3333-4444-555555555555"},
}
RESOLVED = {"loraAlpha": 32, "targetModules": ["q_proj", "v_proj"], "computeDtype": "fp16",
            "microBatchSize": 4, "gradientAccumulation": 2}


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
@pytest.mark.parametrize("resolved", [None, RESOLVED], ids=["inspect", "train"])
def test_operator_config_parses_with_the_trainer_parser(example: str, resolved: dict[str, Any] | None,
                                                        tmp_path: Path) -> None:
    from finetune_trainer.config import parse_config

    manifest = yaml.safe_load((REPO / "examples" / example).read_text())
    body = copy.deepcopy(BODY)
    body["spec"] = manifest["spec"]
    spec = FineTuneJobSpec.model_validate(body["spec"])
    if resolved is None:
        pod = builders.inspection_pod(body, spec, OperatorConfig())
    else:
        pod = builders.training_job(body, spec, OperatorConfig(), None, resolved)["spec"]["template"]
    # the file as the pod's volume holds it, where the container's arguments say
    name, text = mounted_config(pod["metadata"], pod["spec"])
    path = tmp_path / name
    path.write_text(text)
    cfg = parse_config(["--config", str(path)])
    assert cfg.job.job_uid == BODY["metadata"]["uid"]
    assert cfg.job.run_prefix == f"{spec.output.uri}contract-{BODY['metadata']['uid']}/"
    assert cfg.model.lora_r == spec.lora.r
    assert cfg.sft.max_length == spec.dataset.max_seq_length
    if resolved:
        assert cfg.sft.per_device_train_batch_size == 4 and cfg.sft.gradient_accumulation_steps == 2
        assert cfg.model.lora_alpha == 32 and cfg.model.lora_target_modules == ["q_proj", "v_proj"]
        assert cfg.job.progress_configmap == "contract-progress"


def test_exit_codes_agree() -> None:
    from finetune_trainer.errors import ExitCode

    assert ExitCode.DATA_ERROR == builders.EXIT_DATA_ERROR
    assert ExitCode.CONFIG_ERROR == builders.EXIT_CONFIG_ERROR
    assert ExitCode.CUDA_OUT_OF_MEMORY == builders.EXIT_CUDA_OOM
    assert ExitCode.INTERRUPTED == builders.EXIT_INTERRUPTED
    assert ExitCode.STORAGE_RETRYABLE == builders.EXIT_STORAGE_RETRYABLE


def test_inspection_reports_every_architecture_field_the_estimate_reads() -> None:
    from finetune_operator.arch import MOE_CONFIG_FIELDS
    from finetune_trainer.architecture import CONTRACT_FIELDS

    missing = set(MOE_CONFIG_FIELDS) - set(CONTRACT_FIELDS)
    assert not missing, f"the inspection does not report {sorted(missing)}: MoE models would be refused as unreadable"
