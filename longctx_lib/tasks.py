"""Synthetic long-context tasks, generated on the fly (nothing to download).

Chapter 2 uses the Reformer paper's duplication task; later chapters add their own
tasks here so that chapter 7 can compare every method on the same data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .device import resolve_device

__all__ = ["duplication_batch", "duplication_targets_mask", "duplication_accuracy"]


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 4 or length % 2:
        raise ValueError(f"length must be an even integer >= 4 (two halves 0w); got {length!r}")


def duplication_batch(
    batch: int,
    length: int,
    vocab_size: int = 128,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sequences ``0 w 0 w`` of the Reformer paper's duplication task (section 5).

    ``w`` holds ``length // 2 - 1`` symbols drawn uniformly from ``1 .. vocab_size - 1``;
    ``0`` is the separator. The paper uses ``length=1024, vocab_size=128``.

    Returns:
        int64 tokens of shape ``(batch, length)``.
    """
    _check_length(length)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer; got {batch!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2 (0 is the separator); got {vocab_size!r}")
    device = resolve_device(device) if device is not None else None
    half = length // 2
    w = torch.randint(1, vocab_size, (batch, half - 1), generator=generator)
    zero = torch.zeros(batch, 1, dtype=torch.long)
    return torch.cat([zero, w, zero, w], dim=1).to(device)  # (batch, length)


def duplication_targets_mask(length: int) -> Tensor:
    """Bool ``(length - 1,)``: which next-token predictions are scored.

    Prediction ``t`` (made at position ``t``) is of token ``t + 1``. Only the copy is
    scored: tokens ``length // 2 + 1 .. length - 1``, which a model can only get right by
    looking back half a sequence.
    """
    _check_length(length)
    mask = torch.zeros(length - 1, dtype=torch.bool)
    mask[length // 2 :] = True  # predictions of tokens length//2 + 1 ... length - 1
    return mask


def duplication_accuracy(logits: Tensor, tokens: Tensor) -> float:
    """Fraction of copied tokens predicted exactly (greedy), as in the paper's Table 2.

    Args:
        logits: ``(batch, length, vocab)`` next-token logits.
        tokens: ``(batch, length)`` the input sequences.
    """
    for name, t in (("logits", logits), ("tokens", tokens)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor; got dtype {tokens.dtype}")
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            "logits must be (batch, length, vocab) and tokens (batch, length) with the same "
            f"batch and length; got {tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    mask = duplication_targets_mask(tokens.shape[1]).to(tokens.device)
    hits = logits[:, :-1].argmax(-1) == tokens[:, 1:]  # (batch, length - 1)
    return hits[:, mask].float().mean().item()
