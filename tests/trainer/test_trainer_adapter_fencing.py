"""The adapter's files against real S3 (SeaweedFS): a replaced trainer cannot overwrite a newer attempt's.

fencing.publish_files writes each file only if absent (If-None-Match on a PUT, or on the completion
of a multipart upload for large files) and deletes a stale one only while it is the object it read
(If-Match). These are the server's conditions, so they are checked here against the real server.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import storage
from finetune_trainer.fencing import Fence, Superseded, claim, publish_files
from finetune_trainer.runstore import S3RunStore


def _store(s3: Any) -> S3RunStore:
    return S3RunStore(s3.boto3_client(), storage.parse_s3_uri(f"s3://runs/jobs/fence-{uuid.uuid4()}/"))


def _adapter(root: Path, weights: bytes, config: str) -> str:
    root.mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(weights)
    (root / "adapter_config.json").write_text(config)
    return str(root)


def test_a_zombie_cannot_overwrite_a_newer_attempts_adapter_in_s3(s3, tmp_path, monkeypatch):
    # Parts of 5 MiB (S3's smallest): the 6 MiB weights take the conditional multipart path.
    monkeypatch.setattr(storage, "PART_BYTES", 5 * 1024 * 1024)
    store = _store(s3)
    old_attempt = claim(store, "old-pod")
    new = Fence(store, claim(store, "new-pod"))
    newer_weights = b"n" * (6 * 1024 * 1024)
    publish_files(store, new, "adapter", _adapter(tmp_path / "new", newer_weights, '{"r": 8}'))

    # The zombie's own conditional writes, its fence check bypassed (it passed just before the claim).
    zombie = Fence(store, old_attempt)
    old_dir = _adapter(tmp_path / "old", b"o" * (6 * 1024 * 1024), '{"r": 4}')
    assert store.put_file_if_absent("adapter/adapter_model.safetensors", old_dir + "/adapter_model.safetensors") is None
    assert store.put_file_if_absent("adapter/adapter_config.json", old_dir + "/adapter_config.json") is None
    # Its publish stops at the first differing file, before deleting anything.
    checks: list[str] = []

    def passed_before_the_claim(what: str) -> None:
        checks.append(what)
        if len(checks) > 1:
            Fence.check(zombie, what)

    zombie.check = passed_before_the_claim  # type: ignore[method-assign]
    with pytest.raises(Superseded, match="not writing a stale adapter file adapter_config.json"):
        publish_files(store, zombie, "adapter", old_dir)
    assert store.read_bytes("adapter/adapter_model.safetensors") == newer_weights
    assert store.read_bytes("adapter/adapter_config.json") == b'{"r": 8}'
    # No multipart upload of the zombie's is left behind, holding its parts.
    uploads = store.client.list_multipart_uploads(Bucket="runs", Prefix=store.prefix.key)
    assert not uploads.get("Uploads")


def test_a_dead_attempts_partial_adapter_is_replaced_only_while_unchanged(s3, tmp_path):
    store = _store(s3)
    claim(store, "died-uploading")
    store.put_bytes("adapter/adapter_model.safetensors", b"half of the")
    sha, etag = store.file_version("adapter/adapter_model.safetensors")  # type: ignore[misc]
    store.put_bytes("adapter/adapter_model.safetensors", b"half of the weights")  # it changed since: keep it
    assert store.delete_file_if_version("adapter/adapter_model.safetensors", etag) is False
    fence = Fence(store, claim(store, "replacement"))
    files = publish_files(store, fence, "adapter", _adapter(tmp_path / "new", b"the weights", '{"r": 8}'))
    assert store.read_bytes("adapter/adapter_model.safetensors") == b"the weights"
    assert files["adapter_model.safetensors"] == store.file_version("adapter/adapter_model.safetensors")[0]  # type: ignore[index]
