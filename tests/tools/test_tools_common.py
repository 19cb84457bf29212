"""tools/_common.py: the flag parser and the JSON report every tool shares, and TRL's precision
arguments the benchmarks record (the CPU description is rlhf_jax.hostenv's: tests/test_hostenv.py)."""
import json

import pytest

from tools import _common
from tools._common import parser, report, trl_settings


def test_report_writes_what_it_prints(tmp_path, capsys):
    result = {"b": [1, 2.5], "a": "é"}
    out = tmp_path / "new" / "folder" / "result.json"
    text = report(result, str(out), indent=1)
    printed = capsys.readouterr().out
    assert printed == text + "\n" == out.read_text(encoding="utf-8")
    assert text == '{\n "b": [\n  1,\n  2.5\n ],\n "a": "\\u00e9"\n}' and json.loads(text) == result


def test_report_without_out_only_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report({"x": 1}, ensure_ascii=False) == '{\n  "x": 1\n}'
    assert capsys.readouterr().out == '{\n  "x": 1\n}\n' and list(tmp_path.iterdir()) == []


def test_parser_shows_the_docstring_and_adds_out_on_request():
    doc = "A tool.\n\n    python tools/x.py --n 2\n"
    ap = parser(doc, out=True)
    ap.add_argument("--n", type=int, default=1)
    assert ap.parse_args([]).out == "" and ap.parse_args(["--out", "r.json", "--n", "2"]).out == "r.json"
    assert "    python tools/x.py --n 2" in ap.format_help()  # the docstring's layout is kept
    assert not hasattr(parser(doc).parse_args([]), "out")


def test_trl_settings_match_our_computation_or_leave_trl_its_defaults():
    assert trl_settings("matched") == {"bf16": False, "fp16": False, "gradient_checkpointing": False}
    assert trl_settings("default") == {}
    trl_settings("matched")["bf16"] = True  # a copy: the table is not changed by a caller
    assert _common.TRL_SETTINGS["matched"]["bf16"] is False
    with pytest.raises(SystemExit, match="unknown TRL settings 'bf32'; valid: matched, default"):
        trl_settings("bf32")
