"""Infini-attention (chapter 5): the memory's laws, the gate, causality, gradients.

float64 throughout: the identities below (segment-wise linear memory == block-causal
linear attention, delta update of a stored binding == no change, closed gate == local
attention) hold exactly in exact arithmetic; reordered float64 sums differ by ~1e-15
relative, so 1e-10 leaves ample headroom and still fails on any real mistake (a missing
normaliser, retrieval after the update, a positional encoding on the memory path).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longctx_lib.infini import (
    EPS,
    CompressiveMemory,
    InfiniAttention,
    InfiniTransformer,
    rotary,
    sigma,
)

TOL = 1e-10


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def block_causal_linear_attention(q, k, v, segment):
    """Memory retrieval computed directly over the whole sequence: query t reads every
    key of the segments before its own, through sigma, normalised (the memory's formula)."""
    length = q.shape[2]
    seg = torch.arange(length) // segment
    visible = (seg[None, :] < seg[:, None]).to(q.dtype)  # (L, L): key j in an earlier segment than query t
    scores = (sigma(q) @ sigma(k).transpose(-1, -2)) * visible  # (B, H, L, L)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + EPS)


# --------------------------------------------------------------------------- the memory
def test_empty_memory_retrieves_zeros_and_has_a_fixed_size():
    mem = CompressiveMemory.empty(2, 3, 8, 5, dtype=torch.float64)
    assert torch.equal(mem.retrieve(rand(2, 3, 7, 8)), torch.zeros(2, 3, 7, 5, dtype=torch.float64))
    assert mem.nbytes == 2 * 3 * (8 * 5 + 8) * 8
    for length in (1, 100, 10_000):
        assert mem.update(rand(2, 3, length, 8), rand(2, 3, length, 5, seed=1)).nbytes == mem.nbytes


@pytest.mark.parametrize("segment", [1, 4, 7, 30])
def test_linear_memory_equals_block_causal_linear_attention(segment):
    """Retrieval before each segment's update, segment after segment, is linear attention
    over all earlier segments' keys, computed here in one go over the whole sequence."""
    q, k, v = rand(2, 3, 30, 8), rand(2, 3, 30, 8, seed=1), rand(2, 3, 30, 6, seed=2)
    mem = CompressiveMemory.empty(2, 3, 8, 6, dtype=torch.float64)
    outs = []
    for s in range(0, 30, segment):
        part = slice(s, s + segment)
        outs.append(mem.retrieve(q[:, :, part]))
        mem = mem.update(k[:, :, part], v[:, :, part], "linear")
    direct = block_causal_linear_attention(q, k, v, segment)
    assert (torch.cat(outs, dim=2) - direct).abs().max() < TOL
    # and the final memory is the sum over every key
    assert (mem.M - sigma(k).transpose(-1, -2) @ v).abs().max() < TOL
    assert (mem.z - sigma(k).sum(2)).abs().max() < TOL


def test_delta_rule_leaves_a_stored_binding_unchanged():
    """If the memory already returns v for k, the delta update adds nothing to M (z still
    counts the keys); the linear update would add sigma(k)^T v again."""
    mem = CompressiveMemory.empty(1, 2, 8, 4, dtype=torch.float64)
    mem = mem.update(rand(1, 2, 10, 8), rand(1, 2, 10, 4, seed=1), "delta")
    k = rand(1, 2, 3, 8, seed=2)
    stored = mem.retrieve(k)  # what the memory returns for k: a binding it holds
    after = mem.update(k, stored, "delta")
    assert (after.M - mem.M).abs().max() < TOL
    assert (after.z - (mem.z + sigma(k).sum(2))).abs().max() < TOL
    assert (mem.update(k, stored, "linear").M - mem.M).abs().max() > 1e-3


def test_delta_rule_first_update_equals_linear_and_then_differs():
    k, v = rand(1, 2, 5, 8), rand(1, 2, 5, 4, seed=1)
    empty = CompressiveMemory.empty(1, 2, 8, 4, dtype=torch.float64)
    lin, delta = empty.update(k, v, "linear"), empty.update(k, v, "delta")
    assert (lin.M - delta.M).abs().max() < TOL
    assert (lin.update(k, v, "linear").M - delta.update(k, v, "delta").M).abs().max() > 1e-3


def test_repeated_binding_linear_rule_tends_to_v_delta_rule_to_half_v():
    """Storing the same pair (k, v) again and again. The linear rule's retrieval of k is a
    running average that tends to v. The delta rule as printed adds only the residual
    v - r to M but the whole sigma(k) to z, so with D = sigma(k).z and s = |sigma(k)|^2
    its retrieval follows r <- (r (D - s) + s v) / (D + s), whose fixed point is v / 2:
    the normaliser keeps counting a key whose value is already stored. (Chapter 5 shows
    this; it is a property of the paper's equations, not of this code.)"""
    k, v = rand(1, 1, 1, 8), rand(1, 1, 1, 4, seed=1)
    start = CompressiveMemory.empty(1, 1, 8, 4, dtype=torch.float64).update(rand(1, 1, 20, 8, seed=2),
                                                                            rand(1, 1, 20, 4, seed=3))
    lin = delta = start
    for _ in range(2000):
        lin, delta = lin.update(k, v, "linear"), delta.update(k, v, "delta")
    first = (start.retrieve(k) - v).abs().max()
    assert (lin.retrieve(k) - v).abs().max() < 0.05 * first
    assert (delta.retrieve(k) - v / 2).abs().max() < 0.01 * first
    # one step of the recurrence, exactly
    sk = sigma(k)[0, 0, 0]
    d, s_ = sk @ start.z[0, 0], sk @ sk
    r = start.retrieve(k)
    assert (start.update(k, v, "delta").retrieve(k) - (r * (d - s_) + s_ * v) / (d + s_ + EPS)).abs().max() < 1e-6


def test_memory_gradients_match_finite_differences():
    q, k, v = (rand(1, 1, 3, 4, seed=s).requires_grad_(True) for s in range(3))

    def fn(q, k, v):
        mem = CompressiveMemory.empty(1, 1, 4, 4, dtype=torch.float64)
        mem = mem.update(k, v, "delta").update(k * 0.5, v, "delta")
        return mem.retrieve(q)

    assert torch.autograd.gradcheck(fn, (q, k, v))


# --------------------------------------------------------------------------- the layer
def layer(rule="linear", **kw) -> InfiniAttention:
    torch.manual_seed(0)
    return InfiniAttention(16, 2, rule=rule, **kw).double()


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_closed_gate_gives_local_attention(rule):
    """sigmoid(beta) = 0: the output is causal softmax attention within the segment
    (with rotary positions), whatever the memory holds."""
    attn = layer(rule)
    with torch.no_grad():
        attn.gate.fill_(-float("inf"))
    x, earlier = rand(2, 9, 16), rand(2, 9, 16, seed=1)
    _, memory = attn(earlier)
    y, _ = attn(x, memory)
    q, k, v = attn.qkv(x).view(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
    local = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
    assert (y - attn.out(local.transpose(1, 2).reshape(2, 9, 16))).abs().max() < TOL


def test_open_gate_reads_the_memory_without_positions():
    """sigmoid(beta) = 1: the output is the memory retrieval alone, which sees no
    positions, so moving the segment's tokens around moves the output with them."""
    attn = layer()
    with torch.no_grad():
        attn.gate.fill_(float("inf"))
    _, memory = attn(rand(1, 12, 16, seed=1))
    x = rand(1, 6, 16)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    y, _ = attn(x, memory)
    y_perm, _ = attn(x[:, perm], memory)
    assert (y[:, perm] - y_perm).abs().max() < TOL
    q, _, _ = attn.qkv(x).view(1, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = attn.out(memory.retrieve(q).transpose(1, 2).reshape(1, 6, 16))
    assert (y - expected).abs().max() < TOL


def test_gate_mixes_per_head():
    attn = layer()
    with torch.no_grad():
        attn.gate.copy_(torch.tensor([0.3, -1.2]))
    _, memory = attn(rand(1, 5, 16, seed=1))
    x = rand(1, 5, 16)
    q, k, v = attn.qkv(x).view(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a_mem = memory.retrieve(q)
    a_dot = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
    g = torch.sigmoid(attn.gate.detach())[:, None, None]
    expected = attn.out((g * a_mem + (1 - g) * a_dot).transpose(1, 2).reshape(1, 5, 16))
    assert (attn(x, memory)[0] - expected).abs().max() < TOL


def test_rotary_is_relative():
    """Rotary positions make q . k depend on the positions' difference only."""
    q, k = rand(1, 1, 1, 8).expand(1, 1, 10, 8), rand(1, 1, 1, 8, seed=1).expand(1, 1, 10, 8)
    dots = (rotary(q)[0, 0] @ rotary(k)[0, 0].T)  # (10, 10)
    for shift in range(-3, 4):
        diag = dots.diagonal(shift)
        assert (diag - diag[0]).abs().max() < TOL
    assert (rotary(q)[..., 0, :] - q[..., 0, :]).abs().max() < TOL  # position 0 is not rotated


# --------------------------------------------------------------------------- the model
def model(truncate=None, rule="linear") -> InfiniTransformer:
    torch.manual_seed(0)
    return InfiniTransformer(20, 16, 2, 32, 2, segment_length=5, rule=rule, truncate=truncate).double()


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_causal_across_segment_boundaries(rule):
    """Changing token p changes no logit before p, in its segment or earlier ones, and
    does change logits in later segments (which see it only through the memory)."""
    net = model(rule=rule)
    tokens = torch.randint(0, 20, (2, 23), generator=torch.Generator().manual_seed(1))
    base, _ = net(tokens)
    for p in (0, 4, 5, 12, 22):
        edited = tokens.clone()
        edited[:, p] = (edited[:, p] + 7) % 20
        logits, _ = net(edited)
        if p:
            assert (logits[:, :p] - base[:, :p]).abs().max() < TOL, p
        assert (logits[:, p:] - base[:, p:]).abs().max() > 1e-6, p
        later = (p // 5 + 1) * 5
        if later < 23:
            assert (logits[:, later:] - base[:, later:]).abs().max() > 1e-6, p


def test_segments_in_one_call_equal_segments_in_several():
    net = model()
    tokens = torch.randint(0, 20, (2, 23), generator=torch.Generator().manual_seed(2))
    whole, mem_whole = net(tokens)
    first, memories = net(tokens[:, :10])
    rest, mem_rest = net(tokens[:, 10:], memories)
    assert (torch.cat([first, rest], dim=1) - whole).abs().max() < TOL
    streamed = torch.cat(list(net.stream(tokens.split(5, dim=1))), dim=1)
    assert (streamed - whole).abs().max() < TOL
    assert all((a.M - b.M).abs().max() < TOL for a, b in zip(mem_whole, mem_rest))


def test_memory_state_does_not_grow_with_the_input():
    net = model()
    sizes = set()
    for length in (5, 50, 500):
        _, memories = net(torch.zeros(1, length, dtype=torch.long))
        sizes.add(sum(m.nbytes for m in memories))
    assert sizes == {2 * 2 * (8 * 8 + 8) * 8}  # layers * heads * (d_key d_value + d_key) float64


def _embedding_grad_of_first_segment(net: InfiniTransformer) -> tuple[float, float]:
    """Loss on the last of four segments only: the largest gradient reaching the
    embedded inputs of segment 0 (only through the memory) and of segment 3 itself."""
    embedded = []

    def keep(module, inputs, output):
        output.retain_grad()
        embedded.append(output)

    handle = net.embed.register_forward_hook(keep)
    tokens = torch.randint(0, 20, (1, 20), generator=torch.Generator().manual_seed(3))
    logits, _ = net(tokens)
    handle.remove()
    logits[:, 15:].sum().backward()
    grads = [0.0 if e.grad is None else e.grad.abs().max().item() for e in embedded]
    return grads[0], grads[3]


def test_gradients_reach_earlier_segments_unless_truncated():
    far, near = _embedding_grad_of_first_segment(model(truncate=None))
    assert far > 1e-8 and near > 1e-8
    for k in (1, 3):  # windows of 1 or 3 segments: segment 3 is cut from segment 0
        far, near = _embedding_grad_of_first_segment(model(truncate=k))
        assert far == 0.0 and near > 1e-8, k
    far, _ = _embedding_grad_of_first_segment(model(truncate=4))  # one window holds all four
    assert far > 1e-8


def test_gates_and_gate_parameters():
    net = model()
    assert net.gates().shape == (2, 2)
    assert torch.allclose(net.gates(), torch.full((2, 2), 0.5, dtype=torch.float64))
    ids = {id(p) for p in net.gate_parameters()}
    assert ids == {id(b.attn.gate) for b in net.blocks}


def test_float32_and_batch_follow_the_input():
    torch.manual_seed(0)
    net = InfiniTransformer(20, 16, 2, 32, 1, segment_length=4)
    logits, memories = net(torch.randint(0, 20, (3, 10)))
    assert logits.shape == (3, 10, 20) and logits.dtype == torch.float32
    assert memories[0].shape == (3, 2, 8, 8)


def test_streaming_run_reads_every_token_with_a_fixed_state():
    from longctx_lib.infini import streaming_run

    small = streaming_run(100, d_model=16, n_heads=2, d_ff=32, n_layers=2, segment_length=32)
    large = streaming_run(1000, d_model=16, n_heads=2, d_ff=32, n_layers=2, segment_length=32)
    assert small["tokens"] == 100 and large["tokens"] == 1000
    assert small["memory_bytes"] == large["memory_bytes"] == 2 * 2 * (8 * 8 + 8) * 4
    assert math.isfinite(large["checksum"]) and large["seconds"] > 0
