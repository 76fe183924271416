"""S3 access: one client built from the job's settings, verified uploads, parallel prefix downloads.

Credentials come from the environment only (static keys or the platform's workload identity),
never from the configuration file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, StorageRetryable


@dataclass(frozen=True)
class S3Settings:
    endpoint: str = ""
    region: str = ""
    path_style: bool = False
    ca_bundle: str = ""
    # boto3 retries and timeouts (the operator's s3Retries); max_attempts 0: AWS_MAX_ATTEMPTS or 5
    retry_mode: str = "standard"
    max_attempts: int = 0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Uri:
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Uri(self.bucket, base + name)


def parse_s3_uri(uri: str, field_name: str = "uri") -> S3Uri:
    if not uri.startswith("s3://"):
        raise ConfigError(f"{field_name}: '{uri}' is not an s3:// URI")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{field_name}: '{uri}' has no bucket; write s3://bucket/key")
    return S3Uri(bucket, key)


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for AWS or an S3-compatible server."""
    import boto3
    from botocore.config import Config

    # The operator's configured attempts win; without them AWS_MAX_ATTEMPTS in the environment does
    # (botocore reads it when the config leaves it unset), else 5.
    retries: dict[str, Any] = {"mode": settings.retry_mode}
    if settings.max_attempts > 0:
        # total_max_attempts counts the first attempt (botocore's max_attempts counts only retries)
        retries["total_max_attempts"] = settings.max_attempts
    elif "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["max_attempts"] = 5
    config = Config(
        s3={"addressing_style": "path" if settings.path_style else "auto"},
        retries=retries,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        # boto3 >= 1.36 sends CRC checksums by default; several S3-compatible servers reject them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
    )
    kwargs: dict[str, Any] = {"config": config}
    if settings.endpoint:
        kwargs["endpoint_url"] = settings.endpoint
    if settings.region:
        kwargs["region_name"] = settings.region
    if settings.ca_bundle:
        kwargs["verify"] = settings.ca_bundle
    return boto3.client("s3", **kwargs)


def sha256_path(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_keys(client: Any, uri: S3Uri) -> Iterator[dict[str, Any]]:
    """Every object under a prefix (paginated)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.key):
        yield from page.get("Contents", [])


def list_prefixes(client: Any, uri: S3Uri) -> list[str]:
    """Immediate 'directories' under a prefix ending in '/'."""
    out: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.key, Delimiter="/"):
        out.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
    return out


def not_found(e: Any) -> bool:
    """Whether a botocore ClientError says the key is absent.

    GET says NoSuchKey, HEAD (no body) a bare 404, some servers NotFound; a missing bucket
    (NoSuchBucket) is not "key absent" but a configuration error, and stays one.
    """
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _precondition_failed(e: Any) -> bool:
    return e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412")


def exists(client: Any, uri: S3Uri) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=uri.bucket, Key=uri.key)
        return True
    except ClientError as e:
        if not_found(e):
            return False
        raise


def read_bytes(client: Any, uri: S3Uri) -> bytes:
    data: bytes = client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
    return data


def put_bytes(client: Any, uri: S3Uri, data: bytes, *, if_none_match: bool = False, content_type: str = "") -> bool:
    """Upload bytes with a SHA-256 the server checks; with `if_none_match`, False when the key exists."""
    from botocore.exceptions import ClientError

    kwargs: dict[str, Any] = {
        "Bucket": uri.bucket,
        "Key": uri.key,
        "Body": data,
        "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
    }
    if content_type:
        kwargs["ContentType"] = content_type
    if if_none_match:
        kwargs["IfNoneMatch"] = "*"
    try:
        client.put_object(**kwargs)
    except ClientError as e:
        if if_none_match and _precondition_failed(e):
            return False
        raise
    return True


PART_BYTES = 64 * 1024 * 1024  # single PUT up to this size; larger files go up in parts of it


def _multipart_if_none_match(client: Any, path: str, uri: S3Uri) -> bool:
    """A multipart upload completed only if the key is absent (If-None-Match on the completion)."""
    from botocore.exceptions import ClientError

    upload = client.create_multipart_upload(Bucket=uri.bucket, Key=uri.key)["UploadId"]
    try:
        parts = []
        with open(path, "rb") as f:
            for number, chunk in enumerate(iter(lambda: f.read(PART_BYTES), b""), start=1):
                etag = client.upload_part(Bucket=uri.bucket, Key=uri.key, UploadId=upload, PartNumber=number,
                                          Body=chunk)["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(Bucket=uri.bucket, Key=uri.key, UploadId=upload,
                                         MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        return True
    except ClientError as e:
        if _precondition_failed(e):
            return False
        raise
    finally:
        with contextlib.suppress(Exception):  # nothing to abort once completed; a failed abort only leaves parts
            client.abort_multipart_upload(Bucket=uri.bucket, Key=uri.key, UploadId=upload)


def object_sha256(client: Any, uri: S3Uri) -> tuple[str, str] | None:
    """(SHA-256 of the object's content, its ETag), read from the object; None when there is none."""
    from botocore.exceptions import ClientError

    try:
        response = client.get_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as e:
        if not_found(e):
            return None
        raise
    h = hashlib.sha256()
    for chunk in iter(lambda: response["Body"].read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest(), str(response["ETag"])


def delete_if_match(client: Any, uri: S3Uri, etag: str) -> bool:
    """Delete the object only while it is still the one with this ETag; False when it is not (or is gone)."""
    from botocore.exceptions import ClientError

    try:
        client.delete_object(Bucket=uri.bucket, Key=uri.key, IfMatch=etag)
    except ClientError as e:
        if _precondition_failed(e) or not_found(e):
            return False
        raise
    return True


def upload_file_verified(client: Any, path: str, uri: S3Uri, *, if_none_match: bool = False) -> str | None:
    """Upload one file and read it back to compare SHA-256; returns the hex digest.

    With `if_none_match` the file is written only if the key is absent (single PUT or the
    completion of a multipart upload), and None says it was there already.
    """
    digest = sha256_path(path)
    size = os.path.getsize(path)
    if size <= PART_BYTES:
        with open(path, "rb") as f:
            if not put_bytes(client, uri, f.read(), if_none_match=if_none_match):
                return None
    elif if_none_match:
        if not _multipart_if_none_match(client, path, uri):
            return None
    else:
        client.upload_file(path, uri.bucket, uri.key)
    # Re-reading is the check that works the same on every S3-compatible server, multipart included.
    h = hashlib.sha256()
    body = client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    if h.hexdigest() != digest:
        raise StorageRetryable(f"upload of {uri} does not match the local file (sha256 differs); retry")
    return digest


def upload_dir(client: Any, local_dir: str, uri: S3Uri, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Upload every file of a directory tree in parallel; returns {relative path: sha256}."""
    files: list[str] = []
    for root, _dirs, names in os.walk(local_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), local_dir)
            if rel not in skip:
                files.append(rel)
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(
            pool.map(lambda rel: upload_file_verified(client, os.path.join(local_dir, rel), uri.child(rel)), files)
        )
    out: dict[str, str] = {}
    for rel, digest in zip(files, digests, strict=True):
        assert digest is not None  # only if_none_match uploads report an existing key
        out[rel] = digest
    return out


def download_prefix(client: Any, uri: S3Uri, local_dir: str, *, workers: int = 8) -> list[str]:
    """Download every object under a prefix into local_dir in parallel; returns relative paths."""
    prefix = uri.key if not uri.key or uri.key.endswith("/") else uri.key + "/"
    objects = [o for o in list_keys(client, S3Uri(uri.bucket, prefix)) if not o["Key"].endswith("/")]

    def fetch(obj: dict[str, Any]) -> str:
        rel: str = obj["Key"][len(prefix) :]
        dest = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        tmp = dest + ".part"
        client.download_file(uri.bucket, obj["Key"], tmp)
        os.replace(tmp, dest)
        return rel

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fetch, objects))


def delete_prefix(client: Any, uri: S3Uri) -> None:
    keys = [{"Key": o["Key"]} for o in list_keys(client, uri)]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=uri.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
