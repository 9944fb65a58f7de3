"""Reversible residual layers (chapter 3): inversion, gradients, determinism, memory.

Tolerances: float64 throughout unless a test is about float32. Exact inversion and
equal gradients are identities in exact arithmetic; in float64 the reconstruction
subtracts what was added, so errors stay at a few ulps of the activations (~1e-15
relative): 1e-12 leaves three orders of magnitude of headroom and still fails on any
real mistake (a wrong sign or order gives O(1) errors).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from longctx_lib import reversible
from longctx_lib.measure import saved_tensor_bytes
from longctx_lib.reversible import (
    MODES,
    NormAttention,
    NormFeedForward,
    ReversibleBlock,
    ReversibleSequence,
    reconstruction_error,
    remember,
    replayed,
    reversible_stack,
    reversible_stack_step,
)

D, HEADS, FF = 16, 2, 32
LSH = {"n_hashes": 2, "chunk_size": 4}


def stack(n_layers: int = 3, attention: str = "lsh", dropout: float = 0.0, dtype=torch.float64, **kw):
    torch.manual_seed(1)
    options = dict(LSH) if attention == "lsh" else {}
    options.update(kw)
    return reversible_stack(D, HEADS, FF, n_layers, attention=attention, dropout=dropout, **options).to(dtype)


def run(seq: ReversibleSequence, mode: str, x: torch.Tensor, seed: int = 7):
    """Output, input gradient and parameter gradients of one loss through ``seq`` in ``mode``."""
    seq.mode = mode
    seq.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same rotations and dropout masks in every mode
    y1, y2 = seq(x)
    loss = (y1 * torch.linspace(-1, 1, y1.shape[-1], dtype=y1.dtype)).sum() + (y2 ** 2).sum()
    loss.backward()
    return torch.cat([y1, y2], -1).detach(), x.grad, [p.grad for p in seq.parameters()]


def max_diff(a, b) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


# ------------------------------------------------------------------ inversion
@pytest.mark.parametrize("attention", ["full", "lsh"])
def test_block_inverse_reconstructs_inputs(attention):
    torch.manual_seed(0)
    f = NormAttention(D, HEADS, attention=attention, **(LSH if attention == "lsh" else {})).double()
    g = NormFeedForward(D, FF).double()
    block = ReversibleBlock(f, g)
    x1, x2 = torch.randn(2, 2, 24, D, dtype=torch.float64)
    with torch.no_grad():
        # LSH hashes at random: the same rotations in forward and inverse (as the stack arranges)
        torch.manual_seed(5)
        y1, y2 = block(x1, x2)
        torch.manual_seed(5)
        r1, r2 = block.inverse(y1, y2)
    assert (y1 - x1).abs().max() > 0.1  # the block did something
    scale = max(x1.abs().max(), x2.abs().max()).item()
    assert max_diff((r1, r2), (x1, x2)) / scale < 1e-12


@pytest.mark.parametrize("attention", ["full", "lsh"])
def test_sequence_inverse_and_reconstruction_error(attention):
    seq = stack(6, attention)
    x = torch.randn(2, 32, D, dtype=torch.float64)
    errors = reconstruction_error(seq, x)
    assert len(errors) == 6
    assert max(errors) < 1e-12
    with torch.no_grad():
        seq.mode = "ordinary"
        y1, y2 = seq(x, x.clone())
        if attention == "full":  # deterministic: the plain inverse works without any record
            r1, r2 = seq.inverse(y1, y2)
            assert max_diff((r1, r2), (x, x)) < 1e-12


def test_float32_drift_exceeds_float64():
    x = torch.randn(1, 64, D, dtype=torch.float64) * 3
    e64 = reconstruction_error(stack(12, "full"), x)
    e32 = reconstruction_error(stack(12, "full", dtype=torch.float32), x.float())
    assert max(e64) < 1e-13
    assert 1e-8 < max(e32) < 1e-3  # float32 rounding, far above float64's, far below O(1)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("attention", ["full", "lsh"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradients_equal_ordinary_and_checkpoint(attention, dropout):
    seq = stack(3, attention, dropout)
    x = torch.randn(2, 40, D, dtype=torch.float64)  # 40: not a multiple of the chunk size
    rev = run(seq, "reversible", x)
    for mode in ("ordinary", "checkpoint"):
        other = run(seq, mode, x)
        assert max_diff(rev[:2], other[:2]) < 1e-12, mode
        assert max_diff(rev[2], other[2]) < 1e-12, mode
    assert all(g is not None and g.abs().sum() > 0 for g in rev[2])


def test_dropout_masks_are_replayed():
    """With dropout 0.5 a single mismatched mask would change the gradients by O(1)."""
    seq = stack(2, "lsh", dropout=0.5)
    x = torch.randn(1, 16, D, dtype=torch.float64)
    rev, plain = run(seq, "reversible", x), run(seq, "ordinary", x)
    assert max_diff(rev[1:2], plain[1:2]) < 1e-12
    assert max_diff(rev[2], plain[2]) < 1e-12
    other_masks = run(seq, "ordinary", x, seed=8)  # a different seed: different masks
    assert max_diff(rev[1:2], other_masks[1:2]) > 1e-3


def _other_rotations_when_replaying(monkeypatch):
    """Make every recomputation in backward draw different LSH rotations than the forward pass."""
    draw = reversible.random_rotations

    def patched(*args, **kwargs):
        r = draw(*args, **kwargs)
        active = reversible._ACTIVE.get()
        return r.flip(0) if active is not None and active[1] else r  # replaying: other rotations

    monkeypatch.setattr(reversible, "random_rotations", patched)


def test_backward_reuses_the_forward_buckets(monkeypatch):
    """The recomputation uses the buckets found in the forward pass, not a new hash: even
    when hashing again would give other buckets, the gradients stay exact."""
    seq = stack(2, "lsh")
    x = torch.randn(1, 64, D, dtype=torch.float64)
    plain = run(seq, "ordinary", x)
    _other_rotations_when_replaying(monkeypatch)
    assert max_diff(run(seq, "reversible", x)[2], plain[2]) < 1e-12


def test_hashing_again_would_change_the_gradients(monkeypatch):
    """The same with the kept buckets thrown away: another hash is another function, and
    the gradients are wrong (the failure the kept buckets prevent; with the random state
    replayed a new hash differs only where rounding moves a token across a bucket
    boundary, which is rare but does happen at scale in float32)."""
    seq = stack(2, "lsh")
    x = torch.randn(1, 64, D, dtype=torch.float64)
    plain = run(seq, "ordinary", x)
    _other_rotations_when_replaying(monkeypatch)
    monkeypatch.setattr(reversible, "replayed", lambda key: None)
    assert max_diff(run(seq, "reversible", x)[2], plain[2]) > 1e-3


def test_autograd_grad_and_shared_and_frozen_parameters():
    """Gradients come back through ``torch.autograd.grad`` too (not only into ``.grad``);
    a module used by two blocks accumulates both; frozen parameters get none."""
    torch.manual_seed(2)
    f = NormAttention(D, HEADS, attention="full").double()
    g1, g2 = NormFeedForward(D, FF).double(), NormFeedForward(D, FF).double()
    g2.norm.weight.requires_grad_(False)
    seq = ReversibleSequence([ReversibleBlock(f, g1), ReversibleBlock(f, g2)])
    x1 = torch.randn(2, 8, D, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 8, D, dtype=torch.float64, requires_grad=True)
    params = [p for p in seq.parameters() if p.requires_grad]
    grads = {}
    for mode in ("reversible", "ordinary"):
        seq.mode = mode
        y1, y2 = seq(x1, x2)
        grads[mode] = torch.autograd.grad((y1 * y2).sum(), [x1, x2, *params])
    assert max_diff(grads["reversible"], grads["ordinary"]) < 1e-12
    assert g2.norm.weight.grad is None


def test_directional_derivatives_match_finite_differences():
    """A gradcheck by hand: the stack releases its outputs in backward, so autograd's
    gradcheck (which back-propagates several times through one graph) cannot be used.
    For random directions u, w: the central difference of w . F(x + e u) (float64,
    e = 1e-6: truncation ~e^2 ~ 1e-12, rounding ~1e-16 / e ~ 1e-10) must equal
    grad(w . F)(x) . u to 1e-7.
    """
    seq = stack(2, "lsh")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, D, dtype=torch.float64, generator=gen)

    def scalar(inp, w):
        torch.manual_seed(0)  # the same rotations each call
        y1, y2 = seq(inp)
        return (torch.cat([y1, y2], -1) * w).sum()

    for _ in range(3):
        u = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        w = torch.randn(1, 8, 2 * D, dtype=torch.float64, generator=gen)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(scalar(xg, w), xg)
        eps = 1e-6
        with torch.no_grad():
            numeric = (scalar(x + eps * u, w) - scalar(x - eps * u, w)) / (2 * eps)
        assert abs((grad * u).sum().item() - numeric.item()) < 1e-7


def test_second_backward_raises_a_clear_error():
    seq = stack(1, "full")
    y1, y2 = seq(torch.randn(1, 8, D, dtype=torch.float64, requires_grad=True))
    loss = (y1 + y2).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="a second time"):
        loss.backward()


def test_in_place_change_of_outputs_is_detected():
    seq = stack(1, "full")
    y1, y2 = seq(torch.randn(1, 8, D, dtype=torch.float64, requires_grad=True))
    loss = (y1 * 2).sum() + y2.sum()
    with torch.no_grad():
        y1.add_(1.0)
    with pytest.raises(RuntimeError, match="in place"):
        loss.backward()


def test_input_without_grad_still_trains_parameters():
    seq = stack(2, "full")
    x = torch.randn(1, 8, D, dtype=torch.float64)  # e.g. embeddings of a frozen table
    y1, y2 = seq(x)
    (y1 + y2).sum().backward()
    assert all(p.grad is not None for p in seq.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CUDA random state is captured)")
def test_cuda_dropout_replayed():
    seq = stack(2, "lsh", dropout=0.3, dtype=torch.float32).cuda()
    x = torch.randn(1, 64, D, device="cuda")
    seq.mode = "reversible"
    torch.manual_seed(1)
    y1, y2 = seq(x.requires_grad_(True))
    (y1 + y2).square().sum().backward()
    rev = [p.grad.clone() for p in seq.parameters()]
    seq.zero_grad(set_to_none=True)
    seq.mode = "ordinary"
    torch.manual_seed(1)
    y1, y2 = seq(x)
    (y1 + y2).square().sum().backward()
    assert max_diff(rev, [p.grad for p in seq.parameters()]) < 1e-3


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("attention", ["full", "lsh"])
def test_saved_bytes_flat_for_reversible_linear_for_ordinary(attention):
    """Saved-for-backward bytes, counted by saved-tensor hooks, against depth.

    The tiled LSH path saves a few data-dependent index tensors (which chunks hide which
    keys), so the ordinary stack's bytes are linear in depth within 15 %, not exactly.
    """
    x = torch.randn(1, 64, D, generator=torch.Generator().manual_seed(0))
    measured = {}
    for mode in MODES:
        for n in (1, 2, 4, 8):
            seq = stack(n, attention, dtype=torch.float32)
            seq.mode = mode

            def step():
                y1, y2 = seq(x)
                return (y1 + y2).sum()

            measured[mode, n] = saved_tensor_bytes(step)
    half = x.numel() * 4  # one half of the activations, float32
    # nothing at any depth: the stack keeps only its two outputs (2 * half bytes), as
    # detached aliases of the tensors it returns, which hooks do not see
    assert all(measured["reversible", n] == 0 for n in (1, 2, 4, 8))
    ordinary = [measured["ordinary", n] for n in (1, 2, 4, 8)]
    per_layer = (ordinary[3] - ordinary[0]) / 7
    assert per_layer > 4 * half
    assert all(abs((o - ordinary[0]) - per_layer * (n - 1)) <= 0.15 * per_layer * (n - 1)
               for o, n in zip(ordinary, (1, 2, 4, 8)))  # linear in depth
    # checkpointing keeps each block's two input halves (the first block's input is a
    # leaf that needs no grad here, so it is saved too)
    assert all(measured["checkpoint", n] - measured["checkpoint", 1] == 2 * half * (n - 1) for n in (2, 4, 8))


def test_remembered_buckets_are_compact():
    seq = stack(4, "lsh", dtype=torch.float32)
    x = torch.randn(2, 64, D)
    y1, y2 = seq(x)
    # 16 buckets fit int8: one byte per (batch, head, round, position) per layer
    assert seq.last_record_bytes == 4 * 2 * HEADS * LSH["n_hashes"] * 64


def test_replayed_and_remember_outside_a_stack():
    assert replayed("buckets") is None
    remember("buckets", torch.zeros(3, dtype=torch.long))  # no stack running: nothing kept
    assert replayed("buckets") is None


def test_workload_runs_in_every_mode():
    for mode in MODES:
        reversible_stack_step(64, 2, mode=mode, d_model=16, n_heads=2, d_ff=32, chunk_size=8)
    reversible_stack_step(64, 2, attention="full", d_model=16, n_heads=2, d_ff=32)


def test_modes_and_bad_modules():
    seq = stack(1, "full")
    with pytest.raises(ValueError, match="mode"):
        seq.mode = "fast"
    with pytest.raises(TypeError, match="blocks"):
        ReversibleSequence([])
    with pytest.raises(ValueError, match="g must return"):
        bad = ReversibleBlock(NormFeedForward(D, FF), nn.Linear(D, 3))
        bad(torch.zeros(1, 2, D), torch.zeros(1, 2, D))


@pytest.mark.parametrize("attention", ["lsh", "local"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_norm_attention_one_head_at_a_time_is_the_same_function(attention, dropout):
    """Heads one after another (chapter 4's chunking along heads): the same outputs and
    gradients, inside a reversible stack, as all heads at once in an ordinary stack."""
    options = {"chunk_size": 4} if attention == "local" else {**LSH}
    torch.manual_seed(0)
    blocks = [ReversibleBlock(NormAttention(D, HEADS, attention=attention, dropout=dropout, **options),
                              NormFeedForward(D, 2 * D, dropout=dropout)) for _ in range(2)]
    seq = ReversibleSequence(blocks).double()
    x = torch.randn(2, 19, D, dtype=torch.float64, requires_grad=True)
    results = {}
    for at_once in (True, False):
        for block in seq.blocks:
            block.f.one_head_at_a_time = not at_once
        seq.mode = "ordinary" if at_once else "reversible"
        torch.manual_seed(7)
        y1, y2 = seq(x)
        gy = torch.randn(y1.shape, dtype=y1.dtype, generator=torch.Generator().manual_seed(1))
        results[at_once] = (y1.detach(), torch.autograd.grad((y1 + y2) * gy, [x, *seq.parameters()],
                                                             torch.ones_like(y1)))
    assert (results[True][0] - results[False][0]).abs().max() < 1e-12
    assert max((a - b).abs().max().item() for a, b in zip(results[True][1], results[False][1])) < 1e-12


def test_private_outputs_leave_nothing_else_changed():
    """With ``private_outputs`` the backward pass writes into the stack's outputs and the
    incoming gradients; without it (the default) both are left as they were."""
    torch.manual_seed(0)
    seq = reversible_stack(D, HEADS, 2 * D, 3, attention="full").double()
    x = torch.randn(1, 9, D, dtype=torch.float64, requires_grad=True)
    grads = {}
    for private in (False, True):
        seq.private_outputs = private
        y1, y2 = seq(x)
        kept = (y1.detach().clone(), y2.detach().clone())
        torch.manual_seed(1)
        g1, g2 = torch.randn_like(y1), torch.randn_like(y2)
        incoming = (g1.clone(), g2.clone())
        grads[private] = torch.autograd.grad([y1, y2], [x, *seq.parameters()], [g1, g2])
        unchanged = torch.equal(y1, kept[0]) and torch.equal(g1, incoming[0]) and torch.equal(g2, incoming[1])
        assert unchanged != private
    assert max((a - b).abs().max().item() for a, b in zip(grads[False], grads[True])) < 1e-12


def test_backward_runs_each_chunk_and_head_once(monkeypatch):
    """The reversible backward pass knows each layer's output gradient before it
    recomputes the layer, so a chunked feed-forward and head-at-a-time attention run
    every chunk and every head forward once in backward (``forward_backward``), not
    once for the value and again in their own backward pass: two runs per training step
    in all, and the same gradients as an ordinary stack."""
    from longctx_lib.chunking import ChunkedFeedForward

    calls = {"head": 0, "chunk": 0}
    original_head = NormAttention._head

    def counted_head(self, *args, **kwargs):
        calls["head"] += 1
        return original_head(self, *args, **kwargs)

    monkeypatch.setattr(NormAttention, "_head", counted_head)
    torch.manual_seed(0)
    length, chunk, layers = 19, 4, 2
    blocks = []
    for _ in range(layers):
        ff = NormFeedForward(D, FF)
        ff.register_forward_hook(lambda *_: calls.__setitem__("chunk", calls["chunk"] + 1))
        blocks.append(ReversibleBlock(NormAttention(D, HEADS, one_head_at_a_time=True, **LSH),
                                      ChunkedFeedForward(ff, chunk_size=chunk)))
    seq = ReversibleSequence(blocks).double()
    x = torch.randn(2, length, D, dtype=torch.float64, requires_grad=True)
    grads = {}
    for mode in ("reversible", "ordinary"):
        seq.mode = mode
        calls.update(head=0, chunk=0)
        torch.manual_seed(7)
        y1, y2 = seq(x)
        grads[mode] = torch.autograd.grad((y1 * y2).sum(), [x, *seq.parameters()])
        if mode == "reversible":
            n_chunks = -(-length // chunk)
            assert calls == {"head": 2 * HEADS * layers, "chunk": 2 * n_chunks * layers}
    assert max_diff(grads["reversible"], grads["ordinary"]) < 1e-12


def test_forward_backward_declines_where_it_cannot_fuse():
    """Outside a reversible backward pass LSH attention has no recorded buckets, and
    active output dropout would need its mask before the first head's backward: both
    return ``None`` (recompute the ordinary way). Local attention needs no buckets and
    matches autograd."""
    torch.manual_seed(0)
    x = torch.randn(1, 12, D, dtype=torch.float64)
    gy = torch.randn(1, 12, D, dtype=torch.float64)
    assert NormAttention(D, HEADS, one_head_at_a_time=True, **LSH).double().forward_backward(x, gy) is None
    dropping = NormAttention(D, HEADS, attention="local", chunk_size=4, dropout=0.2, one_head_at_a_time=True)
    assert dropping.double().forward_backward(x, gy) is None
    assert NormAttention(D, HEADS, attention="local", chunk_size=4).double().forward_backward(x, gy) is None
    local = NormAttention(D, HEADS, attention="local", chunk_size=4, one_head_at_a_time=True).double()
    value, dx, found = local.forward_backward(x, gy)
    xg = x.clone().requires_grad_(True)
    out = local(xg)
    params = [p for p, _ in found]
    expected = torch.autograd.grad(out, [xg, *params], gy)
    assert sorted(map(id, params)) == sorted(id(p) for p in local.parameters())
    assert max_diff([value, dx, *(g for _, g in found)], [out, *expected]) < 1e-12
