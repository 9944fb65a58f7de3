"""Synthetic long-context tasks, generated on the fly (nothing to download).

Chapter 2 uses the Reformer paper's duplication task; chapter 5 adds passkey retrieval
(Infini-attention's test); later chapters add their own tasks here so that chapter 7 can
compare every method on the same data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .device import resolve_device

__all__ = [
    "duplication_batch",
    "duplication_targets_mask",
    "duplication_accuracy",
    "PASSKEY_VOCAB",
    "KEY_TOKEN",
    "QUERY_TOKEN",
    "FILLER_TOKENS",
    "passkey_batch",
    "passkey_targets_mask",
    "passkey_accuracy",
]


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


# --------------------------------------------------------------------------- passkey retrieval
PASSKEY_VOCAB = 16
"""Token ids of the passkey task: digits ``0 .. 9``, the two markers, four filler tokens."""
KEY_TOKEN = 10
"""Marks the passkey ("the pass key is ...")."""
QUERY_TOKEN = 11
"""Asks for it at the end ("what is the pass key? ...")."""
FILLER_TOKENS = (12, 13, 14, 15)
"""The filler, repeated in this order ("the grass is green. the sky is blue. ...")."""


def _check_positive(name: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer; got {n!r}")


def _check_passkey_length(length: object, n_digits: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 2 * (n_digits + 1):
        raise ValueError(f"length must be an integer >= {2 * (n_digits + 1)} (the key and the question, "
                         f"{n_digits + 1} tokens each); got {length!r}")


def passkey_batch(
    batch: int,
    length: int,
    *,
    n_digits: int = 5,
    depth: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Passkey retrieval: a number hidden in filler, asked for at the end.

    Each sequence is filler (the four :data:`FILLER_TOKENS` repeated from a random
    phase), with ``KEY d1 .. dn`` inserted at relative ``depth`` (0: the start, 1: just
    before the question; ``None``: uniform per sequence), and ending in the question
    ``QUERY d1 .. dn``. A model has read the key when it predicts the final ``n_digits``
    digits (scored by :func:`passkey_accuracy`). Infini-attention's paper fine-tunes on
    such sequences and evaluates at up to 1M tokens.

    Returns:
        tokens ``(batch, length)`` int64, and the position of each ``KEY`` token ``(batch,)``.
    """
    _check_positive("batch", batch)
    _check_positive("n_digits", n_digits)
    _check_passkey_length(length, n_digits)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, float))
                              or not 0.0 <= depth <= 1.0):
        raise ValueError(f"depth must be None (random) or a number in [0, 1]; got {depth!r}")
    device = resolve_device(device) if device is not None else None
    block = n_digits + 1
    room = length - 2 * block  # the last possible start of the key block
    filler = torch.tensor(FILLER_TOKENS)
    phase = torch.randint(0, len(FILLER_TOKENS), (batch, 1), generator=generator)
    tokens = filler[(torch.arange(length) + phase) % len(FILLER_TOKENS)]  # (batch, length)
    digits = torch.randint(0, 10, (batch, n_digits), generator=generator)
    if depth is None:
        start = torch.randint(0, room + 1, (batch,), generator=generator)
    else:
        start = torch.full((batch,), round(depth * room), dtype=torch.long)
    rows = torch.arange(batch)[:, None]
    tokens[rows, start[:, None] + torch.arange(block)] = torch.cat(
        [torch.full((batch, 1), KEY_TOKEN), digits], dim=1)
    tokens[:, length - block] = QUERY_TOKEN
    tokens[:, length - n_digits:] = digits
    return tokens.to(device), start.to(device)


def passkey_targets_mask(length: int, n_digits: int = 5) -> Tensor:
    """Bool ``(length - 1,)``: the next-token predictions that are scored, those of the answer's digits."""
    _check_positive("n_digits", n_digits)
    _check_passkey_length(length, n_digits)
    mask = torch.zeros(length - 1, dtype=torch.bool)
    mask[length - 1 - n_digits:] = True  # predictions made at positions length-n-1 .. length-2
    return mask


def passkey_accuracy(logits: Tensor, tokens: Tensor, n_digits: int = 5, *, per_digit: bool = False) -> float:
    """Fraction of sequences whose every answer digit is predicted exactly (greedy).

    Args:
        logits: ``(batch, length, vocab)`` next-token logits (only the last
            ``n_digits + 1`` positions are read).
        tokens: ``(batch, length)`` from :func:`passkey_batch`.
        per_digit: score digits one by one instead of whole passkeys.
    """
    for name, t in (("logits", logits), ("tokens", tokens)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError("logits must be (batch, length, vocab) and tokens (batch, length) with the same "
                         f"batch and length; got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    mask = passkey_targets_mask(tokens.shape[1], n_digits).to(tokens.device)
    hits = (logits[:, :-1].argmax(-1) == tokens[:, 1:])[:, mask]  # (batch, n_digits)
    return (hits.float().mean() if per_digit else hits.all(dim=1).float().mean()).item()
