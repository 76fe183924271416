"""Exit codes, error classes and the termination message (contract §3).

Every way out of the trainer goes through `classify` so that the Job's podFailurePolicy sees
the right code: data and configuration errors fail the job at once, out-of-memory fails it
with the failing batch shape in the message, SIGTERM is "interrupted" (never 0), S3 trouble is
retryable and anything else counts against backoffLimit.
"""

from __future__ import annotations

import json
import os
from enum import IntEnum
from typing import Any

TERMINATION_LOG_DEFAULT = "/dev/termination-log"
TERMINATION_LIMIT = 4096


class ExitCode(IntEnum):
    SUCCEEDED = 0
    OTHER = 1
    DATA_ERROR = 10
    CONFIG_ERROR = 11
    CUDA_OUT_OF_MEMORY = 12
    INTERRUPTED = 13
    STORAGE_RETRYABLE = 14


CLASS_NAMES = {
    ExitCode.SUCCEEDED: "Succeeded",
    ExitCode.OTHER: "Other",
    ExitCode.DATA_ERROR: "DataError",
    ExitCode.CONFIG_ERROR: "ConfigError",
    ExitCode.CUDA_OUT_OF_MEMORY: "CudaOutOfMemory",
    ExitCode.INTERRUPTED: "Interrupted",
    ExitCode.STORAGE_RETRYABLE: "StorageRetryable",
}


class TrainerError(Exception):
    """An error with a known exit code; `details` go into the termination message."""

    code: ExitCode = ExitCode.OTHER

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class DataError(TrainerError):
    code = ExitCode.DATA_ERROR


class ConfigError(TrainerError):
    code = ExitCode.CONFIG_ERROR


class OutOfMemory(TrainerError):
    code = ExitCode.CUDA_OUT_OF_MEMORY


class Interrupted(TrainerError):
    code = ExitCode.INTERRUPTED


class StorageRetryable(TrainerError):
    code = ExitCode.STORAGE_RETRYABLE


# botocore error codes that mean "try again later" rather than "you asked for something wrong".
_RETRYABLE_S3_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    "503",
    "500",
}


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:  # validate-data without torch installed
        return False
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


def classify(exc: BaseException, context: dict[str, Any] | None = None) -> TrainerError:
    """Map any exception to a TrainerError with the right exit code."""
    if isinstance(exc, TrainerError):
        return exc
    context = context or {}
    if _is_oom(exc):
        shape = ", ".join(f"{k}={v}" for k, v in context.items() if v is not None)
        return OutOfMemory(
            f"CUDA out of memory at {shape}; lower per_device_train_batch_size or max_length, "
            "or raise gradient_accumulation_steps",
            **context,
        )
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted")
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectionError as BotoConnectionError,
            EndpointConnectionError,
            HTTPClientError,
            ReadTimeoutError,
        )
    except ImportError:
        pass
    else:
        # HTTPClientError: a connection closed mid-request (ConnectionClosedError), as when the store stops
        if isinstance(exc, (EndpointConnectionError, BotoConnectionError, ReadTimeoutError, HTTPClientError)):
            return StorageRetryable(f"S3 unreachable: {type(exc).__name__}")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _RETRYABLE_S3_CODES or status in _RETRYABLE_S3_CODES:
                return StorageRetryable(f"S3 error {code or status}, retry later")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"):
                return ConfigError(f"S3 error {code}: check the bucket, s3_endpoint and credentials")
    return TrainerError(f"unexpected error: {type(exc).__name__}: {str(exc)[:500]}")


def in_pod() -> bool:
    """A Kubernetes container: the service environment is set and the kubelet mounted the termination log."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.isfile(TERMINATION_LOG_DEFAULT)


def termination_path() -> str | None:
    """The termination log; per-rank files under the multi-GPU launcher; None for ranks > 0 otherwise.

    /dev/termination-log only inside a pod: elsewhere (a laptop, a CI job running as root) the
    trainer must not create files under /dev; $FINETUNE_TERMINATION_LOG names one explicitly.
    """
    rank = os.environ.get("RANK")
    rank_dir = os.environ.get("FINETUNE_RANK_TERMINATION_DIR")
    if rank is not None and rank_dir:
        return os.path.join(rank_dir, f"rank-{rank}.json")
    if rank not in (None, "0"):
        return None  # plain torchrun: rank 0 speaks for the job
    explicit = os.environ.get("FINETUNE_TERMINATION_LOG")
    if explicit:
        return explicit
    return TERMINATION_LOG_DEFAULT if in_pod() else None


def write_termination_text(text: str) -> None:
    path = termination_path()
    if path is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass  # laptop runs have no /dev/termination-log


def fit_message(payload: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """Serialise `payload`, dropping optional fields and shortening text until it fits `limit` bytes."""
    payload = dict(payload)
    text = json.dumps(payload, separators=(",", ":"))
    # Least important first; class and message always stay.
    for key in ("details", "data", "architecture", "warnings"):
        if len(text.encode()) <= limit:
            break
        if key == "architecture" and isinstance(payload.get(key), dict) and "module_names" in payload[key]:
            payload[key] = {k: v for k, v in payload[key].items() if k != "module_names"}
            text = json.dumps(payload, separators=(",", ":"))
            if len(text.encode()) <= limit:
                break
        payload.pop(key, None)
        text = json.dumps(payload, separators=(",", ":"))
    while len(text.encode()) > limit and len(payload.get("message", "")) > 20:
        payload["message"] = payload["message"][: len(payload["message"]) // 2] + "…"
        text = json.dumps(payload, separators=(",", ":"))
    return text


def write_termination(code: ExitCode, message: str, **extra: Any) -> None:
    """Write the ≤4 KiB termination message; failures to write are ignored (laptop runs)."""
    payload: dict[str, Any] = {"class": CLASS_NAMES[code], "exitCode": int(code), "message": message}
    payload.update({k: v for k, v in extra.items() if v is not None})
    write_termination_text(fit_message(payload))
