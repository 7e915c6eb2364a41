"""Bad input files: each one is refused with the file, the place, the field and the fix named."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study import data
from study.config import DataConfig

P = "\n\nHuman: a question?\n\nAssistant:"


def _row(i: int = 0, **fields) -> dict:
    prompt = f"\n\nHuman: question {i}?\n\nAssistant:"
    return {"chosen": f"{prompt} kind reply", "rejected": f"{prompt} rude reply", **fields}


def _line(row: dict) -> str:
    return json.dumps(row) + "\n"


def _write(path: Path, content: str | bytes) -> Path:
    raw = content.encode("utf-8") if isinstance(content, str) else content
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)
    return path


def _error(path: Path) -> str:
    with pytest.raises(data.DataError) as info:
        data.load_pairs(str(path))
    assert isinstance(info.value, ValueError)
    return str(info.value)


def _assert_words(message: str, *words: str) -> None:
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# -- columns ----------------------------------------------------------------------------------

COLUMN_CASES = [
    pytest.param(
        {"Chosen": f"{P} a", "rejected": f"{P} b"},
        ["missing column 'chosen'", "Column 'Chosen': did you mean 'chosen'?", "Rename it"],
        id="capitalised-chosen",
    ),
    pytest.param(
        {"choosen": f"{P} a", "rejected": f"{P} b"},
        ["missing column 'chosen'", "Column 'choosen': did you mean 'chosen'?", "Rename it"],
        id="misspelt-chosen",
    ),
    pytest.param(
        {"chosen": f"{P} a", "Rejected ": f"{P} b"},
        ["missing column 'rejected'", "did you mean 'rejected'?"],
        id="rejected-with-case-and-space",
    ),
    pytest.param(
        {"text": "x", "label": 1},
        ["missing columns 'chosen', 'rejected'", "found ['label', 'text']", "Accepted layouts"],
        id="no-layout-at-all",
    ),
    pytest.param(
        {"Prompt": P, "chosen": " a", "rejected": " b"},
        ["column 'Prompt': did you mean 'prompt'?", "Rename it to 'prompt'"],
        id="capitalised-prompt",
    ),
]


@pytest.mark.unit
@pytest.mark.parametrize(("row", "words"), COLUMN_CASES)
def test_missing_or_misnamed_column_is_named_with_a_suggestion(tmp_path, row, words):
    path = _write(tmp_path / "pairs.jsonl", _line(row) * 3)
    message = _error(path)
    _assert_words(message, str(path), *words)


@pytest.mark.unit
def test_misnamed_column_in_one_file_of_a_folder_names_that_file(tmp_path):
    _write(tmp_path / "helpful-a.jsonl", _line(_row()))
    _write(tmp_path / "helpful-b.jsonl", _line({"Chosen": f"{P} a", "rejected": f"{P} b"}))
    message = _error(tmp_path)
    _assert_words(message, "helpful-b.jsonl", "did you mean 'chosen'?")


@pytest.mark.unit
def test_folder_mixing_both_layouts_is_refused(tmp_path):
    _write(tmp_path / "a.jsonl", _line(_row()))
    _write(tmp_path / "b.jsonl", _line({"prompt": P, "chosen": " x", "rejected": " y"}))
    message = _error(tmp_path)
    _assert_words(message, str(tmp_path), "mix the two layouts", "b.jsonl", "a.jsonl", "one layout")


# -- malformed JSON ---------------------------------------------------------------------------

GOOD = _line(_row(1))
ARRAY_BAD = json.dumps([_row(1)], indent=1)[:-2] + ",\n {oops}\n]"
LINES_FIX = "Each line must be one JSON object"
JSON_CASES = [
    pytest.param("pairs.jsonl", GOOD + '{"chosen": oops}\n', "line 2, column 12", id="jsonl"),
    pytest.param("pairs.jsonl.gz", GOOD + GOOD + "{oops\n", "line 3, column 2", id="jsonl.gz"),
    pytest.param("pairs.json", GOOD + '{"chosen": "a",}\n', "line 2, column 16", id="json-lines"),
    pytest.param("pairs.json.gz", "\n" + GOOD + "{\n", "line 3, column 2", id="json.gz-lines"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("name", "content", "place"), JSON_CASES)
def test_malformed_json_line_names_file_line_and_column(tmp_path, name, content, place):
    path = _write(tmp_path / name, content)
    _assert_words(_error(path), str(path), place, LINES_FIX, "fix or remove it")


@pytest.mark.unit
def test_malformed_json_array_names_file_line_and_column(tmp_path):
    path = _write(tmp_path / "pairs.json", ARRAY_BAD)
    _assert_words(_error(path), str(path), "line 6, column 3", "JSON array must hold objects")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(GOOD + "[1, 2]\n", ["line 2 is an array, not an object"], id="array-line"),
        pytest.param(GOOD + '"text"\n', ["line 2 is a string, not an object"], id="string-line"),
    ],
)
def test_json_line_that_is_not_an_object_is_named(tmp_path, content, words):
    path = _write(tmp_path / "pairs.jsonl", content)
    _assert_words(_error(path), str(path), *words, '{"chosen": "...", "rejected": "..."}')


# -- encoding and empty inputs ----------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz", "pairs.json"])
def test_non_utf8_file_names_the_byte_offset_and_the_fix(tmp_path, name):
    prefix = GOOD.encode("utf-8")
    bad = prefix + '{"chosen": "caf\xe9", "rejected": "x"}\n'.encode("latin-1")
    path = _write(tmp_path / name, bad)
    offset = len(prefix) + len(b'{"chosen": "caf')
    message = _error(path)
    _assert_words(message, str(path), "not UTF-8", f"byte {offset}", "line 2", "as UTF-8")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("pairs.jsonl", b"", id="empty-jsonl"),
        pytest.param("pairs.jsonl", b"\n  \n\t\n", id="blank-jsonl"),
        pytest.param("pairs.jsonl.gz", b"", id="empty-jsonl.gz"),
        pytest.param("pairs.json", b"\xef\xbb\xbf\n", id="bom-only-json"),
        pytest.param("pairs.parquet", b"", id="empty-parquet"),
    ],
)
def test_empty_file_is_named(tmp_path, name, content):
    path = _write(tmp_path / name, content)
    _assert_words(_error(path), str(path), "the file is empty", "remove")


@pytest.mark.unit
def test_parquet_without_rows_is_named(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(
        {"chosen": pd.Series([], dtype=str), "rejected": pd.Series([], dtype=str)}
    ).to_parquet(path)
    _assert_words(_error(path), str(path), "has no rows")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "fix"),
    [("pairs.jsonl.gz", "replace the file"), ("pairs.parquet", "rewrite the file")],
    ids=["gzip", "parquet"],
)
def test_damaged_file_is_named(tmp_path, name, fix):
    path = tmp_path / name
    path.write_bytes(b"neither gzip nor parquet\n")
    _assert_words(_error(path), str(path), "cannot be read", fix)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("files", "words"),
    [
        pytest.param({}, ["folder with no data files", "it is empty"], id="empty-folder"),
        pytest.param(
            {"pairs.csv": "chosen,rejected\n"},
            ["no data files", "it holds pairs.csv"],
            id="csv-only",
        ),
    ],
)
def test_folder_without_data_files_is_named(tmp_path, files, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    _assert_words(_error(tmp_path), str(tmp_path), *words, ".jsonl")


@pytest.mark.unit
def test_unsupported_file_type_names_the_suffixes_and_the_conversion(tmp_path):
    path = _write(tmp_path / "pairs.csv", "chosen,rejected\na,b\n")
    _assert_words(_error(path), str(path), "unsupported file type", ".jsonl.gz", "to_json")


# -- cleaning and sampling --------------------------------------------------------------------


@pytest.mark.unit
def test_dataset_empty_after_cleaning_names_the_source_and_the_reasons(tmp_path):
    rows = [_row(0), {"chosen": "no turns", "rejected": "none here"}, {"chosen": None}]
    rows[0]["rejected"] = rows[0]["chosen"]
    path = _write(tmp_path / "pairs.jsonl", "".join(map(_line, rows)))
    message = _error(path)
    _assert_words(message, str(path), "no usable pairs after cleaning", "3 rows read")
    assert re.search(
        r"'non_string': 1, 'no_assistant_turn': 1, 'empty_reply': 0, "
        r"'equal_replies': 1",
        message,
    )


@pytest.mark.unit
def test_rm_static_with_fuzzy_prompt_name_hints_the_rename(tmp_path):
    row = {"prompts": P, "chosen": " a", "rejected": " b"}
    message = _error(_write(tmp_path / "pairs.jsonl", _line(row)))
    _assert_words(message, "no usable pairs", "If 'prompts' holds the prompts, rename it")


@pytest.mark.unit
def test_sample_size_larger_than_valid_rows_names_setting_source_and_limit(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", "".join(_line(_row(i)) for i in range(12)))
    cfg = DataConfig(source=str(path), eval_split=None, sample_size=500)
    with pytest.raises(data.DataError) as info:
        data.prepare(cfg)
    message = str(info.value)
    _assert_words(message, "data.sample_size=500", str(path), "12 rows read")
    limit = int(re.search(r"at most (\d+)", message).group(1))
    assert 0 < limit < 12
    assert len(data.prepare(DataConfig(str(path), None, sample_size=limit)).train) == limit


def _rows_with_missing_replies() -> list[dict]:
    rows = [_row(i) for i in range(4)]
    rows[1] = {"chosen": None, "rejected": rows[1]["rejected"]}
    rows[2] = {"chosen": rows[2]["chosen"]}  # a missing field
    return rows


def _as_jsonl(path: Path) -> Path:
    return _write(path / "pairs.jsonl", "".join(map(_line, _rows_with_missing_replies())))


def _as_json_array(path: Path) -> Path:
    return _write(path / "pairs.json", json.dumps(_rows_with_missing_replies()))


def _as_parquet(path: Path) -> Path:
    frame = pd.DataFrame(_rows_with_missing_replies())
    frame.loc[3, "rejected"] = np.nan  # what pandas reads from an empty CSV cell
    frame.to_parquet(path / "pairs.parquet")
    return path / "pairs.parquet"


def _as_pandas_json(path: Path) -> Path:
    frame = pd.DataFrame(_rows_with_missing_replies())
    frame.loc[3, "rejected"] = np.nan
    frame.to_json(path / "pairs.jsonl", orient="records", lines=True)
    return path / "pairs.jsonl"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("writer", "n_missing"),
    [
        pytest.param(_as_jsonl, 2, id="jsonl-null-and-missing-field"),
        pytest.param(_as_json_array, 2, id="json-array-null-and-missing-field"),
        pytest.param(_as_parquet, 3, id="parquet-none-and-nan"),
        pytest.param(_as_pandas_json, 3, id="pandas-jsonl-nan"),
    ],
)
def test_none_and_nan_replies_are_dropped_as_non_string(tmp_path, writer, n_missing):
    pairs = data.load_pairs(str(writer(tmp_path)))
    assert pairs.n_raw == 4 and pairs.dropped["non_string"] == n_missing
    assert len(pairs.frame) == 4 - n_missing
    for column in ("prompt", "chosen", "rejected"):
        assert pairs.frame[column].map(lambda v: isinstance(v, str) and v.strip() != "").all()


@pytest.mark.unit
def test_folder_names_the_files_it_ignores(tmp_path, caplog):
    good = {
        "chosen": "\n\nHuman: hi\n\nAssistant: yes",
        "rejected": "\n\nHuman: hi\n\nAssistant: no",
    }
    (tmp_path / "pairs.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "more.csv").write_text("chosen,rejected\n")
    (tmp_path / "MORE.JSONL").write_text(json.dumps(good) + "\n")
    (tmp_path / "README.md").write_text("notes\n")
    with caplog.at_level("WARNING", logger="study.data"):
        assert data._data_files(tmp_path) == [tmp_path / "pairs.jsonl"]
    assert "ignored 2 file(s) that are not data files: MORE.JSONL, more.csv" in caplog.text
