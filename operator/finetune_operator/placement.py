"""Fit decisions: which GPU products can run a job, with what micro-batch and dtype, cheapest first.

Pure: the operator and ``estimate`` both call ``plan`` with a validated spec, an architecture and
an inventory, so they always reach the same verdict. When nothing fits, the headline names the
constraint that binds (GPU count, minGpuMemory, dtype, taints, driver, memory) and the suggestions
come from re-running the estimate with concrete changes, never from canned text.

Order of eligible products: by hourly price when the operator configuration has prices
(``gpuPrices``), else smallest usable memory first. The Job gets a required node affinity that
admits every eligible product (it never waits for one GPU it could do without) and a preferred
affinity whose weights follow that order, so the scheduler takes the cheapest free one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from . import api, catalog
from .arch import Architecture
from .estimate import ComputeDtypeName, Estimate, TrainingShape, estimate, gib, with_changes
from .arch import EXPERT_PARAMETERS
from .gpus import BUILTIN_CATALOG, MIN_DRIVER_MAJOR, GpuCatalog, GpuInventory, GpuNode, GpuProduct

DecisionState = Literal["Ready", "Queued", "Unschedulable", "Invalid"]
MAX_MICRO_BATCH = 1024
_MIN_SEQ = 128


@dataclass(frozen=True)
class ProductFit:
    """The verdict for one GPU product."""

    product: str
    memory_mib: int
    compute_capability: str
    compute_dtype: Literal["bf16", "fp16"]
    fits: bool
    hourly_price: Decimal | None
    usable_bytes: int
    estimate_bytes: int
    gpus_per_node: int
    nodes: int
    from_pool: bool
    why_not: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "memoryMiB": self.memory_mib,
            "computeCapability": self.compute_capability,
            "computeDtype": self.compute_dtype,
            "fits": self.fits,
            "hourlyPrice": None if self.hourly_price is None else str(self.hourly_price),
            "estimateBytes": self.estimate_bytes,
            "estimate": gib(self.estimate_bytes),
            "usableBytes": self.usable_bytes,
            "usable": gib(self.usable_bytes),
            "gpusPerNode": self.gpus_per_node,
            "nodes": self.nodes,
            "fromPool": self.from_pool,
            "whyNot": self.why_not,
        }


@dataclass(frozen=True)
class PlacementDecision:
    """What the operator does with a job, and the values it resolved."""

    state: DecisionState
    reason: str
    message: str
    suggestions: list[str] = field(default_factory=list)
    estimate: Estimate | None = None
    eligible_products: list[str] = field(default_factory=list)
    node_affinity: dict[str, Any] | None = None
    compute_dtype: Literal["bf16", "fp16", "fp32", "auto"] = "bf16"
    """bf16/fp16 when every eligible GPU agrees; auto: decided per GPU when the pod lands (see dtype_on_node)."""
    gpus: int = 1
    micro_batch_size: int = 1
    gradient_accumulation: int = 1
    lora_alpha: int = 0
    target_modules: list[str] = field(default_factory=list)
    quantization: Literal["nf4", "fp4", "int8", "none"] = "nf4"
    products: list[ProductFit] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Placement caveats for status.placement.warnings (e.g. nodes without a driver label)."""

    @property
    def fits(self) -> bool:
        return self.state == "Ready"

    @property
    def target_parameters(self) -> list[str]:
        """The fused expert parameters among the targets (PEFT target_parameters)."""
        return [t for t in self.target_modules if t in EXPERT_PARAMETERS]

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step across all GPUs (each GPU runs its own micro-batches)."""
        return self.micro_batch_size * self.gradient_accumulation * max(self.gpus, 1)

    def status_fields(self) -> dict[str, Any]:
        """camelCase ``status`` fragments (resolved, estimate, placement) to merge into status."""
        out: dict[str, Any] = {}
        if self.state != "Invalid":
            out["resolved"] = {
                "loraAlpha": self.lora_alpha,
                "targetModules": list(self.target_modules),
                "quantization": self.quantization,
                "computeDtype": self.compute_dtype,
                "microBatchSize": self.micro_batch_size,
                "gradientAccumulation": self.gradient_accumulation,
                "effectiveBatchSize": self.effective_batch_size,
            }
            if self.target_parameters:
                out["resolved"]["targetParameters"] = self.target_parameters
        if self.estimate is not None:
            out["estimate"] = self.estimate.to_status()
        out["placement"] = {"eligibleProducts": list(self.eligible_products)}
        if self.warnings:
            out["placement"]["warnings"] = list(self.warnings)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, for the ``estimate`` command's JSON."""
        return {
            "state": self.state,
            "fits": self.fits,
            "reason": self.reason,
            "message": self.message,
            "suggestions": self.suggestions,
            **self.status_fields(),
            "nodeAffinity": self.node_affinity,
            "products": [p.to_dict() for p in self.products],
        }


def _invalid(reason: str, message: str) -> PlacementDecision:
    return PlacementDecision(state="Invalid", reason=reason, message=message)


def resolve_target_modules(spec: api.FineTuneJobSpec, arch: Architecture) -> tuple[list[str] | None, str | None]:
    """The concrete module list ([auto] per catalog.AUTO_TARGETS), or an error naming the valid names."""
    requested = spec.lora.target_modules
    valid = ", ".join(arch.target_names())
    kind = arch.architectures[0] if arch.architectures else arch.model_type
    if requested == ["auto"]:
        default = catalog.default_target_modules(arch)
        if default is None:
            return None, (
                f"spec.lora.targetModules: there is no [auto] choice for model type {arch.model_type!r}; "
                f"list the modules to adapt (valid: {valid}) or use [all-linear]"
            )
        return list(default), None
    if requested == ["all-linear"]:
        return arch.all_linear(), None
    unknown = [m for m in requested if m not in arch.target_names()]
    if unknown and (arch.module_names_known or any(m in EXPERT_PARAMETERS for m in unknown)):
        hint = ""
        if not arch.is_moe and any("expert" in m for m in unknown):
            hint = "; this is a dense model, it has no experts"
        elif arch.is_moe and {"gate", "router"} & set(unknown):
            hint = ("; the router (mlp.gate) is a bare parameter in transformers 5.24, not a Linear layer, and is "
                    "not adapted (it would shift the experts' load balance)")
        return None, f"spec.lora.targetModules: {', '.join(map(repr, unknown))} is not a module of {kind} (valid: {valid}){hint}"
    experts = [m for m in requested if m in EXPERT_PARAMETERS]
    if experts and Decimal(spec.lora.dropout) > 0:
        return None, (
            f"spec.lora.dropout: LoRA on the experts ({', '.join(experts)}) goes through PEFT's target_parameters, "
            "which does not support dropout; set lora.dropout: \"0\""
        )
    if experts and spec.lora.use_dora:
        return None, f"spec.lora.useDora: DoRA does not work on fused expert parameters ({', '.join(experts)}); set useDora: false"
    return list(requested), None


def dtype_for_capability(capability: tuple[int, int] | None, requested: str) -> Literal["bf16", "fp16"]:
    """The compute dtype on a GPU: the spec's when pinned, else bf16 on compute capability ≥ 8.0 and fp16 below."""
    if requested == "bf16":
        return "bf16"
    if requested == "fp16":
        return "fp16"
    return "bf16" if capability is not None and capability >= (8, 0) else "fp16"


def _dtype_for(product: GpuProduct, requested: str) -> tuple[Literal["bf16", "fp16"], str | None]:
    dtype = dtype_for_capability(product.compute_capability, requested)
    if requested == "bf16" and not product.supports_bf16:
        return "bf16", f"bf16 needs compute capability ≥ 8.0 ({product.product} has {product.capability()})"
    return dtype, None


def dtype_on_node(
    resolved: Mapping[str, Any], node: Mapping[str, Any] | None, gpu_catalog: GpuCatalog = BUILTIN_CATALOG
) -> str | None:
    """The dtype the trainer uses on ``node`` when placement left it to the GPU (resolved ``auto``), else None."""
    if resolved.get("computeDtype") != "auto" or node is None:
        return None
    from .gpus import node_from_object

    gpu, _ = node_from_object(node, gpu_catalog)
    if gpu is None or gpu.compute_capability is None:
        return None
    return dtype_for_capability(gpu.compute_capability, "auto")


Reason = tuple[str, str]
"""(kind, text): kind is one of allowed, minMemory, shared, gpuCount, dtype, memory."""


@dataclass(frozen=True)
class _Context:
    spec: api.FineTuneJobSpec
    arch: Architecture
    headroom: Decimal
    products: list[GpuProduct]
    gpu_catalog: GpuCatalog = BUILTIN_CATALOG

    def usable(self, memory_bytes: int) -> int:
        return int(Decimal(memory_bytes) * (1 - self.headroom))

    def static_reasons(self, product: GpuProduct, dtype_reason: str | None) -> list[Reason]:
        """Why a product is out regardless of memory."""
        res = self.spec.resources
        why: list[Reason] = []
        if res.allowed_gpu_products is not None:
            allowed = {p.lower() for p in res.allowed_gpu_products}
            if product.product.lower() not in allowed and not {v.lower() for v in product.label_values} & allowed:
                why.append(("allowed", "not in resources.allowedGpuProducts"))
        if res.min_gpu_memory is not None and product.memory_bytes < _quantity_bytes(res.min_gpu_memory):
            why.append(("minMemory", f"reports {gib(product.memory_bytes)}, below resources.minGpuMemory {res.min_gpu_memory}"))
        if product.sharing:
            why.append(("shared", f"GPUs are {product.sharing}: a training job needs a whole GPU's memory"))
        elif product.gpus_per_node < res.gpus:
            why.append(("gpuCount", f"needs {res.gpus} GPUs on one node; its nodes have at most {product.gpus_per_node}"))
        if dtype_reason:
            why.append(("dtype", dtype_reason))
        return why


def _quantity_bytes(q: int | str) -> int:
    units: dict[str, int | Decimal] = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": Decimal("0.001")}
    text = str(q)
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(Decimal(text[: -len(suffix)]) * units[suffix])
    return int(Decimal(text))


def _base_shape(
    spec: api.FineTuneJobSpec, targets: list[str], dtype: ComputeDtypeName | Literal["auto"], micro: int
) -> TrainingShape:
    quant = spec.effective_quantization()
    bits = spec.quantization_bits()
    return TrainingShape(
        bits=4 if bits == 4 else (8 if bits == 8 else None),
        double_quant=quant.double_quant,
        compute_dtype="fp16" if dtype == "auto" else dtype,  # bf16 and fp16 weigh the same
        r=spec.lora.r,
        target_modules=tuple(targets),
        dora=spec.lora.use_dora,
        dropout=Decimal(spec.lora.dropout) > 0,
        micro_batch=micro,
        seq_len=spec.dataset.max_seq_length,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        attention=spec.training.attention_implementation,
    )


# --- node filters: taints and the driver ------------------------------------------------------


def tolerates(tolerations: list[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether one of ``tolerations`` tolerates ``taint`` (core/v1 semantics)."""
    for tol in tolerations:
        effect = tol.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        key, op = tol.get("key"), tol.get("operator") or "Equal"
        if not key:
            if op == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if op == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


@dataclass(frozen=True)
class _NodeFilter:
    inventory: GpuInventory
    untolerated: tuple[tuple[str, str, str], ...]
    """(node, product, taint) left out for a taint the job does not tolerate."""
    old_driver: tuple[tuple[str, str, int], ...]
    """(node, product, driver major) left out for a driver older than MIN_DRIVER_MAJOR."""
    unlabelled: tuple[str, ...]
    """Nodes kept although they carry no driver label."""


_VIEWS_KEPT = 64  # distinct (tolerations, driver, node selector) views kept per inventory


def _usable_products(
    inventory: GpuInventory, tolerations: list[Mapping[str, Any]], min_driver: int, node_selector: Mapping[str, str] | None
) -> tuple[_NodeFilter, tuple[GpuProduct, ...]]:
    """The nodes a job may use and their products, once per inventory and job shape.

    At 500 nodes filtering and grouping cost ≈ 1.5 ms per placement; the jobs of one burst
    nearly all share one toleration set, so the second and later are lookups."""
    key = ("usable", json.dumps(tolerations, sort_keys=True, default=str), min_driver,
           tuple(sorted((node_selector or {}).items())))
    found = inventory.views.get(key)
    if found is None:
        nodes = _filter_nodes(inventory, tolerations, min_driver)
        found = (nodes, tuple(nodes.inventory.products(node_selector)))
        if len(inventory.views) >= _VIEWS_KEPT:
            inventory.views.clear()
        inventory.views[key] = found
    return found


def _filter_nodes(inventory: GpuInventory, tolerations: list[Mapping[str, Any]], min_driver: int) -> _NodeFilter:
    kept: list[GpuNode] = []
    untolerated: list[tuple[str, str, str]] = []
    old: list[tuple[str, str, int]] = []
    unlabelled: list[str] = []
    for node in inventory.nodes:
        blocking = [t for t in node.taints if t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, t)]
        if blocking:
            untolerated.append((node.name, node.product, _taint_text(blocking[0])))
            continue
        if node.driver_major is not None and node.driver_major < min_driver:
            old.append((node.name, node.product, node.driver_major))
            continue
        if node.driver_major is None and not node.pool:
            unlabelled.append(node.name)
        kept.append(node)
    filtered = GpuInventory(nodes=tuple(kept), cpu_nodes=inventory.cpu_nodes, ignored=inventory.ignored)
    return _NodeFilter(filtered, tuple(untolerated), tuple(old), tuple(unlabelled))


def _order(eligible: list[ProductFit], prices: Mapping[str, Decimal]) -> list[ProductFit]:
    """Cheapest first when prices are known (unpriced products after the priced ones), else smallest memory first."""
    if prices:
        return sorted(eligible, key=lambda f: (f.hourly_price is None, f.hourly_price or 0, f.usable_bytes, f.product))
    return sorted(eligible, key=lambda f: (f.usable_bytes, f.product))


def _price_of(prices: Mapping[str, Decimal], product: GpuProduct) -> Decimal | None:
    lowered = {k.lower(): v for k, v in prices.items()}
    for name in (product.product, *sorted(product.label_values)):
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def plan(
    spec: api.FineTuneJobSpec | Mapping[str, Any],
    arch: Architecture,
    inventory: GpuInventory,
    *,
    headroom_fraction: float | Decimal = Decimal("0.1"),
    allow_trust_remote_code: bool = False,
    gpu_prices: Mapping[str, Decimal | str | float] | None = None,
    operator_tolerations: Sequence[Mapping[str, Any]] | None = None,
    min_driver_major: int = MIN_DRIVER_MAJOR,
    gpu_catalog: GpuCatalog = BUILTIN_CATALOG,
) -> PlacementDecision:
    """Decide where (and whether) a job can run; see the module docstring.

    ``operator_tolerations`` are the ones the operator adds to every GPU pod (OperatorConfig
    gpuTolerations); the spec's resources.tolerations are added here. ``gpu_catalog`` (the
    inventory's) names the products a suggestion may propose.
    """
    if not isinstance(spec, api.FineTuneJobSpec):
        errors = api.spec_errors(spec)
        if errors:
            return _invalid("InvalidSpec", "; ".join(errors))
        spec = api.FineTuneJobSpec.model_validate(api.prune_nulls(spec))
    if spec.base_model.trust_remote_code and not allow_trust_remote_code:
        return _invalid(
            "TrustRemoteCodeNotAllowed",
            "spec.baseModel.trustRemoteCode: running a model repository's own code is disabled in the "
            "operator's configuration; remove trustRemoteCode or ask the platform team to allow it",
        )
    if arch.unsupported:
        return _invalid(
            "UnsupportedArchitecture",
            f"spec.baseModel.uri: {arch.unsupported}; the operator refuses to guess its memory rather than size it as a dense Llama",
        )
    too_long = arch.context_error(spec.dataset.max_seq_length)
    if too_long:
        return _invalid("SequenceTooLong", too_long)
    targets, error = resolve_target_modules(spec, arch)
    if targets is None:
        return _invalid("UnknownTargetModule", error or "")
    alpha = spec.lora.alpha or 2 * spec.lora.r
    bits = spec.quantization_bits()
    quant: Literal["nf4", "fp4", "int8", "none"] = (
        spec.effective_quantization().type if bits == 4 else ("int8" if bits == 8 else "none")
    )
    training = spec.training
    micro_fixed = training.micro_batch_size if isinstance(training.micro_batch_size, int) else None
    common: dict[str, Any] = {"lora_alpha": alpha, "target_modules": targets, "quantization": quant, "gpus": spec.resources.gpus}

    if spec.resources.gpus == 0:
        micro = micro_fixed or 1
        accumulation = training.gradient_accumulation or ((training.batch_size or micro) // micro)
        est = estimate(arch, _base_shape(spec, targets, "fp32", micro))
        return PlacementDecision(
            state="Ready", reason="CpuOnly",
            message=f"resources.gpus is 0: trains on CPU in fp32 (needs about {gib(est.peak_bytes)} of memory); for demo-sized models only",
            estimate=est, compute_dtype="fp32", micro_batch_size=micro, gradient_accumulation=max(accumulation, 1),
            **common,
        )

    headroom = Decimal(str(headroom_fraction))
    prices = {str(k): Decimal(str(v)) for k, v in (gpu_prices or {}).items()}
    tolerations = [*(operator_tolerations if operator_tolerations is not None else _DEFAULT_TOLERATIONS),
                   *(t.model_dump(exclude_none=True) for t in spec.resources.tolerations or ())]
    nodes, usable_products = _usable_products(inventory, tolerations, min_driver_major, spec.resources.node_selector)
    warnings = []
    if nodes.unlabelled:
        shown = ", ".join(nodes.unlabelled[:5]) + (" …" if len(nodes.unlabelled) > 5 else "")
        warnings.append(
            f"no CUDA driver label (nvidia.com/cuda.driver-version.major) on {shown}: the trainer image needs driver "
            f"{min_driver_major} or newer and cannot be checked there; install GPU Feature Discovery to check it"
        )
    ctx = _Context(spec, arch, headroom, list(usable_products), gpu_catalog)
    requested_dtype = spec.effective_quantization().compute_dtype
    fits: list[ProductFit] = []
    reasons: dict[str, list[Reason]] = {}
    for product in ctx.products:
        dtype, dtype_reason = _dtype_for(product, requested_dtype)
        est = estimate(arch, _base_shape(spec, targets, dtype, micro_fixed or 1))
        why = ctx.static_reasons(product, dtype_reason)
        usable = ctx.usable(product.memory_bytes)
        if est.total_bytes > usable:
            why.append(("memory",
                f"needs {gib(est.total_bytes)}; {gib(usable)} usable ({gib(product.memory_bytes)} less {headroom * 100:.0f}% headroom)"
            ))
        reasons[product.product] = why
        fits.append(ProductFit(
            product=product.product, memory_mib=product.memory_mib, compute_capability=product.capability(),
            compute_dtype=dtype, fits=not why, hourly_price=_price_of(prices, product), usable_bytes=usable,
            estimate_bytes=est.total_bytes, gpus_per_node=product.gpus_per_node, nodes=product.node_count,
            from_pool=product.from_pool, why_not=[text for _, text in why],
        ))
    eligible = _order([f for f in fits if f.fits], prices)

    if eligible:
        dtypes = {f.compute_dtype for f in eligible}
        # Every GPU runs its own dtype (fp16 on 7.x, bf16 on ≥ 8.0): the trainer decides on the GPU it
        # lands on and the operator records the choice once the pod is placed (dtype_on_node).
        job_dtype: Literal["bf16", "fp16", "auto"] = dtypes.pop() if len(dtypes) == 1 else "auto"
        smallest = min(eligible, key=lambda f: f.usable_bytes)
        if micro_fixed is not None:
            micro = micro_fixed
            accumulation = training.gradient_accumulation or (training.batch_size // micro if training.batch_size else 1)
        else:
            batch = training.batch_size or 1
            micro = _auto_micro_batch(arch, spec, targets, smallest.compute_dtype, batch, smallest.usable_bytes)
            accumulation = batch // micro
        est = estimate(arch, _base_shape(spec, targets, job_dtype, micro))
        if micro != (micro_fixed or 1):
            fits = [replace(f, estimate_bytes=est.total_bytes) if f.fits else f for f in fits]
        names = [f.product for f in eligible]
        chosen = {p.product: p for p in ctx.products}
        dtype_text = job_dtype if job_dtype != "auto" else "bf16 on compute capability ≥ 8.0, fp16 below"
        order = "cheapest first" if prices else "smallest first"
        return PlacementDecision(
            state="Ready", reason="Fits",
            message=(
                f"estimated {gib(est.total_bytes)} per GPU fits {', '.join(names)} ({order};"
                f" micro-batch {micro} × accumulation {accumulation}, {dtype_text})"
            ),
            estimate=est, eligible_products=names,
            node_affinity=node_affinity([chosen[n] for n in names]),
            compute_dtype=job_dtype, micro_batch_size=micro, gradient_accumulation=accumulation,
            products=fits, warnings=warnings, **common,
        )

    dtype = "bf16" if requested_dtype != "fp16" else "fp16"
    current = estimate(arch, _base_shape(spec, targets, dtype, micro_fixed or 1))
    headline, fix = _binding(ctx, nodes, reasons, current)
    suggestions = ([fix] if fix else []) + _suggestions(ctx, _base_shape(spec, targets, dtype, micro_fixed or 1), current, training.batch_size)
    terms = sorted(((v, k) for k, v in current.breakdown.items() if k != "safetyMargin"), reverse=True)[:3]
    message = (
        f"{headline} (estimated {gib(current.total_bytes)} per GPU: {', '.join(f'{k} {gib(v)}' for v, k in terms)}, "
        f"+{current.safety_margin * 100:.0f}% safety margin)"
    )
    wait = spec.run_policy.wait_for_capacity
    return PlacementDecision(
        state="Queued" if wait else "Unschedulable",
        reason="WaitingForCapacity" if wait else "Unschedulable",
        message=message, suggestions=suggestions, estimate=current, compute_dtype=dtype,
        micro_batch_size=micro_fixed or 1,
        gradient_accumulation=training.gradient_accumulation or max((training.batch_size or 1) // (micro_fixed or 1), 1),
        products=fits, warnings=warnings, **common,
    )


_DEFAULT_TOLERATIONS: list[Mapping[str, Any]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
"""OperatorConfig's default gpuTolerations (what the estimate command assumes)."""

# The order in which a sole blocker is named: the ones a user set on purpose come before memory.
_BINDING_ORDER = ("gpuCount", "minMemory", "dtype", "allowed", "shared")


def _binding(
    ctx: _Context, nodes: _NodeFilter, reasons: Mapping[str, list[Reason]], current: Estimate,
) -> tuple[str, str | None]:
    """The headline naming the constraint that keeps every GPU out, and the change that lifts it."""
    spec = ctx.spec
    res = spec.resources
    if not ctx.products:
        if nodes.untolerated:
            node, product, taint = nodes.untolerated[0]
            return (
                f"no GPU node is usable: {len(nodes.untolerated)} GPU node(s) carry taints the job does not tolerate "
                f"({node}, {product}: {taint})",
                f"add a toleration for {taint} to resources.tolerations (or ask the platform team to add it to the "
                "operator's gpuTolerations)",
            )
        if nodes.old_driver:
            node, product, major = nodes.old_driver[0]
            return (
                f"no GPU node is usable: the NVIDIA driver on {len(nodes.old_driver)} node(s) is too old for the trainer "
                f"image (CUDA 13.0 needs driver {MIN_DRIVER_MAJOR} or newer; {node}, {product}, has {major})",
                f"upgrade the GPU driver to {MIN_DRIVER_MAJOR} or newer, or restrict the job to nodes that have it",
            )
        where = " matching resources.nodeSelector" if res.node_selector else ""
        return f"the cluster has no GPU nodes or node pools{where}", None
    sole: dict[str, list[str]] = {}
    for product, why in reasons.items():
        kinds = {k for k, _ in why}
        if len(kinds) == 1:
            sole.setdefault(next(iter(kinds)), []).append(product)
    by_name = {p.product: p for p in ctx.products}
    for kind in _BINDING_ORDER:
        if kind not in sole:
            continue
        names = sole[kind]
        if kind == "gpuCount":
            most = max(p.gpus_per_node for p in ctx.products if not p.sharing) if any(not p.sharing for p in ctx.products) else 0
            return (
                f"no node has {res.gpus} GPUs: resources.gpus asks for {res.gpus} on one node and the most any GPU node "
                f"has is {most}",
                f"set resources.gpus: {most} (each GPU holds a full replica, so the estimate per GPU stays "
                f"{gib(current.total_bytes)}; raise gradientAccumulation to keep the global batch)",
            )
        if kind == "minMemory":
            p = max((by_name[n] for n in names), key=lambda g: g.memory_mib)
            floor_gi = p.memory_mib // 1024
            return (
                f"resources.minGpuMemory {res.min_gpu_memory} is more than the GPUs report: {p.product} reports "
                f"{gib(p.memory_bytes)} (GPUs report a little less than their marketed size)",
                f"set resources.minGpuMemory: {floor_gi}Gi or remove it: {p.product} fits the estimate {gib(current.total_bytes)}",
            )
        if kind == "dtype":
            shown = ", ".join(f"{n} ({by_name[n].capability()})" for n in names)
            return (
                f"quantization.computeDtype bf16 needs compute capability ≥ 8.0 and the GPUs that would fit are older: {shown}",
                f"set quantization.computeDtype: auto (fp16 on {names[0]}, where the estimate {gib(current.total_bytes)} fits)",
            )
        if kind == "allowed":
            return (
                f"resources.allowedGpuProducts excludes every GPU that fits; {', '.join(names)} would fit",
                f"add {names[0]} to resources.allowedGpuProducts",
            )
        if kind == "shared":
            return (
                f"the GPUs that would fit are shared (time-slicing or MPS): {', '.join(names)}",
                "ask for a node pool with whole GPUs; a training job needs a GPU's full memory",
            )
    if all(any(k == "memory" for k, _ in why) for why in reasons.values()):
        largest = max(ctx.products, key=lambda p: p.memory_mib)
        return (
            f"no GPU has enough memory: the largest, {largest.product}, has {gib(ctx.usable(largest.memory_bytes))} usable"
            f" ({gib(largest.memory_bytes)} less {ctx.headroom * 100:.0f}% headroom)",
            None,
        )
    detail = "; ".join(f"{p}: {', '.join(t for _, t in why)}" for p, why in reasons.items())
    return f"no GPU fits: {detail}", None


def _auto_micro_batch(
    arch: Architecture, spec: api.FineTuneJobSpec, targets: list[str], dtype: Literal["bf16", "fp16"], batch: int, usable: int,
) -> int:
    """The largest power of two that divides ``batch`` and fits ``usable`` bytes (at least 1)."""
    best, p = 1, 2
    while p <= min(batch, MAX_MICRO_BATCH):
        if batch % p == 0:
            if estimate(arch, _base_shape(spec, targets, dtype, p)).total_bytes > usable:
                break
            best = p
        p *= 2
    return best


def node_affinity(products: list[GpuProduct]) -> dict[str, Any]:
    """A required V1NodeAffinity (camelCase dict) admitting exactly these products' nodes, and a
    preferred one whose weights follow their order (the first, the cheapest, weighs most)."""
    single: dict[str, set[str]] = {}
    terms: list[dict[str, Any]] = []
    for product in products:
        for selector in product.selectors:
            if len(selector) == 1:
                single.setdefault(selector[0][0], set()).add(selector[0][1])
            else:
                terms.append({"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in selector]})
    for key in sorted(single):
        terms.insert(0, {"matchExpressions": [{"key": key, "operator": "In", "values": sorted(single[key])}]})
    out: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    if len(products) > 1:
        preferred = []
        for rank, product in enumerate(products):
            weight = max(100 - rank * (99 // max(len(products) - 1, 1)), 1)
            for selector in product.selectors:
                preferred.append({"weight": weight, "preference": {
                    "matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in selector]}})
        out["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return out


def _suggestions(ctx: _Context, shape: TrainingShape, current: Estimate, batch_size: int | None) -> list[str]:
    """Concrete changes that would fit, each checked by re-running the estimate."""
    reachable = [p for p in ctx.products if not ctx.static_reasons(p, _dtype_for(p, ctx.spec.effective_quantization().compute_dtype)[1])]
    if not reachable and ctx.products:
        return []  # a non-memory constraint binds; _binding's suggestion is the fix

    def fit(candidate: TrainingShape) -> tuple[Estimate, GpuProduct | None]:
        est = estimate(ctx.arch, candidate)
        ok = [p for p in reachable if est.total_bytes <= ctx.usable(p.memory_bytes)]
        return est, min(ok, key=lambda p: p.memory_mib) if ok else None

    out: list[str] = []
    changes: dict[str, Any] = {}
    labels: list[str] = []
    if shape.bits != 4:
        changes["bits"] = 4
        labels.append("method: qlora (4-bit NF4 base)")
    if not shape.gradient_checkpointing:
        changes["gradient_checkpointing"] = True
        labels.append("training.gradientCheckpointing: true")
    if shape.micro_batch > 1:
        changes["micro_batch"] = 1
        labels.append(f"training.microBatchSize: 1 with gradientAccumulation ×{shape.micro_batch} (same effective batch)")
    if shape.attention == "eager":
        changes["attention"] = "sdpa"
        labels.append("training.attentionImplementation: sdpa")
    for (key, value), label in zip(changes.items(), labels):
        est, product = fit(with_changes(shape, **{key: value}))
        if product is not None:
            out.append(f"set {label}: estimate {gib(est.total_bytes)} fits {product.product}")
    combined = with_changes(shape, **changes) if changes else shape
    if len(changes) > 1 and not out:
        est, product = fit(combined)
        if product is not None:
            out.append(f"set {' and '.join(labels)}: estimate {gib(est.total_bytes)} fits {product.product}")
    if reachable:
        seq = _longest_sequence(ctx, combined, max(reachable, key=lambda p: p.memory_mib))
        if seq is not None and seq < shape.seq_len:
            prefix = f"with {' and '.join(labels)}, " if changes else ""
            est, product = fit(with_changes(combined, seq_len=seq))
            out.append(f"{prefix}lower dataset.maxSeqLength to {seq}: estimate {gib(est.total_bytes)} fits {product.product if product else '?'}")
    for gpu in sorted(ctx.gpu_catalog.entries, key=lambda g: g.memory_mib):
        if ctx.usable(gpu.memory_mib * 2**20) >= current.total_bytes:
            present = any(p.product == gpu.product for p in ctx.products)
            if present:
                out.append(f"{gpu.product} in this cluster would fit but is excluded: relax resources (allowedGpuProducts, minGpuMemory, gpus, nodeSelector)")
            else:
                out.append(f"add a node pool with {gpu.product} ({gib(gpu.memory_mib * 2**20)}): the estimate {gib(current.total_bytes)} fits it as is")
            break
    else:
        out.append(f"no GPU in the catalog has {gib(current.total_bytes)}; reduce the job with the changes above")
    return out


def _longest_sequence(ctx: _Context, shape: TrainingShape, product: GpuProduct) -> int | None:
    """The longest maxSeqLength (a multiple of 128) whose estimate fits ``product``."""
    usable = ctx.usable(product.memory_bytes)
    if estimate(ctx.arch, with_changes(shape, seq_len=_MIN_SEQ)).total_bytes > usable:
        return None
    lo, hi = 1, max(shape.seq_len // _MIN_SEQ, 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(ctx.arch, with_changes(shape, seq_len=mid * _MIN_SEQ)).total_bytes <= usable:
            lo = mid
        else:
            hi = mid - 1
    return lo * _MIN_SEQ
