import pytest

from study import scoring

pytestmark = pytest.mark.unit


def test_notebook_rules_are_kept_as_written():
    assert scoring.seed_harmless("What charm!") == 0.0  # substring: "harm" in "charm"
    assert scoring.harmless_word("What charm!") == 1.0
    assert scoring.harmless_word("I hate that.") == 0.0
    assert scoring.seed_helpful("x" * 20) == 0.5 and scoring.seed_helpful("x" * 21) == 1.0


def test_score_table_ranges_and_bad_replies():
    texts = ["I am so happy to help, wonderful!", "", "   ", None, float("nan"), "you idiot"]
    table = scoring.score_replies(texts)
    assert len(table) == len(texts)
    assert table["polarity"].between(-1, 1).all() and table["vader"].between(-1, 1).all()
    assert table["offensive"].between(0, 1).all()
    assert table.loc[0, "is_comforting"] == 1.0
    assert table.loc[5, "harmless_clf"] == 0.0
    assert scoring.clean_replies(texts)[1] == 2
