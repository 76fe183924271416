"""Dataset loading, format conversion and the data checks behind inspection and `validate-data`.

Pure Python: no torch, no transformers. Token statistics take any callable that maps one
example to a token count, so the checks run without a tokenizer (structure only) or with the
real one (inspection).

Messages never quote dataset text: they name the line, the field path and what is wrong,
because the summary of this report ends up in the pod's termination message and the job's
status, which more people can read than the data.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, BinaryIO

from .storage import sha256_path

FORMATS = ("auto", "messages", "prompt_completion", "text")
MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 50
MAX_LISTED_ERRORS = 20
MAX_LISTED_WARNINGS = 20

# ShareGPT's speaker names mapped to chat roles (see trainer_image/README.md).
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}

Example = dict[str, Any]
TokenCounter = Callable[[Example], int]


@dataclass
class LineError:
    """One problem with one line of the input file (1-based line numbers)."""

    line: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass
class DataReport:
    """Everything the checks found; `usable` is the verdict."""

    format: str = "unknown"
    source_format: str = "unknown"
    conversion: str | None = None
    examples: int = 0
    train: int = 0
    validation: int = 0
    validation_source: str = "split"
    errors: list[LineError] = field(default_factory=list)
    errors_total: int = 0
    fatal: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: int = 0
    contradictions: int = 0
    system_prompts: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] | None = None
    truncated_fraction: str | None = None
    max_seq_length: int | None = None
    sha256: str | None = None
    blank_lines: int = 0

    @property
    def usable(self) -> bool:
        return self.errors_total == 0 and not self.fatal

    def add_error(self, line: int, message: str) -> None:
        self.errors_total += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(LineError(line, message))

    def to_json(self) -> dict[str, Any]:
        """The full report (S3 and `validate-data` output)."""
        return {
            "verdict": "usable" if self.usable else "unusable",
            "format": self.format,
            "sourceFormat": self.source_format,
            "conversion": self.conversion,
            "examples": self.examples,
            "train": self.train,
            "validation": self.validation,
            "validationSource": self.validation_source,
            "fatal": self.fatal,
            "errors": [e.to_json() for e in self.errors],
            "errorsTotal": self.errors_total,
            "errorsListed": len(self.errors),
            "warnings": self.warnings[:MAX_LISTED_WARNINGS],
            "duplicates": self.duplicates,
            "contradictions": self.contradictions,
            "systemPrompts": self.system_prompts,
            "tokens": self.tokens,
            "truncatedFraction": self.truncated_fraction,
            "maxSeqLength": self.max_seq_length,
            "sha256": self.sha256,
            "blankLines": self.blank_lines,
        }

    def summary(self, max_errors: int = 5) -> dict[str, Any]:
        """The short form for the termination message (contract §3: `data`)."""
        out: dict[str, Any] = {
            "examples": self.examples,
            "train": self.train,
            "validation": self.validation,
            "format": self.format,
            "tokens": self.tokens,
            "truncatedFraction": self.truncated_fraction,
            "warnings": [w[:200] for w in self.warnings[:5]],
        }
        if not self.usable:
            out["fatal"] = [f[:200] for f in self.fatal[:3]]
            out["errors"] = [e.to_json() for e in self.errors[:max_errors]]
            out["errorsTotal"] = self.errors_total
        return out


@dataclass
class LoadedData:
    """Converted examples ready for training, with the report that judged them."""

    report: DataReport
    train: list[Example]
    validation: list[Example]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def detect_format(obj: dict[str, Any]) -> str:
    """Name the shape of one record: messages, prompt_completion, text, sharegpt, alpaca or unknown."""
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "text" in obj:
        return "text"
    return "unknown"


HOW_TO = {
    "messages": '{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]} ending with an assistant turn',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "text": '{"text": "..."}',
}


def _unknown_shape_message(obj: dict[str, Any]) -> str:
    keys = ", ".join(sorted(str(k)[:40] for k in obj)[:8]) or "none"
    return (
        f"no known format (keys: {keys}); write one JSON object per line as "
        f"{HOW_TO['messages']}, or {HOW_TO['prompt_completion']}, or {HOW_TO['text']}; "
        "ShareGPT (conversations with from/value) and Alpaca (instruction/input/output) are converted automatically"
    )


def _check_str(value: Any, path: str, errors: list[str]) -> str | None:
    if not isinstance(value, str):
        errors.append(f"{path} must be a string, got {_type_name(value)}")
        return None
    if not value.strip():
        errors.append(f"{path} is empty")
        return None
    return value


ROLES = ("system", "user", "assistant", "tool")


def _check_choice(value: Any, path: str, choices: Mapping[str, str], errors: list[str], fold_case: bool = False) -> str | None:
    """What a string field names (choices maps accepted spellings to their meaning), or None with the error."""
    if not isinstance(value, str):
        errors.append(f"{path} must be a string, got {_type_name(value)}")
        return None
    chosen = choices.get(value.lower() if fold_case else value)
    if chosen is None:
        errors.append(f"{path} is not one of {', '.join(sorted(choices) if fold_case else choices)}")
    return chosen

# Content-part types that carry something other than text (OpenAI and Hugging Face names).
NON_TEXT_PARTS = ("image_url", "image", "input_image", "input_audio", "audio", "video", "file")


def _content_text(value: Any, path: str, errors: list[str], *, optional: bool = False) -> str | None:
    """A message's content as one string: a string, or an array of text parts (joined with no separator)."""
    if value is None and optional:
        return None
    if isinstance(value, list):
        texts: list[str] = []
        for j, part in enumerate(value):
            ppath = f"{path}[{j}]"
            if not isinstance(part, dict):
                errors.append(f"{ppath} must be an object such as {{\"type\": \"text\", \"text\": \"...\"}}, got {_type_name(part)}")
                continue
            kind = part.get("type")
            if kind in NON_TEXT_PARTS:
                errors.append(
                    f"{ppath} is an {kind} part; this trainer fine-tunes text-only models: "
                    "remove image/audio parts or describe them in text"
                )
                continue
            if kind != "text":
                errors.append(f"{ppath}.type must be \"text\" (got {_type_name(kind) if not isinstance(kind, str) else 'another type'})")
                continue
            text = part.get("text")
            if not isinstance(text, str):
                errors.append(f"{ppath}.text must be a string, got {_type_name(text)}")
                continue
            texts.append(text)
        if errors:
            return None
        joined = "".join(texts)
        if not joined.strip():
            if optional:
                return None
            errors.append(f"{path} is empty")
            return None
        return joined
    if not isinstance(value, str):
        errors.append(f"{path} must be a string or an array of text parts, got {_type_name(value)}")
        return None
    if not value.strip():
        if optional:
            return None
        errors.append(f"{path} is empty")
        return None
    return value


def _tool_calls(value: Any, path: str, errors: list[str]) -> list[dict[str, Any]] | None:
    """OpenAI tool calls, with `arguments` parsed from its JSON string (chat templates expect an object)."""
    if not isinstance(value, list) or not value:
        errors.append(f"{path} must be a non-empty array of tool calls")
        return None
    out: list[dict[str, Any]] = []
    for j, call in enumerate(value):
        cpath = f"{path}[{j}]"
        if not isinstance(call, dict):
            errors.append(f"{cpath} must be an object, got {_type_name(call)}")
            continue
        kind = call.get("type", "function")
        if kind != "function":
            errors.append(f"{cpath}.type must be \"function\"")
            continue
        fn = call.get("function")
        if not isinstance(fn, dict):
            errors.append(f"{cpath}.function must be an object with name and arguments, got {_type_name(fn)}")
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append(f"{cpath}.function.name must be a non-empty string")
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                errors.append(f"{cpath}.function.arguments is not valid JSON ({e.msg} at column {e.colno})")
                continue
        if not isinstance(args, dict):
            errors.append(f"{cpath}.function.arguments must be a JSON object, got {_type_name(args)}")
            continue
        item: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
        if "id" in call:
            if not isinstance(call["id"], str) or not call["id"]:
                errors.append(f"{cpath}.id must be a non-empty string")
                continue
            item["id"] = call["id"]
        out.append(item)
    return out if not errors else None


def validate_tools(value: Any, errors: list[str]) -> list[dict[str, Any]] | None:
    """The top-level `tools` list (OpenAI function definitions), passed to the chat template as is."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        errors.append("tools must be a non-empty array of function definitions")
        return None
    for j, tool in enumerate(value):
        path = f"tools[{j}]"
        if not isinstance(tool, dict):
            errors.append(f"{path} must be an object, got {_type_name(tool)}")
            continue
        fn = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(fn, dict):
            errors.append(f"{path} must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}")
            continue
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            errors.append(f"{path}.function.name must be a non-empty string")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            errors.append(f"{path}.function.parameters must be a JSON Schema object, got {_type_name(fn['parameters'])}")
    return None if errors else value


def _validate_messages(messages: Any, field_name: str = "messages") -> tuple[list[dict[str, Any]] | None, list[str]]:
    errors: list[str] = []
    if not isinstance(messages, list):
        return None, [f"{field_name} must be an array, got {_type_name(messages)}"]
    if not messages:
        return None, [f"{field_name} is empty"]
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        path = f"{field_name}[{i}]"
        if not isinstance(m, dict):
            errors.append(f"{path} must be an object, got {_type_name(m)}")
            continue
        role = _check_choice(m.get("role"), f"{path}.role", {r: r for r in ROLES}, errors)
        if role is None:
            continue
        n_before = len(errors)
        msg: dict[str, Any] = {"role": role}
        calls = None
        if role == "assistant" and m.get("tool_calls") is not None:
            calls = _tool_calls(m["tool_calls"], f"{path}.tool_calls", errors)
        elif m.get("tool_calls") is not None:
            errors.append(f"{path}.tool_calls is only allowed on assistant messages")
        has_calls = role == "assistant" and m.get("tool_calls") is not None
        content = _content_text(m.get("content"), f"{path}.content", errors, optional=has_calls)
        msg["content"] = content
        if calls is not None:
            msg["tool_calls"] = calls
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is not None and (not isinstance(call_id, str) or not call_id):
                errors.append(f"{path}.tool_call_id must be a non-empty string")
            elif call_id is not None:
                msg["tool_call_id"] = call_id
            if isinstance(m.get("name"), str):
                msg["name"] = m["name"]
        if "weight" in m:
            weight = m["weight"]
            if role != "assistant":
                errors.append(f"{path}.weight is only meaningful on assistant messages (0: not trained on, 1: trained on)")
            elif isinstance(weight, bool) or weight not in (0, 1):
                errors.append(f"{path}.weight must be 0 (not trained on) or 1 (trained on)")
            else:
                msg["weight"] = int(weight)
        if len(errors) == n_before:
            out.append(msg)
    if errors:
        return None, errors
    call_ids: set[str] = set()
    for i, m in enumerate(out):
        if m["role"] == "system" and i != 0:
            errors.append(f"{field_name}[{i}] has role system; a system message is only allowed first")
        if m["role"] == "assistant":
            call_ids.update(c["id"] for c in m.get("tool_calls", []) if "id" in c)
        if m["role"] == "tool":
            prev = out[i - 1] if i else None
            if prev is None or not (prev["role"] == "tool" or prev.get("tool_calls")):
                errors.append(f"{field_name}[{i}] has role tool but does not follow an assistant message with tool_calls")
            elif "tool_call_id" in m and call_ids and m["tool_call_id"] not in call_ids:
                errors.append(f"{field_name}[{i}].tool_call_id matches no earlier tool_calls[].id")
    if not any(m["role"] == "user" for m in out):
        errors.append(f"{field_name} has no user message")
    if out[-1]["role"] != "assistant":
        errors.append(f"{field_name} must end with an assistant message (the last has role {out[-1]['role']})")
    elif all(m.get("weight", 1) == 0 for m in out if m["role"] == "assistant"):
        errors.append(f"{field_name}: every assistant message has weight 0, so nothing would be trained on")
    return (None if errors else out), errors


def _convert_sharegpt(obj: dict[str, Any]) -> tuple[list[dict[str, str]] | None, list[str]]:
    conv = obj.get("conversations")
    if not isinstance(conv, list):
        return None, [f"conversations must be an array, got {_type_name(conv)}"]
    errors: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(conv):
        path = f"conversations[{i}]"
        if not isinstance(turn, dict):
            errors.append(f"{path} must be an object, got {_type_name(turn)}")
            continue
        role = _check_choice(turn.get("from"), f"{path}.from", SHAREGPT_ROLES, errors, fold_case=True)
        if role is None:
            continue
        messages.append({"role": role, "content": turn.get("value")})
    if errors:
        return None, errors
    msgs, errs = _validate_messages(messages, "conversations")
    # Point the user at the original field names.
    return msgs, [e.replace(".content", ".value").replace(".role", ".from") for e in errs]


def _alpaca_prompt(obj: dict[str, Any], errors: list[str]) -> tuple[str | None, str | None]:
    instruction = _check_str(obj.get("instruction"), "instruction", errors)
    extra = obj.get("input", "")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        errors.append(f"input must be a string, got {_type_name(extra)}")
    output = _check_str(obj.get("output"), "output", errors)
    if errors or instruction is None:
        return None, None
    prompt = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
    return prompt, output


def convert_record(obj: Any, wanted: str) -> tuple[str, Example | None, list[str]]:
    """Validate one parsed JSON line and convert it to the training format.

    Returns (source format, converted example or None, error messages).
    """
    if not isinstance(obj, dict):
        return "unknown", None, [f"expected a JSON object, got {_type_name(obj)}"]
    source = detect_format(obj)
    errors: list[str] = []
    if source == "unknown":
        return source, None, [_unknown_shape_message(obj)]
    target = wanted
    if wanted == "auto":
        target = {"sharegpt": "messages", "alpaca": "messages"}.get(source, source)

    if source == "messages" and target == "messages":
        msgs, errors = _validate_messages(obj.get("messages"))
        tools = validate_tools(obj.get("tools"), errors)
        if msgs is None or errors:
            return source, None, errors
        ex: Example = {"messages": msgs}
        if tools:
            ex["tools"] = tools
        return source, ex, errors
    if source == "sharegpt" and target == "messages":
        msgs, errors = _convert_sharegpt(obj)
        return source, ({"messages": msgs} if msgs else None), errors
    if source == "alpaca" and target in ("messages", "prompt_completion"):
        prompt, output = _alpaca_prompt(obj, errors)
        if prompt is None or output is None:
            return source, None, errors
        if target == "messages":
            return source, {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]}, []
        return source, {"prompt": prompt, "completion": output}, []
    if source == "prompt_completion" and target == "prompt_completion":
        prompt = _check_str(obj.get("prompt"), "prompt", errors)
        completion = _check_str(obj.get("completion"), "completion", errors)
        return source, ({"prompt": prompt, "completion": completion} if not errors else None), errors
    if source == "text" and target == "text":
        text = _check_str(obj.get("text"), "text", errors)
        return source, ({"text": text} if not errors else None), errors

    how = {
        "sharegpt": "ShareGPT records convert to messages: set data_format to auto or messages",
        "alpaca": "Alpaca records convert to messages or prompt_completion: set data_format to auto, messages or prompt_completion",
    }.get(source, f"write {HOW_TO.get(target, target)} or set data_format to auto")
    return source, None, [f"record is {source} but data_format is {target}; {how}"]


def _prompt_and_answer(ex: Example) -> tuple[str, str] | None:
    if "messages" in ex:
        msgs = ex["messages"]
        last = msgs[-1]
        answer = last["content"] if not last.get("tool_calls") else json.dumps(last, sort_keys=True)
        return json.dumps([msgs[:-1], ex.get("tools")], sort_keys=True), answer
    if "prompt" in ex:
        return ex["prompt"], ex["completion"]
    return None


def _system_prompt(ex: Example) -> str | None:
    msgs = ex.get("messages")
    if msgs and msgs[0]["role"] == "system":
        content: str = msgs[0]["content"]
        return content
    return None


def inject_system_prompt(ex: Example, system_prompt: str) -> Example:
    """Add the spec's system prompt to a chat example that has none."""
    if system_prompt and "messages" in ex and _system_prompt(ex) is None:
        return {**ex, "messages": [{"role": "system", "content": system_prompt}, *ex["messages"]]}
    return ex


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic hold-out split: (train indices, validation indices), both ascending."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


ExampleCheck = Callable[[Example], str | None]

# The longest line read into memory (bytes, without its newline). A real example is far shorter even at
# a 262144-token context; a longer line is refused by its number and skipped in 1 MiB reads, so a
# 2 GB line (a corrupt or mis-exported file) never sits in memory whole.
MAX_LINE_BYTES = 32 << 20
_SKIP_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"

RawLine = tuple[int, str | None, str | None]
"""(1-based line number, the line's text or None, why the line was refused or None)."""


def read_lines(f: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[RawLine]:
    """The lines of a binary file, each decoded on its own: memory stays under ``max_line_bytes``.

    A line longer than that, or not UTF-8, is refused by its number and the next line read;
    a byte-order mark (as some Windows editors write) is dropped.
    """
    lineno = 0
    while True:
        chunk = f.readline(max_line_bytes + 1)
        if not chunk:
            return
        lineno += 1
        if lineno == 1 and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM):]
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            size = len(chunk)
            while True:
                rest = f.readline(_SKIP_BYTES)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    size -= rest.endswith(b"\n")
                    break
            yield lineno, None, (
                f"line too long ({size} bytes; at most {max_line_bytes} are read): one JSON object per line, "
                "and split long documents into several examples"
            )
            continue
        try:
            yield lineno, chunk.decode("utf-8"), None
        except UnicodeDecodeError as e:
            yield lineno, None, f"not UTF-8 (byte {e.start + 1} of the line); save the file as UTF-8 JSON Lines"


def parse_lines(
    lines: Iterable[str | RawLine],
    wanted: str,
    report: DataReport,
    check_example: ExampleCheck | None = None,
    system_prompt: str = "",
) -> list[tuple[int, Example]]:
    """Parse and convert JSONL lines, recording per-line errors in `report`.

    `check_example` sees each converted example as training will (system prompt injected) and
    returns an error message or None: the chat template's own refusals get line numbers too.
    """
    if wanted not in FORMATS:
        report.fatal.append(f"data_format must be one of {', '.join(FORMATS)}")
        return []
    examples: list[tuple[int, Example]] = []
    first_source: tuple[str, int] | None = None
    for number, item in enumerate(lines, start=1):
        lineno, raw, refused_line = item if isinstance(item, tuple) else (number, item, None)
        if raw is None:
            report.add_error(lineno, refused_line or "unreadable line")
            continue
        if not raw.strip():
            report.blank_lines += 1
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            report.add_error(lineno, f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        except RecursionError:
            report.add_error(lineno, "JSON nested too deeply; an example is a flat object of messages or fields")
            continue
        try:
            source, ex, errors = convert_record(obj, wanted)
        except RecursionError:
            report.add_error(lineno, "JSON nested too deeply; an example is a flat object of messages or fields")
            continue
        if source != "unknown":
            if first_source is None:
                first_source = (source, lineno)
            elif source != first_source[0]:
                report.add_error(
                    lineno,
                    f"record is {source} but line {first_source[1]} is {first_source[0]}; use one format per file",
                )
                continue
        if ex is not None and not errors and check_example is not None:
            refused = check_example(inject_system_prompt(ex, system_prompt))
            if refused:
                errors = [refused]
        for msg in errors:
            report.add_error(lineno, msg)
        if ex is not None and not errors:
            examples.append((lineno, ex))
    if first_source is not None:
        report.source_format = first_source[0]
    return examples


def check_examples(
    examples: list[Example],
    report: DataReport,
    *,
    system_prompt: str = "",
    count_tokens: TokenCounter | None = None,
    max_seq_length: int | None = None,
) -> None:
    """Cross-example checks: counts, duplicates, contradictions, system prompts, token lengths."""
    report.examples = len(examples)
    if report.examples < MIN_EXAMPLES:
        report.fatal.append(f"only {report.examples} valid examples; at least {MIN_EXAMPLES} are required")
    elif report.examples < RECOMMENDED_EXAMPLES:
        report.warnings.append(f"only {report.examples} examples; {RECOMMENDED_EXAMPLES} or more are recommended")

    seen: Counter[str] = Counter(json.dumps(ex, sort_keys=True) for ex in examples)
    report.duplicates = sum(c - 1 for c in seen.values())
    if report.duplicates:
        report.warnings.append(f"{report.duplicates} duplicate examples")
    answers: dict[str, set[str]] = defaultdict(set)
    for ex in examples:
        pa = _prompt_and_answer(ex)
        if pa is not None:
            answers[pa[0]].add(pa[1])
    report.contradictions = sum(1 for a in answers.values() if len(a) > 1)
    if report.contradictions:
        report.warnings.append(
            f"{report.contradictions} prompts appear with different answers (contradictions)"
        )

    if report.format == "messages":
        systems = [_system_prompt(ex) for ex in examples]
        present = [s for s in systems if s is not None]
        distinct = len(set(present))
        differs = sum(1 for s in present if system_prompt and s != system_prompt)
        report.system_prompts = {
            "withSystem": len(present),
            "withoutSystem": len(systems) - len(present),
            "distinct": distinct,
            "differentFromSpec": differs,
        }
        if distinct > 1:
            report.warnings.append(f"{distinct} different system prompts across examples; use one, as at inference")
        if present and len(present) < len(systems):
            fill = "the spec's systemPrompt is injected into those" if system_prompt else "they train without one"
            report.warnings.append(f"{len(systems) - len(present)} examples have no system prompt; {fill}")
        if differs:
            report.warnings.append(f"{differs} examples have a system prompt different from the spec's systemPrompt")
    elif system_prompt:
        report.warnings.append(
            f"systemPrompt is set but data_format {report.format} has no system turn; it is recorded, not injected"
        )

    if count_tokens is not None and examples:
        lengths = sorted(count_tokens(inject_system_prompt(ex, system_prompt)) for ex in examples)
        report.tokens = {
            "p50": percentile(lengths, 50),
            "p95": percentile(lengths, 95),
            "max": lengths[-1],
            "total": sum(lengths),
        }
        if max_seq_length:
            report.max_seq_length = max_seq_length
            over = sum(1 for n in lengths if n > max_seq_length)
            report.truncated_fraction = str(Decimal(over) / Decimal(len(lengths)))[:6] if over else "0"
            if over:
                report.warnings.append(
                    f"{over} of {len(lengths)} examples are longer than max_length {max_seq_length} and will be truncated"
                )


SNIFF_BYTES = 1 << 16


def sniff_file(path: str) -> str | None:
    """Recognise files that are not JSON Lines (a JSON array, CSV/TSV); a message saying what to do, else None.

    Done before line parsing so that such a file gets one clear message instead of one
    "invalid JSON" error per line.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    text = head.decode("utf-8", errors="replace").lstrip()
    if not text:
        return None
    if text.startswith("["):
        count = ""
        try:
            # count the records only where the whole file may sit in memory
            if os.path.getsize(path) <= MAX_LINE_BYTES:
                with open(path, encoding="utf-8-sig") as f:
                    whole = json.load(f)
                if isinstance(whole, list):
                    count = f" of {len(whole)} records"
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            pass
        return (
            f"the file is one JSON array{count}, not JSON Lines: write one JSON object per line "
            "(for example `jq -c '.[]' data.json > data.jsonl`)"
        )
    first = text.splitlines()[0]
    if first.startswith("{"):
        return None
    for sep, name in ((",", "CSV"), ("\t", "TSV"), (";", "CSV")):
        if sep in first:
            columns = len(first.split(sep))
            return (
                f"the file looks like {name} ({columns} columns in its first line), not JSON Lines: convert each row "
                f"to one JSON object per line, e.g. {HOW_TO['prompt_completion']} or {HOW_TO['messages']}"
            )
    return None


def load_jsonl(
    path: str,
    *,
    data_format: str = "auto",
    system_prompt: str = "",
    validation_path: str | None = None,
    validation_split: float = 0.1,
    seed: int = 42,
    count_tokens: TokenCounter | None = None,
    max_seq_length: int | None = None,
    check_example: ExampleCheck | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> LoadedData:
    """Read, check, convert and split a JSONL dataset; the report says whether it is usable."""
    report = DataReport()
    report.sha256 = sha256_path(path)
    not_jsonl = sniff_file(path)
    if not_jsonl:
        report.fatal.append(not_jsonl)
        return LoadedData(report, [], [])
    with open(path, "rb") as f:
        parsed = parse_lines(read_lines(f, max_line_bytes), data_format, report, check_example, system_prompt)
    report.format = _target_format(report.source_format, data_format)
    if report.source_format in ("sharegpt", "alpaca"):
        report.conversion = f"{report.source_format} -> {report.format} (see trainer_image/README.md)"
    examples = [ex for _, ex in parsed]
    check_examples(
        examples, report, system_prompt=system_prompt, count_tokens=count_tokens, max_seq_length=max_seq_length
    )
    examples = [inject_system_prompt(ex, system_prompt) for ex in examples]

    validation: list[Example]
    if validation_path:
        vreport = DataReport()
        not_jsonl = sniff_file(validation_path)
        if not_jsonl:
            vreport.fatal.append(not_jsonl)
            vparsed = []
        else:
            with open(validation_path, "rb") as f:
                vparsed = parse_lines(read_lines(f, max_line_bytes), data_format, vreport, check_example, system_prompt)
        for err in vreport.errors:
            report.add_error(err.line, f"validation file: {err.message}")
        report.errors_total += vreport.errors_total - len(vreport.errors)
        report.fatal.extend(f"validation file: {m}" for m in vreport.fatal)
        validation = [inject_system_prompt(ex, system_prompt) for _, ex in vparsed]
        if not validation and not vreport.errors_total and not vreport.fatal:
            report.fatal.append("validation file: no examples")
        train = examples
        report.validation_source = "file"
    else:
        tr, va = split_indices(len(examples), validation_split, seed)
        train = [examples[i] for i in tr]
        validation = [examples[i] for i in va]
        report.validation_source = "split" if validation else "none"
    report.train, report.validation = len(train), len(validation)
    return LoadedData(report, train, validation)


def _target_format(source: str, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    return {"sharegpt": "messages", "alpaca": "messages"}.get(source, source)
