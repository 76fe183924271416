"""Train for N steps with the real trainer and measure speed and memory; compare with the estimate.

    .venv/bin/python bench/trainer_bench.py [--steps 10] [--seq-len 128] [--micro-batch 4] [--r 16]
        [--targets q_proj,v_proj] [--model-config tiny|meta-llama/Llama-3.2-1B|config.json] [--json]

The job goes the way the operator sends it: a FineTuneJob spec → the operator's plan (the same
code as ``python -m finetune_operator estimate``) → the operator's rendered trainer configuration
→ ``finetune-trainer --config local.yaml`` as a child process, with local paths for model, data
and output (laptop mode). Reported: optimizer steps/s, step time, tokens/s (from the adapter
manifest), the child's peak RSS, and on CUDA ``torch.cuda.max_memory_reserved()`` and the device
memory in use (``peakGpuMemory`` in the manifest), next to the operator's estimate.

``--model-config`` ``tiny`` (default) is ``finetune_trainer.testing.build_tiny_model``; a catalog id
or a config.json builds a Llama-shaped model of that shape with random weights (the tiny
tokenizer is reused: token ids stay below its size, the embedding and LM head have the full
vocabulary, which is what memory depends on).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def model_shape(name: str) -> dict[str, Any] | None:
    """config.json fields of a catalog id or a config file; None for the tiny model."""
    if name == "tiny":
        return None
    if Path(name).is_file():
        return dict(json.loads(Path(name).read_text()))
    from finetune_operator import catalog

    arch = catalog.lookup(name)
    if arch is None:
        raise SystemExit(f"--model-config {name}: neither a file nor a catalog id")
    return arch.to_config()


def build_model(out: Path, shape: dict[str, Any] | None, device: str) -> Path:
    """The tiny model, or a random-weight Llama of ``shape`` in bf16 with the tiny tokenizer."""
    from finetune_trainer.testing import build_tiny_model

    tiny = out / "tiny"
    if not (tiny / "config.json").exists():
        build_tiny_model(str(tiny))
    if shape is None:
        return tiny
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = out / f"llama-{shape['hidden_size']}x{shape['num_hidden_layers']}"
    if (target / "config.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape.get("num_key_value_heads") or shape["num_attention_heads"],
        head_dim=shape.get("head_dim"), max_position_embeddings=shape.get("max_position_embeddings") or 4096,
        tie_word_embeddings=bool(shape.get("tie_word_embeddings")),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialising billions of parameters is seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return target


def write_data(path: Path, records: int, seq_len: int) -> None:
    """Chat records long enough to be truncated at ``seq_len``: every batch is seq_len tokens."""
    from finetune_trainer.testing import chat_records, write_jsonl

    base = chat_records(records)
    for i, rec in enumerate(base):
        answer = rec["messages"][-1]
        filler = " ".join(m["content"] for r in base[i:i + 8] for m in r["messages"][-2:])
        answer["content"] = (answer["content"] + " " + filler * (1 + 6 * seq_len // max(len(filler), 1)))[: 6 * seq_len]
    write_jsonl(str(path), base)


def plan(args: argparse.Namespace, shape: dict[str, Any] | None, model_dir: Path, gpu: str | None) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The FineTuneJob spec, the operator's plan for it, and the model config file used."""
    from finetune_operator import estimate_cli

    cfg_path = model_dir / "config.json"
    spec = {
        "baseModel": {"uri": "hf://bench/random-llama"},
        "dataset": {"trainUri": "s3://bench/train.jsonl", "format": "messages", "maxSeqLength": args.seq_len,
                    "validationSplit": "0.1"},
        "method": "qlora",
        "lora": {"r": args.r, "targetModules": args.targets.split(",")},
        "training": {"maxSteps": args.steps, "microBatchSize": args.micro_batch, "gradientAccumulation": 1,
                     "learningRate": "2e-4"},
        "output": {"uri": "s3://bench/out/"},
    }
    spec_path = model_dir.parent / "spec.json"
    spec_path.write_text(json.dumps({"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
                                     "metadata": {"name": "bench"}, "spec": spec}))
    argv = [str(spec_path), "--model-config", str(cfg_path)]
    if gpu:
        argv += ["--gpu", gpu]
    status, doc = estimate_cli.run(argv)
    if not doc.get("valid"):
        raise SystemExit(f"the operator refused the spec: {doc}")
    return spec, doc, cfg_path


def trainer_yaml(spec: dict[str, Any], doc: dict[str, Any], model_dir: Path, data: Path, out: Path, cuda: bool) -> dict[str, Any]:
    """The operator's rendered trainer configuration, with local paths (laptop mode)."""
    from finetune_operator import builders
    from finetune_operator.api import FineTuneJobSpec
    from finetune_operator.config import OperatorConfig

    resolved = dict(doc.get("resolved") or {})
    if not cuda:
        resolved["computeDtype"] = "fp32"
    meta = {"name": "bench", "namespace": "bench", "uid": f"bench-{int(time.time())}"}
    cfg = builders.trainer_config(FineTuneJobSpec.model_validate(spec), meta, OperatorConfig(), resolved)
    cfg.update({
        "model_name_or_path": str(model_dir), "base_model_uri": str(model_dir), "model_revision": "main",
        "dataset_uri": str(data), "output_uri": str(out) + "/", "s3_endpoint": "", "progress_configmap": "",
        "checkpoint_interval_steps": 0, "checkpoint_interval_minutes": 0,
        "output_dir": str(out / "scratch"),
    })
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--model-config", default="tiny", help="tiny, a catalog id (meta-llama/Llama-3.2-1B) or a config.json")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fto-trainer-bench"))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    import torch

    cuda = torch.cuda.is_available()  # does not create a CUDA context; nothing in this process does
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape = model_shape(args.model_config)
    if args.build_only:
        print(build_model(work / "models", shape, "cuda" if cuda else "cpu"))
        return 0
    gpu = device_name = None
    if cuda:
        from finetune_operator.gpus import GPU_CATALOG

        # Asked in child processes, so that this one holds no CUDA context while the trainer runs
        # (the trainer's deviceMemoryUsedBytes is device-wide).
        device_name = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(0))"],
                                     text=True, capture_output=True, check=True).stdout.strip()
        name = device_name.replace(" ", "-")
        gpu = next((g.product for g in GPU_CATALOG if g.product.lower() in name.lower() or name.lower() in g.product.lower()), None)
        gpu = gpu or ("NVIDIA-H100-80GB-HBM3" if "H100" in name else "NVIDIA-H200" if "H200" in name else None)
    t0 = time.perf_counter()
    if cuda:
        built = subprocess.run([sys.executable, __file__, "--build-only", "--model-config", args.model_config,
                                "--workdir", str(work)], text=True, capture_output=True)
        if built.returncode != 0:
            raise SystemExit(f"building the model failed:\n{built.stderr[-3000:]}")
        model_dir = Path(built.stdout.strip().splitlines()[-1])
    else:
        model_dir = build_model(work / "models", shape, "cpu")
    build_s = time.perf_counter() - t0
    run = work / f"run-{shape['hidden_size'] if shape else 'tiny'}-s{args.seq_len}-b{args.micro_batch}-{os.getpid()}"
    run.mkdir()
    data = run / "train.jsonl"
    write_data(data, max(64, int(args.steps * args.micro_batch * 1.2) + 16), args.seq_len)
    spec, doc, _ = plan(args, shape, model_dir, gpu)
    cfg = trainer_yaml(spec, doc, model_dir, data, run / "out", cuda)
    config_path = run / "local.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FINETUNE_TERMINATION_LOG": str(run / "termination.json"), "FINETUNE_WORK_DIR": str(run / "work"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    t1 = time.perf_counter()
    proc = subprocess.run([str(BIN / "finetune-trainer"), "--config", str(config_path)], env=env,
                          stdout=open(run / "trainer.log", "wb"), stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t1
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        tail = (run / "trainer.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"finetune-trainer exited {proc.returncode}; log {run / 'trainer.log'}:\n{tail}")
    manifest = json.loads(next((run / "out").glob("*/adapter/manifest.json")).read_text())
    res = manifest["results"]
    train_s = float(res.get("trainRuntimeSeconds") or wall)
    steps = int(res["globalStep"])
    est = doc["estimate"]
    peak_est = est["totalBytes"] - est["breakdown"].get("safetyMargin", 0)
    gpu_mem = manifest.get("peakGpuMemory") or {}
    out = {
        "model": args.model_config, "seqLen": args.seq_len, "microBatch": args.micro_batch, "r": args.r,
        "targets": args.targets, "device": device_name or "cpu", "gpuProduct": gpu,
        "steps": steps, "trainSeconds": round(train_s, 3), "wallSeconds": round(wall, 3), "modelBuildSeconds": round(build_s, 1),
        "stepSeconds": round(train_s / max(steps, 1), 4), "tokens": res.get("tokens"),
        "tokensPerSecond": round(res["tokens"] / train_s, 1) if res.get("tokens") else None,
        "peakRssBytes": peak_rss, "maxMemoryReservedBytes": gpu_mem.get("maxMemoryReservedBytes"),
        "deviceMemoryUsedBytes": gpu_mem.get("deviceMemoryUsedBytes"),
        "estimatePeakBytes": peak_est, "estimateTotalBytes": est["totalBytes"], "estimateBreakdown": est["breakdown"],
        "computeDtype": cfg["dtype"], "operatorFits": doc.get("fits"),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    gib = 2**30
    print(f"model {args.model_config}  seq {args.seq_len}  micro-batch {args.micro_batch}  r {args.r} on {args.targets}  "
          f"({out['device']}, {cfg['dtype']})")
    print(f"steps {steps} in {train_s:.2f}s: {out['stepSeconds']:.3f} s/step, {out['tokensPerSecond']} tokens/s; "
          f"peak RSS {peak_rss / gib:.2f} GiB; wall {wall:.1f}s (model build {build_s:.1f}s)")
    reserved = out["maxMemoryReservedBytes"]
    print(f"estimate: peak {peak_est / gib:.2f} GiB, total with margin {est['totalBytes'] / gib:.2f} GiB"
          + (f"; measured reserved {reserved / gib:.2f} GiB (ratio estimate/measured {peak_est / reserved:.3f}), "
             f"device used {out['deviceMemoryUsedBytes'] / gib:.2f} GiB" if reserved else " (no CUDA: no VRAM measurement)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
