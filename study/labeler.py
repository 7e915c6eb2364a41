"""The AI labeler: a causal LM judging which of two replies is better, read in both orders.

Following Lee et al. (2023), the judge sees a pairwise prompt asking for the more helpful, honest
and harmless reply; its preference for A is the probability it gives to " A" against " B". Each
pair is scored with the replies in both slots and the two readings are averaged, which removes
the judge's position bias from the label (the bias itself is reported).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from study.preprocess import truncate_prompt_text, truncate_reply_text

log = logging.getLogger(__name__)

JUDGE_TEMPLATE = (
    "A good assistant reply is helpful, honest and harmless. Read the conversation and the two "
    "possible next replies, then say which reply is better.\n\n"
    "Conversation:{context}\n\n"
    "Reply A:{a}\n\n"
    "Reply B:{b}\n\n"
    "The better reply is Reply"
)


def _choice_ids(tokenizer) -> tuple[int, int]:
    """Token ids that mean "A" and "B" right after the template, one token each."""
    for a, b in ((" A", " B"), ("A", "B")):
        ia = tokenizer(a, add_special_tokens=False)["input_ids"]
        ib = tokenizer(b, add_special_tokens=False)["input_ids"]
        if len(ia) == 1 and len(ib) == 1 and ia != ib:
            return ia[0], ib[0]
    ia = tokenizer(" A", add_special_tokens=False)["input_ids"]
    ib = tokenizer(" B", add_special_tokens=False)["input_ids"]
    if ia[-1] == ib[-1]:
        raise ValueError("the labeler's tokenizer cannot tell ' A' from ' B'; choose another model")
    return ia[-1], ib[-1]


def judge_prompt(tokenizer, prompt: str, a: str, b: str, cfg) -> str:
    """The pairwise judging prompt, with the conversation cut from the left and replies cut."""
    context = truncate_prompt_text(tokenizer, prompt, cfg.max_context_tokens)
    return JUDGE_TEMPLATE.format(
        context=context,
        a=truncate_reply_text(tokenizer, a, cfg.max_reply_tokens),
        b=truncate_reply_text(tokenizer, b, cfg.max_reply_tokens),
    )


@torch.no_grad()
def prob_first(model, tokenizer, texts: list[str], batch_size: int, autocast=None) -> np.ndarray:
    """P(" A") / (P(" A") + P(" B")) at the end of each judging prompt."""
    import contextlib

    id_a, id_b = _choice_ids(tokenizer)
    tokenizer.padding_side = "left"
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros(len(texts))
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(texts), batch_size), desc="label pairs", leave=False):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True)
        enc = {k: v.to(device) for k, v in enc.items()}
        with ctx:
            logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
        two = torch.stack([logits[:, id_a], logits[:, id_b]], dim=1)
        out[idx] = torch.softmax(two, dim=1)[:, 0].cpu().numpy()
    return out


def label_pairs(model, tokenizer, pairs: pd.DataFrame, cfg, autocast=None) -> pd.DataFrame:
    """AI preference for ``chosen`` over ``rejected`` on every pair, from both orders.

    Returns columns ``p_first`` (chosen shown as A), ``p_second`` (chosen shown as B, the judge's
    probability for A), ``pref_chosen`` in [0, 1] and ``is_position_bias`` (the same slot won in
    both orders).
    """
    forward = [
        judge_prompt(tokenizer, p, c, r, cfg)
        for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    ]
    backward = [
        judge_prompt(tokenizer, p, r, c, cfg)
        for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    ]
    both = prob_first(model, tokenizer, forward + backward, cfg.batch_size, autocast)
    p_first, p_second = both[: len(forward)], both[len(forward) :]
    return pd.DataFrame(
        {
            "pair_id": pairs["pair_id"].to_numpy(),
            "p_first": p_first,
            "p_second": p_second,
            "pref_chosen": combine(p_first, p_second),
            "is_position_bias": (p_first > 0.5) == (p_second > 0.5),
        }
    )


def combine(p_xy, p_yx):
    """Preference for x from P(A) with x in slot A and P(A) with y in slot A.

    Symmetric by construction: combine(a, b) + combine(b, a) == 1.
    """
    return 0.5 + 0.5 * (np.asarray(p_xy) - np.asarray(p_yx))
