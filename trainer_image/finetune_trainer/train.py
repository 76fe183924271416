"""`finetune-trainer --config train.yaml`: QLoRA with SFTTrainer, checkpoints in S3, a verified adapter.

Read top to bottom the way TRL's `sft.py` reads: prepare (inputs, masking) → load (the 4-bit
model) → build the trainer (datasets, callbacks, resume) → train and verify → publish (adapter,
then the manifest that marks it complete). The configuration is parsed once, before any of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from .checkpoints import InterruptFlag, RemoteCheckpoint, latest_checkpoint, load_test_hooks, make_checkpoint_callback
from .config import Config
from .fencing import Fence, claim, publish_files
from .data import DataReport
from .errors import ConfigError, DataError, ExitCode, Interrupted, classify, write_termination
from .job import (
    Prepared,
    masking_report,
    prepare,
    s3_client_for,
    tokenize_conversation,
    work_dir_for,
    zero_weight_messages,
)
from .manifest import MANIFEST, activation_checkpointing_on, adapter_report, build_manifest
from .progress import ProgressReporter, decimal_str
from .runstore import RunStore, open_run_store
from .weights import (fingerprints, force_cpu_4bit_repack, keep_adapter_in_fp32, keep_standard_4bit_layout,
                      restore_standard_4bit_layout, weight_checks)

log = logging.getLogger("finetune_trainer.train")

BASELINE = "reports/baseline.json"


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


def run_training(cfg: Config) -> int:
    """Train, checkpoint, upload; returns the exit code (errors raise TrainerError subclasses)."""
    flag = InterruptFlag()
    flag.install()
    try:
        return _train(cfg, flag)
    finally:
        flag.uninstall()


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch (one process without torchrun)."""

    rank: int
    local_rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1")))


@dataclass
class Plan:
    """What `prepare` settled: the fetched inputs and what the loss covers."""

    prep: Prepared
    report: DataReport
    loss: dict[str, Any]  # what the loss covers (masking_report), as the manifest records it


@dataclass
class Setup:
    """The trainer, built over the loaded model, and where it resumes from."""

    trainer: Any
    quant: Any
    checkpoints: Any  # the CheckpointSync callback: it knows the last uploaded checkpoint
    resume: RemoteCheckpoint | None
    has_eval: bool
    shape: dict[str, Any]  # what an out-of-memory message names
    trained_tokens: int | None
    fence: Fence | None  # the main process's claimed attempt; None on other ranks


@dataclass
class Outcome:
    """The run's results, verified before anything is published."""

    baseline: float | None
    final: float | None
    train_loss: float
    train_runtime: float | None
    train_losses: list[float]
    checks: dict[str, Any]
    warnings: list[str]


def _train(cfg: Config, flag: InterruptFlag) -> int:
    ranks = Ranks.from_env()
    started = time.time()
    check_gpus(cfg.job.expect_gpus)
    store = open_run_store(cfg.job.run_prefix, s3_client_for(cfg))
    if store.exists(MANIFEST):
        # A rerun (e.g. a retried pod) must never touch a completed adapter.
        log.info("adapter already complete at %s; nothing to do", store.uri(MANIFEST))
        if ranks.is_main:
            report_complete(store)
        return 0

    # Claimed before anything is written: a trainer replaced while it still runs is fenced off.
    fence = Fence(store, claim(store)) if ranks.is_main else None

    progress = ProgressReporter(
        cfg.job.progress_configmap if ranks.is_main else "",
        cfg.job.job_namespace,
        interval_seconds=cfg.job.progress_interval_seconds,
    )
    plan = prepare_run(cfg, ranks, progress)
    model, quant = load_model(cfg, plan, ranks)
    setup = build_trainer(cfg, plan, model, quant, ranks, flag, progress, fence)
    outcome = train(setup, plan, ranks, flag, progress)
    if not ranks.is_main:
        return 0
    publish(cfg, plan, setup, outcome, ranks, progress, started)
    return 0


def report_complete(store: RunStore) -> None:
    """The success termination message of an adapter a previous attempt completed."""
    done = json.loads(store.read_bytes(MANIFEST))
    results = done.get("results") or {}
    write_termination(ExitCode.SUCCEEDED, "adapter already complete", adapterUri=store.uri("adapter/"),
                      adapter=adapter_report(store, done), baselineEvalLoss=results.get("baselineEvalLoss"),
                      finalEvalLoss=results.get("finalEvalLoss"))


def prepare_run(cfg: Config, ranks: Ranks, progress: ProgressReporter) -> Plan:
    """Fetch model and data, check the data, decide what the loss covers, clear the scratch output."""
    # Ranks share the node's cache and work directories: the local main process downloads first,
    # the others then find the completed cache.
    with _local_main_first(ranks.world):
        prep = prepare(cfg, meta_only=False)
    report: DataReport = prep.data.report
    if not report.usable:
        raise DataError("data unusable: " + "; ".join(report.fatal[:2] or [f"{report.errors_total} lines have errors"]), data=report.summary())
    if cfg.job.wandb_project:
        _enable_wandb(cfg)
    if ranks.is_main and os.path.isdir(cfg.sft.output_dir):
        shutil.rmtree(cfg.sft.output_dir)  # only the run store's complete checkpoints count

    zero_weight = sum(zero_weight_messages(ex) for ex in prep.data.train)
    loss = masking_report(report.format, prep.template, cfg.job.train_on_inputs, zero_weight)
    # Conversations are tokenized here (tools, per-message weight); TRL builds labels from their masks.
    cfg.sft.assistant_only_loss = False
    cfg.sft.completion_only_loss = loss["mode"] == "completion_only"
    progress.update(lossMasking=loss["mode"], chatTemplate=loss["chatTemplate"])
    log.info("loss masking: %s", json.dumps(loss, sort_keys=True))
    return Plan(prep, report, loss)


def load_model(cfg: Config, plan: Plan, ranks: Ranks) -> tuple[Any, Any]:
    """The 4-bit base model on this rank's device, in the configured dtype; and its quantization config."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    dtype = getattr(torch, cfg.model.dtype or "float32")
    quant = get_quantization_config(cfg.model)
    if quant is not None:
        quant.bnb_4bit_compute_dtype = dtype
    device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        plan.prep.model.path,
        quantization_config=quant,
        dtype=dtype,
        device_map={"": device},
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=bool(cfg.sft.trust_remote_code),
    )
    # Same weights, same bytes on every CPU: no in-place AVX-512 BF16 repack (see weights.py).
    # The test hook takes that path on any CPU, to show the manifest's checks hold on it too.
    if load_test_hooks().get("force_cpu_4bit_repack"):
        force_cpu_4bit_repack(model)
    else:
        keep_standard_4bit_layout(model)
    return model, quant


def build_trainer(cfg: Config, plan: Plan, model: Any, quant: Any, ranks: Ranks, flag: InterruptFlag,
                  progress: ProgressReporter, fence: Fence | None) -> Setup:
    """Datasets, callbacks and the SFTTrainer; the last complete checkpoint fetched to resume from."""
    from trl import SFTTrainer, get_peft_config

    sft, prep = cfg.sft, plan.prep
    resume = latest_checkpoint(prep.store)
    if resume is not None:
        if ranks.local_rank == 0:
            prep.store.download_dir(resume.rel, _resume_dir(cfg, resume))
        _barrier(ranks.world)
        log.info("resuming from checkpoint %d at %s", resume.step, prep.store.uri(resume.rel))
    checkpoints = make_checkpoint_callback(
        store=prep.store,
        interval_steps=cfg.job.checkpoint_interval_steps,
        interval_minutes=cfg.job.checkpoint_interval_minutes,
        keep=cfg.job.keep_checkpoints,
        flag=flag,
        progress=progress,
        is_main=ranks.is_main,
        world_size=ranks.world,
        fence=fence,
    )
    train_ds = _as_dataset(cfg, plan, prep.data.train)
    eval_ds = _as_dataset(cfg, plan, prep.data.validation) if prep.data.validation else None
    _check_max_length(cfg, plan, train_ds)
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=prep.tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[checkpoints, make_progress_callback(progress, ranks.is_main)],
    )
    # Before the optimizer exists: one adapter dtype for a run and all its resumes (weights.py).
    keep_adapter_in_fp32(trainer.model)
    columns = trainer.train_dataset.column_names or []
    # Tokens that carry loss in one pass over the data: what the masking really left to learn from.
    trained_tokens = (
        sum(sum(1 for t in row if t != -100) for row in trainer.train_dataset["labels"]) if "labels" in columns else None
    )
    shape = {"per_device_train_batch_size": sft.per_device_train_batch_size, "max_length": sft.max_length}
    return Setup(trainer, quant, checkpoints, resume, eval_ds is not None, shape, trained_tokens, fence)


def _resume_dir(cfg: Config, resume: RemoteCheckpoint) -> str:
    return os.path.join(cfg.sft.output_dir, f"checkpoint-{resume.step}")


def _as_dataset(cfg: Config, plan: Plan, examples: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    if plan.report.format != "messages":
        return Dataset.from_list(examples)
    prep = plan.prep
    return Dataset.from_list([
        tokenize_conversation(prep.tokenizer, ex, marked=prep.template.marked, train_on_inputs=cfg.job.train_on_inputs)
        for ex in examples
    ])


def _check_max_length(cfg: Config, plan: Plan, train_ds: Any) -> None:
    """TRL drops examples whose trained tokens all fall past max_length: say so, never silently."""
    sft = cfg.sft
    if plan.report.format != "messages" or not sft.max_length or sft.packing:
        return
    lost = sum(1 for m in train_ds["assistant_masks"] if 1 not in m[: sft.max_length])
    if not lost:
        return
    msg = (f"{lost} of {len(train_ds)} training examples have no trained token within max_length "
           f"{sft.max_length} and are left out; raise max_length")
    plan.report.warnings.append(msg)
    log.warning(msg)
    if lost == len(train_ds):
        raise DataError(msg.replace("are left out", "so nothing would be trained"), data=plan.report.summary())


def train(setup: Setup, plan: Plan, ranks: Ranks, flag: InterruptFlag, progress: ProgressReporter) -> Outcome:
    """Baseline eval, the training loop, then the checks: LoRA weights moved, base weights did not."""
    trainer, store = setup.trainer, plan.prep.store
    baseline = None
    # Before the baseline evaluation: on an AVX-512 BF16 CPU that is where bitsandbytes would repack.
    before = fingerprints(trainer.model)
    if setup.has_eval:
        if setup.resume is not None and store.exists(BASELINE):
            baseline = float(json.loads(store.read_bytes(BASELINE))["evalLoss"])
        else:
            progress.update(phase="baseline")
            baseline = _evaluate(trainer, setup.shape)
            if setup.fence is not None:
                setup.fence.check("the baseline evaluation")
                store.put_bytes(BASELINE, json.dumps({"evalLoss": baseline}).encode())
        progress.update(phase="training", baselineEvalLoss=decimal_str(baseline), force=True)
    restore_standard_4bit_layout(trainer.model)  # never train through the inference-only kernel
    resume_dir = _resume_dir(plan.prep.cfg, setup.resume) if setup.resume is not None else None
    try:
        result = trainer.train(resume_from_checkpoint=resume_dir)
    except BaseException as e:
        raise classify(e, setup.shape) from e
    finally:
        flag.in_training_loop = False
    if flag.requested:
        last = setup.checkpoints.last_uploaded
        where = f"checkpoint {last.step} saved to {store.uri(last.rel)}" if last else "no checkpoint saved"
        raise Interrupted(f"SIGTERM: {where}", lastCheckpointStep=last.step if last else None)

    checks = weight_checks(trainer.model, before)
    final = _evaluate(trainer, setup.shape) if setup.has_eval else None
    train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    warnings = list(plan.report.warnings)
    overfit = overfitting_warning(baseline, final, train_losses)
    if overfit:
        warnings.append(overfit)
        log.warning(overfit)
    return Outcome(baseline, final, result.training_loss, result.metrics.get("train_runtime"), train_losses,
                   checks, warnings)


def publish(cfg: Config, plan: Plan, setup: Setup, outcome: Outcome, ranks: Ranks, progress: ProgressReporter,
            started: float) -> None:
    """Upload the adapter, then its manifest (written last, once: it marks the adapter complete)."""
    trainer, prep = setup.trainer, plan.prep
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
    fence = setup.fence
    assert fence is not None  # the main process claimed an attempt
    files = publish_files(prep.store, fence, "adapter", adapter_dir)  # fenced file by file, each only if absent

    history = trainer.state.log_history
    num_tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)
    manifest = build_manifest(
        cfg,
        prep,
        loss=plan.loss,
        quant=setup.quant,
        lora=trainer.model.peft_config["default"],
        world_size=ranks.world,
        results={
            "baselineEvalLoss": outcome.baseline,
            "finalEvalLoss": outcome.final,
            "trainLoss": outcome.train_loss,
            "lastTrainLoss": outcome.train_losses[-1] if outcome.train_losses else None,
            "globalStep": trainer.state.global_step,
            "resumedFromStep": setup.resume.step if setup.resume else None,
            "attempt": fence.attempt.number,  # fencing.py: which attempt of the run wrote this adapter
            "tokens": int(num_tokens) if num_tokens is not None else None,
            "trainedTokensPerEpoch": setup.trained_tokens,
            # Read from the model, not the config: proof that checkpointing really ran (the estimate assumes it).
            "activationCheckpointing": activation_checkpointing_on(trainer.model),
            "runtimeSeconds": round(time.time() - started, 3),
            "trainRuntimeSeconds": outcome.train_runtime,
            "warnings": outcome.warnings,
        },
        checks=outcome.checks,
        files=files,
        adapter_dir=adapter_dir,
    )
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
        baselineEvalLoss=outcome.baseline,
        finalEvalLoss=outcome.final,
        lossMasking=plan.loss,
        warnings=outcome.warnings[:5],
    )
    _end(trainer)


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
