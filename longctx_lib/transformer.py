"""A plain pre-LayerNorm transformer: the baseline every later chapter improves on.

Chapter 1 uses it to show that activations saved for backward grow linearly with
depth and with the feed-forward width ``d_ff``; chapters 5 and 6 wrap it as the
backbone of Infini-attention and the Recurrent Memory Transformer.
"""

from __future__ import annotations

from torch import Tensor, nn

from .attention import MultiHeadAttention

__all__ = ["FeedForward", "TransformerBlock", "Transformer"]


def _dropout(p: float) -> nn.Module:
    """Dropout, or nothing at all when ``p == 0`` (so no mask is stored for backward)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _check_x(x: Tensor, d_model: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, length, d_model); got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (batch, length, d_model={d_model}); got {tuple(x.shape)}")


class FeedForward(nn.Module):
    """Position-wise feed-forward: ``Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model)``.

    Input and output ``(batch, length, d_model)``; the hidden ``(batch, length, d_ff)``
    is the intermediate that chapter 4 learns to chunk.
    """

    def __init__(self, d_model: int, d_ff: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"d_model and d_ff must be positive; got d_model={d_model}, d_ff={d_ff}")
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), _dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.d_model = d_model

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.d_model)
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x))``, then ``x + FF(LN(x))``. Shapes ``(batch, length, d_model)``."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, *, dropout: float = 0.0, impl: str = "naive"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, impl=impl)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout=dropout)
        self.drop = _dropout(dropout)
        self.d_model = d_model

    def forward(
        self, x: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Masks as in :func:`~longctx_lib.attention.scaled_dot_product_attention`."""
        _check_x(x, self.d_model)
        x = x + self.drop(self.attn(self.norm1(x), causal=causal, key_padding_mask=key_padding_mask, mask=mask))
        return x + self.drop(self.ff(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of ``n_layers`` :class:`TransformerBlock` s and a final LayerNorm.

    Input and output ``(batch, length, d_model)``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        n_layers: int,
        *,
        dropout: float = 0.0,
        impl: str = "naive",
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1; got {n_layers}")
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout=dropout, impl=impl) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, x: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Masks as in :func:`~longctx_lib.attention.scaled_dot_product_attention`: ``mask``
        ``(length, length)`` is True where position ``i`` may NOT see position ``j``."""
        for block in self.blocks:
            x = block(x, causal=causal, key_padding_mask=key_padding_mask, mask=mask)
        return self.norm(x)
