"""Checkpoints in the run prefix: interval triggers, upload with a completion marker, pruning, resume, SIGTERM.

A checkpoint exists only once `checkpoints/checkpoint-<step>/_COMPLETE` does; it is written
after every other file of that checkpoint is up and verified. The run prefix includes the job
UID, so resume can only ever see this job's checkpoints. The files live in a directory of the
attempt that wrote them (`attempt-<n>/`, named by the marker; see fencing.py), and the marker
is created only if absent, so two attempts saving the same step never mix their files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

from .errors import Interrupted
from .fencing import Fence
from .progress import ProgressReporter
from .runstore import RunStore

log = logging.getLogger("finetune_trainer.checkpoints")

MARKER = "_COMPLETE"
CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
TEST_HOOKS_ENV = "FINETUNE_TRAINER_TEST_HOOKS"


@dataclass(frozen=True)
class RemoteCheckpoint:
    step: int
    rel: str  # relative to the run prefix, e.g. checkpoints/checkpoint-20


def complete_checkpoints(store: RunStore) -> list[RemoteCheckpoint]:
    """Complete checkpoints of this run, oldest first."""
    out = []
    for name in store.list_dirs("checkpoints"):
        m = CKPT_RE.match(name)
        if m and store.exists(f"checkpoints/{name}/{MARKER}"):
            out.append(RemoteCheckpoint(int(m.group(1)), f"checkpoints/{name}"))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(store: RunStore) -> RemoteCheckpoint | None:
    """The newest complete checkpoint, with `rel` the directory holding its files."""
    found = complete_checkpoints(store)
    if not found:
        return None
    newest = found[-1]
    return RemoteCheckpoint(newest.step, files_dir(store, newest))


def files_dir(store: RunStore, ckpt: RemoteCheckpoint) -> str:
    """Where a complete checkpoint's files are: the attempt directory its marker names, else the step's own."""
    try:
        marker = json.loads(store.read_bytes(f"{ckpt.rel}/{MARKER}") or b"{}")
    except ValueError:
        marker = {}
    sub = marker.get("dir") if isinstance(marker, dict) else None
    return f"{ckpt.rel}/{sub}" if isinstance(sub, str) and re.fullmatch(r"attempt-\d+", sub) else ckpt.rel


def prune(store: RunStore, keep: int) -> list[int]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the newest."""
    complete = complete_checkpoints(store)
    if not complete:
        return []
    keep_steps = {c.step for c in complete[-keep:]}
    newest = complete[-1].step
    removed = []
    for name in store.list_dirs("checkpoints"):
        m = CKPT_RE.match(name)
        if not m:
            continue
        step = int(m.group(1))
        if step in keep_steps or step > newest:  # a newer incomplete one may be uploading right now
            continue
        store.delete_dir(f"checkpoints/{name}")
        removed.append(step)
    return sorted(removed)


class InterruptFlag:
    """SIGTERM handling: during the training loop, ask for a checkpoint and a stop; elsewhere, stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self.in_training_loop = False
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.in_training_loop:
            raise Interrupted("SIGTERM before training started; no checkpoint needed")
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")


def load_test_hooks() -> dict[str, Any]:
    """Test-only behaviour (slow steps, injected errors) from FINETUNE_TRAINER_TEST_HOOKS; never set in production."""
    raw = os.environ.get(TEST_HOOKS_ENV, "")
    return json.loads(raw) if raw else {}


def _make_callback_base() -> type:
    from transformers import TrainerCallback

    return cast(type, TrainerCallback)


def make_checkpoint_callback(
    *,
    store: RunStore,
    interval_steps: int,
    interval_minutes: float,
    keep: int,
    flag: InterruptFlag,
    progress: ProgressReporter,
    is_main: bool,
    world_size: int,
    fence: Fence | None = None,
) -> Any:
    """A TrainerCallback that triggers checkpoints and mirrors each one to the run store."""
    base = _make_callback_base()
    hooks = load_test_hooks()

    class CheckpointSync(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.last_time = time.monotonic()
            self.last_uploaded: RemoteCheckpoint | None = None
            self.started_at_step = 0
            self.held = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            flag.in_training_loop = True
            self.last_time = time.monotonic()
            self.started_at_step = int(state.global_step)  # > 0: resumed from a checkpoint

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            flag.in_training_loop = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step
            if hooks.get("sigterm_at_step") == step:
                # A pod deletion at a known step: the real SIGTERM path, without racing the clock.
                os.kill(os.getpid(), signal.SIGTERM)
            if hooks.get("step_delay_seconds"):
                time.sleep(float(hooks["step_delay_seconds"]))
            if hooks.get("raise_at_step") == step:
                _raise_test_error(str(hooks.get("raise", "runtime")))
            stop = _agree(flag.requested, world_size)
            due_steps = interval_steps > 0 and step % interval_steps == 0
            due_time = interval_minutes > 0 and time.monotonic() - self.last_time >= interval_minutes * 60
            if stop or due_steps or due_time:
                control.should_save = True
            if stop:
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.last_time = time.monotonic()
            _barrier(world_size)  # every rank has written its RNG state before rank 0 uploads
            if not is_main:
                return
            step = state.global_step
            local = os.path.join(args.output_dir, f"checkpoint-{step}")
            rel = f"checkpoints/checkpoint-{step}"
            progress.update(phase="checkpointing", step=step)
            sub = fence.attempt.dir_name if fence is not None else ""
            files_rel = f"{rel}/{sub}" if sub else rel
            if fence is not None:
                fence.check(f"checkpoint {step}")
            files = store.upload_dir(files_rel, local)
            marker = {"step": step, "files": files, "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if fence is not None:
                marker.update(dir=sub, attempt=fence.attempt.number)
                fence.check(f"the marker of checkpoint {step}")
            if not store.put_bytes(f"{rel}/{MARKER}", json.dumps(marker, sort_keys=True).encode(),
                                   if_none_match=fence is not None):
                # Another attempt completed this step first: its checkpoint stands, ours is dropped.
                store.delete_dir(files_rel)
                log.warning("checkpoint %d was already completed by another attempt; keeping that one", step)
            self.last_uploaded = RemoteCheckpoint(step, rel)
            if fence is not None:
                fence.check("a pruning pass")
            removed = prune(store, keep)
            log.info("checkpoint %d complete at %s (removed %s)", step, store.uri(rel), removed or "none")
            progress.update(phase="training", lastCheckpoint={"step": step, "uri": store.uri(rel)}, force=True)
            if hooks.get("hold_after_first_checkpoint") and self.started_at_step == 0 and not self.held:
                self.held = True
                _hold_until_sigterm(flag, step)

    return CheckpointSync()


def _hold_until_sigterm(flag: InterruptFlag, step: int, limit_seconds: float = 600.0) -> None:
    """Test hook: a first run waits after its first checkpoint until it is told to stop.

    So a test can suspend, delete or lose the pod while the run is known to be between two
    checkpoints, however fast the machine trains and however slowly the status arrives.
    """
    log.warning("test hook: holding after checkpoint %d until SIGTERM", step)
    deadline = time.monotonic() + limit_seconds
    while not flag.requested and time.monotonic() < deadline:
        time.sleep(0.1)


def _agree(local: bool, world_size: int) -> bool:
    """All ranks stop at the same step (otherwise DDP would wait forever for the one that stopped)."""
    if world_size <= 1:
        return local
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if local else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _raise_test_error(kind: str) -> None:
    import torch

    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (raised by a test hook)")
    raise RuntimeError(f"test hook error ({kind})")
