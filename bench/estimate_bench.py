"""Throughput of the fit logic, and the estimate against published peaks.

    .venv/bin/python bench/estimate_bench.py [--seconds 2] [--fleet localcluster/fleet.yaml] [--nodes 500]

1. ``placement.plan`` (validation + VRAM estimate + per-product fit + suggestions) for every
   catalog model × the default fleet, and ``estimate.estimate`` alone, in operations per second;
   then one job's placement at ``--nodes`` GPU nodes, the node filter per call against per inventory.
2. The estimate-vs-calibration table: the rows of ``tests/unit/api/test_calibration.py`` (read
   from that file, not copied), with the published figure, our computed peak and the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable

from finetune_operator import catalog, placement
from finetune_operator.estimate import GiB, TrainingShape, estimate
from finetune_operator.gpus import inventory_from_nodes
from localcluster.fleet import load_fleet, node_objects

REPO = Path(__file__).resolve().parent.parent


def spec_for(model: str) -> dict[str, Any]:
    """A typical QLoRA job: r=16 on PEFT's default modules, seq 2048, micro-batch auto."""
    return {
        "baseModel": {"uri": f"hf://{model}"},
        "dataset": {"trainUri": "s3://data/train.jsonl", "maxSeqLength": 2048},
        "method": "qlora",
        "lora": {"r": 16},
        "training": {"maxSteps": 100, "microBatchSize": "auto", "batchSize": 16},
        "output": {"uri": "s3://adapters/bench/"},
    }


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over at least ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed, n


def calibration_rows() -> list[Any]:
    path = REPO / "tests" / "unit" / "api" / "test_calibration.py"
    spec = importlib.util.spec_from_file_location("fto_calibration", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["fto_calibration"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return list(module.TABLE)


def scale_placement(gpu_nodes: int, seconds: float) -> None:
    """One job's placement at the scale bench's fleet size, the node filter computed per call
    (as before the inventory kept its views) against once per inventory (as the operator runs)."""
    from finetune_operator import api
    from localcluster.kwok import gpu_fleet, node_object

    inventory = inventory_from_nodes([node_object(s) for s in gpu_fleet(gpu_nodes)])
    job = api.FineTuneJobSpec.model_validate(spec_for("meta-llama/Llama-3.2-1B-Instruct"))
    arch = catalog.lookup("meta-llama/Llama-3.2-1B-Instruct")

    def every_call() -> None:
        inventory.views.clear()
        placement.plan(job, arch, inventory)  # type: ignore[arg-type]

    def once() -> None:
        placement.plan(job, arch, inventory)  # type: ignore[arg-type]

    print(f"# one placement at {len(inventory.nodes)} GPU nodes (kwok scale-bench fleet), side by side")
    for label, fn in (("node filter every call (before)", every_call), ("node filter once per inventory", once)):
        per_call, _ = rate(fn, seconds)
        print(f"{label:33s} {1e3 / per_call:.3f} ms/plan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--fleet", default=str(REPO / "localcluster" / "fleet.yaml"))
    parser.add_argument("--nodes", type=int, default=500, help="GPU nodes for the placement-at-scale figure")
    args = parser.parse_args()

    inventory = inventory_from_nodes(node_objects(load_fleet(Path(args.fleet))))
    models = sorted({catalog.lookup(m).name for m in catalog.model_ids()})  # type: ignore[union-attr]
    jobs = [(m, spec_for(m), catalog.lookup(m)) for m in models]
    print(f"# placement.plan: {len(jobs)} catalog models x {len(inventory.nodes)} GPU nodes "
          f"({', '.join(sorted({n.product for n in inventory.nodes}))})")
    fits = {m: placement.plan(s, a, inventory).state for m, s, a in jobs}  # type: ignore[arg-type]

    def all_plans() -> None:
        for _, s, a in jobs:
            placement.plan(s, a, inventory)  # type: ignore[arg-type]

    per_sweep, _ = rate(all_plans, args.seconds)
    print(f"plan (dict spec, validated each time): {per_sweep * len(jobs):,.0f} plans/s "
          f"({1e3 / (per_sweep * len(jobs)):.3f} ms/plan)")
    from finetune_operator import api
    validated = [(api.FineTuneJobSpec.model_validate(s), a) for _, s, a in jobs]

    def all_validated() -> None:
        for s, a in validated:
            placement.plan(s, a, inventory)  # type: ignore[arg-type]

    per_sweep, _ = rate(all_validated, args.seconds)
    print(f"plan (pre-validated spec):             {per_sweep * len(jobs):,.0f} plans/s "
          f"({1e3 / (per_sweep * len(jobs)):.3f} ms/plan)")
    archs = [a for _, _, a in jobs]
    shape = TrainingShape()

    def all_estimates() -> None:
        for a in archs:
            estimate(a, shape)  # type: ignore[arg-type]

    per_sweep, _ = rate(all_estimates, args.seconds)
    print(f"estimate only:                         {per_sweep * len(archs):,.0f} estimates/s "
          f"({1e6 / (per_sweep * len(archs)):.1f} us/estimate)")
    # Every placement renders the trainer's train.yaml (into the pod template): the YAML emitter, side by side.
    import yaml

    from finetune_operator import builders
    from finetune_operator.config import OperatorConfig

    job_spec, job_arch = validated[0]
    meta = {"name": "bench", "namespace": "bench", "uid": "00000000-0000-0000-0000-000000000000", "generation": 1}
    decision = placement.plan(job_spec, job_arch, inventory)  # type: ignore[arg-type]
    train = builders.trainer_config(job_spec, meta, OperatorConfig(), decision.status_fields()["resolved"])
    for label, dumper in (("pure-Python SafeDumper", yaml.SafeDumper), ("libyaml CSafeDumper", builders._DUMPER)):
        per_call, _ = rate(lambda d=dumper: yaml.dump(train, Dumper=d, sort_keys=True), args.seconds)  # type: ignore[misc]
        print(f"train.yaml dump, {label:22s} {1e3 / per_call:.3f} ms")
    scale_placement(args.nodes, args.seconds)
    states: dict[str, int] = {}
    for state in fits.values():
        states[state] = states.get(state, 0) + 1
    print(f"decisions: {states}")

    print("\n# estimate vs published peaks (tests/unit/api/test_calibration.py)")
    print(f"{'model':14s} {'kind':11s} {'published':>10s} {'estimate':>10s} {'ratio':>6s}  setting")
    for row in calibration_rows():
        est = estimate(row.arch, row.shape)
        ours = est.peak_bytes
        if row.kind == "weights":
            ours = est.breakdown["linearWeights"] + est.breakdown["embeddingWeights"]
        name = (row.arch.name or row.arch.model_type).split("/")[-1] if row.arch.name else "LLaMA-7B"
        setting = row.source.split(": ", 1)[-1]
        print(f"{name:14s} {row.kind:11s} {row.measured_bytes / GiB:9.2f}G {ours / GiB:9.2f}G "
              f"{ours / row.measured_bytes:6.3f}  {setting}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
