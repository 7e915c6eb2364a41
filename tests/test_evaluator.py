"""The reward model's scoring: shared prompts run once, held-out accuracy from both replies."""

import pandas as pd
import pytest

from study import evaluator
from study.config import resolve

pytestmark = pytest.mark.unit

PAIRS = pd.DataFrame(
    {
        "prompt": ["\n\nHuman: tea?\n\nAssistant:", "\n\nHuman: maps?\n\nAssistant:"] * 2,
        "chosen": [" Tea is a warm drink.", " Maps show places.", " Yes.", " Sure, here."],
        "rejected": [" No.", " I hate maps.", " Tea is warm and good.", " Maps are for roads."],
    }
)


@pytest.fixture
def reward_model(tiny_path):
    model, tok = evaluator._load_classifier(tiny_path)
    return model.eval(), tok


def test_a_reward_does_not_depend_on_what_shares_its_batch(reward_model):
    model, tok = reward_model
    cfg = resolve("smoke")
    together = evaluator.rewards(model, tok, PAIRS["prompt"], PAIRS["chosen"], cfg)
    alone = [
        evaluator.rewards(model, tok, [p], [c], cfg)[0]
        for p, c in zip(PAIRS["prompt"], PAIRS["chosen"])
    ]
    assert together.tolist() == pytest.approx(alone, abs=1e-5)


def test_accuracy_counts_the_pairs_whose_chosen_reply_wins(reward_model):
    model, tok = reward_model
    cfg = resolve("smoke")
    chosen = evaluator.rewards(model, tok, PAIRS["prompt"], PAIRS["chosen"], cfg)
    rejected = evaluator.rewards(model, tok, PAIRS["prompt"], PAIRS["rejected"], cfg)
    got = evaluator.accuracy(model, tok, PAIRS, cfg)
    assert got["n"] == len(PAIRS)
    assert got["accuracy"] == pytest.approx(float((chosen > rejected).mean()))
    assert got["ci"][0] <= got["accuracy"] <= got["ci"][1]
