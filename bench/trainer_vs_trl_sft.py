"""A plain TRL SFTTrainer QLoRA script: the anchor that bench/trainer_vs_trl.py runs against our trainer.

    .venv/bin/python bench/trainer_vs_trl_sft.py --model DIR --data train.jsonl --out DIR --result out.json
        [--steps 30] [--seq-len 256] [--micro-batch 4] [--chat-template marked.jinja] [--no-activation-checkpointing]

Nothing of finetune_trainer is imported: model, quantization, LoRA and SFTConfig are written out
as a user following TRL's documentation would. The chat template file gives the
`{% generation %}` markers TRL's assistant-only loss needs (the stock template has none).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--chat-template", default=None)
    p.add_argument("--no-activation-checkpointing", action="store_true")
    a = p.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    dataset = load_dataset("json", data_files=a.data, split="train")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=quant, dtype=torch.float32,
                                                 device_map={"": "cpu"})
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                             task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=1,
        learning_rate=a.learning_rate,
        max_length=a.seq_len,
        assistant_only_loss=True,
        chat_template_path=a.chat_template,
        activation_checkpointing=not a.no_activation_checkpointing,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        # TRL's SFTConfig defaults to bf16=True: on the CPU that is bf16 autocast, not the fp32 our
        # trainer runs there (found by this bench's settings diff); the same work means fp32 here too.
        bf16=False,
        seed=42,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    labels = trainer.train_dataset["labels"]
    result = trainer.train()
    inner = trainer.model.get_base_model()
    logs = trainer.state.log_history
    out: dict[str, Any] = {
        "trainRuntimeSeconds": result.metrics["train_runtime"],
        "globalStep": trainer.state.global_step,
        "tokens": next((h["num_tokens"] for h in reversed(logs) if "num_tokens" in h), None),
        "trainedTokensPerEpoch": sum(sum(1 for t in row if t != -100) for row in labels),
        "sequenceTokensPerEpoch": sum(len(row) for row in labels),
        "examples": len(labels),
        "logLines": sum(1 for h in logs if "loss" in h),
        "lastLoss": next((h["loss"] for h in reversed(logs) if "loss" in h), None),
        "activationCheckpointing": bool(getattr(inner, "is_activation_checkpointing", False)),
        "wallSeconds": time.monotonic() - started,
        "sft": {k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v)) for k, v in args.to_dict().items()},
    }
    with open(a.result, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
