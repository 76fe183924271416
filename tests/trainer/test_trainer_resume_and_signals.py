"""Preemption: SIGKILL after a checkpoint resumes from it; SIGTERM saves one and exits 13."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

from finetune_trainer.testing import chat_records

SLOW_STEPS = json.dumps({"step_delay_seconds": 1.5})


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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 13
    finally:
        if proc.poll() is None:
            proc.kill()
    message = harness.termination("sigterm")
    assert message["class"] == "Interrupted" and message["exitCode"] == 13
    step = message["details"]["lastCheckpointStep"] if "details" in message else message["lastCheckpointStep"]
    assert 0 < step < 50
    marker = json.loads(harness.read(prefix + f"checkpoints/checkpoint-{step}/_COMPLETE"))
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "adapter_model.safetensors"} <= set(
        marker["files"]
    )
    assert not any(k.startswith(prefix + "adapter/") for k in harness.keys(prefix))
