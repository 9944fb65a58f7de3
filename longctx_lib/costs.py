"""The cost model: FLOPs and bytes of attention and of a transformer's activations.

Chapter 1 defines these counts and checks them against measurements; chapters 2-4
use :func:`table3_memory` to predict what LSH attention, reversible layers and
chunking save. The memory formulas are the terms of Table 3 of Kitaev, Kaiser and
Levskaya, "Reformer: The Efficient Transformer" (ICLR 2020), counted in elements.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "bytes_per_element",
    "score_matrix_bytes",
    "attention_flops",
    "max_length_for_budget",
    "transformer_activation_bytes",
    "table3_memory",
    "TABLE3_MODELS",
]

TABLE3_MODELS = ("transformer", "reversible", "chunked_reversible", "lsh_transformer", "reformer")


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def bytes_per_element(dtype: torch.dtype | int) -> int:
    """Bytes one element takes: ``torch.float32`` -> 4; an int is taken as the answer."""
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        _positive(bytes_per_element=dtype)
        return dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or a number of bytes; got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def score_matrix_bytes(
    batch: int,
    heads: int,
    length: int,
    *,
    key_length: int | None = None,
    dtype: torch.dtype | int = torch.float32,
) -> int:
    """Bytes of one score matrix ``Q K^T`` of shape ``(batch, heads, length, key_length)``."""
    key_length = length if key_length is None else key_length
    _positive(batch=batch, heads=heads, length=length, key_length=key_length)
    return batch * heads * length * key_length * bytes_per_element(dtype)


def attention_flops(
    batch: int, heads: int, length: int, head_dim: int, *, key_length: int | None = None
) -> int:
    """Floating-point operations of the two matmuls of attention (forward pass).

    ``Q K^T`` and ``weights @ V`` each take ``2 * length * key_length * head_dim``
    operations (a multiply and an add) per batch element and head. The softmax adds
    O(length * key_length), negligible beside them, and is not counted.
    """
    key_length = length if key_length is None else key_length
    _positive(batch=batch, heads=heads, length=length, head_dim=head_dim, key_length=key_length)
    return 4 * batch * heads * length * key_length * head_dim


def max_length_for_budget(
    budget_bytes: int, *, batch: int = 1, heads: int = 1, dtype: torch.dtype | int = torch.float32
) -> int:
    """Longest ``length`` whose square score matrix fits in ``budget_bytes`` (0 if none)."""
    _positive(batch=batch, heads=heads)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
        raise ValueError(f"budget_bytes must be a non-negative integer; got {budget_bytes!r}")
    per_pair = batch * heads * bytes_per_element(dtype)
    return math.isqrt(budget_bytes // per_pair)


def transformer_activation_bytes(
    *,
    batch: int,
    length: int,
    d_ff: int,
    n_heads: int,
    n_layers: int,
    dtype: torch.dtype | int = torch.float32,
) -> int:
    """Leading-order bytes a transformer keeps for backward: ``n_layers * (b l d_ff + b n_h l^2)``.

    The feed-forward layer's intermediate (``b * l * d_ff``) and the attention weights
    (``b * n_h * l^2``) dominate; Table 3 writes their maximum, here they are added.
    Real layers keep a small multiple of this (see chapter 1's measurement).
    """
    _positive(batch=batch, length=length, d_ff=d_ff, n_heads=n_heads, n_layers=n_layers)
    per_layer = batch * length * d_ff + batch * n_heads * length * length
    return n_layers * per_layer * bytes_per_element(dtype)


def table3_memory(
    model: str,
    *,
    batch: int,
    length: int,
    d_model: int,
    d_ff: int,
    n_heads: int,
    n_layers: int,
    n_rounds: int = 1,
    chunk: int = 128 * 128,
) -> int:
    """Memory (in elements) of Table 3 of the Reformer paper.

    ``model`` is one of ``"transformer"``, ``"reversible"``, ``"chunked_reversible"``,
    ``"lsh_transformer"``, ``"reformer"``; ``chunk`` is the paper's ``c = 128^2``.

    ============================  =============================================
    transformer                   max(b l d_ff, b n_h l^2) n_l
    reversible                    max(b l d_ff, b n_h l^2)
    chunked_reversible            max(b l d_model, b n_h l^2)
    lsh_transformer               max(b l d_ff, b n_h l n_r c) n_l
    reformer                      max(b l d_model, b n_h l n_r c)
    ============================  =============================================
    """
    _positive(
        batch=batch, length=length, d_model=d_model, d_ff=d_ff, n_heads=n_heads,
        n_layers=n_layers, n_rounds=n_rounds, chunk=chunk,
    )
    b, l = batch, length
    full_attention = b * n_heads * l * l
    lsh_attention = b * n_heads * l * n_rounds * chunk
    terms = {
        "transformer": (b * l * d_ff, full_attention, n_layers),
        "reversible": (b * l * d_ff, full_attention, 1),
        "chunked_reversible": (b * l * d_model, full_attention, 1),
        "lsh_transformer": (b * l * d_ff, lsh_attention, n_layers),
        "reformer": (b * l * d_model, lsh_attention, 1),
    }
    if model not in terms:
        raise ValueError(f"model must be one of {TABLE3_MODELS}; got {model!r}")
    activations, attention, layers = terms[model]
    return max(activations, attention) * layers
