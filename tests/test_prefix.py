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


def test_prefixes_without_continuations_are_skipped_and_empty_prefixes_refused(
    tiny_model, tiny_tok
):
    body = tiny_model.base_model
    got = prefix.last_hidden(body, tiny_tok, PREFIXES, [" a"], [1], 4)
    assert got.shape[0] == 1
    with pytest.raises(ValueError, match="at least one token"):
        prefix.last_hidden(body, tiny_tok, [""], [" a"], [0], 4)
