"""Tests for longctx_lib.attention: the reference against first principles and SDPA.

Tolerances: float64 comparisons use atol=1e-12 (a few ulps of values of order 1 after
two matmuls of length <= 64); float32 comparisons against the fused kernel use 1e-5.
"""

import math

import pytest
import torch

from longctx_lib.attention import (
    MultiHeadAttention,
    attention,
    attention_step,
    causal_mask,
    scaled_dot_product_attention,
)

F64 = dict(dtype=torch.float64)


def rand_qkv(b=2, h=3, lq=7, lk=7, d=5, dv=4, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, **F64)
    k = torch.randn(b, h, lk, d, generator=g, **F64)
    v = torch.randn(b, h, lk, dv, generator=g, **F64)
    return q, k, v


def loop_reference(q, k, v, causal=False, pad=None):
    """Attention written as explicit loops over queries: the definition, no batching tricks."""
    b, h, lq, d = q.shape
    out = torch.zeros(b, h, lq, v.shape[-1], **F64)
    for bi in range(b):
        for hi in range(h):
            for i in range(lq):
                visible = [
                    j for j in range(k.shape[2])
                    if (not causal or j <= i) and (pad is None or not pad[bi, j])
                ]
                if not visible:
                    continue
                s = torch.stack([q[bi, hi, i] @ k[bi, hi, j] / math.sqrt(d) for j in visible])
                w = torch.softmax(s, 0)
                out[bi, hi, i] = sum(w[n] * v[bi, hi, j] for n, j in enumerate(visible))
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_matches_loop_definition(causal):
    q, k, v = rand_qkv()
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    got = scaled_dot_product_attention(q, k, v, causal=causal, key_padding_mask=pad)
    torch.testing.assert_close(got, loop_reference(q, k, v, causal, pad), atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_naive_equals_fused_sdpa(causal, padded):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 33, 16) for _ in range(3))
    pad = None
    if padded:
        pad = torch.zeros(2, 33, dtype=torch.bool)
        pad[0, 20:] = True
    a = attention(q, k, v, causal=causal, key_padding_mask=pad, impl="naive")
    b = attention(q, k, v, causal=causal, key_padding_mask=pad, impl="sdpa")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causality_by_perturbation():
    q, k, v = rand_qkv(lq=12, lk=12)
    base = scaled_dot_product_attention(q, k, v, causal=True)
    for j in range(12):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, j] += 10.0
        v2[:, :, j] -= 10.0
        out = scaled_dot_product_attention(q, k2, v2, causal=True)
        assert torch.equal(out[:, :, :j], base[:, :, :j]), f"position {j} leaked backwards"
        assert not torch.equal(out[:, :, j:], base[:, :, j:]), "perturbation had no effect at all"


def test_fully_padded_query_gives_zeros_not_nan():
    q, k, v = rand_qkv(b=1)
    pad = torch.ones(1, 7, dtype=torch.bool)
    out = scaled_dot_product_attention(q, k, v, key_padding_mask=pad)
    assert torch.equal(out, torch.zeros_like(out))
    out = attention(q.float(), k.float(), v.float(), key_padding_mask=pad, impl="sdpa")
    assert torch.equal(out, torch.zeros_like(out))


def test_weights_are_a_distribution_and_respect_the_mask():
    q, k, v = rand_qkv()
    _, w = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 7, **F64), atol=1e-12, rtol=0)
    assert torch.all(w.masked_select(causal_mask(7, 7)) == 0)


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in rand_qkv(b=1, h=2, lq=4, lk=5, d=3, dv=2))
    pad = torch.tensor([[False, False, False, True, False]])
    fn = lambda q, k, v: scaled_dot_product_attention(q, k, v, key_padding_mask=pad)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    fn = lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_dropout_is_reproducible_and_unbiased():
    q, k, v = rand_qkv(b=1, h=1, lq=4, lk=64, dv=3)
    run = lambda seed: scaled_dot_product_attention(  # noqa: E731
        q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    mean = torch.stack([run(s) for s in range(400)]).mean(0)
    # Inverted dropout keeps the expectation; 400 samples: standard error well under 0.1.
    torch.testing.assert_close(mean, scaled_dot_product_attention(q, k, v), atol=0.15, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(q=torch.randn(3, 4, 5)), ValueError, "q must have 4 dimensions"),
        (dict(k=torch.randn(1, 2, 5, 7)), ValueError, "share the last"),
        (dict(v=torch.randn(1, 2, 6, 4)), ValueError, "same length"),
        (dict(q=torch.randn(2, 2, 5, 4)), ValueError, r"share \(batch, heads\)"),
        (dict(q=torch.ones(1, 2, 5, 4, dtype=torch.long)), TypeError, "floating-point"),
        (dict(q=torch.randn(1, 2, 5, 4, dtype=torch.float64)), TypeError, "share a dtype"),
        (dict(key_padding_mask=torch.zeros(1, 4, dtype=torch.bool)), ValueError, "key_padding_mask"),
        (dict(key_padding_mask=torch.zeros(1, 5)), TypeError, "key_padding_mask"),
        (dict(dropout_p=1.0), ValueError, "dropout_p"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, error, match):
    args = dict(q=torch.randn(1, 2, 5, 4), k=torch.randn(1, 2, 5, 4), v=torch.randn(1, 2, 5, 4))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(error, match=match):
        scaled_dot_product_attention(q, k, v, **args)


def test_unknown_impl():
    q = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="impl must be one of"):
        attention(q, q, q, impl="flash")


def test_multihead_module_naive_equals_sdpa_and_is_causal():
    torch.manual_seed(0)
    naive = MultiHeadAttention(32, 4, impl="naive").double()
    fused = MultiHeadAttention(32, 4, impl="sdpa").double()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, 10, 32, **F64)
    torch.testing.assert_close(naive(x, causal=True), fused(x, causal=True), atol=1e-12, rtol=0)
    x2 = x.clone()
    x2[:, 6] += 1.0
    assert torch.equal(naive(x2, causal=True)[:, :6], naive(x, causal=True)[:, :6])
    with pytest.raises(ValueError, match="d_model"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        naive(torch.randn(2, 10, 16, **F64))


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_attention_step_runs_forward_and_backward(impl):
    attention_step(32, heads=2, head_dim=8, impl=impl, backward=True)


# --------------------------------------------------------------------------- an arbitrary mask (chapter 6)
def masked_by_hand(q, k, v, blocked):
    """softmax(q k^T / sqrt(d)) v with the blocked scores set to -inf; rows with no
    visible key give zeros (the library's convention)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    w = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1).nan_to_num(0.0)
    return w @ v


def random_mask(lq, lk, seed=0):
    return torch.rand(lq, lk, generator=torch.Generator().manual_seed(seed)) < 0.4


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_mask_equals_masking_by_hand(impl, causal):
    q, k, v = rand_qkv(lq=9, lk=9)
    mask = random_mask(9, 9)
    mask[4] = True  # a query that sees nothing: zeros
    blocked = mask | causal_mask(9, 9) if causal else mask
    got = attention(q, k, v, mask=mask, causal=causal, impl=impl)
    torch.testing.assert_close(got, masked_by_hand(q, k, v, blocked), atol=1e-12, rtol=0)
    assert torch.equal(got[:, :, 4], torch.zeros_like(got[:, :, 4]))
    # and the mask matters: without it the answer differs
    assert (attention(q, k, v, causal=causal, impl=impl) - got).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_mask_combines_with_padding_and_rectangular_shapes(impl):
    q, k, v = rand_qkv(lq=5, lk=8)
    mask = random_mask(5, 8, seed=1)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[1, 6:] = True
    got = attention(q, k, v, mask=mask, key_padding_mask=pad, impl=impl)
    blocked = mask | pad[:, None, None, :]
    torch.testing.assert_close(got, masked_by_hand(q, k, v, blocked), atol=1e-12, rtol=0)


def test_causal_mask_as_mask_equals_causal():
    q, k, v = rand_qkv()
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=causal_mask(7, 7)),
                               scaled_dot_product_attention(q, k, v, causal=True), atol=0, rtol=0)
    none = torch.zeros(7, 7, dtype=torch.bool)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=none),
                               scaled_dot_product_attention(q, k, v), atol=0, rtol=0)


def test_multihead_module_passes_the_mask():
    torch.manual_seed(0)
    naive = MultiHeadAttention(32, 4, impl="naive").double()
    fused = MultiHeadAttention(32, 4, impl="sdpa").double()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, 10, 32, **F64)
    mask = random_mask(10, 10, seed=2)
    mask.fill_diagonal_(False)
    torch.testing.assert_close(naive(x, mask=mask), fused(x, mask=mask), atol=1e-12, rtol=0)
    # perturbing position 3 moves only the queries allowed to see it
    x2 = x.clone()
    x2[:, 3] += 1.0
    moved = (naive(x2, mask=mask) - naive(x, mask=mask)).abs().amax(dim=(0, 2)) > 0
    assert torch.equal(moved, ~mask[:, 3])


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
@pytest.mark.parametrize(
    "mask, error",
    [
        (torch.zeros(5, 4, dtype=torch.bool), ValueError),  # (q_len, k_len) is (5, 6)
        (torch.zeros(6, 5, dtype=torch.bool), ValueError),  # transposed
        (torch.zeros(1, 5, 6, dtype=torch.bool), ValueError),  # a batch axis
        (torch.zeros(5, 6), TypeError),  # float
        (torch.zeros(5, 6, dtype=torch.long), TypeError),
        ([[False] * 6] * 5, TypeError),  # not a tensor
    ],
    ids=["too-short", "transposed", "3-D", "float", "long", "list"],
)
def test_bad_mask_names_the_parameter(impl, mask, error):
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    with pytest.raises(error, match=r"\bmask\b"):
        attention(q, k, v, mask=mask, impl=impl)
