"""Tests for longctx_lib.lsh: LSH attention against brute-force definitions and its laws.

The references here are written from the definition (Reformer, section 2 and appendix A)
with explicit loops and dense (length x length) matrices, independent of the library's
gathers and chunk tricks:

* windows: sort positions by (bucket, position) with Python's ``sorted``, cut into
  chunks, a chunk sees itself and the previous chunk (the first the last, within the
  round; no look-back when a round has one chunk);
* multi-round attention: one softmax over every (round, key) pair that any window
  contains, with logit ``q_i . k_j / sqrt(d)`` (``k_j = q_j / |q_j|``), the self logit
  replaced by ``SELF_MASK_VALUE``, minus ``log N_ij`` when duplicates are counted.
  This is what the log-sum-exp combination of rounds computes.

Tolerances: float64 comparisons use atol=1e-12 (values of order 1 after sums over at
most a few hundred terms: a few hundred ulps at worst); gradients of the two code paths
(tiled with a hand-written backward, plain autograd) also get a relative 1e-11, as
their entries sum thousands of terms and reach ~10. The collision test is
statistical: 20,000 independent rounds per angle give a standard error below 0.0036;
we allow 4.5 standard errors (a false failure about once in 150,000 runs per angle).
"""

import math

import pytest
import torch

from longctx_lib import lsh
from longctx_lib.lsh import (
    SELF_MASK_VALUE,
    LSHSelfAttention,
    _duplicate_counts,
    default_n_buckets,
    hash_vectors,
    lsh_attention,
    lsh_attention_step,
    random_rotations,
)

F64 = dict(dtype=torch.float64)
ATOL = 1e-12
GRAD_RTOL = 1e-11  # gradients of the two paths: sums of up to thousands of terms, some of order 10


def rand(b=1, h=2, n=24, d=6, dv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, d, generator=g, **F64), torch.randn(b, h, n, dv, generator=g, **F64)


def rots(d, n_buckets, n_hashes, seed=1):
    return random_rotations(d, n_buckets, n_hashes, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)


# ------------------------------------------------------------------ brute force
def brute_hash(x, rotations, n_buckets):
    """Bucket ids by the definition, one vector and one round at a time: argmax([xR; -xR])."""
    factors = (n_buckets,) if isinstance(n_buckets, int) else n_buckets
    *lead, n, d = x.shape
    flat = x.reshape(-1, n, d)
    out = torch.zeros(flat.shape[0], rotations.shape[1], n, dtype=torch.int64)
    for a in range(flat.shape[0]):
        for r in range(rotations.shape[1]):
            for i in range(n):
                bucket, offset, product = 0, 0, 1
                for b in factors:
                    proj = flat[a, i] @ rotations[:, r, offset : offset + b // 2]
                    bucket += product * int(torch.argmax(torch.cat([proj, -proj])))
                    offset, product = offset + b // 2, product * b
                out[a, r, i] = bucket
    return out.reshape(*lead, rotations.shape[1], n)


def brute_windows(buckets_row, length, chunk_size, n_total):
    """For one (batch, head): list over rounds of {query position: set of key positions}."""
    n_rounds = buckets_row.shape[0]
    lp = -(-length // chunk_size) * chunk_size
    rounds = []
    for r in range(n_rounds):
        bk = [int(buckets_row[r, p]) if p < length else n_total for p in range(lp)]
        order = sorted(range(lp), key=lambda p: (bk[p], p))
        chunks = [order[c : c + chunk_size] for c in range(0, lp, chunk_size)]
        win = {}
        for c, chunk in enumerate(chunks):
            seen = set(chunk) if len(chunks) == 1 else set(chunk) | set(chunks[c - 1])
            for p in chunk:
                win[p] = seen
        rounds.append(win)
    return rounds


def multiplicity(buckets_row, length, chunk_size, n_total):
    """Dense ``(length, length)`` matrix: N_ij = number of rounds in which j is in i's window."""
    mult = torch.zeros(length, length, **F64)
    for win in brute_windows(buckets_row, length, chunk_size, n_total):
        for i in range(length):
            for j in win[i]:
                if j < length:
                    mult[i, j] += 1
    return mult


def brute_lsh(qk, v, buckets, chunk_size, n_total, causal=False, count_duplicates=True):
    """Dense O(L^2) reference: one softmax over all (round, key) pairs any window holds."""
    b, h, n, d = qk.shape
    out = torch.zeros(b, h, n, v.shape[-1], **F64)
    for bi in range(b):
        for hi in range(h):
            q = qk[bi, hi]
            k = q / q.norm(dim=-1, keepdim=True)
            logits = q @ k.T / math.sqrt(d)
            logits.fill_diagonal_(SELF_MASK_VALUE)
            mult = multiplicity(buckets[bi, hi], n, chunk_size, n_total)
            if causal:
                mult = mult * torch.ones(n, n).tril()
            # sum over rounds of exp(logit - log N) = exp(logit) once; without: N times
            weight = (mult > 0).double() if count_duplicates else mult
            logits = torch.where(weight > 0, logits + weight.clamp_min(1e-300).log(), -math.inf)
            out[bi, hi] = torch.softmax(logits, -1) @ v[bi, hi]
    return out


def self_masked_full_attention(qk, v, causal):
    d = qk.shape[-1]
    k = qk / qk.norm(dim=-1, keepdim=True)
    logits = qk @ k.transpose(-1, -2) / math.sqrt(d)
    n = qk.shape[-2]
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool), SELF_MASK_VALUE)
    if causal:
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(logits, -1) @ v


# ---------------------------------------------------------------------- hashing
@pytest.mark.parametrize("n_buckets", [2, 8, (4, 6)])
def test_hash_matches_bruteforce_argmax(n_buckets):
    x = torch.randn(2, 3, 11, 5, generator=torch.Generator().manual_seed(0), **F64)
    r = rots(5, n_buckets, 3)
    got = hash_vectors(x, n_buckets, 3, rotations=r)
    assert got.shape == (2, 3, 3, 11) and got.dtype == torch.int64
    assert torch.equal(got, brute_hash(x, r, n_buckets))
    total = math.prod(n_buckets) if isinstance(n_buckets, tuple) else n_buckets
    assert 0 <= int(got.min()) and int(got.max()) < total


def test_hash_ties_go_to_the_first_maximal_column():
    x = torch.zeros(1, 4, 3, **F64)  # every projection is 0: argmax of the concatenation is 0
    r = rots(3, 8, 2)
    assert torch.equal(hash_vectors(x, 8, 2, rotations=r), torch.zeros(1, 2, 4, dtype=torch.int64))
    x = torch.tensor([[[1.0, 0.0]]], **F64)
    r = torch.tensor([[[1.0]], [[0.0]]], **F64)  # (dim=2, 1 round, 1 column): [1, -1] -> 0
    assert hash_vectors(x, 2, 1, rotations=r).item() == 0
    assert hash_vectors(-x, 2, 1, rotations=r).item() == 1


def test_hash_is_scale_invariant_and_reproducible():
    x = torch.randn(3, 20, 8, **F64)
    r = rots(8, 16, 4)
    assert torch.equal(hash_vectors(x, 16, 4, rotations=r), hash_vectors(3.7 * x, 16, 4, rotations=r))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(hash_vectors(x, 16, 4, generator=g()), hash_vectors(x, 16, 4, generator=g()))


@pytest.mark.parametrize("theta", [math.pi / 6, math.pi / 3, math.pi / 2, 2 * math.pi / 3, 0.9 * math.pi])
def test_two_bucket_collision_probability_is_one_minus_theta_over_pi(theta):
    d, rounds = 16, 20_000
    g = torch.Generator().manual_seed(int(theta * 1000))
    u = torch.randn(d, generator=g, **F64)
    u /= u.norm()
    w = torch.randn(d, generator=g, **F64)
    w -= (w @ u) * u
    w /= w.norm()
    pair = torch.stack([u, math.cos(theta) * u + math.sin(theta) * w])  # (2, d), angle theta
    h = hash_vectors(pair, 2, rounds, generator=g)  # (rounds, 2)
    freq = (h[:, 0] == h[:, 1]).double().mean().item()
    p = 1 - theta / math.pi
    se = math.sqrt(p * (1 - p) / rounds)
    assert abs(freq - p) < 4.5 * se, f"collision frequency {freq:.4f} vs 1 - theta/pi = {p:.4f} (se {se:.4f})"


def test_default_n_buckets():
    assert default_n_buckets(4096, 64) == 128
    assert default_n_buckets(65536, 64) == (32, 64)  # 2048 buckets, factorised
    assert default_n_buckets(100, 64) == 2
    b = default_n_buckets(1 << 20, 64)
    assert isinstance(b, tuple) and math.prod(b) == 2 * (1 << 20) // 64


# -------------------------------------------------------------------- attention
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n, chunk", [(16, 16), (13, 16), (20, 64)])
def test_single_chunk_equals_full_self_masked_attention(causal, n, chunk):
    qk, v = rand(n=n)
    got = lsh_attention(qk, v, n_buckets=8, n_hashes=1, chunk_size=chunk, causal=causal,
                        rotations=rots(6, 8, 1))
    torch.testing.assert_close(got, self_masked_full_attention(qk, v, causal), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "n, chunk, n_buckets, n_hashes",
    [(24, 4, 4, 1), (24, 4, 8, 3), (21, 4, 4, 2), (30, 8, (2, 4), 3), (10, 4, 2, 4), (9, 5, 6, 2)],
)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("count_duplicates", [True, False])
def test_matches_bruteforce_reference(n, chunk, n_buckets, n_hashes, causal, count_duplicates):
    """Covers look-back with wrap-around, padding (n not a multiple of chunk), 2 chunks, factorised buckets."""
    qk, v = rand(b=2, n=n)
    total = math.prod(n_buckets) if isinstance(n_buckets, tuple) else n_buckets
    got, buckets = lsh_attention(
        qk, v, n_buckets=n_buckets, n_hashes=n_hashes, chunk_size=chunk, causal=causal,
        rotations=rots(6, n_buckets, n_hashes), count_duplicates=count_duplicates, return_buckets=True)
    ref = brute_lsh(qk, v, buckets, chunk, total, causal, count_duplicates)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_duplicate_correction_changes_the_result_when_keys_repeat():
    qk, v = rand(n=32)
    kw = dict(n_buckets=4, n_hashes=3, chunk_size=4, rotations=rots(6, 4, 3), return_buckets=True)
    with_c, buckets = lsh_attention(qk, v, count_duplicates=True, **kw)
    without, _ = lsh_attention(qk, v, count_duplicates=False, **kw)
    mult = multiplicity(buckets[0, 0], 32, 4, 4)
    assert mult.max() > 1  # some key is reached by several rounds...
    assert (with_c - without).abs().max() > 1e-3  # ...and then the correction matters


@pytest.mark.parametrize("n, chunk, n_hashes", [(32, 4, 3), (30, 8, 4), (12, 4, 2), (8, 8, 3)])
def test_duplicate_counts_against_bruteforce(n, chunk, n_hashes):
    """The O(L * m) count of the library equals the dense multiplicity N_ij for every attended pair."""
    qk, _ = rand(b=1, h=1, n=n)
    buckets = hash_vectors(qk, 4, n_hashes, rotations=rots(6, 4, n_hashes))[0]  # (1, R, n)
    lp = -(-n // chunk) * chunk
    padded = torch.nn.functional.pad(buckets, (0, lp - n), value=4)
    order = torch.sort(padded, dim=-1, stable=True).indices  # (1, R, Lp)
    loc = torch.empty_like(order).scatter_(2, order, torch.arange(lp).expand(1, n_hashes, lp))
    chunk_of = loc // chunk
    nc = lp // chunk
    next_chunk = (chunk_of + 1) % nc if nc > 1 else chunk_of
    mult = multiplicity(buckets[0], n, chunk, 4)
    for r in range(n_hashes):
        pos = order[:, r].view(1, nc, chunk)
        kpos = pos if nc == 1 else torch.cat([pos, pos.roll(1, dims=1)], dim=2)
        counts = _duplicate_counts(chunk_of, next_chunk, pos, kpos, r)[0]
        for c in range(nc):
            for a in range(chunk):
                for s in range(kpos.shape[-1]):
                    i, j = int(pos[0, c, a]), int(kpos[0, c, s])
                    if i < n and j < n:
                        assert int(counts[c, a, s]) == int(mult[i, j]), (r, i, j)


@pytest.mark.parametrize("count_duplicates", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_identical_rounds_equal_one_round(count_duplicates, causal):
    """R copies of one rotation: every round has the same output and log-sum-exp, so the
    combination weights are 1/R each and the result is the single round. This holds with
    AND without the correction (with it, every logit drops by log R, which cancels)."""
    qk, v = rand(n=40)
    one = rots(6, 8, 1)
    single = lsh_attention(qk, v, n_buckets=8, n_hashes=1, chunk_size=4, causal=causal, rotations=one)
    many = lsh_attention(qk, v, n_buckets=8, n_hashes=4, chunk_size=4, causal=causal,
                         rotations=one.repeat(1, 4, 1), count_duplicates=count_duplicates)
    torch.testing.assert_close(many, single, atol=ATOL, rtol=0)


def test_causality_value_perturbation_never_leaks_backwards():
    qk, v = rand(b=2, n=48)
    kw = dict(n_buckets=8, n_hashes=3, chunk_size=4, causal=True, rotations=rots(6, 8, 3))
    base = lsh_attention(qk, v, **kw)
    for j in range(48):
        v2 = v.clone()
        v2[:, :, j] += 10.0
        out = lsh_attention(qk, v2, **kw)
        assert torch.equal(out[:, :, :j], base[:, :, :j]), f"value at {j} leaked backwards"


def test_causality_key_perturbation_moves_chunk_boundaries(capsys):
    """Changing the KEY of token j re-sorts the round: earlier queries can see other
    earlier keys (the paper's design, not a leak of j's content: j itself stays masked).
    We measure how often it happens and how large the change is, and require that it
    does happen here (it is what the book teaches)."""
    n, kw = 64, dict(n_buckets=8, n_hashes=2, chunk_size=4, causal=True, rotations=rots(6, 8, 2))
    qk, v = rand(b=1, h=2, n=n, seed=3)
    base = lsh_attention(qk, v, **kw)
    changed, worst = 0, 0.0
    for j in range(1, n):
        qk2 = qk.clone()
        qk2[:, :, j] = torch.randn(6, generator=torch.Generator().manual_seed(j), **F64)
        diff = (lsh_attention(qk2, v, **kw)[:, :, :j] - base[:, :, :j]).abs().max().item()
        changed += diff > 0
        worst = max(worst, diff)
    frac = changed / (n - 1)
    with capsys.disabled():
        print(f"\n[key perturbation] earlier outputs changed for {changed}/{n - 1} = {frac:.0%} of "
              f"positions j; largest change {worst:.3g} (outputs are of order 1)")
    assert 0 < changed < n - 1


def test_permutation_equivariance_when_every_bucket_fills_one_chunk():
    """Non-causal LSH attention is permutation-equivariant only when the tie-break by
    position does not matter: if a bucket spans two chunks, permuting decides which
    members share a chunk. We build inputs in which each round's every bucket holds
    exactly chunk_size vectors (one vector per pair of buckets (h1, h2) of two rounds),
    so chunks are buckets in any order."""
    d, nb, m = 6, 4, 4
    r = rots(d, nb, 2, seed=7)
    pool = torch.randn(4000, d, generator=torch.Generator().manual_seed(8), **F64)
    hb = hash_vectors(pool, nb, 2, rotations=r)  # (2, 4000)
    picks = []
    for h1 in range(nb):
        for h2 in range(nb):
            idx = torch.nonzero((hb[0] == h1) & (hb[1] == h2)).flatten()
            assert len(idx) > 0
            picks.append(int(idx[0]))
    qk = pool[picks][None, None]  # (1, 1, 16, d)
    v = torch.randn(1, 1, 16, 3, generator=torch.Generator().manual_seed(9), **F64)
    kw = dict(n_buckets=nb, n_hashes=2, chunk_size=m, rotations=r)
    base = lsh_attention(qk, v, **kw)
    for seed in range(5):
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
        out = lsh_attention(qk[:, :, perm], v[:, :, perm], **kw)
        torch.testing.assert_close(out, base[:, :, perm], atol=ATOL, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ["reference", "tiled"])
def test_gradcheck(causal, impl):
    qk, v = rand(b=1, h=2, n=10, d=3, dv=2)
    buckets = hash_vectors(qk, 4, 2, rotations=rots(3, 4, 2))  # fixed: the function is smooth
    qk.requires_grad_()
    v.requires_grad_()

    def fn(qk, v):
        return lsh_attention(qk, v, n_buckets=4, n_hashes=2, chunk_size=4, causal=causal,
                             buckets=buckets, impl=impl)

    assert torch.autograd.gradcheck(fn, (qk, v))


def test_checkpointed_rounds_give_the_same_gradients():
    qk, v = rand(n=37)
    grads = []
    for impl in ("reference", "tiled"):
        a, b = qk.clone().requires_grad_(), v.clone().requires_grad_()
        out = lsh_attention(a, b, n_buckets=4, n_hashes=3, chunk_size=4, causal=True,
                            rotations=rots(6, 4, 3), impl=impl)
        (out * torch.linspace(-1, 1, out.numel(), **F64).view_as(out)).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0], grads[1], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "b, h, n, chunk, n_buckets, n_hashes",
    [(2, 2, 37, 4, 4, 3), (1, 3, 16, 16, 4, 2), (1, 2, 13, 16, 8, 1), (2, 1, 40, 8, (2, 4), 4), (1, 2, 24, 12, 2, 2)],
)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("count_duplicates", [True, False])
def test_tiled_path_matches_plain_autograd_path(b, h, n, chunk, n_buckets, n_hashes, causal, count_duplicates,
                                                 monkeypatch):
    """The default path (tiles, hand-written backward, duplicates hidden after their first
    round) against impl="reference" (plain autograd, log N_ij subtracted): the same
    outputs and gradients in float64. Covers padding, one chunk per round, two chunks,
    several sequences and heads, and tiles that end inside a sequence (3 chunks a tile)."""
    monkeypatch.setattr(lsh, "TILE_CHUNKS", 3)
    qk, v = rand(b=b, h=h, n=n)
    kw = dict(n_buckets=n_buckets, n_hashes=n_hashes, chunk_size=chunk, causal=causal,
              count_duplicates=count_duplicates, rotations=rots(6, n_buckets, n_hashes))
    weights = torch.linspace(-1, 1, b * h * n * 5, **F64).view(b, h, n, 5)
    results = []
    for impl in ("tiled", "reference"):
        a, c = qk.clone().requires_grad_(), v.clone().requires_grad_()
        out = lsh_attention(a, c, impl=impl, **kw)
        (out * weights).sum().backward()
        results.append((out.detach(), a.grad, c.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=ATOL, rtol=0)
    # gradients sum many more terms (some of order 10): a relative 1e-11 on top
    torch.testing.assert_close(results[0][1:], results[1][1:], atol=ATOL, rtol=GRAD_RTOL)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n, chunk", [(11, 4), (6, 8)])
def test_tiled_path_gradcheck_with_padding(causal, n, chunk, monkeypatch):
    """Hand-written backward against finite differences: padding and a single chunk."""
    monkeypatch.setattr(lsh, "TILE_CHUNKS", 2)
    qk, v = rand(b=2, h=1, n=n, d=3, dv=2)
    buckets = hash_vectors(qk, 4, 3, rotations=rots(3, 4, 3))
    qk.requires_grad_()
    v.requires_grad_()

    def fn(qk, v):
        return lsh_attention(qk, v, n_buckets=4, n_hashes=3, chunk_size=chunk, causal=causal, buckets=buckets)

    assert torch.autograd.gradcheck(fn, (qk, v))


@pytest.mark.parametrize("tile", [1, 2, 5, 64])
def test_tile_size_does_not_change_the_result(tile, monkeypatch):
    qk, v = rand(b=2, h=2, n=50)
    kw = dict(n_buckets=8, n_hashes=3, chunk_size=4, causal=True, rotations=rots(6, 8, 3))
    ref = lsh_attention(qk, v, impl="reference", **kw)
    monkeypatch.setattr(lsh, "TILE_CHUNKS", tile)
    torch.testing.assert_close(lsh_attention(qk, v, **kw), ref, atol=ATOL, rtol=0)


def test_module_gradients_match_plain_autograd_path():
    """Through the module (qk and v are transposed views of the projections)."""
    torch.manual_seed(2)
    layer = LSHSelfAttention(24, 3, n_hashes=2, chunk_size=4, n_buckets=4).double()
    x = torch.randn(2, 30, 24, **F64)
    buckets = layer(x, causal=True, return_buckets=True)[1]
    grads = []
    for impl in ("tiled", "reference"):
        layer.zero_grad()
        qk = layer.qk(x).view(2, 30, 3, 8).transpose(1, 2)
        v = layer.v(x).view(2, 30, 3, 8).transpose(1, 2)
        y = lsh_attention(qk, v, n_buckets=4, n_hashes=2, chunk_size=4, causal=True, buckets=buckets,
                          impl=impl)
        y.square().sum().backward()
        grads.append((y.detach(), layer.qk.weight.grad.clone(), layer.v.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=ATOL, rtol=0)
    # weight gradients sum over 60 tokens of products of order-10 values, with cancellation
    torch.testing.assert_close(grads[0][1:], grads[1][1:], atol=1e-10, rtol=GRAD_RTOL)


def test_buckets_round_trip():
    qk, v = rand(n=30)
    out, buckets = lsh_attention(qk, v, n_buckets=8, n_hashes=2, chunk_size=4, return_buckets=True,
                                 generator=torch.Generator().manual_seed(0))
    assert buckets.shape == (1, 2, 2, 30)
    again = lsh_attention(qk, v, n_buckets=8, n_hashes=2, chunk_size=4, buckets=buckets)
    assert torch.equal(out, again)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_long_sequence_is_finite(dtype):
    n = 16384
    g = torch.Generator().manual_seed(0)
    qk = (4 * torch.randn(1, 2, n, 32, generator=g)).to(dtype)  # large norms: big logits
    v = torch.randn(1, 2, n, 32, generator=g).to(dtype)
    out = lsh_attention(qk, v, n_buckets=default_n_buckets(n, 64), n_hashes=2, chunk_size=64,
                        causal=True, generator=g)
    assert out.dtype == dtype and out.shape == v.shape
    assert torch.isfinite(out).all()
    ref = lsh_attention(qk.double(), v.double(), n_buckets=default_n_buckets(n, 64), n_hashes=2,
                        chunk_size=64, causal=True, buckets=hash_vectors(qk, default_n_buckets(n, 64), 2,
                                                                           generator=torch.Generator().manual_seed(1)))
    assert ref.isfinite().all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_64k_forward_backward_is_finite(dtype):
    n = 65536
    g = torch.Generator().manual_seed(0)
    qk = (4 * torch.randn(1, 2, n, 32, generator=g)).to(dtype).requires_grad_()
    v = torch.randn(1, 2, n, 32, generator=g).to(dtype).requires_grad_()
    out = lsh_attention(qk, v, n_buckets=default_n_buckets(n, 64), n_hashes=2, chunk_size=64,
                        causal=True, generator=g)
    out.float().square().sum().backward()
    for t in (out, qk.grad, v.grad):
        assert torch.isfinite(t).all()


# ----------------------------------------------------------------------- module
def test_module_shapes_rounds_and_buckets():
    torch.manual_seed(0)
    layer = LSHSelfAttention(32, 4, n_hashes=2, chunk_size=8).double()
    x = torch.randn(2, 50, 32, **F64)
    y, buckets = layer(x, causal=True, return_buckets=True)
    assert y.shape == x.shape and buckets.shape == (2, 4, 2, 50)
    assert torch.equal(layer(x, causal=True, buckets=buckets), y)  # e.g. a reversible backward
    layer.n_hashes = 8  # more rounds at evaluation time
    assert layer(x, return_buckets=True)[1].shape == (2, 4, 8, 50)
    assert layer(x, n_hashes=3, return_buckets=True)[1].shape == (2, 4, 3, 50)
    with pytest.raises(ValueError, match="d_model"):
        LSHSelfAttention(30, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 10, 16, **F64))


def test_module_matches_functional_and_single_chunk_is_full_attention():
    torch.manual_seed(1)
    layer = LSHSelfAttention(12, 2, n_hashes=1, chunk_size=16, n_buckets=4).double()
    x = torch.randn(1, 16, 12, **F64)
    qk = layer.qk(x).view(1, 16, 2, 6).transpose(1, 2)
    v = layer.v(x).view(1, 16, 2, 6).transpose(1, 2)
    ref = layer.out(self_masked_full_attention(qk, v, True).transpose(1, 2).reshape(1, 16, 12))
    torch.testing.assert_close(layer(x, causal=True), ref, atol=ATOL, rtol=0)


def test_workload_runs_forward_and_backward():
    lsh_attention_step(256, heads=2, head_dim=8, n_hashes=2, chunk_size=16, backward=True)


# ---------------------------------------------------------------------- errors
def _call(**over):
    args = dict(qk=torch.randn(1, 2, 8, 4), v=torch.randn(1, 2, 8, 3), n_buckets=4, n_hashes=2, chunk_size=4)
    args.update(over)
    qk, v = args.pop("qk"), args.pop("v")
    return lsh_attention(qk, v, **args)


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(n_buckets=5), ValueError, "n_buckets=5.*even"),
        (dict(n_buckets=(4, 3)), ValueError, "n_buckets=.*even"),
        (dict(n_buckets=0), ValueError, "n_buckets=0"),
        (dict(n_buckets=4.0), TypeError, "n_buckets must be an int"),
        (dict(n_hashes=0), ValueError, "n_hashes must be a positive integer"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive integer"),
        (dict(chunk_size=2.5), ValueError, "chunk_size must be a positive integer"),
        (dict(qk=torch.randn(2, 8, 4)), ValueError, "qk must have 4 dimensions"),
        (dict(v=torch.randn(1, 2, 7, 3)), ValueError, r"share \(batch, heads, length\)"),
        (dict(qk=torch.ones(1, 2, 8, 4, dtype=torch.long)), TypeError, "qk must be a floating-point"),
        (dict(v=torch.randn(1, 2, 8, 3, dtype=torch.float64)), TypeError, "share a dtype"),
        (dict(qk="x"), TypeError, "qk must be a torch.Tensor"),
        (dict(qk=torch.randn(1, 2, 0, 4), v=torch.randn(1, 2, 0, 3)), ValueError, "length >= 1"),
        (dict(rotations=torch.randn(4, 2, 3)), ValueError, r"rotations must have shape .* \(4, 2, 2\)"),
        (dict(buckets=torch.zeros(1, 2, 3, 8, dtype=torch.long)), ValueError, "buckets must have shape"),
        (dict(buckets=torch.zeros(1, 2, 2, 8)), TypeError, "buckets must be an int64"),
        (dict(buckets=torch.full((1, 2, 2, 8), 4)), ValueError, r"buckets must lie in \[0, 4\)"),
    ],
)
def test_bad_input_names_the_parameter(over, error, match):
    with pytest.raises(error, match=match):
        _call(**over)


def test_hash_bad_inputs():
    with pytest.raises(ValueError, match="x must be a floating-point tensor of shape"):
        hash_vectors(torch.randn(5), 4, 1)
    with pytest.raises(ValueError, match="n_buckets=3"):
        hash_vectors(torch.randn(5, 2), 3, 1)
    with pytest.raises(ValueError, match="n_hashes"):
        hash_vectors(torch.randn(5, 2), 4, -1)
