"""Properties that hold for any input: transcript splitting, cleaning and scoring."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study import data, scoring
from study.prompts import ASSISTANT, HUMAN

pytestmark = pytest.mark.unit

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Texts built from the markers themselves reach the edge cases plain random text almost never
# does: adjacent, nested and trailing turns.
FRAGMENTS = st.sampled_from([HUMAN, ASSISTANT, " ", "x", "\n", "Assistant:", "\n\n", "é", "😀"])
TRANSCRIPTS = st.one_of(st.text(), st.lists(FRAGMENTS, max_size=12).map("".join))


@FAST
@given(TRANSCRIPTS)
def test_split_transcript_cuts_at_the_last_assistant_turn(text):
    split = data.split_transcript(text)
    if split is None:
        assert ASSISTANT not in text
        return
    prompt, reply = split
    assert prompt + reply == text
    assert prompt.endswith(ASSISTANT)
    assert ASSISTANT not in reply


@FAST
@given(TRANSCRIPTS, TRANSCRIPTS, TRANSCRIPTS)
def test_split_pair_shares_the_prompt_of_both_transcripts(prefix, tail_c, tail_r):
    chosen, rejected = prefix + tail_c, prefix + tail_r
    split = data.split_pair(chosen, rejected)
    if split is None:
        return
    prompt, c, r = split
    assert prompt + c == chosen and prompt + r == rejected
    assert prompt.endswith(ASSISTANT)


@FAST
@given(st.one_of(st.none(), st.integers(), TRANSCRIPTS), st.one_of(st.none(), TRANSCRIPTS))
def test_split_pair_never_raises_on_any_values(chosen, rejected):
    split = data.split_pair(chosen, rejected)
    assert split is None or all(isinstance(part, str) for part in split)


CELL = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.integers(-5, 5),
    TRANSCRIPTS,
    st.builds(lambda a, b: f"{HUMAN} q{ASSISTANT}{a}|{b}", TRANSCRIPTS, TRANSCRIPTS),
)


def _pair_rows(with_prompt: bool):
    row = st.tuples(CELL, CELL, CELL) if with_prompt else st.tuples(CELL, CELL)
    return st.lists(row, max_size=12)


@FAST
@given(st.booleans(), st.data())
def test_to_pairs_frame_keeps_or_counts_every_row(with_prompt, draw):
    rows = draw.draw(_pair_rows(with_prompt))
    columns = ["prompt", "chosen", "rejected"] if with_prompt else ["chosen", "rejected"]
    raw = pd.DataFrame(rows, columns=columns, dtype=object)
    frame, dropped = data.to_pairs_frame(raw, "hypothesis")
    assert set(dropped) == set(data.DROP_REASONS)
    assert len(frame) + sum(dropped.values()) == len(raw)
    for c, r in zip(frame["chosen"], frame["rejected"]):
        assert isinstance(c, str) and isinstance(r, str)
        assert c.strip() and r.strip() and c.strip() != r.strip()
    assert frame["pair_id"].is_unique


RANGES = {
    "seed_harmless": (0.0, 1.0),
    "seed_helpful": (0.5, 1.0),
    "harmless_word": (0.0, 1.0),
    "polarity": (-1.0, 1.0),
    "vader": (-1.0, 1.0),
    "is_comforting": (0.0, 1.0),
    "offensive": (0.0, 1.0),
    "harmless_clf": (0.0, 1.0),
}
DISCRETE = {
    "seed_harmless": {0.0, 1.0},
    "seed_helpful": {0.5, 1.0},
    "harmless_word": {0.0, 1.0},
    "is_comforting": {0.0, 1.0},
    "harmless_clf": {0.0, 1.0},
}
EMOJI = st.text(st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=20)
CONTROL = st.text(st.characters(max_codepoint=0x1F), max_size=20)
WORDS = st.lists(
    st.sampled_from(["good", "bad", "but", "hate", "not", "very", "charm", ":)", "idiot", " "]),
    max_size=30,
).map(" ".join)
REPLIES = st.lists(st.one_of(st.text(), EMOJI, CONTROL, WORDS), min_size=1, max_size=5)
LONG_TEXTS = [
    "x" * 100_000,
    ("good but bad, I hate this 😀 " * 4000)[:100_000],
    "\x00\x1b[31m\u200b\ufeff" * 20_000,
    " " * 100_000,
]


def _assert_in_ranges(table: pd.DataFrame, n: int) -> None:
    assert list(table.columns) == list(scoring.SCORE_COLUMNS) and len(table) == n
    for column, (low, high) in RANGES.items():
        values = table[column].tolist()
        assert all(isinstance(v, float) and not math.isnan(v) for v in values), column
        assert all(low <= v <= high for v in values), (column, values)
        if column in DISCRETE:
            assert set(values) <= DISCRETE[column], (column, values)


@FAST
@given(REPLIES)
def test_every_score_is_in_its_documented_range(replies):
    _assert_in_ranges(scoring.score_replies(replies), len(replies))


def test_scores_of_very_long_and_odd_texts_are_in_range():
    texts = [*LONG_TEXTS, "", "   ", "\t\n", "😀😡💩", None, float("nan")]
    _assert_in_ranges(scoring.score_replies(texts), len(texts))
