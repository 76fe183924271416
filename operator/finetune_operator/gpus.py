"""GPU inventory from Node objects (plain dicts) and the operator's declared node pools.

Reads NVIDIA GPU Feature Discovery labels first (the most precise), then GKE's and Karpenter's.
Cloud labels carry no compute capability and GKE's no memory, so a built-in product catalog fills
them in. Pools declared in the operator configuration count like nodes, so an autoscaled
cluster with no GPU node at rest still has an inventory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GFD_PRODUCT = "nvidia.com/gpu.product"
GFD_MEMORY = "nvidia.com/gpu.memory"
GFD_COUNT = "nvidia.com/gpu.count"
GFD_MAJOR = "nvidia.com/gpu.compute.major"
GFD_MINOR = "nvidia.com/gpu.compute.minor"
GFD_FAMILY = "nvidia.com/gpu.family"
GFD_REPLICAS = "nvidia.com/gpu.replicas"
GFD_SHARING = "nvidia.com/gpu.sharing-strategy"
# GFD's driver labels: cuda.driver-version.* since GFD 0.15 (device plugin 0.15), the older
# cuda.driver.* still written alongside and read when the new one is absent.
GFD_DRIVER_MAJOR = "nvidia.com/cuda.driver-version.major"
GFD_DRIVER_MAJOR_OLD = "nvidia.com/cuda.driver.major"
GFD_DRIVER_FULL = "nvidia.com/cuda.driver-version.full"
MIN_DRIVER_MAJOR = 580
"""The trainer image's torch 2.13 is built for CUDA 13.0, which needs an R580 driver or newer."""
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GKE_PARTITION = "cloud.google.com/gke-gpu-partition-size"
GKE_SHARING = "cloud.google.com/gke-gpu-sharing-strategy"
KARPENTER_NAME = "karpenter.k8s.aws/instance-gpu-name"
KARPENTER_MEMORY = "karpenter.k8s.aws/instance-gpu-memory"
KARPENTER_COUNT = "karpenter.k8s.aws/instance-gpu-count"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class CatalogGpu:
    """A GPU product's fixed facts."""

    product: str
    """GFD's nvidia.com/gpu.product value."""
    memory_mib: int
    compute_capability: tuple[int, int]
    family: str
    gke: tuple[str, ...] = ()
    karpenter: str | None = None


GPU_CATALOG: tuple[CatalogGpu, ...] = (
    CatalogGpu("Tesla-P4", 7680, (6, 1), "pascal", ("nvidia-tesla-p4",)),
    CatalogGpu("Tesla-T4", 15360, (7, 5), "turing", ("nvidia-tesla-t4",), "t4"),
    CatalogGpu("Tesla-P100-PCIE-16GB", 16384, (6, 0), "pascal", ("nvidia-tesla-p100",)),
    CatalogGpu("Tesla-V100-SXM2-16GB", 16384, (7, 0), "volta", ("nvidia-tesla-v100",), "v100"),
    CatalogGpu("NVIDIA-A10G", 23028, (8, 6), "ampere", (), "a10g"),
    CatalogGpu("NVIDIA-L4", 23034, (8, 9), "ada-lovelace", ("nvidia-l4",), "l4"),
    CatalogGpu("NVIDIA-GeForce-RTX-4090", 24564, (8, 9), "ada-lovelace"),
    CatalogGpu("NVIDIA-A100-SXM4-40GB", 40960, (8, 0), "ampere", ("nvidia-tesla-a100",), "a100"),
    CatalogGpu("NVIDIA-L40S", 46068, (8, 9), "ada-lovelace", (), "l40s"),
    CatalogGpu("NVIDIA-RTX-A6000", 49140, (8, 6), "ampere"),
    CatalogGpu("NVIDIA-A100-SXM4-80GB", 81920, (8, 0), "ampere", ("nvidia-a100-80gb",), "a100"),
    CatalogGpu("NVIDIA-H100-80GB-HBM3", 81559, (9, 0), "hopper", ("nvidia-h100-80gb", "nvidia-h100-mega-80gb"), "h100"),
    CatalogGpu("NVIDIA-H200", 143771, (9, 0), "hopper", ("nvidia-h200-141gb",), "h200"),
    CatalogGpu("NVIDIA-B200", 183359, (10, 0), "blackwell", ("nvidia-b200",), "b200"),
)


@dataclass(frozen=True)
class GpuCatalog:
    """The GPU products the operator knows: the built-in ones plus the configuration's `gpu_catalog`.

    A value handed to the inventory and placement (never module state), so two configurations
    never see each other's products.
    """

    entries: tuple[CatalogGpu, ...]
    """Earlier entries win a name both carry (the configuration's come first)."""
    _by_name: dict[str, CatalogGpu] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        by_name: dict[str, CatalogGpu] = {}
        for g in reversed(self.entries):
            by_name.update({name: g for name in g.gke})
            by_name[g.product.lower()] = g
        object.__setattr__(self, "_by_name", by_name)

    def lookup(self, name: str) -> CatalogGpu | None:
        """An entry by GFD product name or GKE accelerator name (case-insensitive)."""
        return self._by_name.get(name.lower())

    def karpenter(self, name: str, memory_mib: int | None) -> CatalogGpu | None:
        """The entry for Karpenter's GPU name; the closest in memory when several share it."""
        matches = [g for g in self.entries if g.karpenter == name.lower()]
        if memory_mib is not None and len(matches) > 1:
            matches.sort(key=lambda g: abs(g.memory_mib - memory_mib))
        return matches[0] if matches else None

    def with_entries(self, entries: Iterable[Mapping[str, Any]]) -> GpuCatalog:
        """This catalog plus the operator configuration's `gpu_catalog` entries.

        Each entry: `product` (GFD's nvidia.com/gpu.product), `memoryMiB`, `computeCapability`
        ("8.9"), optional `family`, `gkeAccelerator` (list) and `karpenterName`. An entry for a
        product already in the catalog replaces it (a platform knows its hardware best).
        """
        added: list[CatalogGpu] = []
        for i, entry in enumerate(entries):
            try:
                major, minor = (int(x) for x in str(entry["computeCapability"]).split("."))
                added.append(CatalogGpu(
                    str(entry["product"]), int(entry["memoryMiB"]), (major, minor), str(entry.get("family", "unknown")),
                    tuple(str(x) for x in entry.get("gkeAccelerator") or ()),
                    str(entry["karpenterName"]).lower() if entry.get("karpenterName") else None,
                ))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"gpu_catalog[{i}]: needs product, memoryMiB and computeCapability like '8.9' ({exc})") from exc
        if not added:
            return self
        replaced = {g.product.lower() for g in added}
        return GpuCatalog((*added, *(g for g in self.entries if g.product.lower() not in replaced)))


BUILTIN_CATALOG = GpuCatalog(GPU_CATALOG)


Selector = tuple[tuple[str, str], ...]
"""Label key/value pairs that all must match (one nodeSelectorTerm)."""


@dataclass(frozen=True)
class GpuNode:
    """One node (or one declared pool) with GPUs."""

    name: str
    product: str
    memory_mib: int
    compute_capability: tuple[int, int] | None
    family: str | None
    gpus: int
    """GPUs per node (allocatable, or GFD's count when allocatable is not reported)."""
    allocatable: int
    labels: Mapping[str, str]
    selector: Selector
    pool: bool = False
    sharing: str | None = None
    """Why the node's GPUs are shared (time-slicing/MPS), which makes them unfit for training."""
    taints: tuple[Mapping[str, Any], ...] = ()
    """The node's spec.taints."""
    driver_major: int | None = None
    """GFD's CUDA driver major version (None: not labelled)."""


@dataclass(frozen=True)
class GpuProduct:
    """Nodes of one product, aggregated."""

    product: str
    memory_mib: int
    compute_capability: tuple[int, int] | None
    family: str | None
    gpus_per_node: int
    node_count: int
    allocatable: int
    selectors: tuple[Selector, ...]
    nodes: tuple[str, ...]
    from_pool: bool
    sharing: str | None

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    @property
    def label_values(self) -> frozenset[str]:
        return frozenset(v for sel in self.selectors for _, v in sel)

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= (8, 0)

    def capability(self) -> str:
        return "unknown" if self.compute_capability is None else "%d.%d" % self.compute_capability


@dataclass(frozen=True)
class GpuInventory:
    """GPU nodes and pools the scheduler could use."""

    nodes: tuple[GpuNode, ...] = ()
    cpu_nodes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())
    """Nodes left out, with the reason (cordoned, MIG mixed strategy, ...)."""
    views: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Views derived from this inventory, keyed by what they were derived with (placement's node
    filter per toleration set): the inventory never changes, so a view never goes stale, and the
    operator builds one inventory per node change, not per job."""

    def products(self, node_selector: Mapping[str, str] | None = None) -> list[GpuProduct]:
        """Products on nodes that match ``node_selector``, largest memory first."""
        groups: dict[str, list[GpuNode]] = {}
        for node in self.nodes:
            if node_selector and not node.pool and any(node.labels.get(k) != v for k, v in node_selector.items()):
                continue
            if node_selector and node.pool and any(k in node.labels and node.labels[k] != v for k, v in node_selector.items()):
                continue
            groups.setdefault(node.product, []).append(node)
        out = []
        for product, members in groups.items():
            shared = [n.sharing for n in members if n.sharing]
            out.append(GpuProduct(
                product=product,
                memory_mib=min(n.memory_mib for n in members),
                compute_capability=next((n.compute_capability for n in members if n.compute_capability), None),
                family=next((n.family for n in members if n.family), None),
                gpus_per_node=max(n.gpus for n in members if not n.sharing) if len(shared) < len(members) else 0,
                node_count=sum(1 for n in members if not n.pool),
                allocatable=sum(n.allocatable for n in members if not n.pool),
                selectors=tuple(sorted({n.selector for n in members if not n.sharing} or {n.selector for n in members})),
                nodes=tuple(sorted(n.name for n in members)),
                from_pool=all(n.pool for n in members),
                sharing=shared[0] if len(shared) == len(members) else None,
            ))
        return sorted(out, key=lambda p: (-p.memory_mib, p.product))


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _mig_memory(profile: str) -> int | None:
    match = re.search(r"(\d+)g\.(\d+)gb", profile)
    return int(match.group(2)) * 1024 if match else None


def node_from_object(
    node: Mapping[str, Any], gpu_catalog: GpuCatalog = BUILTIN_CATALOG
) -> tuple[GpuNode | None, str | None]:
    """A GpuNode from a Node dict, or (None, reason) for a node without usable GPUs."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name", "?"))
    labels: dict[str, str] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    if (node.get("spec") or {}).get("unschedulable"):
        return None, f"{name}: cordoned"
    allocatable = _int(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE))
    sharing: str | None = None

    if GFD_PRODUCT in labels:
        product = labels[GFD_PRODUCT]
        base = product.split("-MIG-")[0].removesuffix("-SHARED")
        entry = gpu_catalog.lookup(base)
        memory = _int(labels.get(GFD_MEMORY)) or (_mig_memory(product) if "-MIG-" in product else None)
        memory = memory or (entry.memory_mib if entry else None)
        major, minor = _int(labels.get(GFD_MAJOR)), _int(labels.get(GFD_MINOR))
        cc = (major, minor or 0) if major is not None else (entry.compute_capability if entry else None)
        family = labels.get(GFD_FAMILY) or (entry.family if entry else None)
        count = _int(labels.get(GFD_COUNT))
        replicas = _int(labels.get(GFD_REPLICAS)) or 1
        strategy = labels.get(GFD_SHARING, "none")
        if replicas > 1 or product.endswith("-SHARED") or strategy not in ("none", ""):
            sharing = f"shared by {strategy if strategy not in ('none', '') else 'time-slicing'} ({replicas} replicas per GPU)"
        selector: Selector = ((GFD_PRODUCT, product),)
    elif GKE_ACCELERATOR in labels:
        accel = labels[GKE_ACCELERATOR]
        entry = gpu_catalog.lookup(accel)
        product = entry.product if entry else accel
        memory = entry.memory_mib if entry else None
        cc, family, count = (entry.compute_capability, entry.family, None) if entry else (None, None, None)
        selector = ((GKE_ACCELERATOR, accel),)
        partition = labels.get(GKE_PARTITION)
        if partition:
            product, memory = f"{product}-MIG-{partition}", _mig_memory(partition)
            selector = ((GKE_ACCELERATOR, accel), (GKE_PARTITION, partition))
        if labels.get(GKE_SHARING):
            sharing = f"shared by {labels[GKE_SHARING]}"
    elif KARPENTER_NAME in labels:
        memory = _int(labels.get(KARPENTER_MEMORY))
        entry = gpu_catalog.karpenter(labels[KARPENTER_NAME], memory)
        product = entry.product if entry else labels[KARPENTER_NAME]
        memory = memory or (entry.memory_mib if entry else None)
        cc, family = (entry.compute_capability, entry.family) if entry else (None, None)
        count = _int(labels.get(KARPENTER_COUNT))
        selector = ((KARPENTER_NAME, labels[KARPENTER_NAME]),)
    else:
        if allocatable:
            return None, f"{name}: {allocatable} {GPU_RESOURCE} but no GPU product label (install GPU Feature Discovery)"
        return None, None
    if memory is None:
        return None, f"{name}: GPU {product} has no memory label and is not in the built-in catalog"
    gpus = allocatable if allocatable is not None else (count or 1)
    if sharing is None and gpus == 0:
        return None, f"{name}: {GPU_RESOURCE} allocatable is 0"
    taints = tuple(dict(t) for t in ((node.get("spec") or {}).get("taints") or ()) if isinstance(t, Mapping))
    driver = _int(labels.get(GFD_DRIVER_MAJOR)) or _int(labels.get(GFD_DRIVER_MAJOR_OLD))
    return GpuNode(
        name=name, product=product, memory_mib=memory, compute_capability=cc, family=family,
        gpus=gpus, allocatable=allocatable if allocatable is not None else gpus,
        labels=labels, selector=selector, sharing=sharing, taints=taints, driver_major=driver,
    ), None


class NodePool(BaseModel):
    """A node pool declared in the operator configuration (scale-from-zero capacity)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid", frozen=True)

    name: str
    gpu_product: str
    """GFD product name (e.g. NVIDIA-L4) or GKE accelerator name (nvidia-l4)."""
    gpus_per_node: int = Field(default=1, ge=1)
    gpu_memory_mib: int | None = Field(default=None, ge=1)
    compute_capability: str | None = Field(default=None, pattern=r"^[0-9]+\.[0-9]+$")
    node_labels: dict[str, str] | None = None
    """Labels the pool's nodes carry; the affinity uses the GPU label among them (default: GFD's product label)."""

    def to_node(self, gpu_catalog: GpuCatalog = BUILTIN_CATALOG) -> GpuNode:
        entry = gpu_catalog.lookup(self.gpu_product)
        memory = self.gpu_memory_mib or (entry.memory_mib if entry else None)
        if memory is None:
            raise ValueError(f"pool {self.name}: gpuMemoryMiB is needed for {self.gpu_product} (not in the built-in catalog)")
        cc = tuple(int(x) for x in self.compute_capability.split(".")) if self.compute_capability else None
        labels = dict(self.node_labels or {})
        selector: Selector = next(
            (((k, labels[k]),) for k in (GFD_PRODUCT, GKE_ACCELERATOR, KARPENTER_NAME) if k in labels),
            ((GFD_PRODUCT, entry.product if entry else self.gpu_product),),
        )
        return GpuNode(
            name=f"pool/{self.name}",
            product=entry.product if entry else self.gpu_product,
            memory_mib=memory,
            compute_capability=(cc[0], cc[1]) if cc else (entry.compute_capability if entry else None),
            family=entry.family if entry else None,
            gpus=self.gpus_per_node,
            allocatable=0,
            labels=labels,
            selector=selector,
            pool=True,
        )


def inventory_from_nodes(
    nodes: Iterable[Mapping[str, Any]],
    pools: Iterable[Mapping[str, Any]] | None = None,
    gpu_catalog: GpuCatalog = BUILTIN_CATALOG,
) -> GpuInventory:
    """The GPU inventory of a cluster: its Node objects plus the declared pools."""
    gpu_nodes: list[GpuNode] = []
    cpu: list[str] = []
    ignored: list[str] = []
    for obj in nodes:
        gpu_node, why = node_from_object(obj, gpu_catalog)
        if gpu_node is not None:
            gpu_nodes.append(gpu_node)
        elif why:
            ignored.append(why)
        else:
            cpu.append(str((obj.get("metadata") or {}).get("name", "?")))
    for pool in pools or ():
        gpu_nodes.append(NodePool.model_validate(pool).to_node(gpu_catalog))
    return GpuInventory(nodes=tuple(gpu_nodes), cpu_nodes=tuple(cpu), ignored=tuple(ignored))
