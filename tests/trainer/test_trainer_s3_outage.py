"""The trainer's S3 writes against a real SeaweedFS (4.48): the conditional manifest write under
concurrent writers, and an object store that goes down and comes back."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from localcluster.s3 import SeaweedS3

from finetune_trainer import storage
from finetune_trainer.errors import ExitCode, StorageRetryable, classify
from finetune_trainer.storage import S3Settings, S3Uri

WRITERS = 12


def _credentials(monkeypatch: pytest.MonkeyPatch, server: SeaweedS3) -> None:
    """The trainer's client reads its keys from the environment, as in the pod."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, server.env[key])


def test_if_none_match_lets_exactly_one_of_concurrent_writers_create_the_manifest(
        s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    _credentials(monkeypatch, s3)
    client = storage.make_client(S3Settings(s3.endpoint, "us-east-1", True))
    uri = S3Uri("runs", "if-none-match/manifest.json")
    start = threading.Barrier(WRITERS)
    won: list[int] = []
    failed: list[BaseException] = []

    def write(i: int) -> None:
        start.wait()
        try:
            if storage.put_bytes(client, uri, f'{{"writer": {i}}}'.encode(), if_none_match=True):
                won.append(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            failed.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failed, failed
    assert len(won) == 1, f"{len(won)} writers were told they created the manifest: {won}"
    assert storage.read_bytes(client, uri) == f'{{"writer": {won[0]}}}'.encode()
    # and a later writer is refused, not silently overwriting
    assert storage.put_bytes(client, uri, b'{"writer": "late"}', if_none_match=True) is False


def test_retry_settings_reach_the_client_and_an_outage_is_a_retryable_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = SeaweedS3(tmp_path / "s3", buckets=["runs"])
    server.start()
    _credentials(monkeypatch, server)
    try:
        settings = S3Settings(server.endpoint, "us-east-1", True, retry_mode="standard", max_attempts=2,
                              connect_timeout=2.0, read_timeout=5.0)
        client = storage.make_client(settings)
        assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
        assert client.meta.config.connect_timeout == 2.0 and client.meta.config.read_timeout == 5.0
        uri = S3Uri("runs", "outage/adapter.bin")
        assert storage.put_bytes(client, uri, b"before")
        server.stop()
        try:
            storage.put_bytes(client, uri, b"during")
        except Exception as e:  # noqa: BLE001 - classified below, as the trainer's main does
            err = classify(e)
        else:
            raise AssertionError("a write to a stopped S3 server succeeded")
        assert isinstance(err, StorageRetryable) and err.code == ExitCode.STORAGE_RETRYABLE
        assert err.message.startswith("S3 unreachable"), err.message
        server.start()
        assert storage.put_bytes(client, uri, b"after")
        assert storage.read_bytes(client, uri) == b"after"
    finally:
        server.stop()


class StopOnUpload:
    """A TCP proxy in front of SeaweedFS: on the first request whose line names ``trigger`` it drops
    that request and stops SeaweedFS; once the trainer has been refused ``refusals`` times it starts
    SeaweedFS again (same port, same data). The outage is tied to the upload, not to a clock."""

    def __init__(self, server: SeaweedS3, triggers: list[bytes], refusals: int = 2) -> None:
        import socket

        self.server = server
        self.triggers = list(triggers)
        self.refusals = refusals
        self.refused = 0
        self.outages: list[str] = []
        self.down = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        import socket

        try:
            if self.down.is_set():
                raise ConnectionRefusedError
            up = socket.create_connection(("127.0.0.1", self.server.port), timeout=30)
        except OSError:
            self._refuse(conn)
            return

        def back() -> None:
            try:
                while chunk := up.recv(1 << 16):
                    conn.sendall(chunk)
            except OSError:
                pass
            finally:
                conn.close()

        threading.Thread(target=back, daemon=True).start()
        try:
            while chunk := conn.recv(1 << 16):
                hit = next((t for t in self.triggers if t in chunk), None)
                if hit is not None:
                    with self.lock:
                        fire = hit in self.triggers
                        if fire:
                            # marked down before the stop begins, so nobody (the test included)
                            # takes a server that is shutting down for one that is up
                            self.triggers.remove(hit)
                            self.down.set()
                            self.outages.append(hit.decode())
                            self.server.stop()
                    if fire:
                        break
                up.sendall(chunk)
        except OSError:
            pass
        finally:
            up.close()
            conn.close()

    def _refuse(self, conn: Any) -> None:
        conn.close()
        with self.lock:  # one stop or start at a time; a second refusal waits for the start
            self.refused += 1
            if self.down.is_set() and self.refused >= self.refusals:
                self._start_locked()

    def restore(self) -> None:
        """SeaweedFS up again, whether or not the trainer was refused enough times to restart it
        (a trainer that gave up at once never was)."""
        with self.lock:
            if self.down.is_set():
                self._start_locked()

    def _start_locked(self) -> None:
        self.server.start()
        self.refused = 0
        self.down.clear()

    def close(self) -> None:
        self.listener.close()


def _manifest_points_at_a_complete_adapter(server: SeaweedS3, prefix: str) -> bool:
    """No manifest yet, or one whose every listed file is in S3 with the digest it records."""
    import json as _json

    client = server.boto3_client()
    key = prefix + "adapter/manifest.json"
    if not client.list_objects_v2(Bucket="runs", Prefix=key).get("KeyCount"):
        return True
    manifest = _json.loads(client.get_object(Bucket="runs", Key=key)["Body"].read())
    for rel, digest in manifest["files"].items():
        body = client.get_object(Bucket="runs", Key=prefix + "adapter/" + rel)["Body"].read()
        if hashlib.sha256(body).hexdigest() != digest:
            return False
    return bool(manifest["files"])


def test_s3_stopped_during_checkpoint_and_adapter_uploads_then_back(harness, tiny_model: str, tmp_path: Path) -> None:
    import json as _json

    from finetune_trainer.testing import prompt_completion_records

    server = SeaweedS3(tmp_path / "s3", buckets=["runs"])
    server.start()
    proxy = StopOnUpload(server, [])
    try:
        data = tmp_path / "d.jsonl"
        data.write_text("".join(_json.dumps(r) + "\n" for r in prompt_completion_records(24)))
        config, cfg = harness.config("outage", base_model_uri=tiny_model, dataset_uri=str(data), s3_endpoint=proxy.endpoint,
                                     max_steps=4, checkpoint_interval_steps=2, s3_max_attempts=10,
                                     s3_connect_timeout_seconds=2, s3_read_timeout_seconds=10)
        # the first PUT of the step-2 checkpoint and the first PUT of the adapter stop SeaweedFS
        run = f"PUT /runs/{harness.prefix(cfg)}"
        proxy.triggers = [f"{run}checkpoints/checkpoint-2/".encode(), f"{run}adapter/".encode()]
        # the trainer rides out each outage with its retries, or exits 14 (StorageRetryable) and the
        # Job runs it again from its last complete checkpoint, as backoffLimit allows
        codes = []
        for _ in range(3):
            out = harness.run("outage", "--config", config, timeout=900, AWS_ENDPOINT_URL_S3=proxy.endpoint)
            assert "Traceback" not in out.stderr, out.stderr[-5000:]
            codes.append(out.returncode)
            if out.returncode == 0:
                break
            assert out.returncode == 14, out.stderr[-5000:]
            term = harness.termination("outage")
            assert term["class"] == "StorageRetryable" and term["message"].startswith("S3 unreachable"), term
            proxy.restore()
            assert _manifest_points_at_a_complete_adapter(server, harness.prefix(cfg))
        assert codes[-1] == 0, codes
        assert [o.removeprefix(run) for o in proxy.outages] == ["checkpoints/checkpoint-2/", "adapter/"], proxy.outages
        prefix = harness.prefix(cfg)
        client = server.boto3_client()
        keys = sorted(o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix)
                      for o in p.get("Contents", []))
        assert prefix + "adapter/manifest.json" in keys and _manifest_points_at_a_complete_adapter(server, prefix)
        # checkpoints count only with their marker: the newest complete one has every file beside it
        marked = [k for k in keys if k.startswith(prefix + "checkpoints/") and k.endswith("/_COMPLETE")]
        assert marked, keys
        for marker in marked:
            # the marker names the directory of the attempt that wrote the checkpoint (fencing)
            files_dir = marker.removesuffix("_COMPLETE") + _json.loads(
                client.get_object(Bucket="runs", Key=marker)["Body"].read()).get("dir", "").rstrip("/")
            assert files_dir.rstrip("/") + "/adapter_model.safetensors" in keys, (marker, keys)
    finally:
        proxy.close()
        server.stop()
