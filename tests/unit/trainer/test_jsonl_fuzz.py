"""Fuzzed JSONL through the reader behind validate-data and inspection (data.load_jsonl).

Random bytes, truncated records, over-long lines, deep nesting, invalid UTF-8 and NUL bytes: never
a traceback, every refused line named by its number. The memory bound on a multi-hundred-MB line
is in tests/unit/trainer/test_jsonl_huge_line.py (validate-data in a subprocess).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from spec_strategies import BOUNDED

from finetune_trainer import data

MAX_LINE = 12_000  # bytes: small, so the generated lines cross it; above the nesting that exhausts the recursion limit

GOOD = [json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}).encode() for i in range(3)]

# (bytes of one line without its newline, whether the line is valid)
LINES = st.one_of(
    st.sampled_from(GOOD).map(lambda b: (b, True)),
    st.sampled_from(GOOD).flatmap(lambda b: st.integers(1, len(b) - 1).map(lambda n: (b[:n], False))),  # truncated
    st.binary(max_size=64).filter(lambda b: b"\n" not in b and b.strip()).map(lambda b: (b, None)),  # random bytes
    st.integers(1, 5000).map(lambda n: (b"[" * n + b"]" * n, False)),  # deep nesting
    st.integers(1, 1500).map(lambda n: (b'{"prompt": ' + b'{"a": ' * n + b"1" + b"}" * n + b', "completion": "x"}', False)),
    st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80abc"]).map(
        lambda bad: (b'{"prompt": "' + bad + b'", "completion": "x"}', False)),  # invalid UTF-8
    st.integers(0, 8).map(lambda n: (b'{"prompt": "q\x00' + b"\x00" * n + b'", "completion": "x"}', False)),  # NUL bytes
    st.integers(MAX_LINE + 1, 2 * MAX_LINE).map(
        lambda n: (b'{"prompt": "' + b"x" * n + b'", "completion": "x"}', False)),  # over-long
)


@settings(BOUNDED, max_examples=200)
@given(st.lists(LINES, min_size=1, max_size=20), st.booleans())
def test_fuzzed_jsonl_never_raises_and_names_each_refused_line(lines: list[tuple[bytes, bool | None]], final_newline: bool) -> None:
    body = b"\n".join(b for b, _ in lines) + (b"\n" if final_newline else b"")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        path.write_bytes(body)
        report = data.load_jsonl(str(path), max_line_bytes=MAX_LINE).report
        not_jsonl = data.sniff_file(str(path))
    json.dumps(report.to_json())  # the report is JSON, whatever the input
    assert all(isinstance(m, str) and m for m in report.fatal)
    if not_jsonl:
        # a JSON array or CSV look-alike: one message for the whole file, not one per line
        assert report.fatal == [not_jsonl] and report.errors_total == 0
        return
    named = {e.line for e in report.errors}
    assert all(1 <= n <= len(lines) for n in named)
    bad = [n for n, (_, ok) in enumerate(lines, start=1) if ok is False]
    assert report.errors_total >= len(bad)
    assert set(bad[: data.MAX_LISTED_ERRORS]) <= named or len(named) == data.MAX_LISTED_ERRORS
    assert all(e.message for e in report.errors)


def test_read_lines_refuses_an_over_long_line_by_number_and_reads_on() -> None:
    import io

    body = b'{"a": 1}\n' + b"x" * 10_000 + b"\n" + b'{"b": 2}\n'
    got = list(data.read_lines(io.BytesIO(body), max_line_bytes=100))
    assert [(n, text is None) for n, text, _ in got] == [(1, False), (2, True), (3, False)]
    assert "line too long (10000 bytes" in (got[1][2] or "")
    assert got[2][1] == '{"b": 2}\n'


def test_invalid_utf8_is_refused_per_line_not_for_the_whole_file(tmp_path: Path) -> None:
    records = [json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}).encode() for i in range(12)]
    records[3] = b'{"prompt": "caf\xe9", "completion": "x"}'  # Latin-1, not UTF-8
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(records) + b"\n")
    report = data.load_jsonl(str(path)).report
    assert not report.fatal and report.errors_total == 1
    (error,) = report.errors
    assert error.line == 4 and "not UTF-8 (byte 16 of the line)" in error.message
    assert report.examples == 11
