"""Chat templates with `{% generation %}` markers, so assistant-only loss works for chat data.

Assistant-only loss needs the template to mark assistant output; the stock templates of most
families do not. For each stock template we support, `templates/` ships a marked variant that
renders byte-identical text (the markers emit nothing): training must see exactly what serving
will. A variant is only used for a model whose own template renders like it on a probe set of
conversations (system prompts, several turns, tool calls where the template has them) and, at
training time, on every example of the dataset (`verify_on`). Anything else keeps the model's
template unmarked, and the loss masking says so (see `loss_masking` in train.py).

Jinja comments are kept out of the variant files: a `{#- … -#}` comment trims the whitespace
next to it and could change what the variant renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Variant:
    """A marked copy of one published stock template."""

    name: str  # file name under templates/
    family: str  # chatml, llama3, mistral, gemma, phi3
    source: str  # which published template it reproduces
    markers: tuple[str, ...]  # tokens that identify the family in a template or vocabulary


VARIANTS: tuple[Variant, ...] = (
    Variant("chatml", "chatml", "plain ChatML (OpenHermes-2.5, and many fine-tunes)", ("<|im_start|>",)),
    Variant("qwen2_5", "chatml", "Qwen2.5-Instruct (tools, default system prompt)", ("<|im_start|>",)),
    Variant("llama3", "llama3", "Meta-Llama-3-Instruct", ("<|start_header_id|>",)),
    Variant("llama3_2", "llama3", "Llama-3.2-Instruct (tools, knowledge-date system block)", ("<|start_header_id|>",)),
    Variant("mistral", "mistral", "Mistral-7B-Instruct-v0.2 / Mixtral-8x7B-Instruct-v0.1", ("[INST]",)),
    Variant("mistral_v0_1", "mistral", "Mistral-7B-Instruct-v0.1", ("[INST]",)),
    Variant("gemma", "gemma", "Gemma and Gemma 2 instruct", ("<start_of_turn>",)),
    Variant("phi3", "phi3", "Phi-3-mini-instruct", ("<|assistant|>",)),
    Variant("phi3_5", "phi3", "Phi-3.5-mini-instruct", ("<|assistant|>",)),
)


@dataclass(frozen=True)
class TemplateChoice:
    template: str | None
    family: str  # a Variant's family, own-marked, unmarked or none
    marked: bool
    variant: str | None = None  # the templates/ file used, if any
    tools: bool = False  # the template renders a tools list and assistant tool calls
    stock: str | None = field(default=None, repr=False)  # the model's own template (to verify against)

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "marked": self.marked, "variant": self.variant, "tools": self.tools}


def load_template(name: str) -> str:
    return resources.files("finetune_trainer").joinpath(f"templates/{name}.jinja").read_text(encoding="utf-8")


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str | None) -> bool:
    return bool(template and _GENERATION_TAG.search(template))


# A renderer: (template, messages, tools, add_generation_prompt) -> text; raises on a template error.
Render = Callable[[str, list[dict[str, Any]], list[dict[str, Any]] | None, bool], str]

_PROBE_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "fto_probe_tool", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
_PROBE_CALL: dict[str, Any] = {"type": "function", "id": "call0001a", "function": {"name": "fto_probe_call", "arguments": {"x": 1}}}


def probe_conversations() -> list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """Conversations every marked variant must render exactly like its stock template."""
    u = {"role": "user", "content": " Question one? "}
    a = {"role": "assistant", "content": "Answer one."}
    u2 = {"role": "user", "content": "Question two?"}
    a2 = {"role": "assistant", "content": " Answer\ntwo. "}
    s = {"role": "system", "content": "You are terse."}
    call = {"role": "assistant", "content": None, "tool_calls": [_PROBE_CALL]}
    result = {"role": "tool", "tool_call_id": "call0001a", "content": "{\"y\": 2}"}
    return [
        ([u, a], None),
        ([{"role": "system", "content": ""}, u, a], None),
        ([s, u, a], None),
        ([u, a, u2, a2], None),
        ([s, u, a, u2, a2], None),
        ([u, call, result, a], [_PROBE_TOOL]),
        ([s, u, call, result, a], [_PROBE_TOOL]),
    ]


def _outcome(render: Render, template: str, messages: list[dict[str, Any]], tools: Any, gen: bool) -> str:
    try:
        return "ok:" + render(template, messages, tools, gen)
    except Exception as e:  # noqa: BLE001 - a template that raises must raise for both, with the same kind of error
        # The kind, not the text: `None + str` fails in both, worded by where the operands stand.
        return "error:" + type(e).__name__


def renders_identically(render: Render, stock: str, marked: str,
                        conversations: Iterable[tuple[list[dict[str, Any]], Any]]) -> bool:
    """True when both templates give the same text (or the same error) for every conversation."""
    for messages, tools in conversations:
        for gen in (False, True):
            if _outcome(render, stock, messages, tools, gen) != _outcome(render, marked, messages, tools, gen):
                return False
    return True


def supports_tools(render: Render, template: str) -> bool:
    """Whether the template renders both a tools list and an assistant tool call (by their names)."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [_PROBE_CALL]},
            {"role": "tool", "tool_call_id": "call0001a", "content": "r"}, {"role": "assistant", "content": "a"}]
    try:
        text = render(template, msgs, [_PROBE_TOOL], False)
    except Exception:  # noqa: BLE001 - a template that cannot render tool calls does not support them
        return False
    return "fto_probe_tool" in text and "fto_probe_call" in text


def jinja_renderer(special: dict[str, str] | None = None) -> Render:
    """Render with transformers' own chat-template environment (no tokenizer needed)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tokens: dict[str, Any] = special or {"bos_token": "<s>", "eos_token": "</s>"}

    def render(template: str, messages: list[dict[str, Any]], tools: Any, gen: bool) -> str:
        out, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                       add_generation_prompt=gen, **tokens)
        return str(out[0])

    return render


def tokenizer_renderer(tokenizer: Any) -> Render:
    """Render through a tokenizer's apply_chat_template (its real special tokens)."""

    def render(template: str, messages: list[dict[str, Any]], tools: Any, gen: bool) -> str:
        return str(tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                                 add_generation_prompt=gen))

    return render


def family_of(text: str, vocab: set[str]) -> str | None:
    for v in VARIANTS:
        if any(m in text for m in v.markers) or (not text and any(m in vocab for m in v.markers)):
            return v.family
    return None


def choose_template(current: str | None, vocab: set[str] | None = None, render: Render | None = None) -> TemplateChoice:
    """The template to train with: the model's own if already marked, else the marked variant that renders like it."""
    render = render or jinja_renderer()
    if current and has_generation_markers(current):
        return TemplateChoice(current, "own-marked", True, None, supports_tools(render, current), current)
    if not current:
        # No template at all: a marked ChatML where the vocabulary has its tokens, else none.
        if vocab and "<|im_start|>" in vocab:
            return TemplateChoice(load_template("chatml"), "chatml", True, "chatml", False, None)
        return TemplateChoice(None, "none", False)
    family = family_of(current, vocab or set())
    for v in VARIANTS:
        if v.family != family:
            continue
        marked = load_template(v.name)
        if renders_identically(render, current, marked, probe_conversations()):
            return TemplateChoice(marked, v.family, True, v.name, supports_tools(render, current), current)
    return TemplateChoice(current, "unmarked", False, None, supports_tools(render, current), current)


def verify_on(choice: TemplateChoice, render: Render, examples: Iterable[dict[str, Any]]) -> int | None:
    """Index of the first example the marked variant renders differently from the stock template, else None."""
    if choice.stock is None or choice.template is None or choice.template == choice.stock:
        return None
    for i, ex in enumerate(examples):
        if "messages" not in ex:
            return None
        msgs = [strip_training_keys(m) for m in ex["messages"]]
        if _outcome(render, choice.stock, msgs, ex.get("tools"), False) != _outcome(
            render, choice.template, msgs, ex.get("tools"), False
        ):
            return i
    return None


def strip_training_keys(message: dict[str, Any]) -> dict[str, Any]:
    """The message as the template sees it at serving time (no `weight`)."""
    return {k: v for k, v in message.items() if k != "weight"}


def describe_variants() -> str:
    return "; ".join(f"{v.family}: {v.source}" for v in VARIANTS)


def tool_capable_variants() -> list[str]:
    render = jinja_renderer()
    return [v.source for v in VARIANTS if supports_tools(render, load_template(v.name))]


