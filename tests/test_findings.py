import copy
import re

import pytest

from study.findings import escape, render

pytestmark = pytest.mark.unit

UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
HOSTILE = [
    "a | b || c",
    "```python\nprint('x')\n```",
    "<script>alert(1)</script><b>bold</b>",
    "# Heading\n## another",
    "x" * 5000,
    "line\n\n| fake | row |\n|---|---|",
]


def _results(base, replies):
    r = copy.deepcopy(base)
    r["examples"] = [
        {"scenario": "emotional_support", "prompt_id": f"p{i}", "arm": "base", "reply": t}
        for i, t in enumerate(replies)
    ]
    return r


def test_hostile_replies_do_not_break_the_tables(smoke_results):
    report = render(_results(smoke_results, HOSTILE))
    section = report.split("## Example replies", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(HOSTILE)
    n_pipes = len(UNESCAPED_PIPE.findall(rows[0]))
    for row in rows:
        assert len(UNESCAPED_PIPE.findall(row)) == n_pipes
    assert "<script>" not in report and "\n# Heading" not in report


def test_escape_is_one_line_and_bounded():
    out = escape("a\nb|c" + "y" * 1000, limit=50)
    assert "\n" not in out and len(out) <= 60 and "\\|" in out


def test_render_is_a_pure_function(smoke_results):
    r = _results(smoke_results, ["hello"])
    assert render(copy.deepcopy(r)) == render(r)


def test_committed_report_is_exactly_what_its_results_render():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "findings" / "cpu"
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert render(results) == (folder / "REPORT.md").read_text(encoding="utf-8")


def test_report_command_rewrites_the_same_bytes(tmp_path, smoke_results):
    import pandas as pd

    from study.__main__ import main
    from study.findings import write_findings

    write_findings(tmp_path / "smoke", smoke_results, pd.DataFrame({"reply": ["x"]}))
    before = (tmp_path / "smoke" / "REPORT.md").read_bytes()
    (tmp_path / "smoke" / "REPORT.md").write_text("stale", encoding="utf-8")
    assert main(["report", "--profile", "smoke", "--findings", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "REPORT.md").read_bytes() == before
    assert (tmp_path / "smoke" / "figures" / "metrics.png").stat().st_size > 1000
