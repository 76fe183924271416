"""``python -m finetune_operator estimate``: will this FineTuneJob fit, before applying it.

Prints JSON (the estimate with its breakdown, parameter counts, and for each GPU product whether
it fits and why not). Exit status: 0 some GPU fits, 1 none does, 2 invalid spec or input. Same
code path as the operator: ``placement.plan``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from . import api, catalog, placement
from . import config as config_module
from .config import OperatorConfig
from .arch import Architecture, ArchitectureError
from .gpus import BUILTIN_CATALOG, GFD_DRIVER_MAJOR, GFD_PRODUCT, MIN_DRIVER_MAJOR, GpuCatalog, GpuInventory, inventory_from_nodes

EXIT_FITS, EXIT_NO_FIT, EXIT_INVALID = 0, 1, 2


class InputError(Exception):
    """A file or flag the command cannot use; the message says which and why."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune_operator estimate", description=__doc__.splitlines()[0])
    p.add_argument("job", help="FineTuneJob manifest (YAML), or just its spec")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--nodes", help="Node objects (a list or a kind: List; for the local cluster's fleet: python -m localcluster nodes)")
    where.add_argument("--kubeconfig", help="read the nodes of this cluster")
    p.add_argument("--gpu", action="append", default=[], metavar="PRODUCT", help="only this GPU product (repeatable)")
    p.add_argument("--model-config", help="the base model's config.json (for models not in the built-in catalog)")
    p.add_argument("--pools", help="YAML list of node pools, as in the operator configuration")
    p.add_argument("--headroom", default="0.1", help="fraction of GPU memory kept free (default 0.1)")
    p.add_argument("--config", help="the operator's configuration file (gpuPrices, nodePools, gpuTolerations, vramHeadroom)")
    p.add_argument("--allow-trust-remote-code", action="store_true")
    return p


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where an unquoted 2e-4 is a string; kubectl reads it as the number it is
    in YAML 1.2 (and JSON). Resolving numbers the 1.2 way makes this command refuse an unquoted
    learningRate exactly as the API server does."""


_Yaml12Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _load_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            # JSON first, as kubectl reads it: PyYAML decodes a \ud83d\ude00 escape as two lone
            # surrogates where JSON (and the API server) read one character
            return json.loads(text)
        except ValueError:
            pass
        docs = [d for d in yaml.load_all(text, Loader=_Yaml12Loader) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: {exc}") from exc
    return docs[0] if len(docs) == 1 else docs


def load_spec(path: str) -> Any:
    """The spec of a FineTuneJob manifest (or a bare spec)."""
    doc = _load_yaml(path)
    if isinstance(doc, list):
        jobs = [d for d in doc if isinstance(d, Mapping) and d.get("kind") == api.KIND]
        if len(jobs) != 1:
            raise InputError(f"{path}: expected one {api.KIND}, found {len(jobs)}")
        doc = jobs[0]
    if not isinstance(doc, Mapping):
        raise InputError(f"{path}: not a YAML mapping")
    if "kind" in doc and doc.get("kind") != api.KIND:
        raise InputError(f"{path}: kind is {doc.get('kind')!r}, expected {api.KIND}")
    return doc.get("spec", doc) if "kind" in doc or "apiVersion" in doc else doc


def load_nodes(path: str) -> list[dict[str, Any]]:
    """Nodes from a list or a ``kind: List`` / ``NodeList`` (what ``kubectl get nodes -o yaml`` writes)."""
    doc = _load_yaml(path)
    if isinstance(doc, Mapping) and isinstance(doc.get("items"), list):
        return list(doc["items"])
    if isinstance(doc, Mapping) and isinstance(doc.get("nodes"), list):
        raise InputError(f"{path}: this is a local cluster fleet file, not Node objects; write its nodes with "
                         f"`python -m localcluster nodes --fleet {path} > nodes.yaml` and pass --nodes nodes.yaml")
    if isinstance(doc, Mapping) and doc.get("kind") == "Node":
        return [dict(doc)]
    if isinstance(doc, list):
        return [dict(d) for d in doc]
    raise InputError(f"{path}: expected Node objects (a list, a kind: List, or one kind: Node)")


def _cluster_nodes(kubeconfig: str) -> list[dict[str, Any]]:
    from kubernetes import client, config  # lazily: only this branch talks to a cluster

    api_client = config.new_client_from_config(config_file=kubeconfig)
    nodes = client.CoreV1Api(api_client).list_node()
    return [api_client.sanitize_for_serialization(n) for n in nodes.items]


def _catalog_inventory(gpu_catalog: GpuCatalog) -> GpuInventory:
    """Without --nodes or --kubeconfig: every catalog GPU, one 8-GPU node each (what would fit?)."""
    nodes = [
        {
            # hypothetical nodes: assume a driver the trainer image supports (no "unlabelled" warning)
            "metadata": {"name": f"catalog/{g.product}",
                         "labels": {GFD_PRODUCT: g.product, GFD_DRIVER_MAJOR: str(MIN_DRIVER_MAJOR)}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        }
        for g in gpu_catalog.entries
    ]
    return inventory_from_nodes(nodes, gpu_catalog=gpu_catalog)


def _architecture(spec: Mapping[str, Any], model_config: str | None) -> Architecture:
    if model_config:
        try:
            config = json.loads(Path(model_config).read_text(encoding="utf-8"))
            return Architecture.from_hf_config(config, config.get("module_names"))
        except (OSError, ValueError, ArchitectureError) as exc:
            raise InputError(f"--model-config {model_config}: {exc}") from exc
    uri = str((spec.get("baseModel") or {}).get("uri", ""))
    arch = catalog.lookup(uri)
    if arch is None:
        raise InputError(f"spec.baseModel.uri: {uri!r} is not in the built-in catalog; pass --model-config config.json")
    return arch


def _operator_config(path: str | None) -> OperatorConfig:
    """The operator's configuration (its defaults without --config), as the operator would load it."""
    if not path:
        return OperatorConfig()
    try:
        return config_module.load({config_module.CONFIG_FILE_ENV: path})
    except config_module.ConfigError as exc:
        raise InputError(f"--config {path}: {exc}") from exc


def run(argv: Sequence[str]) -> tuple[int, dict[str, Any]]:
    """The command without printing: (exit status, JSON document)."""
    args = _parser().parse_args(list(argv))
    spec = load_spec(args.job)
    errors = api.spec_errors(spec)
    if errors:
        return EXIT_INVALID, {"valid": False, "errors": errors}
    arch = _architecture(spec, args.model_config)
    if args.nodes:
        nodes = load_nodes(args.nodes)
    elif args.kubeconfig:
        nodes = _cluster_nodes(args.kubeconfig)
    else:
        nodes = []
    operator = _operator_config(args.config)
    try:
        gpu_catalog = BUILTIN_CATALOG.with_entries(operator.gpu_catalog)
    except ValueError as exc:
        raise InputError(f"--config {args.config}: {exc}") from exc
    pools = _load_yaml(args.pools) if args.pools else (operator.node_pools or None)
    inventory = (inventory_from_nodes(nodes, pools, gpu_catalog) if (nodes or pools)
                 else _catalog_inventory(gpu_catalog))
    if args.gpu:
        wanted = {g.lower() for g in args.gpu}
        inventory = GpuInventory(
            nodes=tuple(n for n in inventory.nodes if n.product.lower() in wanted or {v.lower() for _, v in n.selector} & wanted),
            cpu_nodes=inventory.cpu_nodes,
            ignored=inventory.ignored,
        )
    try:
        headroom = Decimal(operator.vram_headroom if args.config else args.headroom)
    except InvalidOperation:
        raise InputError(f"--headroom: {args.headroom!r} is not a decimal fraction such as 0.1") from None
    decision = placement.plan(
        spec, arch, inventory,
        headroom_fraction=headroom,
        allow_trust_remote_code=args.allow_trust_remote_code or operator.allow_trust_remote_code,
        gpu_prices=operator.gpu_prices, operator_tolerations=operator.gpu_tolerations, gpu_catalog=gpu_catalog,
    )
    doc = {
        "valid": decision.state != "Invalid",
        "model": {"uri": (spec.get("baseModel") or {}).get("uri"), "architecture": arch.to_config(), "name": arch.name},
        **decision.to_dict(),
        "ignoredNodes": list(inventory.ignored),
    }
    if decision.state == "Invalid":
        return EXIT_INVALID, doc
    return (EXIT_FITS if decision.fits else EXIT_NO_FIT), doc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        status, doc = run(sys.argv[1:] if argv is None else argv)
    except InputError as exc:
        status, doc = EXIT_INVALID, {"valid": False, "errors": [str(exc)]}
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    if status == EXIT_INVALID:
        for line in doc.get("errors") or [doc.get("message", "")]:
            print(f"error: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
