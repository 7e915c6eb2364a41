import math

import pytest
import torch

from study.preprocess import IGNORE, PadCollator, sft_example

pytestmark = pytest.mark.unit


def test_pad_equal_eos_keeps_the_real_eos_label(tiny_tok):
    assert tiny_tok.pad_token_id == tiny_tok.eos_token_id
    prompt, reply = "\n\nHuman: Tell me about tea.\n\nAssistant:", " Tea is lovely."
    short = sft_example(tiny_tok, prompt, reply, 128, 64)
    longer = sft_example(tiny_tok, prompt + " Please.", reply + " Really lovely.", 128, 64)
    batch = PadCollator(tiny_tok.pad_token_id)([short, longer])
    n_reply = len(tiny_tok(reply, add_special_tokens=False)["input_ids"])
    row_labels, row_mask = batch["labels"][0], batch["attention_mask"][0]
    supervised = (row_labels != IGNORE).nonzero().flatten()
    assert len(supervised) == n_reply + 1
    assert row_labels[supervised[-1]] == tiny_tok.eos_token_id
    n_prompt = len(short["input_ids"]) - n_reply - 1
    # -100 exactly at the prompt and where the attention mask is 0
    expected = torch.zeros_like(row_labels, dtype=torch.bool)
    expected[:n_prompt] = True
    expected |= row_mask == 0
    assert torch.equal(row_labels == IGNORE, expected)


def test_long_prompt_keeps_the_reply_and_the_loss_is_finite(tiny_tok, tiny_model):
    reply_ids = list(range(10, 29)) + [tiny_tok.eos_token_id]  # 20 tokens with the EOS
    prompt = "\n\nHuman: " + "tea " * 700 + "\n\nAssistant:"
    reply = tiny_tok.decode(reply_ids[:-1])
    ex = sft_example(tiny_tok, prompt, reply, 512, 256)
    assert len(tiny_tok(prompt, add_special_tokens=False)["input_ids"]) >= 600
    assert len(ex["input_ids"]) == 512
    kept = [t for t in ex["labels"] if t != IGNORE]
    assert (
        kept[-1] == tiny_tok.eos_token_id
        and len(kept) == len(tiny_tok(reply, add_special_tokens=False)["input_ids"]) + 1
    )
    batch = PadCollator(tiny_tok.pad_token_id)([ex])
    loss = tiny_model(**batch).loss
    assert math.isfinite(loss.item())
