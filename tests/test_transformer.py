"""Tests for longctx_lib.transformer."""

import pytest
import torch

from longctx_lib.transformer import FeedForward, Transformer


def test_shapes_and_causality():
    torch.manual_seed(0)
    model = Transformer(32, 4, 64, 2).double().eval()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    y = model(x, causal=True)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 7] += 1.0
    assert torch.equal(model(x2, causal=True)[:, :7], y[:, :7])
    assert not torch.equal(model(x2, causal=False)[:, :7], model(x, causal=False)[:, :7])


def test_naive_and_sdpa_stacks_agree():
    torch.manual_seed(0)
    a = Transformer(32, 4, 64, 2, impl="naive").double()
    b = Transformer(32, 4, 64, 2, impl="sdpa").double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    torch.testing.assert_close(a(x, causal=True), b(x, causal=True), atol=1e-12, rtol=0)


def test_feedforward_is_position_wise():
    ff = FeedForward(8, 16).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(ff(x)[:, 2], ff(x[:, 2:3])[:, 0], atol=1e-14, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_layers"):
        Transformer(32, 4, 64, 0)
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(8, 0)


def test_mask_reaches_every_layer():
    """Transformer(mask=causal_mask) is Transformer(causal=True); a block-diagonal mask
    makes two independent halves, through every layer (two here)."""
    from longctx_lib.attention import causal_mask

    torch.manual_seed(0)
    model = Transformer(32, 4, 64, 2).double().eval()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    torch.testing.assert_close(model(x, mask=causal_mask(10, 10)), model(x, causal=True), atol=0, rtol=0)
    halves = torch.ones(10, 10, dtype=torch.bool)
    halves[:4, :4] = halves[4:, 4:] = False
    y = model(x, mask=halves)
    torch.testing.assert_close(y[:, :4], model(x[:, :4]), atol=1e-12, rtol=0)
    torch.testing.assert_close(y[:, 4:], model(x[:, 4:]), atol=1e-12, rtol=0)
    # combined with causal: each half causal on its own
    torch.testing.assert_close(model(x, mask=halves, causal=True)[:, 4:], model(x[:, 4:], causal=True),
                               atol=1e-12, rtol=0)


def test_mask_with_padding_and_bad_mask():
    torch.manual_seed(0)
    model = Transformer(16, 2, 32, 2).double().eval()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    pad = torch.tensor([[False, False, False, False, True, True]])
    free = torch.zeros(6, 6, dtype=torch.bool)
    torch.testing.assert_close(model(x, mask=free, key_padding_mask=pad), model(x, key_padding_mask=pad),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"\bmask\b"):
        model(x, mask=torch.zeros(6, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"\bmask\b"):
        model(x, mask=torch.zeros(6, 6))
