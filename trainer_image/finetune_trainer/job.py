"""Shared set-up of inspection and training: S3 client, run store, base model, tokenizer, data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .chat_templates import TemplateChoice, choose_template
from .config import Config, default_cache_dir
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
    base = os.environ.get("FINETUNE_WORK_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "finetune")
    return os.path.join(base, cfg.job.run_name)


def s3_client_for(cfg: Config) -> Any | None:
    uris = (cfg.job.base_model_uri, cfg.job.dataset_uri, cfg.job.validation_uri, cfg.job.output_uri)
    if not any(u.startswith("s3://") for u in uris):
        return None
    j = cfg.job
    if j.s3_ca_bundle and not os.path.exists(j.s3_ca_bundle):
        raise ConfigError(f"s3_ca_bundle: '{j.s3_ca_bundle}' does not exist")
    return make_client(S3Settings(j.s3_endpoint, j.s3_region, j.s3_path_style, j.s3_ca_bundle))


def load_tokenizer(model_dir: str, trust_remote_code: bool = False) -> tuple[Any, TemplateChoice]:
    """The base model's tokenizer with a {% generation %}-marked chat template where we have one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    choice = choose_template(tok.chat_template if isinstance(tok.chat_template, str) else None, set(tok.get_vocab()))
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
                return len(tokenizer("\n".join(m["content"] for m in ex["messages"]))["input_ids"])
            out = tokenizer.apply_chat_template(ex["messages"], tokenize=True, return_dict=True)
            return len(out["input_ids"])
        if "prompt" in ex:
            return len(tokenizer(ex["prompt"] + ex["completion"])["input_ids"]) + 1
        return len(tokenizer(ex["text"])["input_ids"]) + 1

    return count


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
    )
    if data.report.format == "messages" and not template.marked:
        data.report.warnings.append(
            f"the chat template ({template.family}) has no {{% generation %}} markers and no marked variant ships "
            "for it: the loss covers the whole conversation, not only assistant turns"
        )
    return Prepared(cfg, s3, store, model, tokenizer, template, data, dataset_path, work_dir)
