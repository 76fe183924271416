"""Marked chat templates against the stock templates the families publish (tests/trainer/fixtures/stock_templates).

Training swaps a model's template for a marked variant (assistant-only loss); serving keeps the
stock one. Any difference in the rendered text is a model trained on one format and served on
another, so every variant is held to byte-identical output, tool calls and system prompts included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.chat_templates import (
    VARIANTS,
    choose_template,
    jinja_renderer,
    probe_conversations,
    renders_identically,
    supports_tools,
    tool_capable_variants,
)
from finetune_trainer.job import load_tokenizer, tokenize_conversation
from finetune_trainer.testing import tool_chat_records, with_chat_template

STOCK = Path(__file__).parent / "fixtures" / "stock_templates"
EXPECTED = {
    "chatml": ("chatml", "chatml", False),
    "qwen2_5": ("chatml", "qwen2_5", True),
    "llama3": ("llama3", "llama3", False),
    "llama3_2": ("llama3", "llama3_2", True),
    "mistral": ("mistral", "mistral", False),
    "mistral_v0_1": ("mistral", "mistral_v0_1", False),
    "gemma": ("gemma", "gemma", False),
    "phi3": ("phi3", "phi3", False),
    "phi3_5": ("phi3", "phi3_5", False),
}


def _stock(name: str) -> str:
    return (STOCK / f"{name}.jinja").read_text(encoding="utf-8")


def _corpus() -> list[tuple[list[dict], list[dict] | None]]:
    """The probe set plus the data shapes users bring: long chats, tool rounds, the tiny model's data."""
    extra = []
    for rec in tool_chat_records(3):
        msgs = [{k: v for k, v in m.items() if k != "weight"} for m in rec["messages"]]
        for m in msgs:
            if isinstance(m["content"], list):
                m["content"] = "".join(p["text"] for p in m["content"])
            for c in m.get("tool_calls", []):
                c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        extra.append((msgs, rec["tools"]))
        extra.append(([m for m in msgs if m["role"] in ("user", "assistant") and m["content"]], None))
    return probe_conversations() + extra


def test_every_stock_fixture_has_a_variant_and_every_variant_a_fixture():
    assert sorted(EXPECTED) == sorted(p.stem for p in STOCK.glob("*.jinja"))
    assert sorted(v.name for v in VARIANTS) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_marked_variant_renders_byte_identical_to_the_stock_template(name, tiny_model, tmp_path):
    stock = _stock(name)
    family, variant, tools = EXPECTED[name]
    # With neutral special tokens, and with the tiny model's real tokenizer.
    choice = choose_template(stock, render=jinja_renderer())
    assert (choice.family, choice.variant, choice.marked, choice.tools) == (family, variant, True, tools)
    assert renders_identically(jinja_renderer(), stock, choice.template, _corpus())
    model = with_chat_template(tiny_model, str(tmp_path / name), stock)
    tokenizer, loaded = load_tokenizer(model)
    assert loaded.variant == variant and tokenizer.chat_template == choice.template
    for messages, tool_list in _corpus():
        for gen in (False, True):
            try:
                want = tokenizer.apply_chat_template(messages, tools=tool_list, chat_template=stock, tokenize=False,
                                                     add_generation_prompt=gen)
            except Exception:  # noqa: BLE001 - the stock template refuses this shape (e.g. Gemma's system role)
                continue
            got = tokenizer.apply_chat_template(messages, tools=tool_list, tokenize=False, add_generation_prompt=gen)
            assert got == want, (name, messages)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_marked_variant_masks_exactly_the_assistant_turns(name, tiny_model, tmp_path):
    tokenizer, choice = load_tokenizer(with_chat_template(tiny_model, str(tmp_path / name), _stock(name)))
    msgs = [{"role": "user", "content": "What is two plus three?"}, {"role": "assistant", "content": "5"},
            {"role": "user", "content": "And four plus four?"}, {"role": "assistant", "content": "8"}]
    out = tokenize_conversation(tokenizer, {"messages": msgs}, marked=choice.marked, train_on_inputs=False)
    trained = tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert "5" in trained and "8" in trained and "plus" not in trained, trained
    # weight 0 takes the first answer out of the loss, and only it.
    msgs[1] = {**msgs[1], "weight": 0}
    out = tokenize_conversation(tokenizer, {"messages": msgs}, marked=True, train_on_inputs=False)
    trained = tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert "8" in trained and "5" not in trained, trained
    # train_on_inputs: the prompts count too, the weight-0 answer still does not.
    out = tokenize_conversation(tokenizer, {"messages": msgs}, marked=True, train_on_inputs=True)
    skipped = tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if not m])
    assert "5" in skipped and "plus" not in skipped and "8" not in skipped, skipped


def test_tool_calls_are_trained_through_the_qwen_template(tiny_model, tmp_path):
    tokenizer, choice = load_tokenizer(with_chat_template(tiny_model, str(tmp_path / "q"), _stock("qwen2_5")))
    ex = tool_chat_records(1)[0]
    for m in ex["messages"]:
        if isinstance(m["content"], list):
            m["content"] = "".join(p["text"] for p in m["content"])
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    out = tokenize_conversation(tokenizer, ex, marked=choice.marked, train_on_inputs=False)
    text = tokenizer.decode(out["input_ids"])
    assert '"name": "add"' in text and "# Tools" in text  # the tools list reached the template
    trained = tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert "<tool_call>" in trained and "I am not sure." not in trained and "tool_response" not in trained


def test_templates_that_cannot_express_tools_are_known():
    render = jinja_renderer()
    can = {name for name in EXPECTED if supports_tools(render, _stock(name))}
    assert can == {"qwen2_5", "llama3_2"}
    assert tool_capable_variants() == [v.source for v in VARIANTS if v.name in can]


def test_an_unknown_template_is_left_unmarked():
    odd = "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    choice = choose_template(odd, render=jinja_renderer())
    assert (choice.family, choice.marked, choice.template) == ("unmarked", False, odd)
