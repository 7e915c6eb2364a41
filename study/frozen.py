"""Frozen lower blocks run once per token sequence, not once per pass over it.

With LoRA on the top ``train.lora_top_layers`` blocks only, every block below them is frozen:
its output for a sequence is the same in the DPO reference pass and in every training step of
both DPO arms. The reference pass records, for each sequence, the hidden states entering the
lowest trained block; the arms read them back and run only the trained blocks. A batch holding a
sequence that was not recorded runs the frozen blocks as usual, so the shortcut never changes
what is computed, only how often.

Sequences are keyed by their real tokens (attention mask 1, which must come first in the row)
and their states are placed at those positions; padded positions get zeros, which the trained
blocks' attention masks out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def decoder_layers(body) -> torch.nn.ModuleList:
    """The decoder body's list of blocks (Llama-style ``layers`` or GPT-style ``h``)."""
    for name in ("layers", "h"):
        layers = getattr(body, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder blocks of {type(body).__name__}")


class _Recorded(torch.nn.Module):
    """Stands in for the ``n`` frozen blocks: recorded output on a hit, the blocks on a miss."""

    def __init__(self, blocks: list, memo: dict, record: bool, returns_tuple: bool):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)
        self.memo = memo
        self.record = record
        self.returns_tuple = returns_tuple
        self.ids: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.out = None
        self.hits = 0
        self.misses = 0

    def _keys(self) -> list[tuple] | None:
        if self.ids is None:
            return None
        mask = self.mask if self.mask is not None else torch.ones_like(self.ids)
        lengths = mask.sum(dim=1).tolist()
        first = torch.arange(mask.shape[1]) < mask.sum(dim=1, keepdim=True)
        if not bool((mask.bool() == first).all()):
            return None  # not right-padded: positions would not line up
        return [tuple(row[:n]) for row, n in zip(self.ids.tolist(), lengths)]

    def forward(self, hidden_states, *args, **kwargs):
        keys = self._keys()
        if keys is not None and all(k in self.memo for k in keys):
            self.hits += len(keys)
            h = hidden_states.new_zeros(hidden_states.shape)
            for r, k in enumerate(keys):
                h[r, : len(k)] = self.memo[k].to(h.dtype)
        else:
            self.misses += len(keys) if keys is not None else hidden_states.shape[0]
            h = hidden_states
            for block in self.blocks:
                res = block(h, *args, **kwargs)
                h = res[0] if isinstance(res, tuple) else res
            if self.record and keys is not None:
                for r, k in enumerate(keys):
                    self.memo.setdefault(k, h[r, : len(k)].detach().clone())
        self.out = (h,) if self.returns_tuple else h
        return self.out


class _Pass(torch.nn.Module):
    """An emptied frozen block: hands on what the recorded stand-in produced."""

    def __init__(self, owner: _Recorded):
        super().__init__()
        self._owner = [owner]  # a list, so that the owner is not registered twice

    def forward(self, *args, **kwargs):
        return self._owner[0].out


def _returns_tuple(body, layers) -> bool:
    """Whether a block returns a tuple (GPT-Neo) or the hidden states alone (Llama).

    Found with a two-token pass, under autocast when frozen weights are stored in half precision.
    """
    seen = []
    handle = layers[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, tuple)))
    params = list(body.parameters())
    device = params[0].device
    half = [p.dtype for p in params if p.dtype in (torch.bfloat16, torch.float16)]
    autocast = torch.autocast(device.type, dtype=half[0] if half else None, enabled=bool(half))
    try:
        with torch.no_grad(), autocast:
            body(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    finally:
        handle.remove()
    return seen[0]


def install(body, n_frozen: int, memo: dict, record: bool = False) -> _Recorded:
    """Replace the ``n_frozen`` lowest blocks of ``body`` by recorded states.

    ``memo`` maps token tuples to the hidden states entering block ``n_frozen``; with ``record``
    the sequences that miss are added to it. The frozen blocks and the embeddings must not train.
    """
    layers = decoder_layers(body)
    if not 0 < n_frozen < len(layers):
        raise ValueError(f"n_frozen={n_frozen} must lie between 1 and {len(layers) - 1}")
    frozen = [*layers[:n_frozen], body.get_input_embeddings()]
    if any(p.requires_grad for m in frozen for p in m.parameters()):
        raise ValueError("the blocks below the trained ones must be frozen to reuse their states")
    stand_in = _Recorded(list(layers[:n_frozen]), memo, record, _returns_tuple(body, layers))
    layers[0] = stand_in
    for i in range(1, n_frozen):
        layers[i] = _Pass(stand_in)

    def remember(module, args, kwargs):
        stand_in.ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        stand_in.mask = mask if mask is None or mask.dim() == 2 else None
        if stand_in.ids is not None:
            stand_in.ids = stand_in.ids.cpu()
            stand_in.mask = stand_in.mask.cpu() if stand_in.mask is not None else None

    body.register_forward_pre_hook(remember, with_kwargs=True)
    return stand_in


def n_frozen_blocks(model, lora_top_layers: int | None) -> int:
    """Blocks below the LoRA-trained ones (0: every block trains)."""
    if not lora_top_layers:
        return 0
    return max(0, model.config.num_hidden_layers - lora_top_layers)


def save(memo: dict, path: Path) -> None:
    """Write recorded states as one safetensors file (token ids, offsets, states)."""
    from safetensors.torch import save_file

    keys = list(memo)
    lengths = torch.tensor([len(k) for k in keys], dtype=torch.long)
    save_file(
        {
            "ids": torch.tensor([t for k in keys for t in k], dtype=torch.long),
            "lengths": lengths,
            "states": torch.cat([memo[k] for k in keys]).float().contiguous(),
        },
        str(path),
    )


def load(path: Path) -> dict:
    from safetensors.torch import load_file

    data = load_file(str(path))
    memo, start = {}, 0
    ids = data["ids"].tolist()
    for n in data["lengths"].tolist():
        memo[tuple(ids[start : start + n])] = data["states"][start : start + n]
        start += n
    return memo
