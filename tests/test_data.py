import os
import subprocess
import sys

import pandas as pd
import pytest

from study import data
from study.config import DataConfig

pytestmark = pytest.mark.unit

MULTI = (
    "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?"
    "\n\nHuman: What is tea?\n\nAssistant: A drink made from leaves."
)


def test_transcript_prompt_ends_at_last_assistant_turn():
    prompt, reply = data.split_transcript(MULTI)
    assert prompt.endswith("\n\nHuman: What is tea?\n\nAssistant:")
    assert reply == " A drink made from leaves."
    assert prompt + reply == MULTI


def test_pair_diverging_before_last_turn_splits_at_common_assistant_prefix():
    chosen = "\n\nHuman: Q1\n\nAssistant: A1 kind\n\nHuman: Q2\n\nAssistant: A2"
    rejected = "\n\nHuman: Q1\n\nAssistant: A1 rude\n\nHuman: Q2\n\nAssistant: B2"
    prompt, c, r = data.split_pair(chosen, rejected)
    assert prompt == "\n\nHuman: Q1\n\nAssistant:"
    assert prompt + c == chosen and prompt + r == rejected
    assert c.strip() and r.strip()


def test_same_conversation_pair_splits_at_last_turn():
    prompt, c, r = data.split_pair(MULTI, MULTI.replace("leaves.", "stones."))
    assert prompt.endswith("What is tea?\n\nAssistant:")
    assert c == " A drink made from leaves." and r == " A drink made from stones."


def _hh(prompt_q, c, r):
    p = f"\n\nHuman: {prompt_q}\n\nAssistant:"
    return {"subset": "helpful-x", "chosen": p + c, "rejected": p + r}


def test_bad_pairs_are_dropped_and_counted_and_the_sample_is_still_met():
    good = [_hh(f"q{i}", f" good {i}", f" bad {i}") for i in range(10)]
    bad = [
        _hh("same", " equal", " equal"),
        _hh("empty", " ", " something"),
        {"subset": "helpful-x", "chosen": "no turns here", "rejected": "no turns there"},
        {"subset": "helpful-x", "chosen": None, "rejected": "\n\nHuman: x\n\nAssistant: y"},
        {"subset": "helpful-x", "chosen": float("nan"), "rejected": 3},
    ]
    raw = pd.DataFrame(bad[:2] + good[:5] + bad[2:] + good[5:])
    frame, dropped = data.to_pairs_frame(raw, "test")
    assert dropped == {
        "non_string": 2,
        "no_assistant_turn": 1,
        "empty_reply": 1,
        "equal_replies": 1,
    }
    assert len(frame) == 10
    sample = data.seeded_sample(frame, 8, seed=1)
    assert len(sample) == 8 and sample["chosen"].str.strip().ne("").all()


def test_rm_static_layout_is_accepted():
    raw = pd.DataFrame(
        {"prompt": ["\n\nHuman: hi\n\nAssistant:"], "chosen": [" yes"], "rejected": [" no"]}
    )
    frame, dropped = data.to_pairs_frame(raw, "test")
    assert frame.iloc[0]["chosen"] == " yes" and sum(dropped.values()) == 0


def test_missing_columns_name_the_accepted_layouts():
    with pytest.raises(data.DataError, match="Accepted layouts"):
        data.to_pairs_frame(pd.DataFrame({"text": ["x"]}), "file.jsonl")


def test_seeded_sample_equals_pandas_sample():
    frame = pd.DataFrame({"x": range(1000)})
    ours = data.seeded_sample(frame, 50, seed=42)
    assert ours.index.tolist() == frame.sample(n=50, random_state=42).index.tolist()


def test_seeded_sample_too_large_names_the_setting():
    with pytest.raises(data.DataError, match="sample_size"):
        data.seeded_sample(pd.DataFrame({"x": range(3)}), 5, seed=0)


def _sample_in_subprocess(hash_seed: str) -> str:
    code = (
        "from study import data; from study.config import DataConfig;"
        "d = data.prepare(DataConfig(source='synthetic', eval_split=None, sample_size=20));"
        "print(','.join(d.train['pair_id']) + '|' + ','.join(sorted(d.eval['pair_id'])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_seeded_sample_is_identical_across_hash_seeds():
    assert _sample_in_subprocess("1") == _sample_in_subprocess("12345")


def test_training_pairs_and_evaluation_prompts_are_disjoint():
    d = data.prepare(DataConfig(source="synthetic", eval_split=None, sample_size=30))
    assert set(d.train["prompt"]).isdisjoint(set(d.eval["prompt"]))
    train_q = set(d.train["prompt"].map(data.first_human_turn))
    assert train_q.isdisjoint(set(d.eval["prompt"].map(data.first_human_turn)))


def test_local_jsonl_gz_folder_loads(tmp_path):
    import gzip
    import json

    rows = [_hh(f"q{i}", " a", " b") for i in range(4)]
    with gzip.open(tmp_path / "helpful-one.jsonl.gz", "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")
    pairs = data.load_pairs(str(tmp_path))
    assert len(pairs.frame) == 4 and set(pairs.frame["subset"]) == {"helpful-one"}


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": oops}\n', encoding="utf-8")
    with pytest.raises(data.DataError, match="line 2"):
        data.load_pairs(str(path))


def test_missing_hub_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(data.DataError, match="STUDY_DATASET"):
        data.load_pairs("no-such-user/no-such-dataset")
