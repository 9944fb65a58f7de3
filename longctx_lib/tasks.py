"""Synthetic long-context tasks, generated on the fly (nothing to download).

Chapter 2 uses the Reformer paper's duplication task; chapter 5 adds passkey retrieval
(Infini-attention's test); chapter 6 adds the Recurrent Memory Transformer's tasks (copy,
reverse, associative retrieval, and the million-token paper's fact tasks); chapter 7
compares every method on the same data.
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
    "TASK_VOCAB",
    "N_SYMBOLS",
    "SEP_TOKEN",
    "ASK_TOKEN",
    "FACT_TOKEN",
    "FACT2_TOKEN",
    "BLANK_TOKEN",
    "DISTRACTOR_TOKENS",
    "FACT_TASKS",
    "copy_batch",
    "reverse_batch",
    "associative_retrieval_batch",
    "fact_batch",
    "answer_accuracy",
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


# --- Chapter 6: the Recurrent Memory Transformer's tasks --------------------------------
# Every generator returns ``(tokens, answer_mask)``: tokens ``(batch, length)`` int64 and a
# bool ``(batch, length)`` marking the answer tokens, which a causal model must predict from
# everything before them.

TASK_VOCAB = 32
"""Vocabulary of the chapter 6 tasks: symbols, markers and distractor words."""
N_SYMBOLS = 16
"""Tokens ``0 .. 15`` are the symbols that are copied, reversed, stored and asked for."""
SEP_TOKEN = 16
"""Ends the input of copy and reverse ("now write it out")."""
ASK_TOKEN = 17
"""Starts the question at the end of associative retrieval and the fact tasks."""
FACT_TOKEN = 18
"""Marks a fact: ``FACT v`` ("the value is v")."""
FACT2_TOKEN = 19
"""Marks the second fact of the reasoning task."""
BLANK_TOKEN = 20
"""Stands in for a hidden answer when a bidirectional (encoder) model reads the question."""
DISTRACTOR_TOKENS = tuple(range(21, 32))
"""The distractor text that hides the facts: words drawn uniformly at random."""
FACT_TASKS = ("memorize", "detect", "reasoning")
"""The million-token RMT paper's three tasks (Bulatov et al., 2023)."""


def _symbols(shape: tuple[int, ...], generator: torch.Generator | None, high: int = N_SYMBOLS) -> Tensor:
    return torch.randint(0, high, shape, generator=generator)


def _answers_at_end(batch: int, length: int, n_answer: int) -> Tensor:
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, length - n_answer:] = True
    return mask


def _to(device: torch.device | str | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    if device is None:
        return tensors
    dev = resolve_device(device)
    return tuple(t.to(dev) for t in tensors)


def copy_batch(batch: int, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Copy (RMT, NeurIPS 2022): ``x1 .. xn SEP x1 .. xn``; the second ``x`` is the answer.

    Returns tokens ``(batch, 2n + 1)`` and the answer mask (the last ``n`` positions).
    """
    _check_positive("batch", batch)
    _check_positive("n", n)
    x = _symbols((batch, n), generator)
    tokens = torch.cat([x, torch.full((batch, 1), SEP_TOKEN), x], dim=1)
    return _to(device, tokens, _answers_at_end(batch, 2 * n + 1, n))  # type: ignore[return-value]


def reverse_batch(batch: int, n: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Reverse: ``x1 .. xn SEP xn .. x1``; the reversed copy is the answer. Shapes as :func:`copy_batch`."""
    _check_positive("batch", batch)
    _check_positive("n", n)
    x = _symbols((batch, n), generator)
    tokens = torch.cat([x, torch.full((batch, 1), SEP_TOKEN), x.flip(1)], dim=1)
    return _to(device, tokens, _answers_at_end(batch, 2 * n + 1, n))  # type: ignore[return-value]


def associative_retrieval_batch(batch: int, n_pairs: int, *, generator: torch.Generator | None = None,
                                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Associative retrieval: ``k1 v1 .. kn vn ASK k v`` where ``k`` is one of the keys.

    Keys are distinct symbols (so ``n_pairs <= 16``), values are any symbols; the answer
    is the value stored with the asked key. Returns tokens ``(batch, 2 n_pairs + 3)`` and
    the answer mask (the last position).
    """
    _check_positive("batch", batch)
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 1 <= n_pairs <= N_SYMBOLS:
        raise ValueError(f"n_pairs must be an integer in [1, {N_SYMBOLS}] (keys are distinct symbols); "
                         f"got {n_pairs!r}")
    keys = torch.rand(batch, N_SYMBOLS, generator=generator).argsort(dim=1)[:, :n_pairs]  # distinct
    values = _symbols((batch, n_pairs), generator)
    pairs = torch.stack([keys, values], dim=2).reshape(batch, 2 * n_pairs)
    asked = torch.randint(0, n_pairs, (batch, 1), generator=generator)
    question = torch.cat([torch.full((batch, 1), ASK_TOKEN), keys.gather(1, asked), values.gather(1, asked)], 1)
    tokens = torch.cat([pairs, question], dim=1)
    return _to(device, tokens, _answers_at_end(batch, 2 * n_pairs + 3, 1))  # type: ignore[return-value]


def fact_batch(batch: int, length: int, *, task: str = "memorize", n_values: int = 10,
               generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The million-token RMT paper's tasks: facts hidden in distractor text, a question at the end.

    Each sequence is distractor words (uniform over :data:`DISTRACTOR_TOKENS`) ending in
    ``ASK answer``. A fact is ``FACT v`` with ``v`` in ``0 .. n_values - 1`` (chance is
    ``1 / n_values``):

    - ``"memorize"``: the fact opens the sequence (positions 0 and 1); answer ``v``.
    - ``"detect"``: the fact is anywhere before the question; answer ``v``. The model
      must first notice it among the distractors.
    - ``"reasoning"``: two facts ``FACT a`` and ``FACT2 b``, anywhere and in either order,
      not overlapping; answer ``(a + b) mod n_values``: it needs both. (The paper uses
      bAbI's two-supporting-facts questions in PG-19 text; the sum is our stand-in, with
      no language to learn.)

    Returns tokens ``(batch, length)`` and the answer mask (the last position).
    """
    _check_positive("batch", batch)
    if task not in FACT_TASKS:
        raise ValueError(f"task must be one of {FACT_TASKS}; got {task!r}")
    if isinstance(n_values, bool) or not isinstance(n_values, int) or not 2 <= n_values <= N_SYMBOLS:
        raise ValueError(f"n_values must be an integer in [2, {N_SYMBOLS}]; got {n_values!r}")
    least = 6 if task == "reasoning" else 4
    if isinstance(length, bool) or not isinstance(length, int) or length < least:
        raise ValueError(f"length must be an integer >= {least} for task {task!r} (facts and the question); "
                         f"got {length!r}")
    words = torch.tensor(DISTRACTOR_TOKENS)
    tokens = words[torch.randint(0, len(DISTRACTOR_TOKENS), (batch, length), generator=generator)]
    rows = torch.arange(batch)
    a = _symbols((batch,), generator, n_values)
    if task == "memorize":
        start = torch.zeros(batch, dtype=torch.long)
    else:
        start = torch.randint(0, length - 3, (batch,), generator=generator)  # fact ends before ASK
    if task == "reasoning":  # two non-overlapping 2-token slots among the (length - 2) // 2 before ASK
        slots = torch.rand(batch, (length - 2) // 2, generator=generator).argsort(dim=1)[:, :2] * 2
        start, start2 = slots[:, 0], slots[:, 1]
        b = _symbols((batch,), generator, n_values)
        tokens[rows, start2], tokens[rows, start2 + 1] = FACT2_TOKEN, b
        answer = (a + b) % n_values
    else:
        answer = a
    tokens[rows, start], tokens[rows, start + 1] = FACT_TOKEN, a
    tokens[:, length - 2], tokens[:, length - 1] = ASK_TOKEN, answer
    return _to(device, tokens, _answers_at_end(batch, length, 1))  # type: ignore[return-value]


def answer_accuracy(logits: Tensor, tokens: Tensor, answer_mask: Tensor) -> float:
    """Fraction of sequences whose every answer token a causal model predicts exactly (greedy).

    Args:
        logits: ``(batch, length, vocab)`` next-token logits of ``tokens``.
        tokens, answer_mask: ``(batch, length)`` from a chapter 6 task; every sequence
            has the same number of answers.
    """
    for name, t in (("logits", logits), ("tokens", tokens), ("answer_mask", answer_mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if logits.dim() != 3 or logits.shape[:2] != tokens.shape or answer_mask.shape != tokens.shape:
        raise ValueError("logits must be (batch, length, vocab), tokens and answer_mask (batch, length); got "
                         f"{tuple(logits.shape)}, {tuple(tokens.shape)} and {tuple(answer_mask.shape)}")
    if answer_mask.dtype != torch.bool or bool(answer_mask[:, 0].any()):
        raise ValueError("answer_mask must be bool and cannot mark position 0 (nothing precedes it)")
    hits = (logits[:, :-1].argmax(-1) == tokens[:, 1:]) | ~answer_mask[:, 1:]
    return hits.all(dim=1).float().mean().item()
