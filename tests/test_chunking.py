"""Chunking (chapter 4): chunked feed-forward and chunked loss equal the unchunked ones.

float64 throughout: chunking reorders no sum inside a position (the feed-forward) and
only splits the loss's sum over positions, so values and gradients agree to a few ulps;
1e-12 is far above that and far below any real mistake.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx_lib.chunking import ChunkedFeedForward, apply_chunked, apply_summed, chunked_cross_entropy
from longctx_lib.measure import saved_tensor_bytes
from longctx_lib.reversible import NormAttention, ReversibleBlock, ReversibleSequence
from longctx_lib.transformer import FeedForward


def max_diff(a, b) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


@pytest.mark.parametrize("length, chunk", [(37, 5), (40, 8), (7, 16), (1, 1)])
def test_chunked_feed_forward_equals_unchunked(length, chunk):
    torch.manual_seed(0)
    ff = FeedForward(8, 32).double()
    x = torch.randn(2, length, 8, dtype=torch.float64, requires_grad=True)
    y = ChunkedFeedForward(ff, chunk_size=chunk)(x)
    ref = ff(x)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *ff.parameters()], gy)
    want = torch.autograd.grad(ref, [x, *ff.parameters()], gy)
    assert (y - ref).abs().max() < 1e-12
    assert max_diff(got, want) < 1e-12


def test_chunked_dropout_masks_replayed_in_backward():
    torch.manual_seed(0)
    ff = FeedForward(8, 32, dropout=0.5).double()
    x = torch.randn(2, 37, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(4)
    y = apply_chunked(ff, x, chunk_size=5)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *ff.parameters()], gy)
    torch.manual_seed(4)  # the same masks: the same chunks drawn in the same order
    ref = torch.cat([ff(x[:, s:s + 5]) for s in range(0, 37, 5)], 1)
    want = torch.autograd.grad(ref, [x, *ff.parameters()], gy)
    assert (y - ref).abs().max() < 1e-12
    assert max_diff(got, want) < 1e-12


def test_chunked_feed_forward_saves_only_its_input():
    ff = FeedForward(16, 256)
    x = torch.randn(1, 512, 16, requires_grad=True)
    plain = saved_tensor_bytes(lambda: ff(x).sum())
    chunked = saved_tensor_bytes(lambda: apply_chunked(ff, x, chunk_size=64).sum())
    assert plain >= 512 * 256 * 4 * 2  # at least the hidden layer before and after GELU
    assert chunked == 0  # x is a leaf that needs grad: not counted; nothing else is kept


def test_chunked_feed_forward_inside_reversible_backward():
    torch.manual_seed(0)
    block = ReversibleBlock(NormAttention(8, 2, attention="full"),
                            ChunkedFeedForward(FeedForward(8, 32, dropout=0.2), chunk_size=6))
    seq = ReversibleSequence([block, block]).double()
    x = torch.randn(2, 23, 8, dtype=torch.float64, requires_grad=True)
    grads = {}
    for mode in ("reversible", "ordinary"):
        seq.mode = mode
        torch.manual_seed(3)
        y1, y2 = seq(x)
        grads[mode] = torch.autograd.grad((y1 * y2).sum(), [x, *seq.parameters()])
    assert max_diff(grads["reversible"], grads["ordinary"]) < 1e-12


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_cross_entropy_equals_unchunked(reduction, with_bias):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 37, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    t = torch.randint(0, 11, (2, 37), generator=g)
    t[0, :5] = -100  # ignored positions
    inputs = [h, w] + ([b] if with_bias else [])
    loss = chunked_cross_entropy(h, w, t, bias=b, chunk_size=7, reduction=reduction)
    logits = h @ w.T + (b if with_bias else 0)
    ref = F.cross_entropy(logits.reshape(-1, 11), t.reshape(-1), reduction=reduction)
    assert abs(loss.item() - ref.item()) < 1e-12
    assert max_diff(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)) < 1e-12


def test_chunked_cross_entropy_gradcheck_and_float32():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(1, 9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 6, (1, 9), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: chunked_cross_entropy(a, b, t, chunk_size=4), (h, w))
    loss32 = chunked_cross_entropy(h.float(), w.float(), t, chunk_size=4)
    assert loss32.dtype == torch.float32
    assert abs(loss32.item() - F.cross_entropy((h @ w.T).reshape(-1, 6), t.reshape(-1)).item()) < 1e-5


def test_chunked_cross_entropy_never_builds_the_logits():
    h = torch.randn(1, 4096, 16, requires_grad=True)
    w = torch.randn(1000, 16, requires_grad=True)
    t = torch.randint(0, 1000, (1, 4096))
    saved = saved_tensor_bytes(lambda: chunked_cross_entropy(h, w, t, chunk_size=256))
    assert saved < 4096 * 1000 * 4 / 20  # the full logits would be 16 MB; we keep targets and lse


# --------------------------------------------------------------------------- summing over parts (heads)
def _parts(dropout: float):
    torch.manual_seed(0)
    layers = torch.nn.ModuleList([FeedForward(8, 16, dropout=dropout) for _ in range(3)]).double()
    return layers, (lambda x, i: layers[i](x))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_apply_summed_equals_the_sum(dropout):
    """Values and gradients of ``sum_i fn(x, i)``; with dropout, each part's mask is replayed."""
    layers, fn = _parts(dropout)
    x = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    y = apply_summed(fn, x, 3, params=list(layers.parameters()))
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *layers.parameters()], gy)
    torch.manual_seed(5)  # the parts draw their masks in the same order
    ref = sum(fn(x, i) for i in range(3))
    want = torch.autograd.grad(ref, [x, *layers.parameters()], gy)
    assert (y - ref).abs().max() < 1e-12
    assert max_diff(got, want) < 1e-12


def test_apply_summed_saves_only_its_input():
    layers, fn = _parts(0.0)
    x = torch.randn(1, 64, 8, dtype=torch.float64, requires_grad=True)
    assert saved_tensor_bytes(lambda: sum(fn(x, i) for i in range(3)).sum()) > 0
    assert saved_tensor_bytes(lambda: apply_summed(fn, x, 3, params=list(layers.parameters())).sum()) == 0


def test_apply_summed_part_returning_its_input():
    """A part that returns ``x`` gets ``grad_out`` itself back from autograd: it must be
    copied before other parts' gradients are added to it, or ``grad_out`` would change."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = apply_summed(lambda t, i: t if i == 0 else 2 * t, x, 3)
    gy = torch.randn_like(y)
    keep = gy.clone()
    (gx,) = torch.autograd.grad(y, x, gy)
    assert torch.equal(gy, keep)
    assert (gx - 5 * gy).abs().max() < 1e-12


@pytest.mark.parametrize("chunk", [5, None, 64])
def test_chunked_feed_forward_forward_backward_equals_autograd(chunk):
    """``forward_backward`` (what the reversible backward pass calls): the output, the
    input gradient and every parameter's gradient, one forward and backward per chunk."""
    torch.manual_seed(0)
    ff = ChunkedFeedForward(FeedForward(8, 32), chunk_size=chunk).double()
    x = torch.randn(2, 23, 8, dtype=torch.float64)
    gy = torch.randn(2, 23, 8, dtype=torch.float64)
    value, dx, found = ff.forward_backward(x, gy)
    xg = x.clone().requires_grad_(True)
    out = ff.ff(xg)
    params = [p for p, _ in found]
    assert [id(p) for p in params] == [id(p) for p in ff.parameters()]
    expected = torch.autograd.grad(out, [xg, *params], gy)
    assert max_diff([value, dx, *(g for _, g in found)], [out, *expected]) < 1e-12
