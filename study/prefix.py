"""Shared prefixes run once: many continuations of one prompt read its KV cache.

The samples of a prompt, the two orders of a judging prompt and the replies of every arm to one
evaluation prompt share their opening tokens. Running those once and copying their cache to each
continuation gives the same hidden states (up to rounding) for a fraction of the work.

Prefixes are left-padded and continuations right-padded; position ids count real tokens only, as
``generate`` counts them, so a row's positions do not depend on its batch.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm.auto import tqdm


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among its row's real tokens (0 on padding)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def prefill(body, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """KV cache of left-padded ``input_ids`` (a model or its decoder body)."""
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        use_cache=True,
    )
    return out.cache


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _batches(n_rows: np.ndarray, order: np.ndarray, batch_size: int):
    """Consecutive prefixes (in ``order``) whose continuations fill about ``batch_size`` rows."""
    batch, rows = [], 0
    for j in order:
        batch.append(int(j))
        rows += int(n_rows[j])
        if rows >= batch_size:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


@torch.no_grad()
def last_hidden(
    body,
    tokenizer,
    prefixes: list[str],
    continuations: list[str],
    owner: list[int],
    batch_size: int,
    autocast=None,
    desc: str = "score",
) -> torch.Tensor:
    """Final hidden state of each ``prefixes[owner[i]] + continuations[i]``, in input order.

    Each prefix is run once per batch; its last token travels with the continuations, so an
    empty continuation reads the prefix's own last state. Prefix and continuation are tokenized
    apart (a BPE merge across the seam is not made).
    """
    pad = tokenizer.pad_token_id
    pre_ids = _ids(tokenizer, prefixes)
    if any(not ids for ids in pre_ids):
        raise ValueError("every prefix needs at least one token")
    cont_ids = _ids(tokenizer, continuations)
    owner = np.asarray(owner)
    rows_of = [np.flatnonzero(owner == j) for j in range(len(prefixes))]
    n_rows = np.array([len(r) for r in rows_of])
    order = np.argsort([len(ids) for ids in pre_ids], kind="stable")
    device = next(body.parameters()).device
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    out: torch.Tensor | None = None
    batches = list(_batches(n_rows, order[n_rows[order] > 0], batch_size))
    for batch in tqdm(batches, desc=desc, leave=False):
        heads = [pre_ids[j][:-1] for j in batch]
        width = max(len(h) for h in heads)
        head = torch.full((len(batch), width), pad, dtype=torch.long)
        head_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, h in enumerate(heads):
            if h:
                head[k, width - len(h) :] = torch.tensor(h)
                head_mask[k, width - len(h) :] = 1
        rows = np.concatenate([rows_of[j] for j in batch])
        slot = np.concatenate([[k] * len(rows_of[j]) for k, j in enumerate(batch)])
        tails = [[pre_ids[batch[k]][-1], *cont_ids[i]] for k, i in zip(slot, rows)]
        length = max(len(t) for t in tails)
        tail = torch.full((len(rows), length), pad, dtype=torch.long)
        tail_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, t in enumerate(tails):
            tail[r, : len(t)] = torch.tensor(t)
            tail_mask[r, : len(t)] = 1
        slot_t = torch.as_tensor(slot)
        mask = torch.cat([head_mask[slot_t], tail_mask], dim=1)
        with ctx:
            cache = None
            if width:
                cache = prefill(body, head.to(device), head_mask.to(device))
                cache.batch_select_indices(slot_t.to(device))
            hidden = body(
                input_ids=tail.to(device),
                attention_mask=mask.to(device),
                position_ids=positions(mask)[:, width:].to(device),
                cache=cache,
                use_cache=cache is not None,
            ).last_hidden_state
        last = hidden[torch.arange(len(rows)), tail_mask.sum(dim=1).to(device) - 1]
        if out is None:
            out = last.new_zeros((len(continuations), last.shape[-1]))
        out[torch.as_tensor(rows, device=device)] = last
    if out is None:
        raise ValueError("no continuation to score")
    return out
