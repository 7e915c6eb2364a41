"""Tokenisation for supervised fine-tuning: prompt + reply, only the reply (and its EOS) learned."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


def fit_prompt_and_reply(
    prompt_ids: list[int], reply_ids: list[int], max_length: int, max_reply_tokens: int
) -> tuple[list[int], list[int], bool]:
    """Cut a reply to its budget and the prompt from the LEFT so that both fit ``max_length``.

    Returns (prompt ids, reply ids, whether the reply is whole).
    """
    is_whole = len(reply_ids) <= max_reply_tokens
    reply_ids = reply_ids[:max_reply_tokens]
    room = max_length - len(reply_ids)
    prompt_ids = prompt_ids[-room:] if room > 0 else []
    return prompt_ids, reply_ids, is_whole


def truncate_prompt_text(tokenizer, prompt: str, max_tokens: int) -> str:
    """Keep the last ``max_tokens`` tokens of a prompt, cut at a token boundary of the text."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return prompt
    start = enc["offset_mapping"][-max_tokens][0]
    return prompt[start:]


def truncate_reply_text(tokenizer, reply: str, max_tokens: int) -> str:
    """Keep the first ``max_tokens`` tokens of a reply, cut at a token boundary of the text."""
    enc = tokenizer(reply, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return reply
    return reply[: enc["offset_mapping"][max_tokens - 1][1]]


def sft_example(tokenizer, prompt: str, reply: str, max_length: int, max_reply_tokens: int):
    """One training row: input ids and labels with the prompt masked and a supervised EOS.

    The EOS is appended (and learned) only when the whole reply fits, so that the model is never
    taught to stop in the middle of a cut reply.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    reply_ids = reply_ids + [tokenizer.eos_token_id]
    prompt_ids, reply_ids, _ = fit_prompt_and_reply(
        prompt_ids, reply_ids, max_length, max_reply_tokens
    )
    return {
        "input_ids": prompt_ids + reply_ids,
        "labels": [IGNORE] * len(prompt_ids) + reply_ids,
    }


@dataclass
class PadCollator:
    """Dynamic right padding; padded positions get attention 0 and label -100.

    Labels are masked by position, never by token id, so a real EOS keeps its label even when
    the pad token is the EOS.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = 8

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
