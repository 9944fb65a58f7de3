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
