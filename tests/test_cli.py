"""The command line turns bad input into one error line and exit code 2, before any work."""

import pytest

from study.__main__ import main

pytestmark = pytest.mark.unit


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_arm_is_refused_before_any_stage(tmp_path, capsys):
    store = tmp_path / "store"
    code, err = _run(
        capsys, "train", "--profile", "smoke", "--store", str(store), "--arm", "dpo-aix"
    )
    assert code == 2
    assert "unknown arm 'dpo-aix' (--arm). Did you mean 'dpo-ai'?" in err
    assert not store.exists()  # nothing prepared, labelled or trained


def test_bad_data_gives_one_error_line(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yes", "rejected": \n')
    code, err = _run(
        capsys, "label", "--profile", "smoke", "--store", str(tmp_path / "s"), "--dataset", str(bad)
    )
    assert code == 2
    last = err.strip().splitlines()[-1]  # above it: the datasets library's own log
    assert last.startswith("error: ") and "pairs.jsonl" in last and "line 1" in last
    assert "Traceback" not in err


def test_report_without_results_says_what_to_run(tmp_path, capsys):
    code, err = _run(capsys, "report", "--profile", "smoke", "--findings", str(tmp_path))
    assert code == 2
    assert "results.json does not exist" in err and "python -m study evaluate" in err
