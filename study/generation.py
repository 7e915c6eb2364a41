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

from study.config import Decoding
from study.prefix import new_cache, positions, prefill
from study.prompts import HUMAN

log = logging.getLogger(__name__)


def sample_seed(run_seed: int, arm: str, prompt_id: str, sample: int) -> int:
    """A 63-bit seed derived from what identifies one sample, stable across processes."""
    key = f"{run_seed}|{arm}|{prompt_id}|{sample}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


class RowSampler:
    """Draws each row's next token from that row's own generator.

    A row without a generator (``generators`` None, or None in its place, or ``greedy``) takes
    its argmax, after the repetition penalty.
    """

    def __init__(self, decoding: Decoding, n_pad: list[int], generators, greedy: bool):
        self.d = decoding
        self.n_pad = n_pad
        self.generators = generators
        self.greedy = greedy

    def select(self, rows: list[int]) -> RowSampler:
        """The sampler of the given rows only (in that order), each keeping its own generator."""
        generators = None if self.generators is None else [self.generators[i] for i in rows]
        return RowSampler(self.d, [self.n_pad[i] for i in rows], generators, self.greedy)

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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.LongTensor:
        """The next token of each row of ``scores`` (logits), given the row's tokens so far."""
        scores = self._penalise(input_ids, scores.float())
        choice = scores.argmax(dim=-1)
        drawn = [] if self.greedy else [i for i, g in enumerate(self.generators or []) if g]
        if not drawn:
            return choice
        rows = torch.tensor(drawn, device=scores.device)
        # Only the top-k candidates can be drawn, so the draw works on those alone.
        vocab = scores.shape[-1]
        k = self.d.top_k if 0 < self.d.top_k < vocab else vocab
        values, index = torch.topk(scores[rows] / self.d.temperature, k, dim=-1)  # descending
        probs = torch.softmax(values, dim=-1)
        if self.d.top_p < 1.0:
            before = probs.cumsum(dim=-1) - probs  # mass strictly above each candidate
            probs = probs.masked_fill(before > self.d.top_p, 0.0)
        cdf = (probs / probs.sum(dim=-1, keepdim=True)).cumsum(dim=-1)
        u = torch.stack(
            [torch.rand((), generator=self.generators[i], device=cdf.device) for i in drawn]
        )
        pick = torch.searchsorted(cdf, u[:, None]).clamp(max=k - 1)
        choice[rows] = index.gather(1, pick)[:, 0]
        return choice


@dataclass(frozen=True)
class Request:
    """One reply to produce."""

    prompt_id: str
    text: str
    sample: int
    seed: int
    greedy: bool = False  # the argmax at every step; ``seed`` is then unused


def cut_reply(text: str) -> str:
    """A reply ends where the model starts a new human turn."""
    for marker in (HUMAN, "\nHuman:", "Human:"):
        idx = text.find(marker)
        if idx >= 0:
            text = text[:idx]
    return text.strip()


def _prefill_shared(model, input_ids, attention_mask, reserve: int):
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
    # room for the prompt's last token and every new one
    cache = prefill(model.base_model, input_ids[keep, :-1], attention_mask[keep, :-1], reserve)
    cache.batch_select_indices(torch.tensor(index, device=input_ids.device))
    return cache


def _decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache,
    sampler: RowSampler,
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    eos: int,
) -> list[list[int]]:
    """Each row's new tokens (its EOS last, when drawn); finished rows leave the batch.

    ``cache`` holds every row's prompt but its last token, or is None (the whole prompt is run
    first). Finished rows' cache, mask and sampler state are dropped once a sixteenth of the
    batch has finished, so the remaining steps cost about what the unfinished rows need; a row's
    numbers are those of a batch that kept it, up to rounding.
    """
    n = input_ids.shape[0]
    new: list[list[int]] = [[] for _ in range(n)]
    alive = list(range(n))  # the request row of each batch slot
    finished = torch.zeros(n, dtype=torch.bool, device=input_ids.device)
    ids, mask = input_ids, attention_mask
    step_ids = ids if cache is None else ids[:, -1:]
    cache = new_cache(max_new_tokens) if cache is None else cache
    for step in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions(mask)[:, -step_ids.shape[1] :],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.cache
        scores = out.logits[:, -1, :].to(torch.float32, copy=True)  # penalised in place
        if step < min_new_tokens:
            scores[:, eos] = float("-inf")
        token = sampler(ids, scores)
        for row, t, done in zip(alive, token.tolist(), finished.tolist()):
            if not done:
                new[row].append(t)
        finished |= token == eos
        if bool(finished.all()):
            break
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        step_ids = token[:, None]
        # Dropping rows copies the whole cache, so finished rows go a few at a time.
        if int(finished.sum()) * 16 >= len(alive) and step + 1 < max_new_tokens:
            keep = (~finished).nonzero()[:, 0]
            ids, mask, step_ids = ids[keep], mask[keep], step_ids[keep]
            cache.batch_select_indices(keep)
            picked = keep.tolist()
            alive = [alive[k] for k in picked]
            sampler = sampler.select(picked)
            finished = finished[keep]
    return new


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

    With ``greedy`` every reply is greedy; otherwise each request's own ``greedy`` decides.

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
                None
                if requests[i].greedy
                else torch.Generator(device=device).manual_seed(requests[i].seed)
                for i in batch
            ]
        sampler = RowSampler(decoding, n_pad, generators, greedy)
        with torch.no_grad(), ctx:
            cache = _prefill_shared(
                model, enc["input_ids"], enc["attention_mask"], decoding.max_new_tokens + 1
            )
            new = _decode(
                model,
                enc["input_ids"],
                enc["attention_mask"],
                cache,
                sampler,
                max_new_tokens=decoding.max_new_tokens,
                min_new_tokens=min_new_tokens,
                eos=eos,
            )
        for row, idx in zip(new, batch):
            is_eos = bool(row) and row[-1] == eos
            tokens = row[:-1] if is_eos else row
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            results[idx] = {"reply": cut_reply(text), "n_tokens": len(tokens), "is_eos": is_eos}
    return results  # type: ignore[return-value]
