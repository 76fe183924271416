"""Our trainer against a plain TRL SFTTrainer script, alternately in one run, over the same model and data.

    .venv/bin/python bench/trainer_vs_trl.py [--steps 30] [--seq-len 256] [--micro-batch 4] [--rounds 2] [--json]

Both do the same work: a 4-layer, hidden-256 Llama shape (random weights, the tiny tokenizer),
QLoRA NF4 with double quantization, LoRA r 16 / alpha 32 on q_proj and v_proj, seq-len ×
micro-batch tokens per step (answers long enough to be truncated at seq-len), loss on assistant
tokens only, activation checkpointing on, logging every step, fp32 on the CPU. The runs alternate
(TRL, ours, TRL, ours, …) so machine load hits both alike; a last run of ours without activation
checkpointing shows that checkpointing is really on in the trainer (it costs recompute).

Reported per run: s/step from each trainer's own `train_runtime` (same definition on both
sides), tokens seen (`num_tokens`), tokens carrying loss per epoch, log lines, and whether the
model ran with activation checkpointing (read from the model after training). Then every
SFTConfig value that differs between the two, from the configuration each side really parsed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "trainer_image"))

# Run-specific values that are expected to differ and say nothing about the work done.
IGNORED = {"output_dir", "logging_dir", "run_name", "chat_template_path", "hub_model_id", "save_strategy",
           "save_total_limit", "save_steps"}


def build(root: Path) -> tuple[Path, Path]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune_trainer.testing import arithmetic_pairs, build_tiny_model, write_jsonl

    tiny = Path(build_tiny_model(str(root / "tiny")))
    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model_dir = root / "llama-256x4"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    records = []
    for q, a in arithmetic_pairs(200, seed=1):
        # A long answer: every sequence is truncated at seq-len with assistant tokens inside it.
        answer = " ".join([f"{a} is the sum."] * 40)
        records.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]})
    data = Path(write_jsonl(str(root / "train.jsonl"), records))
    return model_dir, data


def ours_config(root: Path, model: Path, data: Path, a: argparse.Namespace, checkpointing: bool, tag: str) -> Path:
    import yaml

    cfg = {
        "job_name": f"bench-{tag}", "job_uid": tag, "base_model_uri": str(model), "dataset_uri": str(data),
        "output_uri": str(root / "runs"), "validation_split": "0", "dtype": "float32",
        "max_steps": a.steps, "per_device_train_batch_size": a.micro_batch, "gradient_accumulation_steps": 1,
        "max_length": a.seq_len, "learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"], "activation_checkpointing": checkpointing,
        "checkpoint_interval_steps": 0, "checkpoint_interval_minutes": 0, "dataloader_num_workers": 0,
        "seed": 42, "logging_steps": 1,
    }
    path = root / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env(root: Path, tag: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
              "TOKENIZERS_PARALLELISM": "false", "FINETUNE_WORK_DIR": str(root / "work"),
              "FINETUNE_TERMINATION_LOG": str(root / f"{tag}.termination"), "HF_HOME": str(root / "hf")})
    e.pop("FINETUNE_TRAINER_TEST_HOOKS", None)
    return e


def run_ours(root: Path, model: Path, data: Path, a: argparse.Namespace, checkpointing: bool, tag: str) -> dict[str, Any]:
    config = ours_config(root, model, data, a, checkpointing, tag)
    proc = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(config)], env=env(root, tag),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"our trainer failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    manifest = json.loads((root / "runs" / f"bench-{tag}-{tag}" / "adapter" / "manifest.json").read_text())
    r = manifest["results"]
    return {"runner": "finetune-trainer", "tag": tag, "trainRuntimeSeconds": r["trainRuntimeSeconds"],
            "globalStep": r["globalStep"], "tokens": r["tokens"], "trainedTokensPerEpoch": r["trainedTokensPerEpoch"],
            "activationCheckpointing": r["activationCheckpointing"], "lossMasking": manifest["lossMasking"],
            }


def run_trl(root: Path, model: Path, data: Path, a: argparse.Namespace, tag: str) -> dict[str, Any]:
    result = root / f"{tag}.json"
    template = REPO / "trainer_image" / "finetune_trainer" / "templates" / "chatml.jinja"
    cmd = [sys.executable, str(REPO / "bench" / "trainer_vs_trl_sft.py"), "--model", str(model), "--data", str(data),
           "--out", str(root / tag), "--result", str(result), "--steps", str(a.steps), "--seq-len", str(a.seq_len),
           "--micro-batch", str(a.micro_batch), "--chat-template", str(template)]
    proc = subprocess.run(cmd, env=env(root, tag), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"TRL script failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(result.read_text())
    out.update({"runner": "plain TRL", "tag": tag, "lossMasking": "assistant_only"})
    return out


def our_sft_settings(root: Path, model: Path, data: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The SFTConfig our trainer parses for the benchmark job, with the values train.py then sets."""
    from finetune_trainer.config import parse_config

    cfg = parse_config(["--config", str(ours_config(root, model, data, a, True, "settings"))])
    sft = cfg.sft.to_dict()
    # train.py: conversations are tokenized by the trainer (masks from the marked template), so
    # TRL's own assistant_only_loss is off and the labels arrive ready.
    sft.update({"assistant_only_loss": False, "completion_only_loss": False})
    return {k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v)) for k, v in sft.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainer-vs-trl-") as tmp:
        root = Path(tmp)
        model, data = build(root)
        runs = []
        for i in range(a.rounds):
            runs.append(run_trl(root, model, data, a, f"trl{i}"))
            runs.append(run_ours(root, model, data, a, True, f"ours{i}"))
        runs.append(run_ours(root, model, data, a, False, "ours-noac"))
        ours = our_sft_settings(root, model, data, a)
        theirs = runs[0]["sft"]
        diff = {k: {"finetune-trainer": ours.get(k), "plain TRL": theirs.get(k)}
                for k in sorted(set(ours) | set(theirs)) if k not in IGNORED and ours.get(k) != theirs.get(k)}
    for r in runs:
        r["sPerStep"] = round(r["trainRuntimeSeconds"] / max(1, r["globalStep"]), 4)
        r.pop("sft", None)
    trl = statistics.median(r["sPerStep"] for r in runs if r["runner"] == "plain TRL")
    us = statistics.median(r["sPerStep"] for r in runs if r["tag"].startswith("ours") and r["tag"] != "ours-noac")
    noac = next(r["sPerStep"] for r in runs if r["tag"] == "ours-noac")
    summary = {"runs": runs, "settingsThatDiffer": diff, "medianSPerStep": {"plain TRL": trl, "finetune-trainer": us},
               "ratioOursToTrl": round(us / trl, 3), "ratioCheckpointingOnToOff": round(us / noac, 3)}
    if a.json:
        print(json.dumps(summary, indent=2))
        return
    print("| run | s/step | tokens seen | tokens with loss / epoch | activation checkpointing | loss masking |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['tag']} ({r['runner']}) | {r['sPerStep']:.3f} | {r['tokens']} | {r['trainedTokensPerEpoch']} "
              f"| {r['activationCheckpointing']} | {r['lossMasking']} |")
    print(f"\nmedian s/step: plain TRL {trl:.3f}, finetune-trainer {us:.3f}; ratio ours/TRL {us / trl:.2f}; "
          f"ours with checkpointing / without {us / noac:.2f}")
    print("\nSFTConfig values that differ:")
    for k, v in diff.items():
        print(f"  {k}: finetune-trainer={v['finetune-trainer']!r} plain TRL={v['plain TRL']!r}")


if __name__ == "__main__":
    main()
