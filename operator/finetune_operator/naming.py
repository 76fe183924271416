"""Deterministic names, labels and owner references of a FineTuneJob's children.

Deterministic names are what make every handler idempotent: a replayed create meets a 409
instead of producing a second object.
"""

from __future__ import annotations

import hashlib
from typing import Any

MANAGED_BY = "finetune-operator"
JOB_LABEL = "finetune.dev/job"
UID_LABEL = "finetune.dev/job-uid"
COMPONENT_LABEL = "app.kubernetes.io/component"
# The spec hash a trainer's configuration was rendered from (on the inspection pod and the training Job).
SPEC_HASH_ANNOTATION = "finetune.dev/spec-hash"

# Job names feed the `batch.kubernetes.io/job-name` label of their pods: 63 characters at most.
_MAX = 63


def _bounded(base: str, suffix: str) -> str:
    name = f"{base}-{suffix}"
    if len(name) <= _MAX:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = _MAX - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-.')}-{digest}-{suffix}"


def training_job(name: str) -> str:
    return _bounded(name, "train")


def inspection_pod(name: str) -> str:
    return _bounded(name, "inspect")


def progress(name: str) -> str:
    return _bounded(name, "progress")


def service_account(name: str) -> str:
    return _bounded(name, "trainer")


def label_value(name: str) -> str:
    """`name` as a valid label value: 63 characters at most, alphanumeric at both ends.

    For humans and selectors only: two long names may share a cut, so the operator finds a
    job's children by owner UID (owner reference or UID_LABEL), never by this value.
    """
    if len(name) <= _MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:_MAX - len(digest) - 1].rstrip('-._')}-{digest}"


def labels(name: str, uid: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels plus the selectors the operator watches by."""
    return {
        "app.kubernetes.io/name": "finetunejob",
        "app.kubernetes.io/instance": label_value(name),
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_LABEL: label_value(name),
        UID_LABEL: uid,
    }


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to the FineTuneJob, so deleting it removes its children."""
    return {
        "apiVersion": body.get("apiVersion", "finetune.dev/v1alpha1"),
        "kind": body.get("kind", "FineTuneJob"),
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the object's controlling owner, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
