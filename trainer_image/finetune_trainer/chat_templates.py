"""Chat templates with `{% generation %}` markers, so assistant-only loss works for chat data.

TRL's `assistant_only_loss` needs the template to mark assistant content; the stock templates
of most families do not. We recognise the family from the template (or its special tokens) and
swap in the marked variant shipped in `templates/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

FAMILIES = ("chatml", "llama3")


@dataclass(frozen=True)
class TemplateChoice:
    template: str | None
    family: str  # chatml, llama3, own-marked, unmarked, none
    marked: bool


def load_template(family: str) -> str:
    return resources.files("finetune_trainer").joinpath(f"templates/{family}.jinja").read_text(encoding="utf-8")


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and "generation" in template and "endgeneration" in (template or "")


def choose_template(current: str | None, vocab: set[str] | None = None) -> TemplateChoice:
    """Pick the template to train with: the model's own if already marked, else a marked family variant."""
    if current and has_generation_markers(current):
        return TemplateChoice(current, "own-marked", True)
    text = current or ""
    vocab = vocab or set()
    if "<|im_start|>" in text or (not text and "<|im_start|>" in vocab):
        return TemplateChoice(load_template("chatml"), "chatml", True)
    if "<|start_header_id|>" in text or (not text and "<|start_header_id|>" in vocab):
        return TemplateChoice(load_template("llama3"), "llama3", True)
    if current:
        return TemplateChoice(current, "unmarked", False)
    return TemplateChoice(None, "none", False)
