"""Preemption: SIGKILL after a checkpoint resumes from it; SIGTERM saves one and exits 13."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import torch
from safetensors.torch import load as load_safetensors

from finetune_trainer.testing import chat_records

SLOW_STEPS = json.dumps({"step_delay_seconds": 1.5})
# Resumed and uninterrupted adapters are bit-identical here (measured: 0.0, in this process and across
# fresh processes with 1 or more threads). The bound is one millionth of the largest weight: room for
# a CPU kernel whose rounding follows memory alignment (a few float32 ulps), none for a state the
# resume does not restore (a bfloat16 adapter before the resume and fp32 after: 1.5e-3 of 0.132).
RESUME_TOLERANCE = 1e-6


def _sigterm_exits_13(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 13


def _last_checkpoint_step(message: dict) -> int:
    """The step of the checkpoint saved on SIGTERM, from the trainer's termination message."""
    return int(message["details"]["lastCheckpointStep"] if "details" in message else message["lastCheckpointStep"])


def _wait_for(predicate, proc: subprocess.Popen[str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"trainer exited early with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_sigkill_after_checkpoint_resumes_from_it_and_ignores_other_uids(harness, s3_model_uri):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(60))
    config, cfg = harness.config(
        "resume", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=6, checkpoint_interval_steps=2
    )
    prefix = harness.prefix(cfg)
    # A re-created job of the same name has another UID: its newer checkpoint must never be used.
    other = f"jobs/resume-{uuid.uuid4()}/checkpoints/checkpoint-5/"
    harness.client.put_object(Bucket="runs", Key=other + "adapter_model.safetensors", Body=b"not a checkpoint")
    harness.client.put_object(Bucket="runs", Key=other + "_COMPLETE", Body=b"{}")
    # An incomplete checkpoint of this run (no _COMPLETE) does not exist either.
    harness.client.put_object(Bucket="runs", Key=prefix + "checkpoints/checkpoint-5/optimizer.pt", Body=b"partial")

    proc = harness.popen("first", "--config", config, FINETUNE_TRAINER_TEST_HOOKS=SLOW_STEPS)
    try:
        _wait_for(lambda: prefix + "checkpoints/checkpoint-2/_COMPLETE" in harness.keys(prefix), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    complete = sorted(int(k.split("checkpoint-")[1].split("/")[0]) for k in harness.keys(prefix) if k.endswith("_COMPLETE"))
    assert complete and complete[-1] in (2, 4)
    assert not any(k.startswith(prefix + "adapter/") for k in harness.keys(prefix))

    second = harness.run("second", "--config", config)
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"resuming from checkpoint {complete[-1]}" in second.stderr
    assert "using cached model s3://models/tiny/" in second.stderr  # the first attempt's download is reused
    manifest = json.loads(harness.read(prefix + "adapter/manifest.json"))
    assert manifest["results"]["resumedFromStep"] == complete[-1]
    assert manifest["results"]["globalStep"] == 6
    # The baseline was measured once, before the first attempt, and reused.
    assert manifest["results"]["baselineEvalLoss"] == json.loads(harness.read(prefix + "reports/baseline.json"))["evalLoss"]
    # The other run's files are untouched, and pruning removed this run's stale partial checkpoint.
    assert harness.read(other + "adapter_model.safetensors") == b"not a checkpoint"
    assert not any("checkpoint-5/" in k for k in harness.keys(prefix))


def test_sigterm_mid_run_saves_a_checkpoint_and_exits_13(harness, s3_model_uri):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(60))
    config, cfg = harness.config(
        "sigterm", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=50, checkpoint_interval_steps=0,
        checkpoint_interval_minutes=0,
    )
    prefix = harness.prefix(cfg)
    proc = harness.popen("sigterm", "--config", config, FINETUNE_TRAINER_TEST_HOOKS=SLOW_STEPS)
    try:
        # The baseline report is written just before the training loop starts; the first logged
        # train loss (a progress line) says an optimizer step is done, so there is a step to save.
        _wait_for(lambda: prefix + "reports/baseline.json" in harness.keys(prefix), proc)
        log = harness.root / "sigterm.log"
        _wait_for(lambda: '"trainLoss"' in log.read_text(errors="replace"), proc)
        _sigterm_exits_13(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    message = harness.termination("sigterm")
    assert message["class"] == "Interrupted" and message["exitCode"] == 13
    step = _last_checkpoint_step(message)
    assert 0 < step < 50
    marker = json.loads(harness.read(prefix + f"checkpoints/checkpoint-{step}/_COMPLETE"))
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "adapter_model.safetensors"} <= set(
        marker["files"]
    )
    assert not any(k.startswith(prefix + "adapter/") for k in harness.keys(prefix))


def test_the_hold_hook_waits_after_the_first_checkpoint_until_sigterm_and_a_resume_does_not(harness, s3_model_uri):
    # The hook the cluster tests use to suspend or lose a pod between two checkpoints on any machine.
    data_uri = harness.put_dataset("chat.jsonl", chat_records(60))
    config, cfg = harness.config(
        "hold", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=6, checkpoint_interval_steps=2
    )
    prefix = harness.prefix(cfg)
    hold = json.dumps({"hold_after_first_checkpoint": True})
    proc = harness.popen("hold", "--config", config, FINETUNE_TRAINER_TEST_HOOKS=hold)
    try:
        log = harness.root / "hold.log"
        _wait_for(lambda: "holding after checkpoint 2 until SIGTERM" in log.read_text(errors="replace"), proc)
        assert prefix + "checkpoints/checkpoint-2/_COMPLETE" in harness.keys(prefix)
        _sigterm_exits_13(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = _last_checkpoint_step(harness.termination("hold"))
    assert step == 3  # one more step after the hold, then the SIGTERM checkpoint: it never trained on
    resumed = harness.run("hold-resumed", "--config", config, FINETUNE_TRAINER_TEST_HOOKS=hold)
    assert resumed.returncode == 0, resumed.stderr[-4000:]  # a resumed run does not hold
    assert "resuming from checkpoint 3" in resumed.stderr and "holding" not in resumed.stderr
    assert json.loads(harness.read(prefix + "adapter/manifest.json"))["results"]["globalStep"] == 6


def test_a_run_stopped_and_resumed_twice_ends_with_the_uninterrupted_adapter(harness, s3_model_uri, monkeypatch):
    """Issue 12: resume restores weights, optimizer, scheduler, RNG and data position, so the adapter of
    a run stopped twice (SIGTERM mid-interval, then a crash redoing a step in the second epoch) is the
    uninterrupted run's. The runs are in this process, one after another, to keep the test short (each
    is the CLI's whole train command; a subprocess would add a torch import per attempt)."""
    from finetune_trainer.cli import main

    # 14 training examples in batches of 2: 7 steps an epoch, so the second interruption (and its
    # resume) falls in the second epoch, whose shuffle a fresh process must redraw the same way.
    data_uri = harness.put_dataset("chat.jsonl", chat_records(16))
    common = dict(base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=10, per_device_train_batch_size=2,
                  checkpoint_interval_steps=4, checkpoint_interval_minutes=0, validation_split="0.125",
                  lora_dropout=0.1)  # dropout on: its masks come from the RNG state the checkpoint restores
    steady_config, steady = harness.config("steady", **common)
    hit_config, hit = harness.config("hit", **common)

    def attempt(name: str, config: str, hooks: dict[str, object]) -> int:
        for key, value in harness.env(name, FINETUNE_TRAINER_TEST_HOOKS=json.dumps(hooks)).items():
            monkeypatch.setenv(key, value)
        return main(["--config", config])

    assert attempt("steady", steady_config, {}) == 0
    assert attempt("hit-1", hit_config, {"sigterm_at_step": 3}) == 13  # checkpoint 3, saved on SIGTERM
    assert harness.termination("hit-1")["lastCheckpointStep"] == 3
    assert attempt("hit-2", hit_config, {"raise_at_step": 9}) == 1  # resumed at 3; dies after checkpoint 8
    assert attempt("hit-3", hit_config, {}) == 0  # resumed at 8, redoes step 9
    results = json.loads(harness.read(harness.prefix(hit) + "adapter/manifest.json"))["results"]
    assert (results["resumedFromStep"], results["globalStep"], results["attempt"]) == (8, 10, 3)

    def adapter(cfg: dict[str, object]) -> dict[str, torch.Tensor]:
        return load_safetensors(harness.read(harness.prefix(cfg) + "adapter/adapter_model.safetensors"))

    a, b = adapter(steady), adapter(hit)
    assert a.keys() == b.keys() and a
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    scale = max(float(a[k].float().abs().max()) for k in a)
    print(f"adapter max abs difference after two resumes: {worst:.3g} (largest weight {scale:.3g})")
    assert worst <= RESUME_TOLERANCE * scale, f"adapters differ by {worst} (largest weight {scale})"
    # The adapter is trained and published in fp32 (docs/api.md), with or without resumes.
    assert {t.dtype for t in (*a.values(), *b.values())} == {torch.float32}
