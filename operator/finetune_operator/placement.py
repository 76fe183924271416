"""Fit decisions: which GPU products can run a job, with what micro-batch and dtype.

Pure: the operator and ``estimate`` both call ``plan`` with a validated spec, an architecture and
an inventory, so they always reach the same verdict. When nothing fits, the suggestions come from
re-running the estimate with concrete changes, never from canned text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from . import api, catalog
from .arch import Architecture
from .estimate import Estimate, TrainingShape, estimate, gib, with_changes
from .gpus import GPU_CATALOG, GpuInventory, GpuProduct

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
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    micro_batch_size: int = 1
    gradient_accumulation: int = 1
    lora_alpha: int = 0
    target_modules: list[str] = field(default_factory=list)
    quantization: Literal["nf4", "fp4", "int8", "none"] = "nf4"
    products: list[ProductFit] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.state == "Ready"

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation

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
        if self.estimate is not None:
            out["estimate"] = self.estimate.to_status()
        out["placement"] = {"eligibleProducts": list(self.eligible_products)}
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
    """The concrete module list, or an error naming the valid names."""
    requested = spec.lora.target_modules
    valid = ", ".join(arch.module_names)
    kind = arch.architectures[0] if arch.architectures else arch.model_type
    if requested == ["auto"]:
        default = catalog.default_target_modules(arch)
        if default is None:
            return None, (
                f"spec.lora.targetModules: PEFT has no default for model type {arch.model_type!r}; "
                f"list the modules to adapt (valid: {valid})"
            )
        return list(default), None
    if requested == ["all-linear"]:
        return arch.all_linear(), None
    unknown = [m for m in requested if m not in arch.module_names]
    if unknown and arch.module_names_known:
        return None, f"spec.lora.targetModules: {', '.join(map(repr, unknown))} is not a module of {kind} (valid: {valid})"
    return list(requested), None


def _dtype_for(product: GpuProduct, requested: str) -> tuple[Literal["bf16", "fp16"], str | None]:
    if requested == "fp16":
        return "fp16", None
    if requested == "bf16":
        if product.supports_bf16:
            return "bf16", None
        return "bf16", f"bf16 needs compute capability ≥ 8.0 ({product.product} has {product.capability()}); use computeDtype auto or fp16"
    return ("bf16" if product.supports_bf16 else "fp16"), None


@dataclass(frozen=True)
class _Context:
    spec: api.FineTuneJobSpec
    arch: Architecture
    headroom: Decimal
    products: list[GpuProduct]

    def usable(self, memory_bytes: int) -> int:
        return int(Decimal(memory_bytes) * (1 - self.headroom))

    def static_reasons(self, product: GpuProduct, dtype_reason: str | None) -> list[str]:
        """Why a product is out regardless of memory."""
        res = self.spec.resources
        why = []
        if res.allowed_gpu_products is not None:
            allowed = {p.lower() for p in res.allowed_gpu_products}
            if product.product.lower() not in allowed and not {v.lower() for v in product.label_values} & allowed:
                why.append("not in resources.allowedGpuProducts")
        if res.min_gpu_memory is not None and product.memory_bytes < _quantity_bytes(res.min_gpu_memory):
            why.append(f"{gib(product.memory_bytes)} is below resources.minGpuMemory {res.min_gpu_memory}")
        if product.sharing:
            why.append(f"GPUs are {product.sharing}: a training job needs a whole GPU's memory")
        elif product.gpus_per_node < res.gpus:
            why.append(f"needs {res.gpus} GPUs on one node; its nodes have at most {product.gpus_per_node}")
        if dtype_reason:
            why.append(dtype_reason)
        return why


def _quantity_bytes(q: int | str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": Decimal("0.001")}
    text = str(q)
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(Decimal(text[: -len(suffix)]) * units[suffix])
    return int(Decimal(text))


def _base_shape(spec: api.FineTuneJobSpec, targets: list[str], dtype: Literal["bf16", "fp16", "fp32"], micro: int) -> TrainingShape:
    quant = spec.effective_quantization()
    bits = spec.quantization_bits()
    return TrainingShape(
        bits=4 if bits == 4 else (8 if bits == 8 else None),
        double_quant=quant.double_quant,
        compute_dtype=dtype,
        r=spec.lora.r,
        target_modules=tuple(targets),
        dora=spec.lora.use_dora,
        dropout=Decimal(spec.lora.dropout) > 0,
        micro_batch=micro,
        seq_len=spec.dataset.max_seq_length,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        attention=spec.training.attention_implementation,
    )


def plan(
    spec: api.FineTuneJobSpec | Mapping[str, Any],
    arch: Architecture,
    inventory: GpuInventory,
    *,
    headroom_fraction: float | Decimal = Decimal("0.1"),
    allow_trust_remote_code: bool = False,
) -> PlacementDecision:
    """Decide where (and whether) a job can run; see the module docstring."""
    if not isinstance(spec, api.FineTuneJobSpec):
        errors = api.spec_errors(spec)
        if errors:
            return _invalid("InvalidSpec", "; ".join(errors))
        spec = api.FineTuneJobSpec.model_validate(spec)
    if spec.base_model.trust_remote_code and not allow_trust_remote_code:
        return _invalid(
            "TrustRemoteCodeNotAllowed",
            "spec.baseModel.trustRemoteCode: running a model repository's own code is disabled in the "
            "operator's configuration; remove trustRemoteCode or ask the platform team to allow it",
        )
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
    common = {"lora_alpha": alpha, "target_modules": targets, "quantization": quant}

    if spec.resources.gpus == 0:
        micro = micro_fixed or 1
        accumulation = training.gradient_accumulation or ((training.batch_size or micro) // micro)
        est = estimate(arch, _base_shape(spec, targets, "fp32", micro))
        return PlacementDecision(
            state="Ready", reason="CpuOnly",
            message=f"resources.gpus is 0: trains on CPU in fp32 (needs about {gib(est.peak_bytes)} of memory); for demo-sized models only",
            estimate=est, compute_dtype="fp32", micro_batch_size=micro, gradient_accumulation=max(accumulation, 1),
            **common,  # type: ignore[arg-type]
        )

    headroom = Decimal(str(headroom_fraction))
    ctx = _Context(spec, arch, headroom, inventory.products(spec.resources.node_selector))
    requested_dtype = spec.effective_quantization().compute_dtype
    fits: list[ProductFit] = []
    for product in ctx.products:
        dtype, dtype_reason = _dtype_for(product, requested_dtype)
        est = estimate(arch, _base_shape(spec, targets, dtype, micro_fixed or 1))
        why = ctx.static_reasons(product, dtype_reason)
        usable = ctx.usable(product.memory_bytes)
        if est.total_bytes > usable:
            why.append(
                f"needs {gib(est.total_bytes)}; {gib(usable)} usable ({gib(product.memory_bytes)} less {headroom * 100:.0f}% headroom)"
            )
        fits.append(ProductFit(
            product=product.product, memory_mib=product.memory_mib, compute_capability=product.capability(),
            compute_dtype=dtype, fits=not why, usable_bytes=usable, estimate_bytes=est.total_bytes,
            gpus_per_node=product.gpus_per_node, nodes=product.node_count, from_pool=product.from_pool, why_not=why,
        ))
    eligible = [f for f in fits if f.fits]
    # The dtype is fixed before the pod lands, so mixing bf16- and fp16-only GPUs would run the
    # bf16-capable ones in fp16; prefer bf16 (the dtype these models were trained in) when any fits.
    if requested_dtype == "auto" and any(f.compute_dtype == "bf16" for f in eligible):
        for i, f in enumerate(fits):
            if f.fits and f.compute_dtype == "fp16":
                fits[i] = replace(f, fits=False, why_not=["bf16-capable GPUs also fit; this job uses bf16"])
        eligible = [f for f in fits if f.fits]

    if eligible:
        dtype = eligible[0].compute_dtype
        smallest = min(eligible, key=lambda f: f.usable_bytes)
        if micro_fixed is not None:
            micro = micro_fixed
            accumulation = training.gradient_accumulation or (training.batch_size // micro if training.batch_size else 1)
        else:
            batch = training.batch_size or 1
            micro = _auto_micro_batch(arch, spec, targets, dtype, batch, smallest.usable_bytes)
            accumulation = batch // micro
        est = estimate(arch, _base_shape(spec, targets, dtype, micro))
        if micro != (micro_fixed or 1):
            fits = [replace(f, estimate_bytes=est.total_bytes) if f.fits else f for f in fits]
        names = [f.product for f in eligible]
        chosen = {p.product: p for p in ctx.products}
        return PlacementDecision(
            state="Ready", reason="Fits",
            message=(
                f"estimated {gib(est.total_bytes)} per GPU fits {', '.join(names)}"
                f" (micro-batch {micro} × accumulation {accumulation}, {dtype})"
            ),
            estimate=est, eligible_products=names,
            node_affinity=node_affinity([chosen[n] for n in names]),
            compute_dtype=dtype, micro_batch_size=micro, gradient_accumulation=accumulation,
            products=fits, **common,  # type: ignore[arg-type]
        )

    dtype = "bf16" if requested_dtype != "fp16" else "fp16"
    current = estimate(arch, _base_shape(spec, targets, dtype, micro_fixed or 1))
    suggestions = _suggestions(ctx, _base_shape(spec, targets, dtype, micro_fixed or 1), current, training.batch_size)
    largest = max(fits, key=lambda f: f.usable_bytes, default=None)
    if largest is None:
        where = "the cluster has no GPU nodes or node pools" + (" matching resources.nodeSelector" if spec.resources.node_selector else "")
    else:
        where = (
            f"no GPU fits: the largest, {largest.product}, has {gib(largest.usable_bytes)} usable"
            f" ({gib(largest.memory_mib * 2**20)} less {headroom * 100:.0f}% headroom)"
        )
    terms = sorted(((v, k) for k, v in current.breakdown.items() if k != "safetyMargin"), reverse=True)[:3]
    message = (
        f"estimated {gib(current.total_bytes)} per GPU ({', '.join(f'{k} {gib(v)}' for v, k in terms)}, "
        f"+{current.safety_margin * 100:.0f}% safety margin); {where}"
    )
    wait = spec.run_policy.wait_for_capacity
    return PlacementDecision(
        state="Queued" if wait else "Unschedulable",
        reason="WaitingForCapacity" if wait else "Unschedulable",
        message=message, suggestions=suggestions, estimate=current, compute_dtype=dtype,
        micro_batch_size=micro_fixed or 1,
        gradient_accumulation=training.gradient_accumulation or max((training.batch_size or 1) // (micro_fixed or 1), 1),
        products=fits, **common,  # type: ignore[arg-type]
    )


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
    """A required V1NodeAffinity (camelCase dict) that admits exactly these products' nodes."""
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
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}


def _suggestions(ctx: _Context, shape: TrainingShape, current: Estimate, batch_size: int | None) -> list[str]:
    """Concrete changes that would fit, each checked by re-running the estimate."""
    reachable = [p for p in ctx.products if not ctx.static_reasons(p, _dtype_for(p, ctx.spec.effective_quantization().compute_dtype)[1])]

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
    for gpu in sorted(GPU_CATALOG, key=lambda g: g.memory_mib):
        if ctx.usable(gpu.memory_mib * 2**20) >= current.total_bytes:
            present = any(p.product == gpu.product for p in ctx.products)
            if present:
                out.append(f"{gpu.product} in this cluster would fit but is excluded: relax resources (allowedGpuProducts, minGpuMemory, gpus, nodeSelector)")
            else:
                out.append(f"add a node pool with {gpu.product} ({gib(gpu.memory_mib * 2**20)}): the estimate {gib(current.total_bytes)} fits it as is")
            break
    else:
        out.append(f"no GPU in the built-in catalog has {gib(current.total_bytes)}; reduce the job with the changes above")
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
