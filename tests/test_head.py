"""Labelled tokens' log-probabilities computed a block of positions at a time."""

import pytest
import torch

from study import head

pytestmark = pytest.mark.unit

N, WIDTH, VOCAB = 11, 8, 37


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(head, "BLOCK", 4)  # 11 positions: blocks of 4, 4 and 3


def _inputs(trainable_head: bool):
    torch.manual_seed(0)
    hidden = torch.randn(N, WIDTH, requires_grad=True)
    lin = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    lin.weight.requires_grad_(trainable_head)
    targets = torch.randint(0, VOCAB, (N,))
    weights = torch.linspace(-1.0, 2.0, N)  # a gradient that varies per row
    return hidden, lin, targets, weights


def _plain(hidden, lin, targets):
    logits = lin(hidden)
    log_probs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    probs = torch.softmax(logits, dim=-1)
    stats = {
        "entropy": -(probs * torch.log_softmax(logits, dim=-1)).sum(-1),
        "mean_logits": logits.mean(-1),
        "is_top1": logits.argmax(-1) == targets,
    }
    return log_probs, stats


@pytest.mark.parametrize("trainable_head", [False, True])
def test_values_and_gradients_match_the_whole_vocabulary_projection(small_blocks, trainable_head):
    hidden, lin, targets, weights = _inputs(trainable_head)
    expected, expected_stats = _plain(hidden, lin, targets)
    (expected * weights).sum().backward()
    grad_hidden = hidden.grad.clone()
    grad_weight = lin.weight.grad.clone() if trainable_head else None
    hidden.grad = None
    lin.weight.grad = None

    got, stats = head.token_logprobs(hidden, lin, targets, stats=True)
    (got * weights).sum().backward()

    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden.grad, grad_hidden, rtol=1e-5, atol=1e-7)
    if trainable_head:
        torch.testing.assert_close(lin.weight.grad, grad_weight, rtol=1e-5, atol=1e-7)
    else:
        assert lin.weight.grad is None
    for name in ("entropy", "mean_logits"):
        torch.testing.assert_close(stats[name], expected_stats[name], atol=1e-5, rtol=0)
    assert torch.equal(stats["is_top1"], expected_stats["is_top1"])


def test_bf16_autocast_gives_the_plain_log_probabilities_exactly(small_blocks):
    """Under autocast the head's matmul runs in bf16, as a plain ``head(hidden).float()`` does."""
    hidden, lin, targets, _ = _inputs(False)
    hidden = hidden.detach()
    lin.weight.data = lin.weight.data.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(hidden).float()
        got, _ = head.token_logprobs(hidden, lin, targets)
    expected = logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    assert torch.equal(got, expected)


def test_a_head_with_a_bias_is_refused():
    lin = torch.nn.Linear(WIDTH, VOCAB)
    with pytest.raises(ValueError, match="bias-free"):
        head.token_logprobs(torch.zeros(2, WIDTH), lin, torch.zeros(2, dtype=torch.long))
