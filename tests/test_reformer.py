"""The assembled Reformer (chapter 4): the same function as a plain build of the same weights.

float64, small sizes. Reversible recomputation (with the stack's outputs and their
gradients overwritten in place, ``private_outputs``), chunked feed-forward, attention one
head at a time and the chunked loss change only the order of a few additions, so the loss and every gradient agree
with the plain (ordinary, unchunked) build to ~1e-15; 1e-12 is the tolerance.
"""

from __future__ import annotations

import pytest
import torch

from longctx_lib.reformer import AxialPositionEmbedding, ReformerConfig, ReformerLM, axial_shape_for, reformer_train_step

SMALL = dict(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=3, n_hashes=2, chunk_size=4,
             max_length=64, ff_chunk_size=5, loss_chunk_size=7)


def loss_and_grads(model: ReformerLM, tokens: torch.Tensor, *, plain: bool, seed: int = 3):
    model.zero_grad(set_to_none=True)
    model.stack.mode = "ordinary" if plain else "reversible"
    for block in model.stack.blocks:
        block.g.chunk_size = None if plain else model.config.ff_chunk_size
        if block.f.kind not in ("full", "naive"):
            block.f.one_head_at_a_time = not plain
    torch.manual_seed(seed)  # the same LSH rotations in both builds
    loss = model.loss(tokens, chunked=not plain)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["lsh", ("local", "lsh"), "full", "naive"])
def test_reformer_equals_plain_build(attention):
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL, attention=attention)).double()
    tokens = torch.randint(0, 11, (2, 41))  # 40 predicted positions: not a multiple of any chunk
    l1, g1 = loss_and_grads(model, tokens, plain=False)
    l2, g2 = loss_and_grads(model, tokens, plain=True)
    assert abs(l1 - l2) < 1e-12
    assert all(a is not None for a in g1)
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) < 1e-12


def test_reformer_local_only_is_strictly_causal():
    """With local attention only, a change at position 25 leaves positions < 25 untouched.
    (With LSH layers it would not: a later token moves earlier keys between chunks, the
    leak through the keys that chapter 2 measures; the values stay causal.)"""
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL, attention="local")).double().eval()
    tokens = torch.randint(0, 11, (1, 40))
    changed = tokens.clone()
    changed[0, 25] = (changed[0, 25] + 1) % 11
    a, b = model(tokens), model(changed)
    assert (a[0, :25] - b[0, :25]).abs().max() < 1e-12
    assert (a[0, 25:] - b[0, 25:]).abs().max() > 1e-6


def test_axial_embedding_shape_and_parameters():
    emb = AxialPositionEmbedding(16, (8, 8))
    assert emb(64).shape == (1, 64, 16)
    assert sum(p.numel() for p in emb.parameters()) == 8 * 8 + 8 * 8
    assert axial_shape_for(2**20) == (1024, 1024)
    a, b = axial_shape_for(1000)
    assert a * b >= 1000
    with pytest.raises(ValueError, match="length"):
        emb(65)


def test_generate_and_train_step():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL))
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 5, top_k=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8) and out.dtype == torch.long and int(out.max()) < 11
    step = reformer_train_step(64, config=ReformerConfig(**SMALL))
    assert 1.0 < step["loss"] < 4.0  # about log(11) = 2.4 for random tokens
    assert step["seconds"] > 0


def test_training_reduces_the_loss():
    """A few Adam steps on one repeated pattern: the loss must fall (the model learns)."""
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    tokens = torch.arange(48).remainder(5).view(1, -1)
    first = None
    for _ in range(30):
        loss = model.loss(tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_peak_memory_linear_in_length_flat_in_depth():
    """The cost model of chapter 4 (the paper's Table 3, last row): a training step's peak
    grows linearly with the length and not with the depth, beyond the new layers' weights,
    gradients and Adam moments. Measured in fresh processes (resident set) on a small model;
    the tolerances cover the allocator's page-sized steps (a few MiB at these sizes)."""
    import functools

    from longctx_lib.measure import peak_memory

    def peak(length, n_layers=2):
        config = ReformerConfig(vocab_size=256, d_model=64, n_heads=2, d_ff=256, n_layers=n_layers, n_hashes=2,
                                chunk_size=32, max_length=16384, ff_chunk_size=1024, loss_chunk_size=1024)
        return peak_memory(functools.partial(reformer_train_step, length, config=config), warmup=False)

    p1, p2, p4 = peak(4096), peak(8192), peak(16384)
    assert 1.6 <= (p4 - p2) / (p2 - p1) <= 2.5  # linear: twice the tokens added, twice the bytes
    deep = peak(16384, n_layers=4)
    layer = ReformerLM(ReformerConfig(vocab_size=256, d_model=64, n_heads=2, d_ff=256, n_layers=1,
                                      max_length=16384)).stack.blocks[0]
    state = 4 * 4 * sum(p.numel() for p in layer.parameters())  # float32 weights, grads, two Adam moments
    assert deep - p4 <= 2 * state + 0.1 * p4  # two more layers: their state, not their activations
