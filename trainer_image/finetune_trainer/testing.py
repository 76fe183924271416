"""A tiny Llama-style model and synthetic datasets, built locally (nothing downloaded).

Used by the trainer's tests, the demo and the operator's integration tests: a 2-layer,
hidden-64 LlamaForCausalLM with a byte-level BPE tokenizer trained here by `tokenizers`, and
a stock (unmarked) ChatML chat template, as real Qwen-style models ship it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# The stock Qwen2-style template without a default system prompt: no {% generation %} markers,
# so the trainer has to swap in its marked ChatML variant for assistant-only loss.
STOCK_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SYSTEM_PROMPT = "You are a terse calculator."
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def arithmetic_pairs(n: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """Deterministic (question, answer) pairs that a tiny model can start to learn in a few steps."""
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        yield f"What is {WORDS[a]} plus {WORDS[b]}?", f"{a + b}"


def chat_records(n: int, seed: int = 0, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    out = []
    for q, a in arithmetic_pairs(n, seed):
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if system_prompt:
            msgs.insert(0, {"role": "system", "content": system_prompt})
        out.append({"messages": msgs})
    return out


def prompt_completion_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": q + " ", "completion": a} for q, a in arithmetic_pairs(n, seed)]


def sharegpt_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for q, a in arithmetic_pairs(n, seed)
    ]


def alpaca_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"instruction": "Add the numbers.", "input": q, "output": a} for q, a in arithmetic_pairs(n, seed)]


def write_jsonl(path: str, records: list[Any]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def _corpus() -> Iterator[str]:
    for q, a in arithmetic_pairs(400, seed=123):
        yield f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
        yield f"<|im_start|>assistant\n{a}<|im_end|>\nAdd the numbers. {q} {a}"
    yield " ".join(str(i) for i in range(100))


def build_tiny_model(out_dir: str, *, vocab_size: int = 400, seed: int = 0) -> str:
    """Write config, safetensors weights and tokenizer of a tiny Llama-style model to out_dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = STOCK_CHATML
    fast.save_pretrained(out_dir)

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return out_dir


def with_chat_template(model_dir: str, out_dir: str, chat_template: str, max_positions: int | None = None) -> str:
    """A copy of a (tiny) model directory whose tokenizer ships another stock chat template.

    `max_positions` raises the context (rotary positions need no new weights), for templates
    whose fixed text (a tools preamble) alone exceeds the tiny model's 256 positions.
    """
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    if max_positions:
        path = os.path.join(out_dir, "config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config["max_position_embeddings"] = max_positions
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    tok = AutoTokenizer.from_pretrained(out_dir)
    tok.chat_template = chat_template
    tok.save_pretrained(out_dir)
    return out_dir


def tool_chat_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """OpenAI-style tool calling: a tools list, an assistant tool call with null content, a tool result,
    content as text parts, and a weight-0 draft answer that must not be trained on."""
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                               "parameters": {"type": "object", "properties": {
                                                   "a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
    out = []
    for i, (q, a) in enumerate(arithmetic_pairs(n, seed)):
        x, y = (WORDS.index(w) for w in q.removeprefix("What is ").removesuffix("?").split(" plus "))
        call_id = f"call{i:05d}"
        out.append({
            "tools": tools,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [{"type": "text", "text": q}]},
                {"role": "assistant", "content": "I am not sure.", "weight": 0},
                {"role": "user", "content": "Use the tool."},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": "add", "arguments": json.dumps({"a": x, "b": y})}}]},
                {"role": "tool", "tool_call_id": call_id, "content": a},
                {"role": "assistant", "content": a},
            ],
        })
    return out
