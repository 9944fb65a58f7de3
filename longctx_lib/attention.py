"""Scaled dot-product attention: the readable reference and the fused kernel.

Chapter 1 (the attention bottleneck) defines and explains everything here.
Reference: Vaswani et al., "Attention is all you need" (2017), eq. (1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

The reference implementation materialises the full (length x length) score matrix,
which is exactly the O(L^2) memory that the rest of the course learns to avoid.
``impl="sdpa"`` calls PyTorch's fused ``scaled_dot_product_attention`` instead
(FlashAttention-style kernels: O(L) memory, still O(L^2) time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import resolve_device

__all__ = [
    "check_head_tensors",
    "scaled_dot_product_attention",
    "attention",
    "causal_mask",
    "MultiHeadAttention",
    "attention_step",
]

IMPLS = ("naive", "sdpa")


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean mask of shape ``(q_len, k_len)``, True where query i may NOT see key j.

    Query i sees keys ``j <= i`` (top-left aligned, as in PyTorch's ``is_causal``).
    """
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (q_len, k_len)):
        raise ValueError(
            f"q_len and k_len must be non-negative integers; got q_len={q_len!r}, k_len={k_len!r}"
        )
    if device is not None:
        device = resolve_device(device)
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(1)


def check_head_tensors(**tensors: Tensor) -> None:
    """Check attention inputs given by name: 4-D ``(batch, heads, length, dim)``, floating
    point, one dtype, one device. Raises a TypeError/ValueError naming the argument.

    Shared by every attention implementation of the course (chapters 1, 2, 5, 6).
    """
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (batch, heads, length, dim); got shape "
                f"{tuple(t.shape)}. Add missing axes with .unsqueeze(), e.g. x[None, None]."
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    names = " and ".join(", ".join(tensors).rsplit(", ", 1))
    values = list(tensors.values())
    if len({t.dtype for t in values}) > 1:
        raise TypeError(f"{names} must share a dtype; got {', '.join(str(t.dtype) for t in values)}")
    if len({t.device for t in values}) > 1:
        raise ValueError(
            f"{names} must be on one device; got {', '.join(str(t.device) for t in values)}. "
            "Move them with .to(device)."
        )


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    check_head_tensors(q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the last (dim) axis; got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length (axis -2); got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]):
        raise ValueError(
            "q, k and v must share (batch, heads); got "
            f"{tuple(q.shape[:2])}, {tuple(k.shape[:2])}, {tuple(v.shape[:2])}"
        )


def _check_padding(key_padding_mask: Tensor | None, q: Tensor, k: Tensor) -> None:
    if key_padding_mask is None:
        return
    if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
        raise TypeError("key_padding_mask must be a bool tensor of shape (batch, key_length)")
    expected = (k.shape[0], k.shape[2])
    if tuple(key_padding_mask.shape) != expected:
        raise ValueError(
            f"key_padding_mask must have shape (batch, key_length) = {expected}; got "
            f"{tuple(key_padding_mask.shape)}"
        )
    if key_padding_mask.device != q.device:
        raise ValueError(
            f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}; "
            "move it with .to(q.device)"
        )


def _check_mask(mask: Tensor | None, q: Tensor, k: Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor of shape (q_len, k_len), True where a query may not see "
                        f"a key; got {type(mask).__name__ if not isinstance(mask, Tensor) else mask.dtype}")
    expected = (q.shape[-2], k.shape[-2])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape (q_len, k_len) = {expected}; got {tuple(mask.shape)}")
    if mask.device != q.device:
        raise ValueError(f"mask is on {mask.device} but q is on {q.device}; move it with .to(q.device)")


def _check_dropout(name: str, p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1); got {p!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {p}")


def _blocked(
    q: Tensor, k: Tensor, causal: bool, key_padding_mask: Tensor | None, mask: Tensor | None = None
) -> Tensor | None:
    """Combined bool mask, True = blocked, broadcastable to (batch, heads, Lq, Lk)."""
    blocked = mask  # (Lq, Lk) or None
    if causal:
        c = causal_mask(q.shape[-2], k.shape[-2], q.device)  # (Lq, Lk)
        blocked = c if blocked is None else blocked | c
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        blocked = pad if blocked is None else blocked | pad
    return blocked


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference (naive) multi-head attention that builds the full score matrix.

    Args:
        q: queries ``(batch, heads, q_len, dim)``.
        k: keys ``(batch, heads, k_len, dim)``.
        v: values ``(batch, heads, k_len, dim_v)``.
        causal: query ``i`` sees only keys ``j <= i``.
        key_padding_mask: bool ``(batch, k_len)``, True marks padding keys to ignore.
        mask: bool ``(q_len, k_len)``, True where query ``i`` may NOT see key ``j`` (the
            convention of :func:`causal_mask`; combined with ``causal`` and the padding).
            Chapter 6 builds the Recurrent Memory Transformer's segment mask with it.
        dropout_p: probability of dropping an attention weight (training only; pass
            0 at evaluation). Kept weights are scaled by ``1 / (1 - dropout_p)``.
        scale: multiplies the scores; default ``1 / sqrt(dim)``.
        generator: random generator for the dropout mask (reproducible dropout).
        return_weights: also return the attention weights ``(batch, heads, q_len, k_len)``.

    Returns:
        The output ``(batch, heads, q_len, dim_v)`` (and the weights if asked).
        A query that can see no key at all (every key padded) gets an all-zero output
        rather than NaN.
    """
    _check_qkv(q, k, v)
    _check_padding(key_padding_mask, q, k)
    _check_mask(mask, q, k)
    _check_dropout("dropout_p", dropout_p)
    if causal is not True and causal is not False:
        raise TypeError(f"causal must be True or False; got {causal!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a positive number or None; got {scale!r}")
        if not scale > 0:
            raise ValueError(f"scale must be a positive number or None; got {scale!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Lq, Lk): the O(L^2) tensor
    blocked = _blocked(q, k, causal, key_padding_mask, mask)
    dead = None
    if blocked is not None:
        dead = blocked.all(dim=-1, keepdim=True)  # queries with no visible key
        if bool(dead.any()):
            blocked = blocked & ~dead  # keep those rows finite; zeroed below
        else:
            dead = None
        scores = scores.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        keep = torch.rand(weights.shape, generator=generator, device=weights.device) >= dropout_p
        weights = weights * keep / (1.0 - dropout_p)
    out = weights @ v  # (B, H, Lq, Dv)
    return (out, weights) if return_weights else out


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "naive",
) -> Tensor:
    """Dispatch to the reference (``impl="naive"``) or fused (``impl="sdpa"``) attention.

    Shapes as in :func:`scaled_dot_product_attention`. Both compute the same function;
    the fused kernel never stores the score matrix.
    """
    _check_dropout("dropout_p", dropout_p)
    if impl == "naive":
        return scaled_dot_product_attention(
            q, k, v, causal=causal, key_padding_mask=key_padding_mask, mask=mask, dropout_p=dropout_p
        )
    if impl != "sdpa":
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    _check_qkv(q, k, v)
    _check_padding(key_padding_mask, q, k)
    _check_mask(mask, q, k)
    if key_padding_mask is None and mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    allowed = ~_blocked(q, k, causal, key_padding_mask, mask)  # SDPA's bool mask: True = attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
    # Rows with no visible key: zero them, as the reference does (SDPA may give NaN).
    return out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (then mixed dtypes are autocast's to handle)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_enabled())


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: project, split heads, attend, merge, project.

    Input and output ``(batch, length, d_model)``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        impl: str = "naive",
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be a positive multiple of n_heads={n_heads}; "
                "choose n_heads that divides d_model"
            )
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
        _check_dropout("dropout", dropout)
        self.d_model, self.n_heads, self.impl, self.dropout = d_model, n_heads, impl, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self, x: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``(batch, length, d_model)`` -> ``(batch, length, d_model)``; masks as in
        :func:`scaled_dot_product_attention`."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (batch, length, d_model); got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape (batch, length, d_model={self.d_model}); got {tuple(x.shape)}"
            )
        weight = self.qkv.weight
        if x.dtype != weight.dtype and not _autocast_enabled(x.device.type):
            raise TypeError(
                f"x must have the dtype of the module's weights ({weight.dtype}); got {x.dtype}. "
                f"Use x.to({weight.dtype}) or module.to({x.dtype})"
            )
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, L, hd)
        p = self.dropout if self.training else 0.0
        y = attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, mask=mask, dropout_p=p,
                      impl=self.impl)
        return self.out(y.transpose(1, 2).reshape(b, n, self.d_model))  # (B, L, d_model)


def attention_step(
    length: int,
    *,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    impl: str = "naive",
    causal: bool = True,
    backward: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> None:
    """One attention call on random inputs (and its backward if asked): a workload.

    It builds its own inputs, so it can run in a fresh process to measure peak memory
    (see :func:`longctx_lib.measure.peak_memory`).
    """
    for name, value in (("length", length), ("batch", batch), ("heads", heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype}")
    dev = resolve_device(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch, heads, length, head_dim)
    q, k, v = (torch.randn(shape, generator=g, dtype=dtype).to(dev).requires_grad_(backward) for _ in range(3))
    out = attention(q, k, v, causal=causal, impl=impl)
    if backward:
        out.sum().backward()
