"""Attempts of one run, and the fence that keeps a replaced trainer from writing (contract §2).

A trainer pod whose node stopped reporting is force-deleted by the operator and replaced, but
its process may still run (a partitioned node). Each trainer therefore claims an attempt number
in the run prefix before it writes anything: `attempts/<n>.json`, created only if absent
(If-None-Match), so two trainers never hold the same number and a later one always holds a
higher one. The attempt identity is the pod UID the operator passes in FINETUNE_ATTEMPT_ID.

Before every write of a checkpoint, a checkpoint marker, a pruning pass, the baseline and the
adapter, the trainer checks that no higher attempt has been claimed; a replaced trainer stops
with `Superseded` instead of writing. Checkpoint files go to a directory of their attempt
(`checkpoints/checkpoint-<step>/attempt-<n>/`) and the step's `_COMPLETE` marker, which names
that directory, is created only if absent: a stale trainer's files can never mix with or replace
a newer attempt's, whatever the timing.

The adapter keeps its public place (`adapter/`, where the job's status points), so its files
cannot live in an attempt directory; `publish_files` writes each one only if absent, checking
the fence before each: a replaced trainer whose check passed just before it was replaced can no
longer overwrite a newer attempt's file. A differing file already there is an earlier attempt's
(one that died while publishing): the fence is checked again, so a newer attempt's file is never
touched, and it is deleted only while it is still the object that was read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass

from .errors import Interrupted, StorageRetryable
from .runstore import RunStore
from .storage import sha256_path

log = logging.getLogger("finetune_trainer.fencing")

ATTEMPT_ENV = "FINETUNE_ATTEMPT_ID"
ATTEMPTS = "attempts"
_CLAIM_RE = re.compile(r"^(\d+)\.json$")


class Superseded(Interrupted):
    """A newer attempt owns the run: this trainer must not write to it again."""


@dataclass(frozen=True)
class Attempt:
    number: int
    identity: str

    @property
    def dir_name(self) -> str:
        return f"attempt-{self.number}"


def _claimed(store: RunStore) -> dict[int, str]:
    """Claimed attempt numbers → their claim key (relative to the run prefix)."""
    out: dict[int, str] = {}
    for name in store.list_files(ATTEMPTS):
        m = _CLAIM_RE.match(name)
        if m:
            out[int(m.group(1))] = f"{ATTEMPTS}/{name}"
    return out


def claim(store: RunStore, identity: str | None = None, pod: str = "") -> Attempt:
    """Claim the next attempt number; a concurrent claimer of the same number makes us take the next."""
    identity = identity or os.environ.get(ATTEMPT_ENV) or f"local-{uuid.uuid4()}"
    pod = pod or os.environ.get("POD_NAME", "")
    number = max(_claimed(store), default=0) + 1
    while True:
        body = {"attempt": number, "identity": identity, "pod": pod,
                "claimedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if store.put_bytes(f"{ATTEMPTS}/{number:06d}.json", json.dumps(body, sort_keys=True).encode(),
                           if_none_match=True):
            log.info("attempt %d of this run (identity %s)", number, identity)
            return Attempt(number, identity)
        number += 1


class Fence:
    """Refuses writes once a newer attempt has claimed the run."""

    def __init__(self, store: RunStore, attempt: Attempt) -> None:
        self.store = store
        self.attempt = attempt

    def check(self, what: str) -> None:
        newer = [n for n in _claimed(self.store) if n > self.attempt.number]
        if newer:
            raise Superseded(
                f"attempt {max(newer)} of this run has started (this trainer is attempt {self.attempt.number}, "
                f"replaced after its node was lost or its pod deleted); not writing {what}",
                supersededBy=max(newer),
            )


def publish_files(store: RunStore, fence: Fence, rel: str, local_dir: str, *, tries: int = 3) -> dict[str, str]:
    """Upload every file of `local_dir` to `rel/` under the fence, each only if absent; {name: sha256}."""
    names = sorted(os.path.relpath(os.path.join(root, n), local_dir)
                   for root, _dirs, files in os.walk(local_dir) for n in files)
    out: dict[str, str] = {}
    for name in names:
        path, key = os.path.join(local_dir, name), f"{rel}/{name}"
        want = sha256_path(path)
        for _ in range(tries):
            fence.check(f"adapter file {name}")
            if store.put_file_if_absent(key, path) is not None:
                break
            found = store.file_version(key)
            if found is None:
                continue  # deleted since: try again
            if found[0] == want:
                log.info("%s is already there with the same content; kept", store.uri(key))
                break
            # An earlier attempt's file: replaced only while no newer attempt exists.
            fence.check(f"a stale adapter file {name}")
            log.warning("replacing %s, left by an earlier attempt with other content", store.uri(key))
            store.delete_file_if_version(key, found[1])
        else:
            raise StorageRetryable(f"{store.uri(key)} changed {tries} times while this trainer published it; retry")
        out[name] = want
    return out
