"""Fencing of a replaced trainer (fencing.py): attempt claims, refused writes, checkpoints that never mix.

A trainer whose pod was force-deleted off a lost node may still run; these tests play its
writes against a newer attempt's in one run prefix (a local run store, the same interface as S3).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune_trainer.checkpoints import (
    MARKER,
    InterruptFlag,
    complete_checkpoints,
    latest_checkpoint,
    make_checkpoint_callback,
)
from finetune_trainer.errors import ExitCode, classify
from finetune_trainer.fencing import Fence, Superseded, claim, publish_files
from finetune_trainer.progress import ProgressReporter
from finetune_trainer.runstore import LocalRunStore


def _store(tmp_path: Path) -> LocalRunStore:
    return LocalRunStore(str(tmp_path / "run"))


def _callback(store: LocalRunStore, fence: Fence | None) -> object:
    return make_checkpoint_callback(store=store, interval_steps=2, interval_minutes=0, keep=5,
                                    flag=InterruptFlag(), progress=ProgressReporter("", "ns"),
                                    is_main=True, world_size=1, fence=fence)


def _save(callback: object, out: Path, step: int, payload: bytes) -> None:
    """What the Trainer does on a save: write checkpoint-<step>/ locally, then call on_save."""
    local = out / f"checkpoint-{step}"
    local.mkdir(parents=True, exist_ok=True)
    (local / "adapter_model.safetensors").write_bytes(payload)
    (local / "optimizer.pt").write_bytes(payload * 2)
    callback.on_save(SimpleNamespace(output_dir=str(out)), SimpleNamespace(global_step=step), SimpleNamespace())


def test_attempts_are_numbered_in_claim_order_and_never_shared(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = claim(store, "pod-uid-a", "train-a")
    second = claim(store, "pod-uid-b", "train-b")
    assert (first.number, second.number) == (1, 2)
    # A claimer that raced to number 3 and lost takes 4: the claim is created only if absent.
    store.put_bytes("attempts/000003.json", b'{"identity": "pod-uid-c"}')
    assert claim(store, "pod-uid-d").number == 4
    assert json.loads(store.read_bytes("attempts/000002.json"))["identity"] == "pod-uid-b"


def test_a_superseded_trainer_writes_no_checkpoint_and_exits_interrupted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old = Fence(store, claim(store, "old-pod"))
    zombie = _callback(store, old)
    _save(zombie, tmp_path / "old", 2, b"old-2")
    assert [c.step for c in complete_checkpoints(store)] == [2]
    claim(store, "new-pod")  # the replacement starts while the old trainer still runs
    before = sorted(p.relative_to(store.root) for p in Path(store.root).rglob("*"))
    with pytest.raises(Superseded, match="attempt 2 of this run has started .* not writing checkpoint 4"):
        _save(zombie, tmp_path / "old", 4, b"old-4")
    assert sorted(p.relative_to(store.root) for p in Path(store.root).rglob("*")) == before
    err = classify(Superseded("x"))
    assert err.code == ExitCode.INTERRUPTED  # the Job's podFailurePolicy ignores it: never a failure


def test_two_attempts_saving_the_same_step_never_mix_files(tmp_path: Path) -> None:
    """The stale attempt got past its fence check just before the new one claimed: its files go to
    its own directory, and the step's marker (created only if absent) names one attempt's files."""
    store = _store(tmp_path)
    old_attempt = claim(store, "old-pod")
    new = Fence(store, claim(store, "new-pod"))
    slow_zombie = Fence(store, old_attempt)
    slow_zombie.check = lambda what: None  # type: ignore[method-assign]  # its check passed before the claim
    _save(_callback(store, new), tmp_path / "new", 6, b"new-6")
    _save(_callback(store, slow_zombie), tmp_path / "old", 6, b"old-6")
    ckpt = latest_checkpoint(store)
    assert ckpt is not None and ckpt.step == 6
    assert ckpt.rel == "checkpoints/checkpoint-6/attempt-2"
    files = Path(store.root, ckpt.rel)
    assert (files / "adapter_model.safetensors").read_bytes() == b"new-6"
    assert (files / "optimizer.pt").read_bytes() == b"new-6" * 2
    marker = json.loads(store.read_bytes(f"checkpoints/checkpoint-6/{MARKER}"))
    assert marker["attempt"] == 2 and marker["dir"] == "attempt-2"
    assert not Path(store.root, "checkpoints/checkpoint-6/attempt-1").exists()  # the loser's copy is dropped


def test_a_checkpoint_written_before_fencing_is_found_where_its_marker_says(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _save(_callback(store, None), tmp_path / "plain", 2, b"legacy")  # a laptop run without attempts
    assert latest_checkpoint(store).rel == "checkpoints/checkpoint-2"  # type: ignore[union-attr]
    fence = Fence(store, claim(store, "pod"))
    _save(_callback(store, fence), tmp_path / "fenced", 4, b"fenced")
    assert latest_checkpoint(store).rel == "checkpoints/checkpoint-4/attempt-1"  # type: ignore[union-attr]


def _adapter_dir(root: Path, weights: bytes, config: str = '{"r": 8}') -> Path:
    """What the trainer saves locally before publishing: the adapter and its config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_model.safetensors").write_bytes(weights)
    (root / "adapter_config.json").write_text(config)
    return root


def test_a_zombie_past_its_fence_check_cannot_overwrite_a_newer_adapter(tmp_path: Path) -> None:
    """Issue 12's fencing leftover: the adapter stays at adapter/ (its public place), so a stale trainer
    whose check passed just before the replacement claimed must fail to write there, file by file."""
    store = _store(tmp_path)
    old_attempt = claim(store, "old-pod")
    new = Fence(store, claim(store, "new-pod"))
    files = publish_files(store, new, "adapter", str(_adapter_dir(tmp_path / "new", b"new weights")))
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json"}

    zombie = Fence(store, old_attempt)
    checks: list[str] = []
    real_check = zombie.check

    def passed_once_before_the_claim(what: str) -> None:
        checks.append(what)
        if len(checks) > 1:
            real_check(what)

    zombie.check = passed_once_before_the_claim  # type: ignore[method-assign]
    with pytest.raises(Superseded, match="attempt 2 of this run has started .* not writing a stale adapter file"):
        publish_files(store, zombie, "adapter", str(_adapter_dir(tmp_path / "old", b"old weights", '{"r": 4}')))
    assert checks == ["adapter file adapter_config.json", "a stale adapter file adapter_config.json"]
    assert Path(store.root, "adapter/adapter_config.json").read_text() == '{"r": 8}'
    assert Path(store.root, "adapter/adapter_model.safetensors").read_bytes() == b"new weights"
    # Superseded outright: it writes nothing at all.
    with pytest.raises(Superseded, match="not writing adapter file adapter_config.json"):
        publish_files(store, Fence(store, old_attempt), "adapter", str(tmp_path / "old"))


def test_an_earlier_attempts_leftover_adapter_files_are_replaced_or_kept(tmp_path: Path) -> None:
    """The attempt that died while publishing left a partial file (other content) and a complete one
    (the same content): the next attempt replaces the first, keeps the second, and lists both."""
    store = _store(tmp_path)
    claim(store, "died-uploading")
    store.put_bytes("adapter/adapter_model.safetensors", b"half of the weig")
    store.put_bytes("adapter/adapter_config.json", b'{"r": 8}')
    fence = Fence(store, claim(store, "replacement"))
    files = publish_files(store, fence, "adapter", str(_adapter_dir(tmp_path / "new", b"the weights")))
    assert Path(store.root, "adapter/adapter_model.safetensors").read_bytes() == b"the weights"
    assert files["adapter_config.json"] == store.file_version("adapter/adapter_config.json")[0]  # type: ignore[index]
