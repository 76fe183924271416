"""`finetune-trainer --config train.yaml`: QLoRA with SFTTrainer, checkpoints in S3, a verified adapter."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .fencing import Fence, claim
from .checkpoints import InterruptFlag, latest_checkpoint, load_test_hooks, make_checkpoint_callback
from .config import Config, parse_config, resolve_compute_dtype
from .data import DataReport
from .errors import ConfigError, DataError, ExitCode, Interrupted, classify, write_termination
from .job import masking_report, prepare, s3_client_for, tokenize_conversation, work_dir_for, zero_weight_messages
from .manifest import jsonable, library_versions, peak_gpu_memory
from .progress import ProgressReporter, decimal_str
from .runstore import open_run_store
from .weights import fingerprints, force_cpu_4bit_repack, keep_standard_4bit_layout, weight_checks

log = logging.getLogger("finetune_trainer.train")

MANIFEST = "adapter/manifest.json"
BASELINE = "reports/baseline.json"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _dist_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def make_progress_callback(progress: ProgressReporter, is_main: bool) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = time.monotonic()
            self.start_step = 0
            self.start_tokens: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = time.monotonic()
            self.start_step = state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not is_main or not logs:
                return
            elapsed = max(time.monotonic() - self.start, 1e-6)
            done = state.global_step - self.start_step
            tokens = logs.get("num_tokens")
            tps = None
            if tokens is not None:
                if self.start_tokens is None:
                    self.start_tokens = 0.0 if self.start_step == 0 else float(tokens)
                tps = (float(tokens) - self.start_tokens) / elapsed
            eta = int((state.max_steps - state.global_step) * elapsed / done) if done > 0 else None
            progress.update(
                phase="training" if "loss" in logs else None,
                step=state.global_step,
                totalSteps=state.max_steps,
                epoch=decimal_str(state.epoch, 3),
                trainLoss=decimal_str(logs.get("loss")),
                evalLoss=decimal_str(logs.get("eval_loss")),
                tokensPerSecond=decimal_str(tps, 1),
                etaSeconds=eta,
            )

    return ProgressCallback()


def check_gpus(expected: int) -> None:
    """Fail at once when the pod was given GPUs but CUDA sees fewer (never train on the CPU by accident)."""
    if expected <= 0:
        return
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen >= expected:
        return
    if seen == 0 and load_test_hooks().get("allow_cpu_without_gpu"):
        # Only the local cluster's stand-in image sets this (localcluster/images.yaml), never the real image.
        log.warning("expect_gpus is %d but CUDA sees no GPU: training on the CPU (test hook allow_cpu_without_gpu)", expected)
        return
    raise ConfigError(
        f"expect_gpus: the pod was given {expected} GPU(s) but CUDA sees {seen}: the node's NVIDIA driver is "
        "missing or too old for the image's CUDA 13 build (580 series or newer; check nvidia-smi on the node), "
        "or the NVIDIA device plugin / container toolkit did not expose the GPUs to the container"
    )


def run_training(cfg: Config, argv: list[str]) -> int:
    """Train, checkpoint, upload; returns the exit code (errors raise TrainerError subclasses)."""
    flag = InterruptFlag()
    flag.install()
    try:
        return _train(cfg, argv, flag)
    finally:
        flag.uninstall()


def _train(cfg: Config, argv: list[str], flag: InterruptFlag) -> int:
    job = cfg.job
    rank, local_rank, world = _dist_info()
    is_main = rank == 0
    started = time.time()
    check_gpus(job.expect_gpus)

    store = open_run_store(job.run_prefix, s3_client_for(cfg))
    if store.exists(MANIFEST):
        # A rerun (e.g. a retried pod) must never touch a completed adapter.
        log.info("adapter already complete at %s; nothing to do", store.uri(MANIFEST))
        if is_main:
            done = json.loads(store.read_bytes(MANIFEST))
            results = done.get("results") or {}
            write_termination(ExitCode.SUCCEEDED, "adapter already complete", adapterUri=store.uri("adapter/"),
                              adapter=adapter_report(store, done), baselineEvalLoss=results.get("baselineEvalLoss"),
                              finalEvalLoss=results.get("finalEvalLoss"))
        return 0

    # Claimed before anything is written: a trainer replaced while it still runs is fenced off.
    fence = Fence(store, claim(store)) if is_main else None

    progress = ProgressReporter(
        job.progress_configmap if is_main else "",
        job.job_namespace,
        interval_seconds=job.progress_interval_seconds,
    )
    # Ranks share the node's cache and work directories: the local main process downloads first,
    # the others then find the completed cache.
    with _local_main_first(world):
        prep = prepare(cfg, meta_only=False)
    report: DataReport = prep.data.report
    if not report.usable:
        raise DataError("data unusable: " + "; ".join(report.fatal[:2] or [f"{report.errors_total} lines have errors"]), data=report.summary())

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    dtype_name = resolve_compute_dtype(job.compute_dtype)
    use_cuda = torch.cuda.is_available()
    # TrainingArguments derives device and mixed precision in __post_init__, so these go through the
    # parser (command-line values override the file) rather than being set on the parsed object.
    overrides = {
        "output_dir": os.path.join(prep.work_dir, "trainer"),
        "save_strategy": "no",  # checkpoints are triggered by CheckpointSync (steps or minutes)
        "save_total_limit": 1,
        "run_name": job.run_name,
    }
    if job.wandb_project:
        overrides["report_to"] = _enable_wandb(cfg)
    cfg = parse_config([*argv, *[a for k, v in overrides.items() for a in (f"--{k}", str(v))]])
    sft = cfg.sft
    if is_main and os.path.isdir(sft.output_dir):
        shutil.rmtree(sft.output_dir)  # only the run store's complete checkpoints count

    fmt = report.format
    zero_weight = sum(zero_weight_messages(ex) for ex in prep.data.train)
    loss = masking_report(fmt, prep.template, job.train_on_inputs, zero_weight)
    masking = loss["mode"]
    # Conversations are tokenized here (tools, per-message weight); TRL builds labels from their masks.
    sft.assistant_only_loss = False
    sft.completion_only_loss = masking == "completion_only"
    progress.update(lossMasking=masking, chatTemplate=loss["chatTemplate"])
    log.info("loss masking: %s", json.dumps(loss, sort_keys=True))

    quant = get_quantization_config(cfg.model)
    compute_dtype = _torch_dtype(dtype_name)
    if quant is not None:
        quant.bnb_4bit_compute_dtype = compute_dtype
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        prep.model.path,
        quantization_config=quant,
        dtype=compute_dtype,
        device_map={"": device},
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=bool(sft.trust_remote_code),
    )
    # Same weights, same bytes on every CPU: no in-place AVX-512 BF16 repack (see weights.py).
    # The test hook takes that path on any CPU, to show the manifest's checks hold on it too.
    if load_test_hooks().get("force_cpu_4bit_repack"):
        force_cpu_4bit_repack(model)
    else:
        keep_standard_4bit_layout(model)
    peft_config = get_peft_config(cfg.model)

    resume = latest_checkpoint(prep.store)
    resume_dir = None
    if resume is not None:
        resume_dir = os.path.join(sft.output_dir, f"checkpoint-{resume.step}")
        if local_rank == 0:
            prep.store.download_dir(resume.rel, resume_dir)
        _barrier(world)
        log.info("resuming from checkpoint %d at %s", resume.step, prep.store.uri(resume.rel))

    callbacks = [
        make_checkpoint_callback(
            store=prep.store,
            interval_steps=job.checkpoint_interval_steps,
            interval_minutes=job.checkpoint_interval_minutes,
            keep=job.keep_checkpoints,
            flag=flag,
            progress=progress,
            is_main=is_main,
            world_size=world,
            fence=fence,
        ),
        make_progress_callback(progress, is_main),
    ]
    def as_dataset(examples: list[dict[str, Any]]) -> Any:
        if fmt != "messages":
            return Dataset.from_list(examples)
        return Dataset.from_list([
            tokenize_conversation(prep.tokenizer, ex, marked=prep.template.marked, train_on_inputs=job.train_on_inputs)
            for ex in examples
        ])

    train_ds = as_dataset(prep.data.train)
    eval_ds = as_dataset(prep.data.validation) if prep.data.validation else None
    if fmt == "messages" and sft.max_length and not sft.packing:
        # TRL drops examples whose trained tokens all fall past max_length: say so, never silently.
        lost = sum(1 for m in train_ds["assistant_masks"] if 1 not in m[: sft.max_length])
        if lost:
            msg = (f"{lost} of {len(train_ds)} training examples have no trained token within max_length "
                   f"{sft.max_length} and are left out; raise max_length")
            report.warnings.append(msg)
            log.warning(msg)
            if lost == len(train_ds):
                raise DataError(msg.replace("are left out", "so nothing would be trained"), data=report.summary())
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=prep.tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    shape = {"per_device_train_batch_size": sft.per_device_train_batch_size, "max_length": sft.max_length}
    columns = trainer.train_dataset.column_names or []
    # Tokens that carry loss in one pass over the data: what the masking really left to learn from.
    trained_tokens = (
        sum(sum(1 for t in row if t != -100) for row in trainer.train_dataset["labels"]) if "labels" in columns else None
    )

    baseline = None
    if eval_ds is not None:
        if resume is not None and prep.store.exists(BASELINE):
            baseline = json.loads(prep.store.read_bytes(BASELINE))["evalLoss"]
        else:
            progress.update(phase="baseline")
            baseline = _evaluate(trainer, shape)
            if fence is not None:
                fence.check("the baseline evaluation")
                prep.store.put_bytes(BASELINE, json.dumps({"evalLoss": baseline}).encode())
        progress.update(phase="training", baselineEvalLoss=decimal_str(baseline), force=True)

    before = fingerprints(trainer.model)
    try:
        result = trainer.train(resume_from_checkpoint=resume_dir)
    except BaseException as e:
        raise classify(e, shape) from e
    finally:
        flag.in_training_loop = False
    if flag.requested:
        last = callbacks[0].last_uploaded
        where = f"checkpoint {last.step} saved to {prep.store.uri(last.rel)}" if last else "no checkpoint saved"
        raise Interrupted(f"SIGTERM: {where}", lastCheckpointStep=last.step if last else None)

    checks = weight_checks(trainer.model, before)
    final = _evaluate(trainer, shape) if eval_ds is not None else None
    train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    warnings = list(report.warnings)
    overfit = overfitting_warning(baseline, final, train_losses)
    if overfit:
        warnings.append(overfit)
        log.warning(overfit)
    if not is_main:
        return 0

    progress.update(phase="uploading", force=True)
    adapter_dir = os.path.join(prep.work_dir, "adapter")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    trainer.save_model(adapter_dir)
    # The adapter ships the model's own template: the marked one renders the same text, but serving
    # stacks need not know the {% generation %} extension.
    if prep.template.stock:
        prep.tokenizer.chat_template = prep.template.stock
    prep.tokenizer.save_pretrained(adapter_dir)
    # A pickle of TrainingArguments: not needed to use the adapter, and not safe to load.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(adapter_dir, "training_args.bin"))
    assert fence is not None  # the main process claimed an attempt
    fence.check("the adapter")
    files = prep.store.upload_dir("adapter", adapter_dir)

    lora = trainer.model.peft_config["default"]
    num_tokens = next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)
    manifest = {
        "jobUid": job.job_uid,
        "jobName": job.job_name,
        "jobNamespace": job.job_namespace,
        "baseModel": {"uri": prep.model.uri, "revision": prep.model.revision, "contentHash": prep.model.content_hash},
        "dataset": {
            "uri": job.dataset_uri,
            "sha256": report.sha256,
            "validationUri": job.validation_uri or None,
            "format": report.format,
            "sourceFormat": report.source_format,
            "examples": report.examples,
            "train": report.train,
            "validation": report.validation,
        },
        "systemPrompt": job.system_prompt or None,
        "lossMasking": masking,
        "lossMaskingDetails": loss,
        "chatTemplate": prep.template.to_json(),
        "hyperparameters": jsonable(
            {
                "computeDtype": dtype_name,
                "quantization": quant.to_dict() if quant is not None else None,
                "lora": {
                    "r": lora.r,
                    "lora_alpha": lora.lora_alpha,
                    "lora_dropout": lora.lora_dropout,
                    "target_modules": sorted(lora.target_modules) if lora.target_modules else None,
                    "use_dora": lora.use_dora,
                    "use_rslora": lora.use_rslora,
                },
                "training": {k: getattr(sft, k) for k in _HYPERPARAMETERS if hasattr(sft, k)},
                "worldSize": world,
            }
        ),
        "results": {
            "baselineEvalLoss": baseline,
            "finalEvalLoss": final,
            "trainLoss": result.training_loss,
            "lastTrainLoss": train_losses[-1] if train_losses else None,
            "globalStep": trainer.state.global_step,
            "resumedFromStep": resume.step if resume else None,
            "attempt": fence.attempt.number,  # fencing.py: which attempt of the run wrote this adapter
            "tokens": int(num_tokens) if num_tokens is not None else None,
            "trainedTokensPerEpoch": trained_tokens,
            # Read from the model, not the config: proof that checkpointing really ran (the estimate assumes it).
            "activationCheckpointing": activation_checkpointing_on(trainer.model),
            "runtimeSeconds": round(time.time() - started, 3),
            "trainRuntimeSeconds": result.metrics.get("train_runtime"),
            "warnings": warnings,
        },
        "checks": checks,
        "peakGpuMemory": peak_gpu_memory(),
        "libraries": library_versions(),
        "files": files,
        "adapterSizeBytes": sum(p.stat().st_size for p in Path(adapter_dir).rglob("*") if p.is_file()),
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    fence.check("the adapter manifest")
    if not prep.store.put_bytes(MANIFEST, body, if_none_match=True):
        log.warning("a manifest appeared at %s meanwhile; leaving it as it is", prep.store.uri(MANIFEST))
    progress.update(phase="done", step=trainer.state.global_step, force=True)
    write_termination(
        ExitCode.SUCCEEDED,
        "adapter complete",
        adapterUri=prep.store.uri("adapter/"),
        adapter=adapter_report(prep.store, manifest),
        baselineEvalLoss=baseline,
        finalEvalLoss=final,
        lossMasking=loss,
        warnings=warnings[:5],
    )
    _end(trainer)
    return 0


def activation_checkpointing_on(model: Any) -> bool:
    """Whether the (PEFT-wrapped) model runs with activation checkpointing."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers 5 renamed the property (the old name warns).
    on = getattr(inner, "is_activation_checkpointing", None)
    return bool(on if on is not None else getattr(inner, "is_gradient_checkpointing", False))


def adapter_report(store: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """The adapter as the operator records it in status (docs/contract.md §3): no S3 read needed there."""
    files = manifest.get("files") or {}
    return {
        "uri": store.uri("adapter/"),
        "manifestUri": store.uri(MANIFEST),
        "sha256": files.get("adapter_model.safetensors"),
        "sizeBytes": manifest.get("adapterSizeBytes"),
    }


_HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "packing",
    "activation_checkpointing",
    "optim",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
)


def overfitting_warning(baseline: float | None, final: float | None, train_losses: list[float]) -> str | None:
    """A warning when eval loss rose over the run while train loss fell."""
    if baseline is None or final is None or len(train_losses) < 2:
        return None
    if final > baseline and train_losses[-1] < train_losses[0]:
        return (
            f"eval loss rose from {baseline:.4f} to {final:.4f} while train loss fell: overfitting; "
            "use fewer epochs, a lower learning rate or more data"
        )
    return None


def _evaluate(trainer: Any, shape: dict[str, Any]) -> float:
    try:
        return float(trainer.evaluate()["eval_loss"])
    except BaseException as e:
        raise classify(e, shape) from e


def _local_main_first(world: int) -> Any:
    if world <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().local_main_process_first()


def _barrier(world: int) -> None:
    if world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _enable_wandb(cfg: Config) -> str:
    try:
        import wandb  # noqa: F401
    except ImportError as e:
        raise ConfigError("wandb_project: set, but wandb is not installed in this image") from e
    os.environ.setdefault("WANDB_PROJECT", cfg.job.wandb_project)
    # One W&B run per job UID, continued across resumes.
    if cfg.job.job_uid:
        os.environ.setdefault("WANDB_RUN_ID", cfg.job.job_uid)
        os.environ.setdefault("WANDB_RESUME", "allow")
    os.environ.setdefault("WANDB_DIR", work_dir_for(cfg))
    return "wandb"


def _end(trainer: Any) -> None:
    end = getattr(trainer, "end", None)
    if callable(end):
        end()
