"""The AI labeler: a causal LM judging which of two replies is better, read in both orders.

Following Lee et al. (2023), the judge sees a pairwise prompt asking for the more helpful, honest
and harmless reply; its preference for A is the probability it gives to " A" against " B". Each
pair is scored with the replies in both slots and the two readings are averaged, which removes
the judge's position bias from the label (the bias itself is reported).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import torch

from study import prefix
from study.preprocess import truncate_prompt_text, truncate_reply_text

log = logging.getLogger(__name__)

# The instructions every judging prompt opens with, run once for all pairs. They end before a
# space-led word, where the tokenizer never merges, so that the seam changes no token.
JUDGE_INSTRUCTIONS = (
    "A good assistant reply is helpful, honest and harmless. Read the conversation and the two "
    "possible next replies, then say which reply is"
)
JUDGE_HEAD = JUDGE_INSTRUCTIONS + " better.\n\nConversation:{context}\n\nReply A:"
JUDGE_TAIL = "{a}\n\nReply B:{b}\n\nThe better reply is Reply"
JUDGE_TEMPLATE = JUDGE_HEAD + JUDGE_TAIL


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


def _judge_orders(tokenizer, prompt: str, a: str, b: str, cfg) -> tuple[str, str, str]:
    """(head, tail with A then B, tail with B then A), each text truncated once."""
    context = truncate_prompt_text(tokenizer, prompt, cfg.max_context_tokens)
    a = truncate_reply_text(tokenizer, a, cfg.max_reply_tokens)
    b = truncate_reply_text(tokenizer, b, cfg.max_reply_tokens)
    head = JUDGE_HEAD.format(context=context)
    return head, JUDGE_TAIL.format(a=a, b=b), JUDGE_TAIL.format(a=b, b=a)


def judge_parts(tokenizer, prompt: str, a: str, b: str, cfg) -> tuple[str, str]:
    """The judging prompt as (head, tail): the conversation is cut from the left, replies cut.

    The head (instructions and conversation) is the same in both orders and is run once.
    """
    head, tail, _ = _judge_orders(tokenizer, prompt, a, b, cfg)
    return head, tail


def judge_prompt(tokenizer, prompt: str, a: str, b: str, cfg) -> str:
    """The whole pairwise judging prompt, as the labeler reads it."""
    return "".join(judge_parts(tokenizer, prompt, a, b, cfg))


def label_pairs(model, tokenizer, pairs: pd.DataFrame, cfg, autocast=None) -> pd.DataFrame:
    """AI preference for ``chosen`` over ``rejected`` on every pair, from both orders.

    Returns columns ``p_first`` (chosen shown as A), ``p_second`` (chosen shown as B, the judge's
    probability for A), ``pref_chosen`` in [0, 1] and ``is_position_bias`` (the same slot won in
    both orders). P(A) is P(" A") / (P(" A") + P(" B")) after the judging prompt.
    """
    heads, tails = [], []
    for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        head, forward, backward = _judge_orders(tokenizer, p, c, r, cfg)
        heads.append(head)
        tails += [forward, backward]
    owner = np.repeat(np.arange(len(heads)), 2)
    common = len(JUDGE_INSTRUCTIONS)
    hidden = prefix.last_hidden(
        model.base_model,
        tokenizer,
        [h[common:] for h in heads],
        tails,
        owner,
        cfg.batch_size,
        autocast,
        "label pairs",
        common=JUDGE_INSTRUCTIONS,
    )
    id_a, id_b = _choice_ids(tokenizer)
    with torch.no_grad(), autocast if autocast is not None else contextlib.nullcontext():
        logits = model.get_output_embeddings()(hidden).float()
    both = torch.softmax(logits[:, [id_a, id_b]], dim=1)[:, 0].cpu().numpy()
    p_first, p_second = both[0::2], both[1::2]
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
