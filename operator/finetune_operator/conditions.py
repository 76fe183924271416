"""metav1.Condition semantics: lastTransitionTime moves only when the status changes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# Condition types, one per question a user asks of a job.
VALIDATED = "Validated"
INSPECTED = "Inspected"
SCHEDULED = "Scheduled"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"

Condition = dict[str, Any]

# Job states (api.State is the schema's list; these are the names the code uses).
VALIDATING = "Validating"
INSPECTING = "Inspecting"
QUEUED = "Queued"
RUNNING_STATE = "Running"
SUSPENDED_STATE = "Suspended"
SUCCEEDED_STATE = "Succeeded"
FAILED_STATE = "Failed"
STATES = (VALIDATING, INSPECTING, QUEUED, RUNNING_STATE, SUCCEEDED_STATE, FAILED_STATE, SUSPENDED_STATE)
TERMINAL_STATES = (SUCCEEDED_STATE, FAILED_STATE)

# Failure and condition reasons other modules (metrics, the controller) act on.
INVALID_SPEC = "InvalidSpec"
UNSCHEDULABLE = "Unschedulable"
DATA_ERROR = "DataError"
JOB_DELETED = "JobDeleted"
ADAPTER_NOT_REPORTED = "AdapterNotReported"
WAITING_FOR_PREDECESSOR = "WaitingForPredecessor"
VALIDATION_REASONS = (INVALID_SPEC, UNSCHEDULABLE, DATA_ERROR)


def now_rfc3339(now: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp, second precision, as the API server writes them."""
    moment = now or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: datetime | None = None,
) -> list[Condition]:
    """Return a new list with the condition of `type_` set; other types are kept as they were."""
    value = "Unknown" if status is None else ("True" if status else "False")
    result: list[Condition] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime") if cond.get("status") == value else None
        result.append(_make(type_, value, reason, message, generation, transition or now_rfc3339(now)))
    if not found:
        result.append(_make(type_, value, reason, message, generation, now_rfc3339(now)))
    return result


def get_condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    """The condition of `type_`, if present."""
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: list[Condition] | None, type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return bool(cond and cond.get("status") == "True")


def _make(type_: str, status: str, reason: str, message: str, generation: int, transition: str) -> Condition:
    # Messages are bounded so a status update never trips the API server's size limits.
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:2000],
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
