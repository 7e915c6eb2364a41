"""Shared prefixes give the hidden states of the whole texts."""

import pytest
import torch

from study import prefix

pytestmark = pytest.mark.unit

PREFIXES = [
    "\n\nHuman: tea?\n\nAssistant:",
    "\n\nHuman: " + "Tell me about rain and music and books. " * 3 + "\n\nAssistant:",
    "\n\nHuman: maps",
]
CONTINUATIONS = [" Tea is warm.", "", " Rain falls.", " Music and books and rain.", " ok"]
OWNER = [0, 0, 1, 1, 2]


def _direct(body, tok, text_ids):
    with torch.no_grad():
        return body(input_ids=torch.tensor([text_ids])).last_hidden_state[0, -1]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_last_hidden_equals_the_whole_text_run_alone(tiny_model, tiny_tok, batch_size):
    body = tiny_model.base_model
    got = prefix.last_hidden(body, tiny_tok, PREFIXES, CONTINUATIONS, OWNER, batch_size)
    ids = lambda t: tiny_tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    for i, (cont, j) in enumerate(zip(CONTINUATIONS, OWNER)):
        want = _direct(body, tiny_tok, ids(PREFIXES[j]) + ids(cont))
        assert torch.allclose(got[i], want, atol=1e-5), i


@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_common_opening_run_once_gives_the_whole_texts_states(tiny_model, tiny_tok, batch_size):
    body = tiny_model.base_model
    common = "Read each conversation and judge it."
    got = prefix.last_hidden(
        body, tiny_tok, PREFIXES, CONTINUATIONS, OWNER, batch_size, common=common
    )
    ids = lambda t: tiny_tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    for i, (cont, j) in enumerate(zip(CONTINUATIONS, OWNER)):
        want = _direct(body, tiny_tok, ids(common) + ids(PREFIXES[j]) + ids(cont))
        assert torch.allclose(got[i], want, atol=1e-5), i


def test_prefixes_without_continuations_are_skipped_and_empty_prefixes_refused(
    tiny_model, tiny_tok
):
    body = tiny_model.base_model
    got = prefix.last_hidden(body, tiny_tok, PREFIXES, [" a"], [1], 4)
    assert got.shape[0] == 1
    with pytest.raises(ValueError, match="at least one token"):
        prefix.last_hidden(body, tiny_tok, [""], [" a"], [0], 4)


def _grow(layer, steps, dtype=torch.float32):
    torch.manual_seed(0)
    first = (torch.randn(3, 2, 5, 4, dtype=dtype), torch.randn(3, 2, 5, 4, dtype=dtype))
    out = layer.update(*first)
    for _ in range(steps):
        out = layer.update(
            torch.randn(3, 2, 1, 4, dtype=dtype), torch.randn(3, 2, 1, 4, dtype=dtype)
        )
    return out


def test_buffered_layer_holds_what_the_stock_layer_holds(monkeypatch):
    """Written into spare room (and regrown past it), selected by rows, cropped: same tensors."""
    from transformers.cache_utils import DynamicLayer

    monkeypatch.setattr(prefix.BufferedLayer, "reserve", 2)  # regrows twice in 6 steps
    ours, stock = prefix.BufferedLayer(), DynamicLayer()
    for a, b in zip(_grow(ours, 6), _grow(stock, 6)):
        assert torch.equal(a, b)
    assert ours.get_seq_length() == stock.get_seq_length() == 11
    rows = torch.tensor([2, 0, 0])
    ours.batch_select_indices(rows)
    stock.batch_select_indices(rows)
    assert torch.equal(ours.keys, stock.keys) and torch.equal(ours.values, stock.values)
    step = (torch.ones(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))
    for a, b in zip(ours.update(*step), stock.update(*step)):
        assert torch.equal(a, b)
    ours.crop(-4)
    stock.crop(-4)
    assert ours.get_seq_length() == stock.get_seq_length() == 8
    assert torch.equal(ours.keys, stock.keys)


def test_buffered_layer_keeps_keys_in_the_autocast_dtype():
    """Attention casts fp32 keys to the autocast dtype anyway; the cache stores them so."""
    layer = prefix.BufferedLayer()
    keys = torch.randn(1, 1, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k, v = layer.update(keys, torch.randn(1, 1, 3, 4, dtype=torch.bfloat16))
    assert k.dtype == v.dtype == torch.bfloat16
    assert torch.equal(k, keys.bfloat16())
    fp32 = prefix.BufferedLayer()
    k, _ = fp32.update(keys, torch.randn(1, 1, 3, 4))
    assert k.dtype == torch.float32
