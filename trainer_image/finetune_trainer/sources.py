"""Resolve the job's inputs (base model, datasets) to local files: hf://, s3:// or a local path."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, DataError
from .storage import S3Uri, download_prefix, list_keys, not_found, parse_s3_uri

# Everything inspection needs: the config and the tokenizer, never the weights.
META_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab*",
    "merges.txt",
    "*.tiktoken",
    "*.jinja",
    "chat_template.json",
    "added_tokens.json",
)
COMPLETE_MARKER = ".finetune-complete"

log = logging.getLogger("finetune_trainer.sources")


@dataclass
class ResolvedModel:
    path: str
    uri: str
    revision: str | None = None
    content_hash: str | None = None


def _hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _split_hf(uri: str, field_name: str) -> tuple[str, str | None]:
    rest = uri[len("hf://") :]
    rest, _, rev = rest.partition("@")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2:
        raise ConfigError(f"{field_name}: '{uri}' must look like hf://org/name")
    return "/".join(parts), rev or None


def _listing_hash(entries: list[tuple[str, int, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def resolve_model(
    uri: str,
    *,
    s3: Any | None,
    cache_dir: str,
    revision: str | None = None,
    meta_only: bool = False,
) -> ResolvedModel:
    """Make the base model available locally; `meta_only` fetches config and tokenizer only."""
    if uri.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo, rev = _split_hf(uri, "base_model_uri")
        rev = rev or (revision if revision and revision != "main" else None)
        path = snapshot_download(
            repo,
            revision=rev,
            token=_hf_token(),
            allow_patterns=list(META_PATTERNS) if meta_only else None,
            cache_dir=os.path.join(cache_dir, "hf"),
        )
        # snapshot_download returns .../snapshots/<commit sha>.
        return ResolvedModel(path=path, uri=uri, revision=os.path.basename(path.rstrip("/")))
    if uri.startswith("s3://"):
        if s3 is None:
            raise ConfigError("base_model_uri: s3:// needs S3 settings")
        return _resolve_s3_model(uri, s3, cache_dir, meta_only)
    if not os.path.isdir(uri):
        raise ConfigError(f"base_model_uri: '{uri}' is not a directory, an s3:// prefix or an hf:// model")
    entries = []
    for name in sorted(os.listdir(uri)):
        p = os.path.join(uri, name)
        if os.path.isfile(p):
            entries.append((name, os.path.getsize(p), ""))
    return ResolvedModel(path=uri, uri=uri, content_hash=_listing_hash(entries))


def _resolve_s3_model(uri: str, s3: Any, cache_dir: str, meta_only: bool) -> ResolvedModel:
    src = parse_s3_uri(uri if uri.endswith("/") else uri + "/", "base_model_uri")
    objects = [o for o in list_keys(s3, src) if not o["Key"].endswith("/")]
    if not objects:
        raise ConfigError(f"base_model_uri: nothing under {uri}")
    entries = [(o["Key"][len(src.key) :], int(o["Size"]), str(o.get("ETag", ""))) for o in objects]
    content_hash = _listing_hash(entries)
    # Keyed by content: a changed model under the same prefix gets a fresh cache directory.
    dest = os.path.join(cache_dir, "s3", content_hash[:24] + ("-meta" if meta_only else ""))
    marker = os.path.join(dest, COMPLETE_MARKER)
    if os.path.exists(marker):
        log.info("using cached model %s from %s", uri, dest)
        return ResolvedModel(path=dest, uri=uri, content_hash=content_hash)
    os.makedirs(dest, exist_ok=True)
    if meta_only:
        wanted = [e[0] for e in entries if any(fnmatch.fnmatch(os.path.basename(e[0]), p) for p in META_PATTERNS)]
        for rel in wanted:
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            s3.download_file(src.bucket, src.key + rel, os.path.join(dest, rel))
    else:
        download_prefix(s3, src, dest)
    # Written last: a cache directory without it is an interrupted download and is redone.
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"uri": uri, "contentHash": content_hash, "files": len(entries)}, f)
    return ResolvedModel(path=dest, uri=uri, content_hash=content_hash)


def resolve_dataset(uri: str, *, s3: Any | None, work_dir: str, field_name: str = "dataset_uri") -> str:
    """Make a JSONL dataset available locally and return its path."""
    if uri.startswith("s3://"):
        if s3 is None:
            raise ConfigError(f"{field_name}: s3:// needs S3 settings")
        src: S3Uri = parse_s3_uri(uri, field_name)
        dest = os.path.join(work_dir, "data", field_name + ".jsonl")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        from botocore.exceptions import ClientError

        try:
            s3.download_file(src.bucket, src.key, dest)
        except ClientError as e:
            if not_found(e):
                raise DataError(f"{field_name}: {uri} does not exist") from e
            raise
        return dest
    if uri.startswith("hf://datasets/"):
        from huggingface_hub import hf_hub_download, snapshot_download

        rest = uri[len("hf://datasets/") :]
        rest, _, rev = rest.partition("@")
        parts = [p for p in rest.split("/") if p]
        if len(parts) < 2:
            raise ConfigError(f"{field_name}: '{uri}' must look like hf://datasets/org/name[/file.jsonl]")
        repo = "/".join(parts[:2])
        if len(parts) > 2:
            return str(hf_hub_download(repo, "/".join(parts[2:]), repo_type="dataset", revision=rev or None, token=_hf_token()))
        path = str(snapshot_download(repo, repo_type="dataset", revision=rev or None, token=_hf_token(), allow_patterns=["*.jsonl"]))
        files = sorted(
            os.path.relpath(os.path.join(r, n), path) for r, _, ns in os.walk(path) for n in ns if n.endswith(".jsonl")
        )
        train = [f for f in files if "train" in os.path.basename(f)] or files
        if len(train) != 1:
            raise ConfigError(f"{field_name}: {uri} holds {len(files)} JSONL files; name one: {uri}/<file.jsonl>")
        return os.path.join(path, train[0])
    if uri.startswith("hf://"):
        raise ConfigError(f"{field_name}: '{uri}': datasets on the Hub are written hf://datasets/org/name")
    if not os.path.isfile(uri):
        raise DataError(f"{field_name}: file '{uri}' does not exist")
    return uri
