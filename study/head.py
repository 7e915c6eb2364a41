"""Log-probabilities of labelled tokens, the vocabulary projected a block of positions at a time.

Training and the DPO reference pass need, for each labelled position, the log-probability of its
target token. Projecting every labelled position onto the vocabulary at once makes fp32 logits of
(positions x vocabulary): on the study's CPU batches that is gigabytes per step, freshly
allocated and walked five or six times (cast, log-sum-exp, softmax, its gradient). Here
positions go through the head in blocks small enough to stay in the allocator's reuse and no
block's logits outlive it. The log-probabilities are those of the plain computation (same matmul
precision, same formulas per position); the gradient with respect to the hidden states is made
during the forward pass, while the logits are at hand, and then scaled by the incoming gradient,
so it differs from autograd's only by rounding. A trainable head recomputes its blocks' logits in
the backward pass instead.
"""

from __future__ import annotations

import torch

BLOCK = 128  # positions per block: about 25 MB of fp32 logits for a 49k vocabulary


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would use for ``linear(hidden, weight)``, else the inputs'."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a block, the matmul in ``weight``'s dtype."""
    with torch.autocast(hidden.device.type, enabled=False):
        return torch.nn.functional.linear(hidden.to(weight.dtype), weight).float()


class _BlockedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, stats):
        n = hidden.shape[0]
        log_probs = hidden.new_empty(n, dtype=torch.float32)
        log_z = hidden.new_empty(n, dtype=torch.float32)
        # The gradient of log p(target) with respect to a position's hidden state is
        # (one-hot(target) - softmax) @ W times the incoming gradient, a scalar per position:
        # its (positions x width) part is made here, while the block's logits are at hand.
        slope = None
        if ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]:
            slope = torch.empty_like(hidden)
        w = weight.to(dtype)  # one cast per call, not one per block
        for start in range(0, n, BLOCK):
            end = min(start + BLOCK, n)
            logits = _logits(hidden[start:end], w)
            target = targets[start:end, None]
            z = torch.logsumexp(logits, dim=-1)
            log_z[start:end] = z
            log_probs[start:end] = logits.gather(1, target)[:, 0] - z
            if slope is None and stats is None:
                continue
            probs = torch.exp(logits - z[:, None])
            if stats is not None:
                stats["entropy"][start:end] = z - (probs * logits).sum(dim=-1)
                stats["mean_logits"][start:end] = logits.mean(dim=-1)
                stats["is_top1"][start:end] = logits.argmax(dim=-1) == target[:, 0]
            if slope is not None:
                delta = probs.neg_().scatter_add_(1, target, probs.new_ones(target.shape))
                slope[start:end] = (delta.to(dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(hidden, weight, targets, log_z, slope)
        ctx.dtype = dtype
        return log_probs

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, log_z, slope = ctx.saved_tensors
        if slope is not None:
            return slope * grad[:, None], None, None, None, None
        dtype = ctx.dtype
        w = weight.to(dtype)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        for start in range(0, hidden.shape[0], BLOCK):
            end = min(start + BLOCK, hidden.shape[0])
            logits = _logits(hidden[start:end], w)
            # d log p(target) / d logits = one-hot(target) - softmax
            g = grad[start:end, None]
            grad_logits = torch.exp(logits - log_z[start:end, None]).mul_(-g)
            grad_logits.scatter_add_(1, targets[start:end, None], g)
            grad_logits = grad_logits.to(dtype)
            if want_hidden:
                grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
            if want_weight:
                grad_weight += (grad_logits.t() @ hidden[start:end].to(dtype)).float()
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def token_logprobs(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, stats: bool = False
) -> tuple[torch.Tensor, dict | None]:
    """log p(target) of each row of ``hidden`` (positions x width) under the output ``head``.

    With ``stats``, also (without gradient) each position's entropy, mean logit and whether the
    target is the top-scoring token. The head must have no bias (causal LM heads here have none).
    """
    weight = head.weight
    if getattr(head, "bias", None) is not None:
        raise ValueError("token_logprobs takes a bias-free output head")
    extra = None
    if stats:
        n = hidden.shape[0]
        extra = {
            "entropy": hidden.new_empty(n, dtype=torch.float32),
            "mean_logits": hidden.new_empty(n, dtype=torch.float32),
            "is_top1": hidden.new_empty(n, dtype=torch.bool),
        }
    dtype = _compute_dtype(hidden, weight)
    return _BlockedLogProbs.apply(hidden, weight, targets, dtype, extra), extra
