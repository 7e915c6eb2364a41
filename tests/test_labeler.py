import pandas as pd
import pytest

from study import labeler
from study.config import LabelerConfig

pytestmark = pytest.mark.unit

CFG = LabelerConfig(max_context_tokens=32, max_reply_tokens=16, batch_size=4)


def test_swapping_the_replies_swaps_the_preference(tiny_model, tiny_tok):
    pairs = pd.DataFrame(
        {
            "pair_id": ["a", "b"],
            "prompt": ["\n\nHuman: tea?\n\nAssistant:", "\n\nHuman: maps?\n\nAssistant:"],
            "chosen": [" Tea is a warm drink.", " Maps show places."],
            "rejected": [" No.", " I hate maps and you."],
        }
    )
    swapped = pairs.rename(columns={"chosen": "rejected", "rejected": "chosen"})
    fwd = labeler.label_pairs(tiny_model, tiny_tok, pairs, CFG)
    bwd = labeler.label_pairs(tiny_model, tiny_tok, swapped, CFG)
    assert (fwd["pref_chosen"] + bwd["pref_chosen"]).tolist() == pytest.approx([1, 1], abs=1e-12)
    assert fwd["pref_chosen"].between(0, 1).all()
    assert fwd["is_position_bias"].tolist() == bwd["is_position_bias"].tolist()


def test_combine_is_symmetric():
    assert labeler.combine(0.9, 0.3) + labeler.combine(0.3, 0.9) == pytest.approx(1.0, abs=1e-15)
    assert labeler.combine(0.5, 0.5) == 0.5
