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


def test_the_judge_reads_the_whole_prompt_with_the_instructions_run_once(tiny_model, tiny_tok):
    """P(A) of each order equals that of its judging prompt run alone, in one piece."""
    import torch

    prompt, a, b = "\n\nHuman: tea?\n\nAssistant:", " Tea is a warm drink.", " No."
    pairs = pd.DataFrame({"pair_id": ["a"], "prompt": [prompt], "chosen": [a], "rejected": [b]})
    got = labeler.label_pairs(tiny_model, tiny_tok, pairs, CFG)
    id_a, id_b = labeler._choice_ids(tiny_tok)
    for column, (x, y) in (("p_first", (a, b)), ("p_second", (b, a))):
        head, tail = labeler.judge_parts(tiny_tok, prompt, x, y, CFG)
        ids = tiny_tok(head, add_special_tokens=False)["input_ids"]
        ids += tiny_tok(tail, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1]
        want = torch.softmax(logits[[id_a, id_b]], dim=0)[0].item()
        assert got[column].iloc[0] == pytest.approx(want, abs=1e-5)


def test_the_instructions_end_where_the_tokenizer_makes_no_merge(tiny_tok):
    head, _ = labeler.judge_parts(tiny_tok, "\n\nHuman: hi\n\nAssistant:", " a", " b", CFG)
    rest = head[len(labeler.JUDGE_INSTRUCTIONS) :]
    ids = lambda t: tiny_tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert head.startswith(labeler.JUDGE_INSTRUCTIONS)
    assert ids(labeler.JUDGE_INSTRUCTIONS) + ids(rest) == ids(head)


def test_combine_is_symmetric():
    assert labeler.combine(0.9, 0.3) + labeler.combine(0.3, 0.9) == pytest.approx(1.0, abs=1e-15)
    assert labeler.combine(0.5, 0.5) == 0.5
