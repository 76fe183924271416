"""Shared set-up of inspection and training: S3 client, run store, base model, tokenizer, data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .architecture import check_model_dir
from .chat_templates import (
    TemplateChoice,
    choose_template,
    strip_training_keys,
    tokenizer_renderer,
    tool_capable_variants,
    verify_on,
)
from .config import Config, default_cache_dir
from .config import work_dir as run_work_dir
from .data import Example, LoadedData, load_jsonl
from .errors import ConfigError
from .runstore import RunStore, open_run_store
from .sources import ResolvedModel, resolve_dataset, resolve_model
from .storage import S3Settings, make_client

log = logging.getLogger("finetune_trainer")


@dataclass
class Prepared:
    cfg: Config
    s3: Any | None
    store: RunStore
    model: ResolvedModel
    tokenizer: Any
    template: TemplateChoice
    data: LoadedData
    dataset_path: str
    work_dir: str


def work_dir_for(cfg: Config) -> str:
    return run_work_dir(cfg.job)


def s3_client_for(cfg: Config) -> Any | None:
    uris = (cfg.job.base_model_uri, cfg.job.dataset_uri, cfg.job.validation_uri, cfg.job.output_uri)
    if not any(u.startswith("s3://") for u in uris):
        return None
    j = cfg.job
    if j.s3_ca_bundle and not os.path.exists(j.s3_ca_bundle):
        raise ConfigError(f"s3_ca_bundle: '{j.s3_ca_bundle}' does not exist")
    return make_client(S3Settings(j.s3_endpoint, j.s3_region, j.s3_path_style, j.s3_ca_bundle,
                                  retry_mode=j.s3_retry_mode, max_attempts=j.s3_max_attempts,
                                  connect_timeout=j.s3_connect_timeout_seconds, read_timeout=j.s3_read_timeout_seconds))


def load_tokenizer(model_dir: str, trust_remote_code: bool = False) -> tuple[Any, TemplateChoice]:
    """The base model's tokenizer with a {% generation %}-marked chat template where we have one."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any loader failure is the model's, said in words
        raise ConfigError(
            f"the base model's tokenizer could not be loaded ({str(e)[:200] or 'no reason given'}); "
            "the model directory needs a tokenizer transformers can read (tokenizer.json or tokenizer.model)"
        ) from None
    stock = tok.chat_template if isinstance(tok.chat_template, str) else None
    choice = choose_template(stock, set(tok.get_vocab()), tokenizer_renderer(tok))
    if choice.template is not None:
        tok.chat_template = choice.template
    if tok.pad_token is None:
        # Padding positions are masked out of the loss, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok, choice


def token_counter(tokenizer: Any) -> Any:
    """Map one converted example to its token count as training will see it."""

    def count(ex: Example) -> int:
        if "messages" in ex:
            if not tokenizer.chat_template:
                return len(tokenizer("\n".join(m["content"] or "" for m in ex["messages"]))["input_ids"])
            msgs = [strip_training_keys(m) for m in ex["messages"]]
            try:
                out = tokenizer.apply_chat_template(msgs, tools=ex.get("tools"), tokenize=True, return_dict=True)
            except Exception:  # noqa: BLE001 - template refusals are reported per line by template_check
                return 0
            return len(out["input_ids"])
        if "prompt" in ex:
            return len(tokenizer(ex["prompt"] + ex["completion"])["input_ids"]) + 1
        return len(tokenizer(ex["text"])["input_ids"]) + 1

    return count


def template_check(tokenizer: Any, template: TemplateChoice) -> Any:
    """Per-example check: the chat template renders the conversation (the message names the template's refusal)."""

    def check(ex: Example) -> str | None:
        if "messages" not in ex or not tokenizer.chat_template:
            return None
        if uses_tools(ex) and not template.tools:
            return None  # one data-level message says the template cannot express tools
        msgs = [strip_training_keys(m) for m in ex["messages"]]
        try:
            tokenizer.apply_chat_template(msgs, tools=ex.get("tools"), tokenize=False)
        except Exception as e:  # noqa: BLE001 - jinja's TemplateError, or a TypeError from None content
            reason = str(e).splitlines()[0][:160] if type(e).__name__ == "TemplateError" else "it cannot render it"
            return (f"the model's chat template refuses this conversation ({reason}); "
                    "change the turns to what the template accepts")
        return None

    return check


def uses_tools(ex: Example) -> bool:
    return bool(ex.get("tools")) or any(m.get("tool_calls") or m["role"] == "tool" for m in ex.get("messages", []))


def zero_weight_messages(ex: Example) -> int:
    return sum(1 for m in ex.get("messages", []) if m.get("weight") == 0)


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans


def tokenize_conversation(tokenizer: Any, ex: Example, *, marked: bool, train_on_inputs: bool) -> dict[str, list[int]]:
    """input_ids and the loss mask of one conversation, through the (marked) chat template.

    The mask is the template's generation spans (assistant output), minus the assistant messages
    with weight 0; with train_on_inputs every token counts except those weight-0 messages.
    Raises ValueError when the spans cannot be matched to the assistant messages.
    """
    msgs = [strip_training_keys(m) for m in ex["messages"]]
    enc = tokenizer.apply_chat_template(msgs, tools=ex.get("tools"), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=marked)
    ids = [int(t) for t in enc["input_ids"]]
    if not marked:
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    mask = [int(b) for b in enc["assistant_masks"]]
    weights = [m.get("weight", 1) for m in ex["messages"] if m["role"] == "assistant"]
    zero = [i for i, w in enumerate(weights) if w == 0]
    spans = _runs(mask)
    if zero and len(spans) != len(weights):
        raise ValueError(
            f"the chat template marks {len(spans)} assistant spans for {len(weights)} assistant messages, "
            "so per-message weight cannot be applied"
        )
    if train_on_inputs:
        mask = [1] * len(ids)
    for i in zero:
        a, b = spans[i]
        mask[a:b] = [0] * (b - a)
    return {"input_ids": ids, "assistant_masks": mask}


def loss_masking(fmt: str, template: TemplateChoice, train_on_inputs: bool) -> str:
    """What the loss covers: assistant_only, completion_only or all_tokens (recorded in status and manifest)."""
    if train_on_inputs or fmt == "text":
        return "all_tokens"
    if fmt == "prompt_completion":
        return "completion_only"
    return "assistant_only" if template.marked else "all_tokens"


def masking_report(fmt: str, template: TemplateChoice, train_on_inputs: bool, zero_weight: int) -> dict[str, Any]:
    return {
        "mode": loss_masking(fmt, template, train_on_inputs),
        "trainOnInputs": train_on_inputs,
        "chatTemplate": template.variant or template.family,
        "zeroWeightMessages": zero_weight,
    }


def check_against_template(data: LoadedData, template: TemplateChoice, tokenizer: Any, train_on_inputs: bool) -> TemplateChoice:
    """The data checks that depend on the chat template; returns the template actually used."""
    report = data.report
    examples = data.train + data.validation
    if report.format != "messages":
        return template
    if template.marked and template.variant is not None:
        bad = verify_on(template, tokenizer_renderer(tokenizer), examples)
        if bad is not None:
            # Never train on text the model's own template would not produce.
            tokenizer.chat_template = template.stock
            report.warnings.append(
                f"the marked {template.variant} template renders one example differently from the model's own "
                "template; the model's template is used unmarked"
            )
            template = TemplateChoice(template.stock, "unmarked", False, None, template.tools, template.stock)
    with_tools = sum(1 for ex in examples if uses_tools(ex))
    if with_tools and not template.tools:
        report.fatal.append(
            f"{with_tools} examples use tool calling (tools, tool_calls or tool messages) but the model's chat "
            f"template ({template.variant or template.family}) cannot express tools; templates that can: "
            f"{', '.join(tool_capable_variants())}; remove the tool turns or use a model whose template has tools"
        )
    weighted = sum(zero_weight_messages(ex) for ex in examples)
    if weighted and template.marked:
        refused = 0
        for ex in examples:
            if zero_weight_messages(ex) and (template.tools or not uses_tools(ex)):
                try:
                    tokenize_conversation(tokenizer, ex, marked=True, train_on_inputs=train_on_inputs)
                except ValueError:
                    refused += 1
                except Exception:  # noqa: BLE001 - a template refusal, already reported per line
                    pass
        if refused:
            report.fatal.append(
                f"{refused} examples with weight 0 cannot be masked: the chat template's assistant spans do not "
                "match their assistant messages one to one; remove the weights from them"
            )
    if weighted and not template.marked:
        report.fatal.append(
            f"{weighted} assistant messages have weight 0, which needs a chat template with generation markers "
            f"(the model's is {template.family}); remove the weights or use a supported template"
        )
    if not train_on_inputs and not template.marked:
        report.fatal.append(
            f"the model's chat template ({template.family}) has no assistant markers and no marked variant ships for "
            "it, so the loss cannot be limited to assistant turns: set train_on_inputs: true (spec.dataset.trainOnInputs) "
            "to train on whole conversations, or use a model with a supported template (ChatML, Llama 3, Mistral, "
            "Gemma, Phi-3)"
        )
    return template


def prepare(cfg: Config, *, meta_only: bool) -> Prepared:
    """Fetch what a run needs; `meta_only` (inspection) fetches the model's config and tokenizer only."""
    work_dir = work_dir_for(cfg)
    os.makedirs(work_dir, exist_ok=True)
    s3 = s3_client_for(cfg)
    if not cfg.job.output_uri:
        raise ConfigError("output_uri: required (s3://bucket/prefix/ or a local directory)")
    store = open_run_store(cfg.job.run_prefix, s3)
    model = resolve_model(
        cfg.job.base_model_uri,
        s3=s3,
        cache_dir=cfg.job.model_cache_dir or default_cache_dir(),
        revision=cfg.model.model_revision,
        meta_only=meta_only,
    )
    check_model_dir(model.path, bool(cfg.sft.trust_remote_code))
    tokenizer, template = load_tokenizer(model.path, bool(cfg.sft.trust_remote_code))
    dataset_path = resolve_dataset(cfg.job.dataset_uri, s3=s3, work_dir=work_dir)
    validation_path = (
        resolve_dataset(cfg.job.validation_uri, s3=s3, work_dir=work_dir, field_name="validation_uri")
        if cfg.job.validation_uri
        else None
    )
    data = load_jsonl(
        dataset_path,
        data_format=cfg.job.data_format,
        system_prompt=cfg.job.system_prompt,
        validation_path=validation_path,
        validation_split=cfg.job.validation_fraction,
        seed=cfg.sft.seed,
        count_tokens=token_counter(tokenizer),
        max_seq_length=cfg.sft.max_length,
        check_example=template_check(tokenizer, template),
    )
    template = check_against_template(data, template, tokenizer, cfg.job.train_on_inputs)
    return Prepared(cfg, s3, store, model, tokenizer, template, data, dataset_path, work_dir)
