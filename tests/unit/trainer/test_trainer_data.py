"""Data checks: the formats users bring, and a matrix of bad datasets with line numbers and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_trainer.data import load_jsonl, split_indices
from finetune_trainer.testing import (
    alpaca_records,
    chat_records,
    prompt_completion_records,
    sharegpt_records,
    write_jsonl,
)

SECRET = "SECRET-TEXT-42"


def _load(tmp_path: Path, records: list, **kw):
    return load_jsonl(write_jsonl(str(tmp_path / "d.jsonl"), records), **kw)


def _chat(user: str = "hi", answer: str = "ok") -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


GOOD = [_chat(f"question {i}", f"answer {i}") for i in range(12)]


def _with(lines: dict[int, str], base: list[str] = GOOD) -> list[str]:
    """GOOD with some 1-based lines replaced."""
    out = list(base)
    for n, text in lines.items():
        out[n - 1] = text
    return out


BAD = {
    "invalid json": (_with({4: '{"messages": [' + SECRET}), [(4, "invalid JSON (Expecting value at column")]),
    "not an object": (_with({2: "[1, 2]"}), [(2, "expected a JSON object, got array")]),
    "unknown role": (
        _with({3: json.dumps({"messages": [{"role": "bot", "content": SECRET}, {"role": "assistant", "content": "a"}]})}),
        [(3, "messages[0].role is not one of system, user, assistant")],
    ),
    "empty content": (
        _with({5: json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]})}),
        [(5, "messages[0].content is empty")],
    ),
    "wrong type": (
        _with({6: json.dumps({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]})}),
        [(6, "messages[0].content must be a string or an array of text parts, got integer")],
    ),
    "ends with user": (
        _with({7: json.dumps({"messages": [{"role": "user", "content": "q"}]})}),
        [(7, "messages must end with an assistant message (the last has role user)")],
    ),
    "system not first": (
        _with({8: json.dumps({"messages": [
            {"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}
        ]})}),
        [(8, "messages[1] has role system; a system message is only allowed first")],
    ),
    "messages not a list": (_with({9: json.dumps({"messages": "hello"})}), [(9, "messages must be an array, got string")]),
    "unknown shape": (_with({10: json.dumps({"question": "q", "answer": "a"})}), [(10, "no known format (keys: answer, question)")]),
    "image part": (
        _with({4: json.dumps({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                         {"type": "image_url", "image_url": {"url": "http://x/" + SECRET}}]},
            {"role": "assistant", "content": "a cat"}]})}),
        [(4, "messages[0].content[1] is an image_url part; this trainer fine-tunes text-only models")],
    ),
    "weight on a user message": (
        _with({5: json.dumps({"messages": [{"role": "user", "content": "q", "weight": 0},
                                           {"role": "assistant", "content": "a"}]})}),
        [(5, "messages[0].weight is only meaningful on assistant messages")],
    ),
    "weight not 0 or 1": (
        _with({5: json.dumps({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a", "weight": 0.5}]})}),
        [(5, "messages[1].weight must be 0 (not trained on) or 1 (trained on)")],
    ),
    "every assistant weight 0": (
        _with({5: json.dumps({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a", "weight": 0}]})}),
        [(5, "messages: every assistant message has weight 0")],
    ),
    "tool call arguments not JSON": (
        _with({3: json.dumps({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{" + SECRET}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": "a"}]})}),
        [(3, "messages[1].tool_calls[0].function.arguments is not valid JSON")],
    ),
    "tool message without a call": (
        _with({3: json.dumps({"messages": [
            {"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": "a"}]})}),
        [(3, "messages[1] has role tool but does not follow an assistant message with tool_calls")],
    ),
    "tool_call_id unknown": (
        _with({3: json.dumps({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c2", "content": "r"},
            {"role": "assistant", "content": "a"}]})}),
        [(3, "messages[2].tool_call_id matches no earlier tool_calls[].id")],
    ),
    "null content without tool calls": (
        _with({3: json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]})}),
        [(3, "messages[1].content must be a string or an array of text parts, got null")],
    ),
    "tools not a list": (
        _with({3: json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                              "tools": {"name": "f"}})}),
        [(3, "tools must be a non-empty array of function definitions")],
    ),
    "mixed formats": (
        _with({11: json.dumps({"prompt": "p", "completion": "c"})}),
        [(11, "record is prompt_completion but line 1 is messages; use one format per file")],
    ),
    "sharegpt unknown speaker": (
        [json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})] * 11
        + [json.dumps({"conversations": [{"from": "narrator", "value": SECRET}, {"from": "gpt", "value": "a"}]})],
        [(12, "conversations[0].from is not one of")],
    ),
    "alpaca missing output": (
        [json.dumps({"instruction": "do", "input": "", "output": "x"})] * 10
        + [json.dumps({"instruction": "do", "output": ""})],
        [(11, "output is empty")],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dataset_is_refused_with_line_numbers(tmp_path, case):
    lines, expected = BAD[case]
    report = _load(tmp_path, lines).report
    assert not report.usable
    got = [(e.line, e.message) for e in report.errors]
    assert len(got) == len(expected), got
    for (line, msg), (want_line, want_msg) in zip(got, expected, strict=True):
        assert line == want_line and msg.startswith(want_msg), (line, msg)
    text = json.dumps(report.to_json()) + json.dumps(report.summary())
    assert SECRET not in text and "bot" not in text and "narrator" not in text


def test_errors_are_capped_with_a_total_count(tmp_path):
    report = _load(tmp_path, ["not json"] * 100 + GOOD).report
    assert report.errors_total == 100 and len(report.errors) == 20
    assert report.to_json()["errorsTotal"] == 100 and report.summary()["errorsTotal"] == 100
    assert len(report.summary()["errors"]) == 5


def test_too_few_examples_refused_and_few_warned(tmp_path):
    few = _load(tmp_path, GOOD[:9]).report
    assert not few.usable and few.fatal == ["only 9 valid examples; at least 10 are required"]
    some = _load(tmp_path, GOOD).report
    assert some.usable and any("50 or more are recommended" in w for w in some.warnings)


def test_duplicates_and_contradictions_are_counted(tmp_path):
    lines = GOOD + [GOOD[0], GOOD[0], _chat("question 1", "a different answer")]
    report = _load(tmp_path, lines).report
    assert report.usable
    assert report.duplicates == 2 and report.contradictions == 1


def test_system_prompt_consistency(tmp_path):
    records = chat_records(20, system_prompt="A") + chat_records(5, seed=1, system_prompt="B") + chat_records(5, seed=2, system_prompt=None)
    loaded = _load(tmp_path, records, system_prompt="A")
    sp = loaded.report.system_prompts
    assert sp == {"withSystem": 25, "withoutSystem": 5, "distinct": 2, "differentFromSpec": 5}
    assert any("2 different system prompts" in w for w in loaded.report.warnings)
    assert any("5 examples have no system prompt; the spec's systemPrompt is injected" in w for w in loaded.report.warnings)
    # Injected into the examples without one, so training and inference agree.
    assert all(ex["messages"][0]["role"] == "system" for ex in loaded.train + loaded.validation)


@pytest.mark.parametrize(
    ("records", "source", "fmt"),
    [
        (chat_records(20), "messages", "messages"),
        (prompt_completion_records(20), "prompt_completion", "prompt_completion"),
        (sharegpt_records(20), "sharegpt", "messages"),
        (alpaca_records(20), "alpaca", "messages"),
        ([{"text": f"plain text {i}"} for i in range(20)], "text", "text"),
    ],
)
def test_formats_users_bring(tmp_path, records, source, fmt):
    loaded = _load(tmp_path, records)
    assert loaded.report.usable, loaded.report.to_json()
    assert (loaded.report.source_format, loaded.report.format) == (source, fmt)
    ex = loaded.train[0]
    if fmt == "messages":
        assert [m["role"] for m in ex["messages"]][-2:] == ["user", "assistant"]
    if source == "alpaca":
        # instruction + blank line + input become the user turn; output the assistant turn.
        assert ex["messages"][0]["content"].startswith("Add the numbers.\n\nWhat is")


def test_alpaca_as_prompt_completion_and_sharegpt_refused_as_text(tmp_path):
    pc = _load(tmp_path, alpaca_records(12), data_format="prompt_completion")
    assert pc.report.usable and set(pc.train[0]) == {"prompt", "completion"}
    refused = _load(tmp_path, sharegpt_records(12), data_format="text").report
    assert not refused.usable
    assert "ShareGPT records convert to messages: set data_format to auto or messages" in refused.errors[0].message


def test_token_statistics_and_truncation(tmp_path):
    records = [{"text": "x" * n} for n in range(1, 101)]
    report = _load(tmp_path, records, count_tokens=lambda ex: len(ex["text"]), max_seq_length=90).report
    assert report.tokens == {"p50": 50, "p95": 95, "max": 100, "total": 5050}
    assert report.truncated_fraction == "0.1"
    assert any("10 of 100 examples are longer than max_length 90" in w for w in report.warnings)


def test_split_is_deterministic_and_seeded(tmp_path):
    assert split_indices(100, 0.1, 42) == split_indices(100, 0.1, 42)
    train, val = split_indices(100, 0.1, 42)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 100
    assert split_indices(100, 0.1, 7)[1] != val
    loaded = _load(tmp_path, chat_records(50), validation_split=0.2, seed=1)
    assert (loaded.report.train, loaded.report.validation) == (40, 10)


def test_validation_file_replaces_the_split(tmp_path):
    val = write_jsonl(str(tmp_path / "v.jsonl"), chat_records(5, seed=9))
    loaded = load_jsonl(write_jsonl(str(tmp_path / "t.jsonl"), chat_records(20)), validation_path=val)
    assert (loaded.report.train, loaded.report.validation, loaded.report.validation_source) == (20, 5, "file")


def test_validate_data_command(tmp_path):
    good = write_jsonl(str(tmp_path / "good.jsonl"), chat_records(30))
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), GOOD + ["{oops"])
    cmd = [sys.executable, "-m", "finetune_trainer", "validate-data"]
    ok = subprocess.run([*cmd, good, "--system-prompt", "You are a terse calculator."], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "usable"
    refused = subprocess.run([*cmd, bad, "--format", "messages"], capture_output=True, text=True)
    assert refused.returncode == 10
    report = json.loads(refused.stdout)
    assert report["verdict"] == "unusable" and report["errors"][0]["line"] == 13


TOOL_CHAT = {
    "messages": [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "21 degrees.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}


def test_openai_tool_calling_parts_and_weights_are_accepted(tmp_path):
    records = [TOOL_CHAT] * 12 + [{"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "draft", "weight": 0},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "final"}]}]
    loaded = _load(tmp_path, records, validation_split=0)
    assert loaded.report.usable, loaded.report.to_json()
    ex = loaded.train[0]
    assert ex["tools"] == TOOL_CHAT["tools"]
    assert ex["messages"][1]["content"] == "Weather in Paris?"  # text parts joined
    call = ex["messages"][2]
    assert call["content"] is None and call["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert ex["messages"][3] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"}
    assert [m.get("weight") for m in loaded.train[-1]["messages"]] == [None, 0, None, None]


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(GOOD).encode() + b"\n")
    report = load_jsonl(str(path)).report
    assert report.usable and report.examples == 12 and report.errors_total == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (json.dumps([json.loads(line) for line in GOOD], indent=2), "the file is one JSON array of 12 records, not JSON Lines"),
        ("[" + ",".join(GOOD) + "]", "the file is one JSON array of 12 records"),
        ("prompt,completion\n" + "\n".join(f"q{i},a{i}" for i in range(30)), "the file looks like CSV (2 columns"),
        ("prompt\tcompletion\n" + "\n".join(f"q{i}\ta{i}" for i in range(30)), "the file looks like TSV (2 columns"),
    ],
)
def test_json_array_and_csv_are_named_with_what_to_do(tmp_path, body, says):
    path = tmp_path / "data.jsonl"
    path.write_text(body)
    report = load_jsonl(str(path)).report
    assert not report.usable and report.errors_total == 0  # one message, not one per line
    assert len(report.fatal) == 1 and report.fatal[0].startswith(says), report.fatal
    assert "JSON object per line" in report.fatal[0]


def test_validate_data_on_a_missing_path_or_a_uri_is_a_clear_config_error(tmp_path):
    cmd = [sys.executable, "-m", "finetune_trainer", "validate-data"]
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("FINETUNE_TERMINATION_LOG", "KUBERNETES_SERVICE_HOST")}
    for target, says in ((str(tmp_path / "nope.jsonl"), "no such file"), ("s3://bucket/data.jsonl", "'s3://' URIs are not fetched")):
        out = subprocess.run([*cmd, target], capture_output=True, text=True, env=env)
        assert out.returncode == 11, out.stderr
        assert says in out.stderr and "Traceback" not in out.stderr


def test_help_lists_the_subcommands_and_writes_no_termination_log(tmp_path, monkeypatch):
    from finetune_trainer import errors

    env = {k: v for k, v in __import__("os").environ.items() if k not in ("FINETUNE_TERMINATION_LOG", "KUBERNETES_SERVICE_HOST")}
    out = subprocess.run([sys.executable, "-m", "finetune_trainer", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    for command in ("train", "inspect", "validate-data"):
        assert command in out.stdout
    # Outside a pod (no service environment, no kubelet-mounted file) nothing is written, even as root.
    monkeypatch.delenv("FINETUNE_TERMINATION_LOG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert errors.termination_path() is None
    missing = tmp_path / "termination-log"
    monkeypatch.setattr(errors, "TERMINATION_LOG_DEFAULT", str(missing))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert errors.termination_path() is None  # the service environment alone is not a pod
    missing.write_text("")
    assert errors.termination_path() == str(missing)
