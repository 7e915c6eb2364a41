"""Batched, left-padded generation whose samples do not depend on batch composition or order.

Each (arm, prompt, sample) draws its tokens from its own random generator, seeded from the run
seed, the arm, the prompt id and the sample index. The sampling filters (temperature, top-k,
top-p, repetition penalty) act row by row, and the repetition penalty ignores left padding, so a
reply is the same whichever prompts share its batch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor

from study.config import Decoding
from study.prefix import prefill
from study.prompts import HUMAN

log = logging.getLogger(__name__)


def sample_seed(run_seed: int, arm: str, prompt_id: str, sample: int) -> int:
    """A 63-bit seed derived from what identifies one sample, stable across processes."""
    key = f"{run_seed}|{arm}|{prompt_id}|{sample}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


class RowSampler(LogitsProcessor):
    """Turns each row's logits into a one-hot choice drawn from that row's own generator.

    Greedy decoding on the returned scores then picks exactly the sampled token. With
    ``generators`` None the row's argmax is kept (greedy), after the repetition penalty.
    """

    def __init__(self, decoding: Decoding, n_pad: list[int], generators, greedy: bool):
        self.d = decoding
        self.n_pad = n_pad
        self.generators = generators
        self.greedy = greedy

    def _penalise(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        penalty = self.d.repetition_penalty
        if penalty == 1.0:
            return scores
        for i, n_pad in enumerate(self.n_pad):
            seen = input_ids[i, n_pad:]
            got = scores[i].gather(0, seen)
            got = torch.where(got < 0, got * penalty, got / penalty)
            scores[i].scatter_(0, seen, got)
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self._penalise(input_ids, scores.float().clone())
        if self.greedy:
            choice = scores.argmax(dim=-1)
        else:
            # Only the top-k candidates can be drawn, so the draw works on those alone.
            vocab = scores.shape[-1]
            k = self.d.top_k if 0 < self.d.top_k < vocab else vocab
            values, index = torch.topk(scores / self.d.temperature, k, dim=-1)  # descending
            probs = torch.softmax(values, dim=-1)
            if self.d.top_p < 1.0:
                before = probs.cumsum(dim=-1) - probs  # mass strictly above each candidate
                probs = probs.masked_fill(before > self.d.top_p, 0.0)
            cdf = (probs / probs.sum(dim=-1, keepdim=True)).cumsum(dim=-1)
            u = torch.stack(
                [torch.rand((), generator=g, device=cdf.device) for g in self.generators]
            )
            pick = torch.searchsorted(cdf, u[:, None]).clamp(max=k - 1)
            choice = index.gather(1, pick)[:, 0]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice[:, None], 0.0)
        return out


@dataclass(frozen=True)
class Request:
    """One reply to produce."""

    prompt_id: str
    text: str
    sample: int
    seed: int


def cut_reply(text: str) -> str:
    """A reply ends where the model starts a new human turn."""
    for marker in (HUMAN, "\nHuman:", "Human:"):
        idx = text.find(marker)
        if idx >= 0:
            text = text[:idx]
    return text.strip()


def _prefill_shared(model, input_ids, attention_mask):
    """A KV cache of every row's prompt but its last token, each distinct prompt computed once.

    The samples of one prompt share their batch and their left padding, so their caches are
    equal: the distinct rows are run once and their cache copied to the repeats. Generation then
    resumes from the cache where its own prefill would have left it. None when no prompt repeats.
    """
    first: dict[tuple, int] = {}  # each distinct row's first position
    rows = [first.setdefault(tuple(r), i) for i, r in enumerate(input_ids.tolist())]
    if len(first) == len(rows) or input_ids.shape[1] < 2:
        return None
    slot = {pos: k for k, pos in enumerate(first.values())}
    index = [slot[pos] for pos in rows]
    keep = torch.tensor(list(first.values()))
    cache = prefill(model.base_model, input_ids[keep, :-1], attention_mask[keep, :-1])
    cache.batch_select_indices(torch.tensor(index, device=input_ids.device))
    return cache


def generate(
    model,
    tokenizer,
    requests: list[Request],
    decoding: Decoding,
    *,
    greedy: bool = False,
    batch_size: int = 32,
    min_new_tokens: int = 0,
    autocast=None,
    desc: str = "generate",
) -> list[dict]:
    """Replies to ``requests`` in their order, generated in batches sorted by prompt length.

    Returns one dict per request: ``reply`` (new tokens only, cut at a new Human turn),
    ``n_tokens`` (new tokens before EOS) and ``is_eos`` (generation stopped at EOS).
    """
    import contextlib

    tokenizer.padding_side = "left"
    lengths = [len(tokenizer(r.text, add_special_tokens=False)["input_ids"]) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (lengths[i], i))
    results: list[dict | None] = [None] * len(requests)
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, leave=False):
        texts = [requests[i].text for i in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        n_pad = (enc["attention_mask"] == 0).sum(dim=1).tolist()
        generators = None
        if not greedy:
            generators = [
                torch.Generator(device=device).manual_seed(requests[i].seed) for i in batch
            ]
        sampler = RowSampler(decoding, n_pad, generators, greedy)
        with torch.no_grad(), ctx:
            cache = _prefill_shared(model, enc["input_ids"], enc["attention_mask"])
            out = model.generate(
                **enc,
                cache=cache,
                do_sample=False,
                num_beams=1,
                max_new_tokens=decoding.max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                logits_processor=[sampler],
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                temperature=None,
                top_k=None,
                top_p=None,
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        for row, idx in zip(new, batch):
            is_eos = eos in row
            tokens = row[: row.index(eos)] if is_eos else row
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            results[idx] = {"reply": cut_reply(text), "n_tokens": len(tokens), "is_eos": is_eos}
    return results  # type: ignore[return-value]
