"""LSH attention: hash, sort, chunk, attend to your own and the previous chunk.

Chapter 2 (LSH attention) defines and explains everything here.
Reference: Kitaev, Kaiser, Levskaya, "Reformer: The efficient transformer" (ICLR 2020,
arXiv 2001.04451), section 2 and appendix A; angular LSH from Andoni et al. (2015).

One round of LSH attention, for shared-QK vectors ``q`` (keys ``k_j = q_j / ||q_j||``):

1. hash: ``h(x) = argmax([xR ; -xR])`` for a random ``R`` of shape ``(dim, n_buckets/2)``
   (:func:`hash_vectors`); ``h(k_j) = h(q_j)`` because the hash ignores the length;
2. sort the positions by ``(bucket, position)`` (a stable sort by bucket);
3. cut the sorted order into chunks of ``chunk_size`` consecutive entries; every chunk
   attends to itself and to the chunk before it;
4. mask by the ORIGINAL positions (causal), replace the logit of a query with itself by
   a large finite value (``SELF_MASK_VALUE``) so that a token looks at itself only when
   nothing else is visible, and undo the sort.

``n_hashes`` rounds with independent rotations are combined by their log-sum-exp
weights, which equals one softmax over everything any round saw. The paper's duplicate
correction (appendix A) subtracts ``log N_ij`` from each logit, ``N_ij`` being the
number of rounds in which key ``j`` is in query ``i``'s window, so that a key found by
several rounds is counted once.

Memory is ``O(length * n_hashes)`` beyond the inputs: no ``(length x length)`` tensor is
ever built, not even for the duplicate counts (they compare chunk indices of each
attended pair across rounds).

How it is computed (:func:`lsh_attention`, default path): each round's queries, keys and
values are gathered once in sorted order, then the chunks are processed a few at a time
(a "tile" of ``TILE_CHUNKS`` chunks), so that every ``(tile, m, 2m)`` logit tensor stays
in the CPU cache while it is masked, exponentiated and multiplied. The backward pass is
written by hand, as in flash attention: it keeps only the inputs, the output and the
log-sum-exp of every query, and recomputes each tile's logits. Heads are processed one
at a time (and hashing one round at a time), so every working buffer is one head's. The duplicate correction
is applied in an equivalent form there: a key is kept only in the first round whose
window holds it (later rounds hide it), which sums ``exp(logit)`` once per visible key,
exactly as subtracting ``log N_ij`` in each of the ``N_ij`` rounds does.
``impl="reference"`` selects the plain version instead (:func:`_one_round`, the one to
read first): one round at a time with ordinary autograd (it stores every
intermediate), subtracting ``log N_ij``.

Design choices (the book discusses each):

* The first chunk of a round looks back at the LAST chunk of the same round (a
  wrap-around inside the round). trax and Hugging Face sort all rounds as one long
  sequence, so there the first chunk of round ``r`` looks back at the last chunk of
  round ``r - 1``. Keeping rounds independent makes a round a self-contained
  computation (``n_hashes`` identical rounds equal one round exactly) and lets rounds
  run one at a time. With one chunk per round there is no look-back (the chunk would
  otherwise see itself twice).
* A query's own key gets the logit ``SELF_MASK_VALUE = -1e5`` (replaced, as trax and
  Hugging Face do; the paper says "masked"); logits are computed in float32 for half
  precision inputs (float64 stays float64), so the value is safe in every dtype.
  Causal and padding masks are hard (``-inf``): a query always sees at least itself.
* Any length works: the sequence is padded to a multiple of ``chunk_size``; padding
  positions get the bucket ``n_buckets`` (after every real bucket), so they sort to
  the end and only ever share a chunk with the last real entries, where they are
  masked.
* With ``n_buckets = (b1, b2)`` the hash is factorised as in trax and Hugging Face:
  ``R`` has ``b1/2 + b2/2`` columns, ``h = h1 + b1 * h2`` (``n_buckets = b1 * b2``
  buckets), which keeps hashing linear in the length when the bucket count grows with
  it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import check_head_tensors
from .device import resolve_device

__all__ = [
    "SELF_MASK_VALUE",
    "default_n_buckets",
    "random_rotations",
    "hash_vectors",
    "lsh_attention",
    "full_shared_qk_attention",
    "LSHSelfAttention",
    "lsh_attention_step",
]

SELF_MASK_VALUE = -1e5
"""Logit given to a query's own key (the paper's value; finite, so a token with no
other visible key attends to itself)."""

Buckets = int | tuple[int, ...]


# ------------------------------------------------------------------------- checking
def _check_n_buckets(n_buckets: Buckets) -> tuple[int, ...]:
    """Factors of ``n_buckets`` as a tuple (one factor when it is an int)."""
    factors = (n_buckets,) if isinstance(n_buckets, int) and not isinstance(n_buckets, bool) else n_buckets
    if (
        not isinstance(factors, Sequence)
        or len(factors) == 0
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in factors)
    ):
        raise TypeError(
            f"n_buckets must be an int or a tuple of ints (b1, b2) for factorised hashing; "
            f"got {n_buckets!r}"
        )
    for b in factors:
        if b < 2 or b % 2:
            raise ValueError(
                f"n_buckets={n_buckets!r}: every bucket count must be even and >= 2 (the hash "
                f"is argmax over [xR ; -xR]); use e.g. {max(2, b + b % 2)} instead of {b}"
            )
    return tuple(factors)


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def _n_total(factors: tuple[int, ...]) -> int:
    return math.prod(factors)


def _rotation_size(factors: tuple[int, ...]) -> int:
    return sum(b // 2 for b in factors)


def default_n_buckets(length: int, chunk_size: int, *, factorise_above: int | None = None) -> Buckets:
    """The bucket count the paper recommends: about ``2 * length / chunk_size``.

    Rounded down to a power of two (at least 2). Above ``factorise_above`` (default
    ``2 * max(chunk_size, sqrt(length / chunk_size))``, Hugging Face's rule) it is
    returned factorised as ``(b1, b2)`` with ``b1 * b2`` buckets, so that hashing costs
    ``O(length * (b1 + b2))`` instead of ``O(length * b1 * b2)``.
    """
    _check_positive_int("length", length)
    _check_positive_int("chunk_size", chunk_size)
    if factorise_above is not None and (isinstance(factorise_above, bool) or not isinstance(factorise_above, int)
                                        or factorise_above < 1):
        raise TypeError(f"factorise_above must be a positive int or None; got {factorise_above!r}")
    power = max(1, (2 * max(1, length // chunk_size)).bit_length() - 1)
    if factorise_above is None:
        factorise_above = 2 * max(chunk_size, int(math.sqrt(length / chunk_size)))
    if 2**power <= factorise_above:
        return 2**power
    return (2 ** (power // 2), 2 ** (power - power // 2))


def random_rotations(
    dim: int,
    n_buckets: Buckets,
    n_hashes: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Gaussian random rotations ``R`` of shape ``(dim, n_hashes, sum(b // 2))``.

    One independent matrix per round. For factorised ``n_buckets = (b1, b2)`` the
    columns are ``[b1/2 columns | b2/2 columns]``. Drawn on ``generator``'s device (CPU
    by default) and moved to ``device``, so a CPU generator reproduces the same rotations
    on every device.
    """
    factors = _check_n_buckets(n_buckets)
    _check_positive_int("dim", dim)
    _check_positive_int("n_hashes", n_hashes)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype}")
    if device is not None:
        device = resolve_device(device)
    draw_device = generator.device if generator is not None else device
    r = torch.randn(dim, n_hashes, _rotation_size(factors), generator=generator, device=draw_device,
                    dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return r.to(device=device, dtype=dtype)


# -------------------------------------------------------------------------- hashing
def hash_vectors(
    x: Tensor,
    n_buckets: Buckets,
    n_hashes: int,
    *,
    rotations: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Angular LSH: bucket ids ``argmax([xR ; -xR])``, one hash per round.

    Args:
        x: vectors ``(..., length, dim)``.
        n_buckets: an even bucket count, or ``(b1, b2)`` for the factorised hash
            ``h1 + b1 * h2`` (``b1 * b2`` buckets, ``b1/2 + b2/2`` rotation columns).
        n_hashes: number of rounds (independent rotations).
        rotations: ``(dim, n_hashes, sum(b // 2))``; drawn at random if omitted
            (see :func:`random_rotations`), shared by all leading axes of ``x``.
        generator: random generator for the rotations (reproducible hashing).

    Returns:
        int64 bucket ids ``(..., n_hashes, length)`` in ``[0, prod(n_buckets))``.
        Ties in the argmax go to the first maximal column. Half precision inputs are
        hashed in float32.
    """
    factors = _check_n_buckets(n_buckets)
    _check_positive_int("n_hashes", n_hashes)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point tensor of shape (..., length, dim); got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}"
        )
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    dim = x.shape[-1]
    if rotations is None:
        rotations = random_rotations(dim, factors, n_hashes, generator=generator, device=x.device, dtype=work)
    else:
        _check_rotations(rotations, dim, factors, n_hashes, x)
    lead = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:])  # (N, L, d)
    buckets = torch.empty(flat.shape[0], n_hashes, x.shape[-2], dtype=torch.int64, device=x.device)
    # One round and a few sequences at a time: the rotated vectors (n, L, sum(b/2)) are
    # the only tensor that grows with n_buckets; keep it under HASH_BLOCK numbers.
    step = max(1, HASH_BLOCK // (x.shape[-2] * rotations.shape[-1]))
    for r in range(n_hashes):
        rot = rotations[:, r].to(work)  # (d, sum(b/2))
        for i in range(0, flat.shape[0], step):
            buckets[i : i + step, r] = _hash_one(flat[i : i + step].to(work) @ rot, factors)
    return buckets.view(*lead, n_hashes, x.shape[-2])


HASH_BLOCK = 2**22  # numbers (16 MiB in float32) of rotated vectors hashed at once


def _hash_one(rotated: Tensor, factors: tuple[int, ...]) -> Tensor:
    """Bucket ids ``(n, L)`` from one round's rotated vectors ``(n, L, sum(b // 2))``."""
    buckets, offset, product = None, 0, 1
    for b in factors:
        part = rotated[..., offset : offset + b // 2]
        # argmax over [part ; -part] without building it; a tie goes to the first half,
        # as argmax of the concatenation would (first maximal index)
        top, arg_top = part.max(dim=-1)
        low, arg_low = part.min(dim=-1)
        h = torch.where(top >= -low, arg_top, arg_low + b // 2)  # (n, L)
        buckets = h if buckets is None else buckets + product * h
        offset, product = offset + b // 2, product * b
    return buckets


def _check_rotations(rotations: Tensor, dim: int, factors: tuple[int, ...], n_hashes: int, x: Tensor) -> None:
    if not isinstance(rotations, Tensor) or not rotations.is_floating_point():
        raise TypeError("rotations must be a floating-point torch.Tensor")
    expected = (dim, n_hashes, _rotation_size(factors))
    if tuple(rotations.shape) != expected:
        raise ValueError(
            f"rotations must have shape (dim, n_hashes, sum(n_buckets // 2)) = {expected}; got "
            f"{tuple(rotations.shape)}. Draw them with random_rotations(dim, n_buckets, n_hashes)."
        )
    if rotations.device != x.device:
        raise ValueError(
            f"rotations are on {rotations.device} but the inputs are on {x.device}; "
            "move them with .to(device)"
        )


# ----------------------------------------------------------------------- attention
def _check_inputs(qk: Tensor, v: Tensor) -> None:
    check_head_tensors(qk=qk, v=v)
    if qk.shape[:3] != v.shape[:3]:
        raise ValueError(
            "qk and v must share (batch, heads, length); got "
            f"qk {tuple(qk.shape)} and v {tuple(v.shape)}"
        )


def _check_buckets(buckets: Tensor, qk: Tensor, n_hashes: int, n_total: int) -> None:
    b, h, length, _ = qk.shape
    if not isinstance(buckets, Tensor) or buckets.dtype != torch.int64:
        raise TypeError("buckets must be an int64 tensor, as returned by return_buckets=True")
    if tuple(buckets.shape) != (b, h, n_hashes, length):
        raise ValueError(
            f"buckets must have shape (batch, heads, n_hashes, length) = {(b, h, n_hashes, length)}; "
            f"got {tuple(buckets.shape)}. Pass the buckets returned for these inputs."
        )
    if buckets.device != qk.device:
        raise ValueError(f"buckets are on {buckets.device} but qk is on {qk.device}; move them with .to()")
    if buckets.numel() and (int(buckets.min()) < 0 or int(buckets.max()) >= n_total):
        raise ValueError(
            f"buckets must lie in [0, {n_total}) for n_buckets={n_total}; got values in "
            f"[{int(buckets.min())}, {int(buckets.max())}]"
        )


def _look_back(x: Tensor) -> Tensor:
    """``(N, chunks, m, ...)`` -> ``(N, chunks, 2m, ...)``: each chunk, then the one before it.

    The first chunk's previous chunk is the last one (wrap-around within the round).
    With a single chunk there is nothing before it and ``x`` is returned unchanged.
    """
    if x.shape[1] == 1:
        return x
    return torch.cat([x, x.roll(1, dims=1)], dim=2)


def _duplicate_counts(chunk_of: Tensor, next_chunk: Tensor, qpos: Tensor, kpos: Tensor, r: int) -> Tensor:
    """``N_ij`` for round ``r``'s window ``(N, chunks, m, 2m)``, in ``O(L * m)`` memory.

    ``chunk_of`` ``(N, n_hashes, Lp)`` is the chunk of each position in each round and
    ``next_chunk`` the chunk after it (cyclically). Key j is in query i's window in round
    s iff ``chunk_s(j)`` is ``chunk_s(i)`` or the chunk before it, i.e. iff
    ``chunk_s(i)`` is ``chunk_s(j)`` or ``next_s(j)``. Round ``r`` itself always counts.
    """
    n, n_hashes, _ = chunk_of.shape
    count = torch.ones(qpos.shape + kpos.shape[-1:], dtype=torch.uint8, device=qpos.device)
    for s in range(n_hashes):
        if s == r:
            continue
        cq = chunk_of[:, s].gather(1, qpos.reshape(n, -1)).view(qpos.shape)[..., :, None]  # (N, C, m, 1)
        ck = chunk_of[:, s].gather(1, kpos.reshape(n, -1)).view(kpos.shape)[..., None, :]  # (N, C, 1, 2m)
        nk = next_chunk[:, s].gather(1, kpos.reshape(n, -1)).view(kpos.shape)[..., None, :]
        count += (cq == ck) | (cq == nk)
    return count


def _one_round(
    queries: Tensor,
    keys: Tensor,
    v: Tensor,
    order: Tensor,
    chunk_of: Tensor | None,
    next_chunk: Tensor | None,
    r: int,
    length: int,
    chunk_size: int,
    causal: bool,
) -> tuple[Tensor, Tensor]:
    """Attention of one hashing round, returned in the original order.

    ``queries`` ``(N, Lp, d)`` (pre-scaled by ``1/sqrt(d)``), ``keys`` ``(N, Lp, d)``
    (unit length), ``v`` ``(N, Lp, dv)``, ``order`` ``(N, Lp)`` the positions in this
    round's sorted order. Returns the output ``(N, Lp, dv)`` and the log-sum-exp of the
    logits ``(N, Lp)``.
    """
    n, lp, d = queries.shape
    dv = v.shape[-1]
    m = chunk_size
    c = lp // m
    work = torch.float64 if queries.dtype == torch.float64 else torch.float32
    pos = order.view(n, c, m)  # (N, C, m): original position of each sorted entry
    kpos = _look_back(pos)  # (N, C, w) with w = 2m (or m for a single chunk)
    w = kpos.shape[-1]
    # Row gathers on flattened (N * Lp, .) tensors: index_select copies whole rows.
    base = (torch.arange(n, device=order.device) * lp)[:, None]  # (N, 1) row offset per sequence
    qrows = (order + base).reshape(-1)
    krows = (kpos.reshape(n, c * w) + base).reshape(-1)
    sq = queries.reshape(n * lp, d).index_select(0, qrows).view(n, c, m, d)  # (N, C, m, d)
    sk = keys.reshape(n * lp, d).index_select(0, krows).view(n, c, w, d)  # (N, C, w, d)
    sv = v.reshape(n * lp, dv).index_select(0, krows).view(n, c, w, dv)  # (N, C, w, dv)

    logits = (sq @ sk.transpose(-1, -2)).to(work)  # (N, C, m, w): the O(L * m) tensor
    if causal:  # by original positions; also hides padding, which comes after every real key
        logits.masked_fill_(kpos[..., None, :] > pos[..., :, None], float("-inf"))
    elif lp > length:
        logits.masked_fill_((kpos >= length)[..., None, :], float("-inf"))
    # A query meets itself at slot t of its own chunk (the first m keys): the diagonal.
    # Filled after the hard masks, so every row keeps one finite logit (no NaN, even
    # for padding queries).
    logits.masked_fill_(torch.eye(m, w, dtype=torch.bool, device=logits.device), SELF_MASK_VALUE)
    if chunk_of is not None:
        counts = _duplicate_counts(chunk_of, next_chunk, pos, kpos, r)
        logits.sub_(counts.to(work).log_())  # log N_ij
    top = logits.detach().amax(dim=-1, keepdim=True)  # (N, C, m, 1); finite: self is visible
    e = (logits - top).exp_()  # unnormalised weights in (0, 1]
    total = e.sum(dim=-1, keepdim=True)  # (N, C, m, 1)
    out = (e.to(v.dtype) @ sv) / total.to(v.dtype)  # (N, C, m, dv)
    lse = top + total.log()  # (N, C, m, 1)

    undo = torch.empty_like(order).scatter_(1, order, torch.arange(lp, device=order.device).expand(n, lp))
    urows = (undo + base).reshape(-1)
    out = out.reshape(n * lp, dv).index_select(0, urows).view(n, lp, dv)  # (N, Lp, dv), original order
    lse = lse.reshape(n * lp).index_select(0, urows).view(n, lp)  # (N, Lp)
    return out, lse


def _autograd_rounds(queries: Tensor, keys: Tensor, vv: Tensor, order: Tensor, length: int, chunk_size: int,
                     causal: bool, count_duplicates: bool) -> Tensor:
    """The rounds one at a time with plain autograd (it stores every intermediate): the reference.

    ``queries``, ``keys`` ``(N, Lp, d)``, ``vv`` ``(N, Lp, dv)``, ``order`` ``(N, R, Lp)``.
    Subtracts ``log N_ij`` (:func:`_duplicate_counts`). Returns ``(N, Lp, dv)``.
    """
    n, n_hashes, lp = order.shape
    chunk_of = next_chunk = None
    if count_duplicates and n_hashes > 1:
        loc = torch.empty_like(order).scatter_(  # sorted location of each position, per round
            2, order, torch.arange(lp, device=order.device).expand(n, n_hashes, lp))
        n_chunks = lp // chunk_size
        small = torch.int16 if n_chunks < 2**15 else torch.int32
        chunk_of = (loc // chunk_size).to(small)  # (N, R, Lp)
        # the chunk whose look-back reaches this one; a lone chunk has no look-back
        next_chunk = ((chunk_of + 1) % n_chunks).to(small) if n_chunks > 1 else chunk_of
    # Combine rounds by their log-sum-exp weights exp(lse_r - lse), computed as a running
    # softmax over rounds relative to the running maximum (exact for equal lse_r even
    # when they are -1e5, the value of a query that sees only itself).
    acc = weight = top = None
    for r in range(n_hashes):
        o_r, lse_r = _one_round(queries, keys, vv, order[:, r], chunk_of, next_chunk, r, length, chunk_size, causal)
        if acc is None:
            top = lse_r.detach()
            weight = torch.exp(lse_r - top)  # 1, but carries the gradient of lse_r
            acc = o_r * weight[..., None]
        else:
            new_top = torch.maximum(top, lse_r.detach())  # any reference value works: no gradient
            rescale, w_r = torch.exp(top - new_top), torch.exp(lse_r - new_top)
            acc = acc * rescale[..., None] + o_r * w_r[..., None]
            weight, top = weight * rescale + w_r, new_top
    return acc / weight[..., None]  # (N, Lp, dv)


# ------------------------------------------------- tiled attention, hand-written backward
# The same rounds as :func:`_one_round`, computed a few chunks ("a tile") at a time, so
# every (tile, m, 2m) logit tensor stays in the CPU cache, and differentiated by hand
# (flash-attention style): the backward pass recomputes each tile's logits from the
# saved inputs and the log-sum-exp instead of storing them.
#
# Rows: queries, keys and values are concatenated into one (B * Lp * H, 2d + dv) tensor
# whose row (b * Lp + p) * H + h is position p of head h in sequence b: the layout of a
# (B, L, H * d) projection, so no transpose is copied, and one gathered row brings a
# query, its key and its value. A chunk's queries and keys come from one sequence and
# head, so comparing rows compares positions (the causal mask needs no positions).
#
# Duplicates: instead of subtracting log N_ij in every round, a key is kept only in the
# FIRST round whose window holds it (hidden in later ones); the query's own key, held
# by every round, keeps SELF_MASK_VALUE - log(n_hashes) in each. The combined softmax
# sums exp(logit_ij) once per visible key either way, so the result is the same.
TILE_CHUNKS = 512
"""Chunks per tile of the tiled path (a (512, 64, 128) float32 logit tile is 16 MiB).

Every tile costs a few dozen parallel operations. On a CPU shared with other processes
each one can wait for a descheduled thread, so fewer and larger operations win there;
tensors above 32 MiB, on the other hand, are fresh memory (page faults) at every
allocation. Measured at 64K tokens on 2 cores (forward+backward): 256 and 512 within
noise of each other, 1024 about 15% slower, 128 up to 2x slower when the cores are busy.
"""


@dataclass(frozen=True)
class _Plan:
    """Which rows every chunk of every round reads, for the tiled path (N = B * H sequences)."""

    qrows: list[Tensor]  # per round (N * C, m): the query rows of each chunk, in sorted order
    krows: list[Tensor]  # per round (N * C, w): its key rows (the chunk, then the one before)
    undo: list[Tensor]  # per round (N * Lp,): where each row sits in the sorted order
    prev: Tensor | None  # (N * C,) the chunk before each chunk (cyclic); None: one chunk
    chunk_of: Tensor | None  # (R, N * Lp) chunk of each row in each round (None: no duplicate check)
    next_chunk: Tensor | None  # (R, N * Lp) the chunk whose look-back reaches it
    heads: int
    length: int  # real length (positions >= length are padding)
    lp: int  # padded length
    causal: bool
    self_logit: float  # SELF_MASK_VALUE, minus log(n_hashes) when duplicates are counted


def _make_plan(order: Tensor, chunk_size: int, length: int, causal: bool, count_duplicates: bool) -> _Plan:
    """``order`` ``(B, H, R, Lp)``: each round's sorted positions -> the rows of every chunk."""
    b, h, n_hashes, lp = order.shape
    n, c, dev = b * h, lp // chunk_size, order.device
    seq, head = torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(h, device=dev).view(1, h, 1, 1)
    rows = (order + seq * lp) * h + head  # (B, H, R, Lp): row (b * Lp + p) * H + h
    rows = rows.view(n, n_hashes, c, chunk_size)  # (N, R, C, m)
    qrows = [rows[:, r].reshape(n * c, chunk_size) for r in range(n_hashes)]
    krows = [_look_back(rows[:, r]).reshape(n * c, -1) for r in range(n_hashes)]
    sorted_index = torch.arange(n * lp, device=dev)
    undo = [torch.empty_like(sorted_index).scatter_(0, q.reshape(-1), sorted_index) for q in qrows]
    prev = torch.arange(n * c, device=dev).view(n, c).roll(1, dims=1).reshape(-1) if c > 1 else None
    chunk_of = next_chunk = None
    dedupe = count_duplicates and n_hashes > 1
    if dedupe:
        small = torch.int16 if c < 2**15 else torch.int32
        chunk_of = torch.stack([(u % lp // chunk_size).to(small) for u in undo])  # (R, N * Lp)
        next_chunk = ((chunk_of + 1) % c).to(small) if c > 1 else chunk_of
    self_logit = SELF_MASK_VALUE - (math.log(n_hashes) if dedupe else 0.0)
    return _Plan(qrows, krows, undo, prev, chunk_of, next_chunk, h, length, lp, causal, self_logit)


def _earlier_chunks(plan: _Plan, r: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """For each round ``s < r`` (when duplicates are counted), the chunks that round ``s``
    gives round ``r``'s queries ``(N * C, m, 1)``, keys and the keys' next chunks ``(N * C, 1, w)``."""
    if plan.chunk_of is None:
        return []
    qrows, krows = plan.qrows[r], plan.krows[r]
    return [(plan.chunk_of[s][qrows][:, :, None], plan.chunk_of[s][krows][:, None, :],
             plan.next_chunk[s][krows][:, None, :]) for s in range(r)]


def _hidden(plan: _Plan, qrows: Tensor, krows: Tensor, earlier: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor | None:
    """Keys hidden from each query of a tile: ``(T, m, w)`` bool (or None).

    Causal: keys after the query (padding comes after every real key). Duplicates
    (``earlier``, sliced to the tile): keys in the query's window in an earlier round
    ``s``, i.e. with ``chunk_s(query)`` equal to ``chunk_s(key)`` or to the chunk after it.
    """
    hide = None
    if plan.causal:
        hide = krows[:, None, :] > qrows[:, :, None]  # same sequence and head: rows compare as positions
    elif plan.lp > plan.length:
        padding = (krows // plan.heads % plan.lp) >= plan.length  # (T, w)
        hide = padding[:, None, :].expand(-1, qrows.shape[1], -1).clone()
    for cq, ck, nk in earlier:
        seen = (cq == ck).bitwise_or_(cq == nk)  # (T, m, w)
        hide = seen if hide is None else hide.bitwise_or_(seen)
    return hide


def _tile_logits(plan: _Plan, qrows: Tensor, krows: Tensor, earlier: list[tuple[Tensor, Tensor, Tensor]],
                 sq: Tensor, keys: list[Tensor]) -> Tensor:
    """Masked logits ``(T, m, w)`` of a tile: ``sq`` ``(T, m, d)`` against its key halves."""
    logits = torch.cat([torch.bmm(sq, k.transpose(1, 2)) for k in keys], dim=2)  # (T, m, w)
    hide = _hidden(plan, qrows, krows, earlier)
    if hide is not None:
        logits.masked_fill_(hide, float("-inf"))
    m = sq.shape[1]
    # the query's own key: slot t of its own chunk; filled last, so every row keeps it
    logits[:, :, :m].diagonal(dim1=1, dim2=2).fill_(plan.self_logit)
    return logits


def _tiles(plan: _Plan, r: int, tile: int) -> Iterator[tuple[slice, Tensor, Tensor, list]]:
    """Each tile of ``tile`` chunks of round ``r``: its slice of the round's chunks, its
    query rows ``(T, m)``, key rows ``(T, w)`` and duplicate-check chunks (:func:`_earlier_chunks`)."""
    qrows, krows = plan.qrows[r], plan.krows[r]
    earlier = _earlier_chunks(plan, r)
    for start in range(0, qrows.shape[0], tile):
        part = slice(start, start + tile)
        yield part, qrows[part], krows[part], [(a[part], b[part], c[part]) for a, b, c in earlier]


def _tile_inputs(plan: _Plan, rows: Tensor, qrows: Tensor, krows: Tensor,
                 d: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Queries ``(T, m, d)`` of a tile, and its keys and values as window halves: the
    chunk's own ``(T, m, d)``, then the previous chunk's (none when a round is one chunk).

    ``rows`` ``(N * Lp, 2d + dv)`` are in the original order; the tile's rows are gathered
    here (``qrows`` ``(T, m)``, ``krows`` ``(T, w)``), so that no buffer is larger than a
    tile's. The logits are built from two products, never from concatenated keys.
    """
    t, m = qrows.shape
    halves = [rows.index_select(0, qrows.reshape(-1)).view(t, m, -1)]  # (T, m, 2d + dv)
    if plan.prev is not None:  # the look-back: the chunk before each chunk
        halves.append(rows.index_select(0, krows[:, m:].reshape(-1)).view(t, m, -1))
    return halves[0][..., :d], [x[..., d : 2 * d] for x in halves], [x[..., 2 * d :] for x in halves]


def _tiled_round(plan: _Plan, r: int, rows: Tensor, d: int, tile: int, out: Tensor, lse: Tensor) -> None:
    """Round ``r`` tile by tile, in sorted order: writes the output ``out`` ``(N * C, m, dv)``
    and the log-sum-exp ``lse`` ``(N * C, m, 1)``."""
    for part, qrows, krows, earlier in _tiles(plan, r, tile):
        sq, keys, values = _tile_inputs(plan, rows, qrows, krows, d)
        logits = _tile_logits(plan, qrows, krows, earlier, sq, keys)
        top = logits.amax(dim=-1, keepdim=True)  # (T, m, 1); finite: the self logit
        weights = logits.sub_(top).exp_()  # in place: (T, m, w) in (0, 1]
        total = weights.sum(dim=-1, keepdim=True)  # (T, m, 1)
        m = sq.shape[1]
        o = torch.bmm(weights[:, :, :m], values[0], out=out[part])  # (T, m, dv)
        if len(values) == 2:
            o.baddbmm_(weights[:, :, m:], values[1])
        o.div_(total)
        lse[part] = total.log_().add_(top)


def _tiled_forward(plan: _Plan, rows: Tensor, d: int, tile: int) -> tuple[Tensor, Tensor]:
    """All rounds, combined by their log-sum-exp: output ``(N * Lp, dv)`` and log-sum-exp, by row.

    Large buffers are allocated once and reused by every round: on the CPU a fresh
    100 MiB tensor costs more (page faults) than filling it.
    """
    n_chunks, m = plan.qrows[0].shape
    dv = rows.shape[-1] - 2 * d
    out_s, lse_s = rows.new_empty(n_chunks, m, dv), rows.new_empty(n_chunks, m, 1)  # sorted order
    acc = weight = top = out_r = lse_r = None
    for r in range(len(plan.qrows)):
        _tiled_round(plan, r, rows, d, tile, out_s, lse_s)
        undo = plan.undo[r]
        if acc is None:  # round 0: the running result, by row
            acc, top = out_s.view(-1, dv).index_select(0, undo), lse_s.view(-1).index_select(0, undo)
            weight, out_r, lse_r = torch.ones_like(top), torch.empty_like(acc), torch.empty_like(top)
            continue
        torch.index_select(out_s.view(-1, dv), 0, undo, out=out_r)
        torch.index_select(lse_s.view(-1), 0, undo, out=lse_r)
        new_top = torch.maximum(top, lse_r)  # running maximum: exact even when all are -1e5
        rescale, w_r = (top - new_top).exp_(), lse_r.sub_(new_top).exp_()
        acc = acc.mul_(rescale[:, None]).add_(out_r.mul_(w_r[:, None]))
        weight, top = weight.mul_(rescale).add_(w_r), new_top
    return acc.div_(weight[:, None]), weight.log_().add_(top)


def _tiled_backward(plan: _Plan, rows: Tensor, d: int, out: Tensor, lse: Tensor, grad_out: Tensor,
                    tile: int) -> Tensor:
    """Gradient of the combined output for ``rows`` ``(N * Lp, 2d + dv)``, recomputing each tile.

    With ``P = exp(logits - lse)`` (one softmax over every round's window):
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dO * O))``, ``dQ = dS K``,
    ``dK = dS^T Q``. The self logit is a constant: its ``dS`` is zero. Each tile adds its
    gradients straight into the rows they belong to (its own chunks' rows, and for the
    look-back half the previous chunks' rows), so no buffer is larger than a tile's.
    """
    dv_size = grad_out.shape[-1]
    delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (N * Lp, 1) rowsum(dO * O)
    # per row: [dO | lse | delta], gathered together for each tile
    extra = torch.cat([grad_out, lse[:, None], delta], dim=-1)
    grad = torch.zeros_like(rows)
    for r in range(len(plan.qrows)):
        for part, qrows, krows, earlier in _tiles(plan, r, tile):
            sq, keys, values = _tile_inputs(plan, rows, qrows, krows, d)
            t, m = qrows.shape
            ex = extra.index_select(0, qrows.reshape(-1)).view(t, m, -1)
            do, lse_t, delta_t = ex[..., :dv_size], ex[..., dv_size:dv_size + 1], ex[..., dv_size + 1:]
            p = _tile_logits(plan, qrows, krows, earlier, sq, keys).sub_(lse_t).exp_()  # (T, m, w)
            dp = torch.cat([torch.bmm(do, v.transpose(1, 2)) for v in values], dim=2)  # (T, m, w)
            ds = dp.sub_(delta_t).mul_(p)
            ds[:, :, :m].diagonal(dim1=1, dim2=2).zero_()
            dq = torch.bmm(ds[:, :, :m], keys[0])  # (T, m, d)
            if len(keys) == 2:
                dq.baddbmm_(ds[:, :, m:], keys[1])
            for half in range(len(keys)):  # half 0's keys are the tile's query rows; half 1's the previous chunks'
                cols = slice(half * m, (half + 1) * m)
                dk = torch.bmm(ds[:, :, cols].transpose(1, 2), sq)  # (T, m, d)
                dv = torch.bmm(p[:, :, cols].transpose(1, 2), do)  # (T, m, dv)
                # whole rows [dq | dk | dv] in one scatter (contiguous rows add faster than three column slices)
                whole = torch.cat([dq if half == 0 else torch.zeros_like(dq), dk, dv], dim=-1)
                grad.index_add_(0, krows[:, cols].reshape(-1), whole.view(-1, whole.shape[-1]))
    return grad


def _head_rows(q: Tensor, v: Tensor, lp: int) -> Tensor:
    """One head's rows ``(B * Lp, 2d + dv)``: ``[q / sqrt(d) | q / ||q|| | v]``, zero rows as padding."""
    b, length, d = q.shape
    rows = torch.cat([q * (1.0 / math.sqrt(d)), F.normalize(q, dim=-1), v], dim=-1)  # (B, L, 2d + dv)
    if lp > length:
        rows = F.pad(rows, (0, 0, 0, lp - length))
    return rows.reshape(b * lp, -1)


def _rows_to_inputs(grad: Tensor, q: Tensor, lp: int) -> tuple[Tensor, Tensor]:
    """Gradient by row ``(B * Lp, 2d + dv)`` -> gradients of ``q`` ``(B, L, d)`` and ``v`` ``(B, L, dv)``.

    ``q`` entered twice, scaled by ``1/sqrt(d)`` and normalised (``k = q / n``, ``n = max(||q||, 1e-12)``,
    as ``F.normalize``): ``dq = dq_s / sqrt(d) + (dk - k (k . dk)) / n`` where ``||q|| > 1e-12``,
    ``dk / 1e-12`` elsewhere.
    """
    b, length, d = q.shape
    grad = grad.view(b, lp, -1)[:, :length]
    norm = q.norm(dim=-1, keepdim=True)
    safe = norm.clamp_min(1e-12)
    k, dk = q / safe, grad[..., d : 2 * d]
    through_norm = torch.where(norm > 1e-12, dk - k * (k * dk).sum(-1, keepdim=True), dk) / safe
    return grad[..., :d] * (1.0 / math.sqrt(d)) + through_norm, grad[..., 2 * d :]


class _TiledLSHAttention(torch.autograd.Function):
    """Tiled multi-round LSH attention with a recomputing backward, one head at a time.

    ``qk`` ``(B, H, L, d)`` and ``v`` ``(B, H, L, dv)`` in the working dtype, ``order``
    ``(B, H, R, Lp)``. Only the inputs, the order, the output ``(B, L, H, dv)`` and the
    log-sum-exp are kept; each head's rows and chunk plan are rebuilt in backward, so
    every working buffer is one head's.
    """

    @staticmethod
    def forward(ctx, qk: Tensor, v: Tensor, order: Tensor, chunk_size: int, causal: bool,
                count_duplicates: bool, tile: int) -> Tensor:
        b, h, length, d = qk.shape
        lp = order.shape[-1]
        out = qk.new_empty(b, length, h, v.shape[-1])  # (B, L, H, dv)
        lse = qk.new_empty(b, h, lp)
        for i in range(h):
            plan = _make_plan(order[:, i : i + 1], chunk_size, length, causal, count_duplicates)
            o, l = _tiled_forward(plan, _head_rows(qk[:, i], v[:, i], lp), d, tile)
            out[:, :, i] = o.view(b, lp, -1)[:, :length]
            lse[:, i] = l.view(b, lp)
        ctx.save_for_backward(qk, v, order, out, lse)
        ctx.args = (chunk_size, causal, count_duplicates, tile)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        qk, v, order, out, lse = ctx.saved_tensors
        chunk_size, causal, count_duplicates, tile = ctx.args
        b, h, length, d = qk.shape
        lp = order.shape[-1]
        dqk, dv = torch.empty_like(qk), torch.empty_like(v)
        for i in range(h):
            plan = _make_plan(order[:, i : i + 1], chunk_size, length, causal, count_duplicates)
            o, g = (F.pad(t[:, :, i], (0, 0, 0, lp - length)).reshape(b * lp, -1) for t in (out, grad_out))
            grad = _tiled_backward(plan, _head_rows(qk[:, i], v[:, i], lp), d, o, lse[:, i].reshape(-1),
                                   g.contiguous(), tile)
            dqk[:, i], dv[:, i] = _rows_to_inputs(grad, qk[:, i], lp)
        return dqk, dv, None, None, None, None, None


def _tiled_attention(qk: Tensor, v: Tensor, order: Tensor, chunk_size: int, causal: bool,
                     count_duplicates: bool) -> Tensor:
    """The tiled path of :func:`lsh_attention`; ``order`` ``(B, H, R, Lp)``. Returns ``(B, H, L, dv)``."""
    work = torch.float64 if qk.dtype == torch.float64 else torch.float32
    out = _TiledLSHAttention.apply(qk.to(work), v.to(work), order, chunk_size, causal, count_duplicates,
                                   TILE_CHUNKS)  # (B, L, H, dv)
    return out.transpose(1, 2).to(v.dtype)  # (B, H, L, dv), a view of (B, L, H, dv)


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    *,
    n_buckets: Buckets,
    n_hashes: int,
    chunk_size: int,
    causal: bool = False,
    rotations: Tensor | None = None,
    count_duplicates: bool = True,
    return_buckets: bool = False,
    buckets: Tensor | None = None,
    generator: torch.Generator | None = None,
    impl: str = "tiled",
) -> Tensor | tuple[Tensor, Tensor]:
    """Shared-QK LSH attention (Reformer), ``O(length * n_hashes * chunk_size)`` memory.

    Args:
        qk: shared queries/keys ``(batch, heads, length, dim)``; keys are ``qk`` scaled
            to unit length, logits are ``q_i . k_j / sqrt(dim)``.
        v: values ``(batch, heads, length, dim_v)``.
        n_buckets: even bucket count, or ``(b1, b2)`` for the factorised hash.
        n_hashes: number of hashing rounds.
        chunk_size: entries per chunk of the sorted order; each chunk attends to
            itself and the previous chunk (the first to the last, within a round).
        causal: query ``i`` sees only keys ``j <= i`` (original positions).
        rotations: ``(dim, n_hashes, sum(b // 2))``, shared by batch and heads; random
            if omitted (see :func:`hash_vectors`).
        count_duplicates: subtract ``log N_ij`` (the paper's appendix A), so a key seen
            in several rounds is counted once.
        return_buckets: also return the buckets ``(batch, heads, n_hashes, length)``.
        buckets: precomputed buckets (e.g. from the forward pass, to recompute it
            exactly in a reversible backward); ``rotations`` are then ignored.
        generator: random generator for the rotations.
        impl: ``"tiled"`` (default): chunks processed a tile at a time, with a
            hand-written backward that recomputes each tile's logits instead of storing
            them (fast, ``O(length)`` memory). ``"reference"``: the plain version, one
            round at a time with autograd storing every intermediate (slower, more
            memory; the tests check that the two agree).

    Returns:
        The output ``(batch, heads, length, dim_v)`` in ``v``'s dtype (and the buckets).
    """
    _check_inputs(qk, v)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False; got {causal!r}")
    factors = _check_n_buckets(n_buckets)
    _check_positive_int("n_hashes", n_hashes)
    _check_positive_int("chunk_size", chunk_size)
    if impl not in ("tiled", "reference"):
        raise ValueError(f'impl must be "tiled" or "reference"; got {impl!r}')
    b, h, length, d = qk.shape
    n_total = _n_total(factors)
    if length == 0:
        raise ValueError("qk must have length >= 1 (axis -2)")
    if buckets is None:
        buckets = hash_vectors(qk, factors, n_hashes, rotations=rotations, generator=generator)
    else:
        _check_buckets(buckets, qk, n_hashes, n_total)

    n = b * h
    lp = -(-length // chunk_size) * chunk_size  # padded length, a multiple of chunk_size
    pad = lp - length
    bk = buckets.reshape(n, n_hashes, length)
    if pad:
        bk = F.pad(bk, (0, pad), value=n_total)  # padding: a bucket after all real ones
    order = torch.sort(bk, dim=-1, stable=True).indices  # (N, R, Lp): by (bucket, position)
    if impl == "tiled":
        out = _tiled_attention(qk, v, order.view(b, h, n_hashes, lp), chunk_size, causal, count_duplicates)
    else:
        x = F.pad(qk.reshape(n, length, d), (0, 0, 0, pad))  # (N, Lp, d), zero padding
        vv = F.pad(v.reshape(n, length, v.shape[-1]), (0, 0, 0, pad))
        keys = F.normalize(x, dim=-1)  # (N, Lp, d) unit keys
        queries = x * (1.0 / math.sqrt(d))
        out = _autograd_rounds(queries, keys, vv, order, length, chunk_size, causal, count_duplicates)
        out = out[:, :length].to(v.dtype).reshape(b, h, length, v.shape[-1])
    return (out, buckets) if return_buckets else out


def full_shared_qk_attention(
    qk: Tensor, v: Tensor, *, causal: bool = True, return_weights: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Dense shared-QK attention with the Reformer's self-mask: what LSH approximates.

    Logits ``q_i . k_j / sqrt(dim)`` with unit keys ``k_j = qk_j / ||qk_j||``; a query's
    own key gets ``SELF_MASK_VALUE`` (it attends to itself only when nothing else is
    visible), later keys are masked when ``causal``. Equal to :func:`lsh_attention`
    with one chunk covering the sequence.

    Args:
        qk: ``(batch, heads, length, dim)``; v: ``(batch, heads, length, dim_v)``.

    Returns:
        ``(batch, heads, length, dim_v)`` (and, with ``return_weights``, the softmax
        weights ``(batch, heads, length, length)``). Builds the ``(length x length)`` logits.
    """
    check_head_tensors(qk=qk, v=v)
    if qk.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"qk and v must share (batch, heads, length); got qk {tuple(qk.shape)} and v {tuple(v.shape)}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False; got {causal!r}")
    if not isinstance(return_weights, bool):
        raise TypeError(f"return_weights must be True or False; got {return_weights!r}")
    length, d = qk.shape[-2], qk.shape[-1]
    work = torch.float64 if qk.dtype == torch.float64 else torch.float32
    keys = F.normalize(qk, dim=-1)
    logits = ((qk * (1.0 / math.sqrt(d))) @ keys.transpose(-1, -2)).to(work)  # (B, H, L, L)
    if causal:
        logits = logits.masked_fill(torch.ones(length, length, dtype=torch.bool, device=qk.device).triu(1),
                                    float("-inf"))
    logits = logits.masked_fill(torch.eye(length, dtype=torch.bool, device=qk.device), SELF_MASK_VALUE)
    weights = logits.softmax(dim=-1).to(v.dtype)  # (B, H, L, L)
    out = weights @ v  # (B, H, L, dv)
    return (out, weights) if return_weights else out


# -------------------------------------------------------------------------- module
class LSHSelfAttention(nn.Module):
    """Multi-head LSH self-attention with a shared query/key projection (Reformer).

    Input and output ``(batch, length, d_model)``. ``n_hashes`` is an attribute and can
    be changed at any time (e.g. train with 2 rounds, evaluate with 8), or overridden
    per call. ``n_buckets=None`` picks :func:`default_n_buckets` for each input length.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_hashes: int = 4,
        chunk_size: int = 64,
        n_buckets: Buckets | None = None,
        count_duplicates: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be a positive multiple of n_heads={n_heads}; "
                "choose n_heads that divides d_model"
            )
        _check_positive_int("n_hashes", n_hashes)
        _check_positive_int("chunk_size", chunk_size)
        if n_buckets is not None:
            _check_n_buckets(n_buckets)
        self.d_model, self.n_heads = d_model, n_heads
        self.n_hashes, self.chunk_size, self.n_buckets = n_hashes, chunk_size, n_buckets
        self.count_duplicates = count_duplicates
        self.qk = nn.Linear(d_model, d_model, bias=bias)  # shared query/key projection
        self.v = nn.Linear(d_model, d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool = False,
        n_hashes: int | None = None,
        rotations: Tensor | None = None,
        buckets: Tensor | None = None,
        return_buckets: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``(batch, length, d_model)`` -> ``(batch, length, d_model)``.

        ``rotations``, ``buckets`` and ``return_buckets`` are passed to
        :func:`lsh_attention` (buckets ``(batch, heads, n_hashes, length)``).
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape (batch, length, d_model={self.d_model}); got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        weight = self.qk.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x must have the dtype of the module's weights ({weight.dtype}); got {x.dtype}. Use .to(dtype)"
            )
        b, n, _ = x.shape
        rounds = self.n_hashes if n_hashes is None else n_hashes
        n_buckets = self.n_buckets if self.n_buckets is not None else default_n_buckets(n, self.chunk_size)
        qk = self.qk(x).view(b, n, self.n_heads, -1).transpose(1, 2)  # (B, H, L, hd)
        v = self.v(x).view(b, n, self.n_heads, -1).transpose(1, 2)  # (B, H, L, hd)
        y, bk = lsh_attention(
            qk, v, n_buckets=n_buckets, n_hashes=rounds, chunk_size=self.chunk_size, causal=causal,
            rotations=rotations, count_duplicates=self.count_duplicates, return_buckets=True,
            buckets=buckets, generator=generator,
        )
        y = self.out(y.transpose(1, 2).reshape(b, n, self.d_model))  # (B, L, d_model)
        return (y, bk) if return_buckets else y


def lsh_attention_step(
    length: int,
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    n_hashes: int = 4,
    chunk_size: int = 64,
    causal: bool = True,
    backward: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> None:
    """One :class:`LSHSelfAttention` call on random inputs (and its backward): a workload.

    It builds its own inputs, so it can run in a fresh process to measure peak memory
    (see :func:`longctx_lib.measure.peak_memory`).
    """
    from .device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)
    layer = LSHSelfAttention(heads * head_dim, heads, n_hashes=n_hashes, chunk_size=chunk_size).to(dev, dtype)
    x = torch.randn(batch, length, heads * head_dim, device=dev, dtype=dtype, requires_grad=backward)
    with torch.set_grad_enabled(backward):
        y = layer(x, causal=causal, generator=torch.Generator(device=dev).manual_seed(seed))
        if backward:
            y.sum().backward()
