"""The reconcile decision, pure: what exists (Observed, typed facts) → what to do and the new status (Plan).

Level-triggered: every call starts from the observed facts (the watch caches' projections),
never from memory of earlier calls, so a restarted operator (or a newly elected leader)
converges to the same result. The new status is the typed `api.FineTuneJobStatus`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

from finetune_operator import api, builders, catalog, gpus, naming, placement, reach
from finetune_operator import conditions as cond
from finetune_operator.arch import Architecture
from finetune_operator.cache import ConditionFacts, JobFacts, PodFacts
from finetune_operator.config import OperatorConfig

TERMINAL = cond.TERMINAL_STATES
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class ParsedSpec:
    """The spec parsed once per generation: the model, or the user-facing errors."""

    spec: api.FineTuneJobSpec | None
    errors: tuple[str, ...] = ()


def parse_spec(raw: Any) -> ParsedSpec:
    errors = api.spec_errors(raw or {})
    if errors:
        return ParsedSpec(None, tuple(errors))
    return ParsedSpec(api.FineTuneJobSpec.model_validate(raw))


@dataclass
class Observed:
    """Everything the decision depends on, as typed facts from the watch caches."""

    body: dict[str, Any]
    inspect_pod: PodFacts | None = None
    job: JobFacts | None = None
    pods: list[PodFacts] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # minimal Node dicts (cache.NodeFacts.as_object)
    node_index: dict[str, dict[str, Any]] = field(default_factory=dict)  # `nodes` by name (built here when empty)
    inventory: gpus.GpuInventory | None = None  # built from `nodes` once per node change (None: built here)
    pods_confirmed: bool = False  # `pods` were read from the API server, not only the (possibly late) cache
    active_jobs: int = 0
    parsed: ParsedSpec | None = None  # None: parsed here
    # Host lookups for the endpoint check; the controller passes the system's (cached), tests their own.
    resolve: reach.Resolver = reach.no_lookup

    def node(self, name: str | None) -> dict[str, Any] | None:
        """One of `nodes` by name: a lookup, not a scan of every node for every running job."""
        if not name:
            return None
        if not self.node_index and self.nodes:
            self.node_index = {n["metadata"]["name"]: n for n in self.nodes}
        return self.node_index.get(name)


@dataclass
class Plan:
    """What the handler does: ensure objects (in order), patch the Job, write the status.

    `prepare` lists objects a later step needs that do not depend on what is still to be
    learnt (the trainer's ServiceAccount, Role, RoleBinding and progress ConfigMap, made while
    the inspection runs): the controller creates them after the status write, at low priority,
    so the step that needs them finds them made instead of creating them on its critical path.
    That step still lists them in `ensure` (a create of an existing object adopts it).
    """

    status: api.FineTuneJobStatus
    ensure: list[dict[str, Any]] = field(default_factory=list)
    prepare: list[dict[str, Any]] = field(default_factory=list)
    confirm_pods: bool = False  # read the Job's pods from the API server, then decide again
    job_suspend: bool | None = None
    delete_job: bool = False
    force_delete_pods: list[tuple[str, str]] = field(default_factory=list)  # (name, uid) stuck on a lost node
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def status_data(self) -> dict[str, Any]:
        """The status as the API stores it (camelCase keys, no nulls)."""
        return status_data(self.status)


def status_data(status: api.FineTuneJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def policy_errors(spec: api.FineTuneJobSpec, config: OperatorConfig,
                  resolve: reach.Resolver = reach.no_lookup) -> list[str]:
    """What the platform's configuration refuses, with the field and what to do."""
    errors = []
    if spec.base_model.trust_remote_code and not config.allow_trust_remote_code:
        errors.append("spec.baseModel.trustRemoteCode: this cluster does not allow running a model's own code; "
                      "use a model supported natively by transformers, or ask the platform team to enable "
                      "allowTrustRemoteCode")
    endpoint = spec.output.endpoint
    if endpoint and endpoint not in config.allowed_endpoints():
        allowed = ", ".join(sorted(config.allowed_endpoints())) or "none (leave it unset for the default)"
        errors.append(f"spec.output.endpoint: {endpoint!r} is not an allowed S3 endpoint (allowed: {allowed})")
    image = spec.trainer_image
    # Empty list: only the operator's own image, the least a platform team has to trust (as with endpoints).
    if image and image != config.trainer_image and image not in config.allowed_trainer_images:
        errors.append(f"spec.trainerImage: {image!r} is not an allowed trainer image (allowed: "
                      f"{', '.join([config.trainer_image, *config.allowed_trainer_images])}); remove the field for the "
                      "operator's default, or ask the platform team to add it to allowedTrainerImages")
    if not endpoint and not config.s3.endpoint and not spec.output.region:
        errors.append("spec.output.region: set the S3 region (or an endpoint): the operator has no default")
    used = ("spec.output.endpoint", endpoint) if endpoint else ("the operator's s3.endpoint", config.s3.endpoint)
    if used[1]:
        unreachable = reach.endpoint_error(used[0], used[1], config.network.allowed_link_local_hosts, resolve)
        if unreachable:
            errors.append(unreachable)
    return errors


def _termination(pod: PodFacts | None) -> tuple[int | None, str, dict[str, Any]]:
    """(exit code, container reason, decoded termination message) of the pod's trainer container."""
    if pod is None or pod.termination is None:
        return None, "", {}
    term = pod.termination
    return term.exit_code, term.reason, dict(term.summary)


def _waiting_reason(pod: PodFacts) -> tuple[str, str]:
    return pod.waiting_reason, pod.waiting_message


def _pod_condition(pod: PodFacts, type_: str) -> ConditionFacts | None:
    return pod.condition(type_)


class _Status:
    """The status being built; records the state transition for the event."""

    def __init__(self, body: dict[str, Any], now: datetime | None) -> None:
        self.old = body.get("status") or {}
        self.data: dict[str, Any] = copy.deepcopy(self.old)
        self.generation = int(body["metadata"].get("generation") or 1)
        self.now = now
        self.data["observedGeneration"] = self.generation

    def condition(self, type_: str, status: bool | None, reason: str, message: str) -> None:
        self.data["conditions"] = cond.set_condition(
            self.data.get("conditions"), type_, status, reason, message, self.generation, self.now)

    def state(self, state: str) -> None:
        self.data["state"] = state
        if state != cond.VALIDATING and not self.data.get("startTime"):
            self.data["startTime"] = cond.now_rfc3339(self.now)

    def fail(self, reason: str, message: str) -> None:
        self.state(cond.FAILED_STATE)
        self.condition(cond.FAILED, True, reason, message)
        self.condition(cond.RUNNING, False, reason, "the job has failed")
        self.data["failure"] = {"reason": reason, "message": message[:4000]}
        self.data["completionTime"] = self.data.get("completionTime") or cond.now_rfc3339(self.now)


def plan(obs: Observed, config: OperatorConfig, now: datetime | None = None) -> Plan:
    """Decide the next step for one FineTuneJob."""
    body = obs.body
    st = _Status(body, now)
    result = Plan(status=api.FineTuneJobStatus())
    old_state = st.old.get("state")
    if old_state in TERMINAL:
        # Finished jobs are left alone; their Job may already be gone through its TTL.
        result.status = api.FineTuneJobStatus.model_validate(st.data)
        return result
    _decide(obs, config, st, result)
    result.status = api.FineTuneJobStatus.model_validate(st.data)
    new_state = st.data.get("state")
    if new_state != old_state:
        failure = st.data.get("failure") or {}
        if new_state == cond.FAILED_STATE:
            result.events.append(("Warning", str(failure.get("reason", "Failed")), str(failure.get("message", ""))))
        else:
            message = _latest_message(st.data)
            result.events.append(("Normal", str(new_state), message))
    return result


def _latest_message(status: dict[str, Any]) -> str:
    conds = sorted(status.get("conditions") or [], key=lambda c: c.get("lastTransitionTime", ""))
    return str(conds[-1]["message"]) if conds else ""


def _decide(obs: Observed, config: OperatorConfig, st: _Status, result: Plan) -> None:
    body = obs.body
    meta = body["metadata"]
    if not st.data.get("state"):
        st.state(cond.VALIDATING)
        st.condition(cond.VALIDATED, None, "Validating", "checking the spec")

    parsed = obs.parsed or parse_spec(body.get("spec"))
    if parsed.spec is None:
        st.condition(cond.VALIDATED, False, cond.INVALID_SPEC, "; ".join(parsed.errors))
        st.fail(cond.INVALID_SPEC, "; ".join(parsed.errors))
        return
    spec = parsed.spec
    # Names are looked up only before the training Job exists: the check guards what is launched,
    # and a running job is not failed as InvalidSpec because a DNS answer changed under it.
    errors = policy_errors(spec, config, obs.resolve if obs.job is None else reach.no_lookup)
    if errors:
        st.condition(cond.VALIDATED, False, cond.INVALID_SPEC, "; ".join(errors))
        st.fail(cond.INVALID_SPEC, "; ".join(errors))
        return
    drift = _spec_drift(obs, body)
    st.condition(cond.VALIDATED, True, "SpecChangeIgnored" if drift else "Valid",
                 drift or "the spec is valid")

    if obs.job is None and st.old.get("attempts") is not None:
        # The Job existed (we counted its pods) and is gone: deleted by hand or by its TTL before we
        # saw it finish. Re-creating it would silently run the training again.
        st.fail(cond.JOB_DELETED, "the training Job was deleted outside the operator; its checkpoints are kept in "
                "S3 — delete and re-create the FineTuneJob to run again")
        return
    if obs.job is None:
        arch = _inspect(obs, spec, config, st, result)
        if arch is None:
            return
        if not _place(obs, spec, arch, config, st, result):
            return
        st.state(cond.QUEUED)
        st.condition(cond.SCHEDULED, None, "JobCreated", "the training Job was created; waiting for a GPU node")
        return
    _follow_job(obs, spec, config, st, result)


def _spec_drift(obs: Observed, body: dict[str, Any]) -> str:
    """A message when the spec changed after the run was configured (the CRD should refuse it)."""
    current = builders.spec_hash(body["spec"])
    for child in (obs.job, obs.inspect_pod):
        recorded = child.spec_hash if child is not None else None
        if recorded and recorded != current:
            return ("the spec changed after the job started and the change is NOT applied; "
                    "delete and re-create the FineTuneJob to change it (only runPolicy.suspend may change)")
    return ""


def _inspect(
    obs: Observed, spec: api.FineTuneJobSpec, config: OperatorConfig, st: _Status, result: Plan
) -> Architecture | None:
    """Run (or read) the CPU-only inspection; the model architecture when it has passed."""
    body = obs.body
    pod = obs.inspect_pod
    if pod is None:
        result.ensure.append(builders.inspection_pod(body, spec, config))
        result.prepare.extend(_trainer_access(body, config))
        st.state("Inspecting")
        st.condition(cond.INSPECTED, None, "Started", "inspecting the model and data on a CPU-only pod")
        return None
    phase = pod.phase or "Pending"
    if phase in ("Pending", "Running", "Unknown"):
        reason, message = _waiting_reason(pod)
        if reason in IMAGE_PULL_REASONS:
            where = "spec.trainerImage" if spec.trainer_image else "the operator's trainerImage"
            st.fail("ImagePullFailed", f"inspection pod cannot pull {builders.trainer_image(spec, config)}: "
                    f"{message or reason}; check {where} and imagePullSecrets")
            return None
        st.state("Inspecting")
        st.condition(cond.INSPECTED, None, "Running", "inspecting the model and data on a CPU-only pod")
        return None
    code, reason, summary = _termination(pod)
    report = summary.get("reportUri", "")
    where = f" (full report: {report})" if report else ""
    if phase == "Failed":
        text = str(summary.get("message") or f"inspection exited with code {code}") + _line_errors(summary)
        if code == builders.EXIT_DATA_ERROR:
            st.condition(cond.INSPECTED, False, "DataError", text + where)
            st.fail("DataError", text + where)
        elif code == builders.EXIT_CONFIG_ERROR:
            st.condition(cond.INSPECTED, False, cond.INVALID_SPEC, text + where)
            st.fail(cond.INVALID_SPEC, text + where)
        elif reason == "OOMKilled":
            msg = (f"the inspection pod exceeded its memory limit ({config.inspection_memory}); "
                   "raise inspectionMemory in the operator configuration")
            st.condition(cond.INSPECTED, False, "OutOfMemory", msg)
            st.fail("OutOfMemory", msg)
        else:
            st.condition(cond.INSPECTED, False, "InspectionFailed", text + where)
            st.fail("InspectionFailed", text + where)
        return None
    data = summary.get("data") or {}
    if data:
        st.data["data"] = _data_status(data, summary.get("lossMasking"))
    arch_info = summary.get("architecture")
    arch: Architecture | None = None
    if isinstance(arch_info, dict) and arch_info:
        arch = Architecture.from_hf_config(arch_info, arch_info.get("module_names"))
    else:
        arch = catalog.lookup(spec.base_model.uri)
    if arch is None:
        msg = "inspection did not report the model architecture and the model is not in the catalog" + where
        st.condition(cond.INSPECTED, False, "InspectionFailed", msg)
        st.fail("InspectionFailed", msg)
        return None
    warnings = data.get("warnings") or []
    st.condition(cond.INSPECTED, True, "Passed",
                 f"model and data checked{where}" + (f"; {len(warnings)} warning(s)" if warnings else ""))
    return arch


def _line_errors(summary: dict[str, Any]) -> str:
    """The first per-line data errors (line numbers and what is wrong, never the data itself)."""
    errors = (summary.get("data") or {}).get("errors") or []
    listed = [f"line {e['line']}: {e['message']}" for e in errors if isinstance(e, dict) and "line" in e]
    return (": " + "; ".join(listed)) if listed else ""


def _data_status(data: dict[str, Any], masking: Any = None) -> dict[str, Any]:
    tokens = data.get("tokens") or {}
    out: dict[str, Any] = {
        "examples": data.get("examples"), "train": data.get("train"), "validation": data.get("validation"),
        "tokensP50": tokens.get("p50"), "tokensP95": tokens.get("p95"), "tokensMax": tokens.get("max"),
    }
    if data.get("truncatedFraction") is not None:
        out["truncatedFraction"] = str(data["truncatedFraction"])
    if data.get("warnings"):
        out["warnings"] = [str(w)[:1024] for w in data["warnings"]][:32]
    if isinstance(masking, dict):  # docs/contract.md: the inspection's lossMasking report
        out["lossMasking"] = str(masking.get("mode"))[:64] if masking.get("mode") else None
        out["chatTemplate"] = str(masking.get("chatTemplate"))[:128] if masking.get("chatTemplate") else None
    return {k: v for k, v in out.items() if v is not None}


def _place(
    obs: Observed, spec: api.FineTuneJobSpec, arch: Architecture, config: OperatorConfig, st: _Status, result: Plan
) -> bool:
    """Decide placement and, when it fits, create the training objects. True when created."""
    gpu_catalog = gpus.BUILTIN_CATALOG.with_entries(config.gpu_catalog)
    inventory = obs.inventory or gpus.inventory_from_nodes(obs.nodes, config.node_pools or None, gpu_catalog)
    decision = placement.plan(
        spec, arch, inventory, headroom_fraction=float(config.vram_headroom),
        allow_trust_remote_code=config.allow_trust_remote_code,
        gpu_prices=config.gpu_prices, operator_tolerations=config.gpu_tolerations, gpu_catalog=gpu_catalog,
    )
    for key, value in decision.status_fields().items():
        st.data[key] = value
    if decision.state == "Invalid":
        st.condition(cond.SCHEDULED, False, "InvalidSpec", decision.message)
        st.fail("InvalidSpec", decision.message)
        return False
    if not decision.fits:
        text = decision.message
        if decision.suggestions:
            text += " Suggestions: " + "; ".join(decision.suggestions)
        if decision.state == "Queued" or spec.run_policy.wait_for_capacity:
            st.state("Queued")
            st.condition(cond.SCHEDULED, False, "WaitingForCapacity", text)
        else:
            st.condition(cond.SCHEDULED, False, "Unschedulable", text)
            st.fail("Unschedulable", text)
        return False
    if config.max_concurrent_jobs and obs.active_jobs >= config.max_concurrent_jobs:
        st.state("Queued")
        st.condition(cond.SCHEDULED, False, "ConcurrencyLimit",
                     f"{obs.active_jobs} jobs are running, the operator's limit is {config.max_concurrent_jobs}")
        return False
    resolved = dict(st.data.get("resolved") or {})
    body = obs.body
    result.ensure.extend([
        *_trainer_access(body, config),
        builders.training_job(body, spec, config, decision.node_affinity, resolved),
    ])
    st.data["jobName"] = naming.training_job(body["metadata"]["name"])
    return True


def _trainer_access(body: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    """The trainer's identity, its one right and the ConfigMap it writes: known before placement."""
    return [
        builders.service_account(body, config),
        builders.role(body),
        builders.role_binding(body),
        builders.progress_configmap(body),
    ]


def _follow_job(obs: Observed, spec: api.FineTuneJobSpec, config: OperatorConfig, st: _Status, result: Plan) -> None:
    """Status from the training Job, its pods and the progress ConfigMap."""
    job = obs.job
    assert job is not None
    desired_suspend = spec.run_policy.suspend
    kueue = bool(spec.resources.kueue_queue)
    if not kueue and job.suspend != desired_suspend:
        result.job_suspend = desired_suspend
    _copy_progress(obs.progress, st)
    pods = sorted(obs.pods, key=lambda p: (p.created, p.name))
    _count_attempts(pods, st)
    _record_disruptions(pods, st)
    # Level-triggered too: every attempt before the current one ended as a failure the Job counted
    # or as a disruption it ignored, even one whose pod came and went between two reconciles.
    ended = int(st.data.get("attempts") or 0) - 1 - job.failed
    if ended > int(st.data.get("disruptions") or 0):
        st.data["disruptions"] = ended
    released = _release_lost_pods(pods, obs.node, config, st, result)
    if job.is_true("Complete") or job.is_true("SuccessCriteriaMet"):
        if not any(p.phase == "Succeeded" for p in pods) and not obs.pods_confirmed:
            # The Job is complete only once a pod has succeeded: a cache without that pod is behind
            # (the Job's and the pods' watch streams are not ordered). Never fail on a late cache.
            result.confirm_pods = True
            return
        _succeeded(pods, st)
        return
    failed = job.condition("Failed") or job.condition("FailureTarget")
    if failed and failed.status == "True":
        _failed(failed, pods, st)
        return
    active = [p for p in pods if p.phase in ("Pending", "Running", None) and not p.deleting and p.name not in released]
    for pod in active:
        reason, message = _waiting_reason(pod)
        if reason in IMAGE_PULL_REASONS:
            image = pod.image
            st.fail("ImagePullFailed", f"cannot pull the trainer image {image}: {message or reason}; "
                    "check the operator's trainerImage and imagePullSecrets")
            result.delete_job = True
            return
    if desired_suspend and not kueue:
        st.state(cond.SUSPENDED_STATE)
        st.condition(cond.SUSPENDED, True, "Suspended",
                     "suspended by runPolicy.suspend; the last checkpoint is kept and the run resumes from it")
        st.condition(cond.RUNNING, False, "Suspended", "suspended")
        return
    if cond.get_condition(st.data.get("conditions"), cond.SUSPENDED):
        st.condition(cond.SUSPENDED, False, "Resumed", "resumed from the last checkpoint")
    running = [p for p in active if p.phase == "Running"]
    if running:
        pod = running[-1]
        node = pod.node
        placement_status = dict(st.data.get("placement") or {})
        placement_status["node"] = node
        product = _node_product(obs.node(node))
        if product:
            placement_status["gpuProduct"] = product
        st.data["placement"] = placement_status
        placed_dtype = placement.dtype_on_node(st.data.get("resolved") or {}, obs.node(node),
                                               gpus.BUILTIN_CATALOG.with_entries(config.gpu_catalog))
        if placed_dtype:
            st.data["resolved"] = {**(st.data.get("resolved") or {}), "computeDtype": placed_dtype}
        st.state(cond.RUNNING_STATE)
        st.condition(cond.SCHEDULED, True, "Scheduled", f"running on node {node}")
        st.condition(cond.RUNNING, True, "Training", _progress_message(st.data.get("progress") or {}))
        return
    if any(p.phase == "Succeeded" for p in pods):
        # The trainer has exited 0; the Job controller marks the Job Complete a moment later.
        st.state(cond.RUNNING_STATE)
        st.condition(cond.RUNNING, True, "Completing", "the trainer finished; waiting for the Job to complete")
        return
    for pod in active:
        sched = _pod_condition(pod, "PodScheduled")
        if sched and sched.status == "False":
            st.state(cond.QUEUED)
            st.condition(cond.SCHEDULED, False, sched.reason or cond.UNSCHEDULABLE,
                         sched.message or "waiting for a GPU node")
            return
    st.state(cond.QUEUED)
    if job.is_true("Suspended"):
        st.condition(cond.SCHEDULED, None, "WaitingForAdmission", "the Job is suspended (waiting for Kueue admission)")
    else:
        st.condition(cond.SCHEDULED, None, "Starting", "waiting for the training pod to start")


def _count_attempts(pods: list[PodFacts], st: _Status) -> None:
    """Attempts = training pods started. Evicted and suspended pods are deleted, so the count
    lives in the status: every pod name not seen before is one more attempt."""
    placement_status = dict(st.data.get("placement") or {})
    attempts = int(st.data.get("attempts") or 0)
    seen = placement_status.get("pod")
    names = [p.name for p in pods]
    if seen in names:
        new = names[names.index(seen) + 1:]
    else:
        new = names
    if new:
        attempts += len(new)
        placement_status["pod"] = new[-1]
        st.data["placement"] = placement_status
    st.data["attempts"] = max(attempts, len(pods))


def _node_product(node: dict[str, Any] | None) -> str | None:
    return (node["metadata"].get("labels") or {}).get("nvidia.com/gpu.product") if node else None


def _progress_message(progress: dict[str, Any]) -> str:
    if progress.get("step") is not None and progress.get("totalSteps"):
        return f"step {progress['step']}/{progress['totalSteps']}"
    return "training"


def decimal_string(value: Any) -> str:
    """A number as the status's decimal-string form: six significant digits, NaN and ±Inf spelled out."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "NaN"
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Inf" if number > 0 else "-Inf"
    return format(number, ".6g")


_PROGRESS_KEYS = ("phase", "step", "totalSteps", "epoch", "trainLoss", "evalLoss", "tokensPerSecond",
                  "etaSeconds", "updatedAt")


def _copy_progress(progress: dict[str, Any], st: _Status) -> None:
    if not progress:
        return
    out = {k: progress[k] for k in _PROGRESS_KEYS if progress.get(k) is not None}
    for key in ("epoch", "trainLoss", "evalLoss", "tokensPerSecond"):
        if key in out:
            out[key] = decimal_string(out[key])
    if out.get("step") is not None and out.get("totalSteps"):
        out["percent"] = max(0, min(100, int(100 * int(out["step"]) / int(out["totalSteps"]))))
    if out:
        st.data["progress"] = out
    if progress.get("baselineEvalLoss") is not None:
        st.data["baselineEvalLoss"] = decimal_string(progress["baselineEvalLoss"])
    ckpt = progress.get("lastCheckpoint")
    if isinstance(ckpt, dict) and ckpt.get("uri"):
        st.data["lastCheckpoint"] = {k: ckpt[k] for k in ("step", "uri", "time") if k in ckpt}


def _record_disruptions(pods: list[PodFacts], st: _Status) -> None:
    """Preemptions and evictions are shown but are not failures: the next pod resumes.

    Pods are in creation order; those up to the last one recorded were counted already.
    """
    names = [p.name for p in pods]
    last = (st.data.get("lastDisruption") or {}).get("pod")
    for pod in pods[names.index(last):] if last in names else pods:
        target = _pod_condition(pod, "DisruptionTarget")
        code, _, summary = _termination(pod)
        if target and target.status == "True":
            _disrupted(st, pod.name, target.reason or "Disrupted", target.message,
                       target.last_transition_time or cond.now_rfc3339(st.now))
        elif code == builders.EXIT_INTERRUPTED:
            _disrupted(st, pod.name, "Interrupted",
                       str(summary.get("message") or "the trainer was stopped (SIGTERM) and saved a checkpoint"),
                       cond.now_rfc3339(st.now))


def _disrupted(st: _Status, pod: str, reason: str, message: str, time: str) -> None:
    """Record one disruption of `pod`; a pod is counted once however often its facts are seen."""
    last = st.data.get("lastDisruption") or {}
    if last.get("pod") != pod:
        st.data["disruptions"] = int(st.data.get("disruptions") or 0) + 1
    elif last.get("reason") == NODE_LOST:
        return  # the taint manager's eviction of a pod we already released says less than ours
    st.data["lastDisruption"] = {"reason": reason, "message": message, "time": time, "pod": pod}


NODE_LOST = "NodeLost"


def _parse_time(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def lost_node_since(node: dict[str, Any] | None) -> datetime | None:
    """When a node stopped being Ready, from the cached projection; None while it is Ready."""
    if node is None:
        return None
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return None
    return _parse_time(str(ready.get("lastTransitionTime") or ""))


def _release_lost_pods(
    pods: list[PodFacts], node: Callable[[str | None], dict[str, Any] | None], config: OperatorConfig, st: _Status,
    result: Plan,
) -> set[str]:
    """Force-delete training pods stuck terminating on a node that has not been Ready for the configured time.

    The taint manager decides when a pod must leave a lost node (its not-ready/unreachable
    tolerations, the job's own included) and marks it DisruptionTarget, which the Job's
    podFailurePolicy ignores; but without a kubelet the pod never finishes terminating, and the
    Job (podReplacementPolicy: Failed) waits for it forever. The replacement resumes from the last
    complete checkpoint; the old trainer, should it still run, is fenced off from the run's S3
    prefix by its attempt identity.
    """
    limit = config.node_lost_force_delete_seconds
    released: set[str] = set()
    if not limit:
        return released
    now = st.now or datetime.now(timezone.utc)
    for pod in pods:
        if pod.phase in ("Succeeded", "Failed") or not pod.node or not pod.deleting:
            continue  # a pod still tolerating the lost node is left to its tolerations
        since = lost_node_since(node(pod.node))
        if since is None:
            continue
        lost_for = (now - since).total_seconds()
        if lost_for < limit:
            continue
        checkpoint = st.data.get("lastCheckpoint") or {}
        resume = (f"from checkpoint step {checkpoint['step']}" if checkpoint.get("step") is not None
                  else "from the start (no checkpoint was complete)")
        message = (f"node {pod.node} has not been Ready for {int(lost_for)}s (since {since:%Y-%m-%dT%H:%M:%SZ}); "
                   f"the training pod {pod.name} was force-deleted so the Job starts a replacement, which resumes "
                   f"{resume}; the old trainer is fenced off from the job's checkpoints and adapter")
        result.force_delete_pods.append((pod.name, pod.uid))  # again on every pass until the pod is gone
        released.add(pod.name)
        last = st.data.get("lastDisruption") or {}
        if last.get("pod") == pod.name and last.get("reason") == NODE_LOST:
            continue
        _disrupted(st, pod.name, NODE_LOST, message, cond.now_rfc3339(st.now))
        result.events.append(("Warning", NODE_LOST, message))
    return released


def _succeeded(pods: list[PodFacts], st: _Status) -> None:
    done = [p for p in pods if p.phase == "Succeeded"]
    _, _, summary = _termination(done[-1] if done else None)
    adapter = summary.get("adapter") or {}
    if not adapter.get("uri"):
        # Exit 0 without the trainer's report is no evidence of an adapter: never claim one.
        st.fail(cond.ADAPTER_NOT_REPORTED, "the training Job completed but the trainer reported no adapter in its "
                "termination message; check the trainer image version (docs/contract.md) and the pod's logs")
        return
    st.data["adapter"] = {k: adapter[k] for k in ("uri", "sizeBytes", "sha256", "manifestUri") if k in adapter}
    for key in ("baselineEvalLoss", "finalEvalLoss"):
        if summary.get(key) is not None:
            st.data[key] = decimal_string(summary[key])
    progress = dict(st.data.get("progress") or {})
    if progress.get("totalSteps"):
        progress.update(step=progress["totalSteps"], percent=100, phase="done", etaSeconds=0)
        st.data["progress"] = progress
    st.state(cond.SUCCEEDED_STATE)
    st.data["completionTime"] = st.data.get("completionTime") or cond.now_rfc3339(st.now)
    st.condition(cond.RUNNING, False, "Completed", "training finished")
    st.condition(cond.SUCCEEDED, True, "AdapterUploaded", f"adapter written to {adapter['uri']}")


def _failed(job_failed: ConditionFacts, pods: list[PodFacts], st: _Status) -> None:
    """Classify a failed Job with an actionable message."""
    failed_pods = [p for p in pods if p.phase == "Failed"]
    last = failed_pods[-1] if failed_pods else None
    code, reason, summary = _termination(last)
    text = str(summary.get("message") or "")
    report = summary.get("reportUri")
    job_reason = job_failed.reason
    estimate = (st.data.get("estimate") or {}).get("total") or "unknown"
    resolved = st.data.get("resolved") or {}
    if job_reason == "DeadlineExceeded":
        st.fail("DeadlineExceeded", "the job ran past runPolicy.activeDeadlineSeconds; the last checkpoint is kept "
                "in S3 — raise the deadline and re-create the job to continue from it")
    elif reason == "OOMKilled":
        st.fail("OutOfMemory", "the training pod exceeded its host memory limit (OOMKilled, not GPU memory); "
                "raise spec.resources.memory — loading and quantizing the base model needs host RAM "
                "roughly the size of its bf16 weights")
    elif code == builders.EXIT_CUDA_OOM:
        micro = resolved.get("microBatchSize")
        st.fail("OutOfMemory", f"CUDA out of memory on the GPU: {text or 'the trainer ran out of GPU memory'}. "
                f"The estimate was {estimate} at micro-batch {micro}; try microBatchSize 1 with a larger "
                "gradientAccumulation, a shorter dataset.maxSeqLength, or a GPU with more memory "
                "(resources.allowedGpuProducts)")
    elif code == builders.EXIT_DATA_ERROR:
        st.fail("DataError", text + _line_errors(summary) + (f" (full report: {report})" if report else ""))
    elif code == builders.EXIT_CONFIG_ERROR:
        st.fail(cond.INVALID_SPEC, text or "the trainer refused its configuration")
    elif job_reason == "BackoffLimitExceeded":
        detail = f" Last attempt: exit code {code}" + (f": {text}" if text else "") if code is not None else ""
        st.fail("BackoffLimitExceeded", f"the trainer failed {len(failed_pods)} time(s), more than "
                f"runPolicy.backoffLimit allows.{detail}")
    else:
        st.fail(job_reason or "Failed", job_failed.message or text or "the training Job failed")
