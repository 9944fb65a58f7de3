"""Training and evaluating character-level language models in bits per character.

Chapter 4 trains :class:`~longctx_lib.reformer.ReformerLM` (with LSH attention, and
with full attention as the baseline) on the standard library's source
(:mod:`longctx_lib.text`). Bits per character is the mean next-byte cross-entropy in
bits: ``loss_nats / ln 2``; 8 is a uniform guess over bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .text import random_windows

__all__ = ["bits_per_char", "train_char_lm"]


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must be a module with a loss(tokens) method (e.g. ReformerLM); "
                        f"got {type(model).__name__}")


@torch.no_grad()
def bits_per_char(model: nn.Module, corpus: Tensor, *, context: int, n_windows: int = 16, batch: int = 4,
                  seed: int = 0) -> float:
    """Mean bits per character of ``model`` on ``n_windows`` random windows of ``context + 1`` bytes.

    The same ``seed`` draws the same windows, so two models are compared on the same text.
    """
    _check_model(model)
    if not isinstance(n_windows, int) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive integer; got {n_windows!r}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    done = 0
    while done < n_windows:
        size = min(batch, n_windows - done)
        tokens = random_windows(corpus, size, context + 1, generator=gen).to(device)
        total += model.loss(tokens).item() * size
        done += size
    model.train(was_training)
    return total / n_windows / math.log(2)


def train_char_lm(
    model: nn.Module,
    train: Tensor,
    validation: Tensor,
    *,
    context: int,
    steps: int,
    batch: int = 4,
    lr: float = 1e-3,
    eval_every: int = 50,
    eval_windows: int = 16,
    seed: int = 0,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, list[float]]:
    """Adam on random windows of ``context + 1`` bytes; returns the bits-per-character curves.

    Returns ``{"step": [...], "train_bpc": [...], "validation_bpc": [...]}``: the training
    figure is the mean over the steps since the last evaluation, the validation figure
    :func:`bits_per_char` on the same windows at every evaluation.
    """
    _check_model(model)
    for name, value in (("context", context), ("steps", steps), ("batch", batch), ("eval_every", eval_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: dict[str, list[float]] = {"step": [], "train_bpc": [], "validation_bpc": []}
    running, count = 0.0, 0
    model.train()
    for step in tqdm(range(1, steps + 1), desc=f"training (context {context})", disable=not progress):
        tokens = random_windows(train, batch, context + 1, generator=gen).to(device)
        loss = model.loss(tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running, count = running + loss.item(), count + 1
        if step % eval_every == 0 or step == steps:
            val = bits_per_char(model, validation, context=context, n_windows=eval_windows, batch=batch, seed=seed)
            history["step"].append(step)
            history["train_bpc"].append(running / count / math.log(2))
            history["validation_bpc"].append(val)
            running, count = 0.0, 0
            if on_eval is not None:
                on_eval(step, val)
    return history
