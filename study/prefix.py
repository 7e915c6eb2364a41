"""Shared prefixes run once: many continuations of one prompt read its KV cache.

The samples of a prompt, the two orders of a judging prompt and the replies of every arm to one
evaluation prompt share their opening tokens. Running those once and copying their cache to each
continuation gives the same hidden states (up to rounding) for a fraction of the work.

Prefixes are left-padded and continuations right-padded; position ids count real tokens only, as
``generate`` counts them, so a row's positions do not depend on its batch.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among its row's real tokens (0 on padding)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class BufferedLayer(DynamicLayer):
    """One layer's KV cache written into spare room instead of re-concatenated every step.

    ``keys`` and ``values`` are views of the filled part of buffers that hold ``reserve`` more
    positions, so a decoding step writes one position instead of copying the whole cache (a
    buffer that fills up is copied into one with ``reserve`` more room). Under
    autocast, keys are stored in the values' (autocast) dtype: a rotary embedding computed in
    fp32 makes them fp32, and attention casts them to that dtype on every step anyway, so the
    numbers are the same and the cache is half the size.
    """

    reserve = 64

    def __init__(self, reserve: int | None = None):
        super().__init__()
        if reserve is not None:
            self.reserve = reserve

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        if torch.is_autocast_enabled(key_states.device.type):
            self.dtype = value_states.dtype
        self.length = 0
        self._k = self._v = None
        self.is_initialized = True

    def _allocate(self, batch: int, capacity: int, like_k, like_v) -> tuple:
        k = like_k.new_empty((batch, like_k.shape[1], capacity, like_k.shape[3]), dtype=self.dtype)
        v = like_v.new_empty((batch, like_v.shape[1], capacity, like_v.shape[3]))
        return k, v

    def _views(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._k is None or end > self._k.shape[-2]:
            k, v = self._allocate(key_states.shape[0], end + self.reserve, key_states, value_states)
            if self.length:
                k[:, :, : self.length] = self.keys
                v[:, :, : self.length] = self.values
            self._k, self._v = k, v
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (repeats allowed), with the same spare room."""
        if self.get_seq_length() > 0:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the number of positions to remove, as a negative integer")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()


def new_cache(reserve: int | None = None) -> DynamicCache:
    """An empty KV cache whose layers are ``BufferedLayer``s with room for ``reserve`` more."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(BufferedLayer, reserve)
    return cache


def prefill(body, input_ids: torch.Tensor, attention_mask: torch.Tensor, reserve=None, cache=None):
    """KV cache of left-padded ``input_ids`` (a model or its decoder body), with room for
    ``reserve`` positions to follow (default ``BufferedLayer.reserve``).

    With ``cache``, the ids continue what it holds: ``attention_mask`` covers its positions and
    the new ones, and the ids are appended to it (``reserve`` is then the cache's own).
    """
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask)[:, -input_ids.shape[1] :],
        cache=new_cache(reserve) if cache is None else cache,
        use_cache=True,
    )
    return out.cache


def _repeat(cache: DynamicCache, rows: int, reserve: int) -> DynamicCache:
    """A new cache holding ``rows`` copies of the one-row ``cache``, with room for ``reserve``."""
    out = new_cache(reserve)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), i)
    return out


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
    common: str = "",
) -> torch.Tensor:
    """Final hidden state of each ``common + prefixes[owner[i]] + continuations[i]``, in input
    order.

    ``common`` (text every prefix starts with) is run once in all; each prefix is run once per
    batch; its last token travels with the continuations, so an empty continuation reads the
    prefix's own last state. The three parts are tokenized apart (a BPE merge across a seam is
    not made).
    """
    pad = tokenizer.pad_token_id
    pre_ids = _ids(tokenizer, prefixes)
    if any(not ids for ids in pre_ids):
        raise ValueError("every prefix needs at least one token")
    common_ids = _ids(tokenizer, [common])[0] if common else []
    cont_ids = _ids(tokenizer, continuations)
    owner = np.asarray(owner)
    rows_of = [np.flatnonzero(owner == j) for j in range(len(prefixes))]
    n_rows = np.array([len(r) for r in rows_of])
    order = np.argsort([len(ids) for ids in pre_ids], kind="stable")
    device = next(body.parameters()).device
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    out: torch.Tensor | None = None
    batches = list(_batches(n_rows, order[n_rows[order] > 0], batch_size))
    shared = None
    if common_ids:
        with ctx:
            ones = torch.ones((1, len(common_ids)), dtype=torch.long, device=device)
            shared = prefill(body, torch.tensor([common_ids], device=device), ones, reserve=0)
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
        if common_ids:  # the common text's real tokens come first, before the left padding
            head_mask = torch.cat(
                [torch.ones((len(batch), len(common_ids)), dtype=torch.long), head_mask], 1
            )
        mask = torch.cat([head_mask[slot_t], tail_mask], dim=1)
        known = head_mask.shape[1]  # positions held in the cache before the tails
        with ctx:
            cache = None if shared is None else _repeat(shared, len(batch), width + length)
            if width:
                cache = prefill(body, head.to(device), head_mask.to(device), length, cache)
            if cache is not None:
                cache.batch_select_indices(slot_t.to(device))
            hidden = body(
                input_ids=tail.to(device),
                attention_mask=mask.to(device),
                position_ids=positions(mask)[:, known:].to(device),
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
