"""Reversible residual layers: activations recomputed in backward, memory flat in depth.

Chapter 3 (reversible residual layers) defines and explains everything here.
References: Gomez, Ren, Urtasun, Grosse, "The reversible residual network" (NeurIPS
2017, arXiv 1707.04585); Kitaev, Kaiser, Levskaya, "Reformer" (ICLR 2020, section 3).

A reversible block splits the activations into two halves ``(x1, x2)`` and computes::

    y1 = x1 + f(x2)        # f: attention (with its layer norm) in the Reformer
    y2 = x2 + g(y1)        # g: feed-forward (with its layer norm)

Its inverse needs only the outputs::

    x2 = y2 - g(y1)
    x1 = y1 - f(x2)

so a stack of blocks need not keep any block's inputs for backward: the backward pass
walks the stack from the top, reconstructs each block's inputs from its outputs, runs
``f`` and ``g`` again with autograd on, and back-propagates through them
(:class:`ReversibleSequence`). Activation memory is that of one block, whatever the
depth; the price is a second forward pass of every block.

The recomputation must compute the *same* function as the forward pass:

* random state: each call of ``f`` and ``g`` records the CPU (and CUDA) random state
  before it runs and restores it when recomputing, so dropout masks match;
* LSH attention: the buckets found in the forward pass are kept (compactly, a few
  bytes per token per layer) and reused, because hashing the reconstructed input again
  could put a token in another bucket and change the function
  (:func:`remember` and :func:`replayed`, used by :class:`NormAttention`).

``ReversibleSequence(mode=...)`` also runs the same blocks as an ordinary residual
stack (``"ordinary"``: autograd keeps every block's activations) or with gradient
checkpointing (``"checkpoint"``: :func:`torch.utils.checkpoint.checkpoint` keeps each
block's inputs and recomputes the block), for comparisons.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention
from .lsh import LSHSelfAttention, default_n_buckets, lsh_attention, random_rotations
from .transformer import FeedForward, _check_x, _dropout

__all__ = [
    "ATTENTIONS",
    "MODES",
    "ReversibleBlock",
    "ReversibleSequence",
    "NormAttention",
    "NormFeedForward",
    "replayed",
    "remember",
    "reversible_stack",
    "reconstruction_error",
    "reversible_stack_step",
]

ATTENTIONS = ("lsh", "full", "naive", "local")
"""The attention inside :class:`NormAttention`."""
MODES = ("reversible", "ordinary", "checkpoint")


# --------------------------------------------------------------------------- recording
@dataclass
class _Record:
    """What one call of ``f`` or ``g`` needs to be recomputed exactly."""

    cpu_state: Tensor
    cuda_device: int | None = None
    cuda_state: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, x: Tensor) -> _Record:
        if x.device.type == "cuda":
            index = x.device.index if x.device.index is not None else torch.cuda.current_device()
            return cls(torch.get_rng_state(), index, torch.cuda.get_rng_state(index))
        return cls(torch.get_rng_state())

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with the recorded random state (restored afterwards) and extras."""
        devices = [] if self.cuda_device is None else [self.cuda_device]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_device is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_device)
            with _active(self, replaying=True):
                yield


_ACTIVE: contextvars.ContextVar[tuple[_Record, bool] | None] = contextvars.ContextVar("record", default=None)


@contextlib.contextmanager
def _active(record: _Record, *, replaying: bool) -> Iterator[None]:
    token = _ACTIVE.set((record, replaying))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def replayed(key: str) -> Tensor | None:
    """The value remembered under ``key`` when a reversible backward pass recomputes a call.

    ``None`` in every other situation (the forward pass, an ordinary stack, no stack).
    """
    _check_key(key)
    active = _ACTIVE.get()
    if active is None or not active[1] or key not in active[0].extras:
        return None
    stored, dtype = active[0].extras[key]
    return stored.to(dtype)


def remember(key: str, value: Tensor) -> None:
    """Keep ``value`` for the recomputation of the current call of ``f`` or ``g``.

    Used for what a recomputation must see unchanged although it is not a function of
    the input alone (LSH buckets: hashing the reconstructed input again could differ).
    Does nothing outside :class:`ReversibleSequence`'s forward pass. Integer tensors
    are stored in the smallest integer type that holds them.
    """
    _check_key(key)
    if not isinstance(value, Tensor):
        raise TypeError(f"value must be a torch.Tensor (e.g. LSH buckets); got {type(value).__name__}")
    active = _ACTIVE.get()
    if active is not None and not active[1]:
        active[0].extras[key] = (_compact(value), value.dtype)


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty str naming the value (e.g. 'buckets'); got {key!r}")


def _compact(t: Tensor) -> Tensor:
    """An integer tensor in the smallest signed type that holds its values."""
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.numel() == 0:
        return t
    lo, hi = int(t.min()), int(t.max())
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return t.to(dtype)
    return t


def _record_bytes(records: Sequence[_Record]) -> int:
    return sum(stored.numel() * stored.element_size() for r in records for stored, _ in r.extras.values())


# --------------------------------------------------------------------------- blocks
class ReversibleBlock(nn.Module):
    """``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``; halves ``(batch, length, d_model)`` each.

    ``f`` and ``g`` are modules mapping ``(batch, length, d_model)`` to the same shape.
    """

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        for name, module in (("f", f), ("g", g)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module mapping (batch, length, d) to the same shape; "
                                f"got {type(module).__name__}")
        self.f, self.g = f, g

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """``(x1, x2)`` -> ``(y1, y2)``, each ``(batch, length, d_model)``."""
        _check_halves(x1, x2, "x1", "x2")
        y1 = x1 + _residual(self.f, x2, "f")
        y2 = x2 + _residual(self.g, y1, "g")
        return y1, y2

    def inverse(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        """``(y1, y2)`` -> ``(x1, x2)``: the inputs that :meth:`forward` mapped to them."""
        _check_halves(y1, y2, "y1", "y2")
        x2 = y2 - _residual(self.g, y1, "g")
        x1 = y1 - _residual(self.f, x2, "f")
        return x1, x2


def _check_halves(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    for name, t in ((na, a), (nb, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (batch, length, d_model); got {type(t).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape (the two halves of the activations); "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _residual(fn: nn.Module, x: Tensor, name: str) -> Tensor:
    out = fn(x)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor of its input's shape {tuple(x.shape)}; got {got}")
    return out


# --------------------------------------------------------------------------- the stack
def _run_forward(blocks: Sequence[ReversibleBlock], x1: Tensor, x2: Tensor
                 ) -> tuple[Tensor, Tensor, list[tuple[_Record, _Record]]]:
    """Run the blocks, recording what each call of ``f`` and ``g`` needs to be recomputed."""
    records = []
    for block in blocks:
        rec_f = _Record.capture(x2)
        with _active(rec_f, replaying=False):
            x1 = x1 + _residual(block.f, x2, "f")
        rec_g = _Record.capture(x1)
        with _active(rec_g, replaying=False):
            x2 = x2 + _residual(block.g, x1, "g")
        records.append((rec_f, rec_g))
    return x1, x2, records


class _ReversibleFunction(torch.autograd.Function):
    """Forward without autograd; backward reconstructs inputs block by block."""

    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor, seq: ReversibleSequence, *params: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2, records = _run_forward(seq.blocks, x1, x2)
        ctx.seq, ctx.records = seq, records
        # Only the last block's outputs are kept, as detached aliases rather than saved
        # tensors, so that backward can let go of them after the top block (their
        # version counters guard against in-place changes, as saved tensors would).
        ctx.outputs = (x1.detach(), x2.detach())
        ctx.versions = (x1._version, x2._version)
        seq.last_record_bytes = _record_bytes([r for pair in records for r in pair])
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy1: Tensor, dy2: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.outputs is None:
            raise RuntimeError("ReversibleSequence: backward through the stack a second time is not supported "
                               "(its outputs were released); run the forward pass again")
        y1, y2 = ctx.outputs
        if (y1._version, y2._version) != ctx.versions:
            raise RuntimeError("ReversibleSequence: its outputs were modified in place before backward; "
                               "the inputs cannot be reconstructed (clone the outputs before changing them)")
        ctx.outputs = None  # released as soon as the top block has reconstructed its inputs
        params = [p for p in ctx.seq.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(params)}
        grads: list[Tensor | None] = [None] * len(params)
        private = ctx.seq.private_outputs
        if private:  # gradients broadcast from a scalar (stride 0) cannot be written in place
            dy1, dy2 = (g.clone() if 0 in g.stride() else g for g in (dy1, dy2))
        for depth, (block, (rec_f, rec_g)) in enumerate(zip(reversed(ctx.seq.blocks), reversed(ctx.records))):
            # the top block reads the stack's outputs and autograd's gradients: overwritten
            # in place only when the owner of the stack says that nobody else reads them
            y1, y2, dy1, dy2 = _block_backward(block, rec_f, rec_g, y1, y2, dy1, dy2, index, grads,
                                               own=private or depth > 0)
        return (dy1, dy2, None, *grads)


def _block_backward(block: ReversibleBlock, rec_f: _Record, rec_g: _Record, y1: Tensor, y2: Tensor,
                    dy1: Tensor, dy2: Tensor, index: dict[int, int],
                    grads: list[Tensor | None], *, own: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One block of the reversible backward pass: returns ``(x1, x2, dx1, dx2)``.

    ``grads`` (one slot per parameter of the stack, located by ``index``) accumulates
    the gradients of ``f``'s and ``g``'s parameters. With ``own=True`` the four input
    tensors belong to the backward pass (a lower block's), and the results are written
    into them in place: the stack's activations and gradients then take four tensors'
    worth of memory at every depth.
    """
    y1 = y1.detach()
    gy, d = _forward_backward(block.g, y1, dy2, rec_g, index, grads)  # g(y1) and its input gradient
    dy1 = dy1.add_(d) if own else dy1 + d  # y1 fed g as well as the output
    x2 = y2.sub_(gy) if own else y2 - gy  # reconstruct x2
    del gy, d  # free memory as early as possible: the peak is inside f's backward below
    fx, d = _forward_backward(block.f, x2, dy1, rec_f, index, grads)
    dx2 = dy2.add_(d) if own else dy2 + d
    del d
    x1 = y1.sub_(fx) if own else y1 - fx  # reconstruct x1
    return x1, x2, dy1, dx2


def _forward_backward(fn: nn.Module, x: Tensor, grad_out: Tensor, record: _Record, index: dict[int, int],
                      grads: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    """``fn(x)`` recomputed as in the forward pass, and ``d x``; ``fn``'s parameter gradients go into ``grads``.

    The output gradient is known before the recomputation starts, so a module that
    computes its output in pieces (chunks, heads) can back-propagate each piece right
    after computing it: its ``forward_backward(x, grad_out)`` method returns
    ``(value, d x, [(parameter, gradient), ...])`` from one forward and one backward
    pass of every piece, or ``None`` when it cannot (then, and for every other module,
    autograd recomputes the output and back-propagates through it: a module that
    recomputes pieces in its own backward pass would run its forward twice).
    """
    fused = getattr(fn, "forward_backward", None)
    with record.replay():
        result = fused(x, grad_out) if callable(fused) else None
        if result is None:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                out = fn(xg)
    if result is None:
        with torch.enable_grad():
            d = _grads(out, grad_out, xg, fn, index, grads)
        return out.detach(), d
    value, d, found = result
    for p, g in found:
        if g is not None and id(p) in index:
            i = index[id(p)]
            grads[i] = g if grads[i] is None else grads[i].add_(g)
    return value, d


def _check_grad_out(grad_out: object, shape: tuple[int, ...]) -> None:
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != tuple(shape):
        got = tuple(grad_out.shape) if isinstance(grad_out, Tensor) else type(grad_out).__name__
        raise ValueError(f"grad_out must be the gradient of the output, of shape {tuple(shape)}; got {got}")


def _grads(out: Tensor, grad_out: Tensor, x: Tensor, module: nn.Module, index: dict[int, int],
           grads: list[Tensor | None]) -> Tensor:
    """Back-propagate ``grad_out`` through ``out``; add parameter grads into ``grads``; return ``d x``."""
    own = [p for p in module.parameters() if p.requires_grad]
    found = torch.autograd.grad(out, [x, *own], grad_out, allow_unused=True)
    for p, g in zip(own, found[1:]):
        if g is not None:
            i = index[id(p)]
            grads[i] = g if grads[i] is None else grads[i].add_(g)
    return found[0] if found[0] is not None else torch.zeros_like(x)


class ReversibleSequence(nn.Module):
    """A stack of :class:`ReversibleBlock` s whose backward pass keeps no activations.

    ``mode="reversible"`` (default): only the last block's outputs are kept; backward
    reconstructs each block's inputs (see the module docstring). ``"ordinary"``: the
    same blocks as a plain residual stack (autograd keeps everything).
    ``"checkpoint"``: each block wrapped in :func:`torch.utils.checkpoint.checkpoint`
    (its inputs kept, the block recomputed). All three compute the same function.

    ``private_outputs = True`` promises that nothing but the caller's own next layer
    reads the stack's outputs and the gradients that arrive for them: the reversible
    backward pass then reuses their memory for the reconstructed inputs and gradients
    (:class:`~longctx_lib.reformer.ReformerLM` sets it; its stack's outputs never leave it).
    """

    def __init__(self, blocks: Sequence[ReversibleBlock], *, mode: str = "reversible") -> None:
        super().__init__()
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, ReversibleBlock) for b in blocks):
            raise TypeError("blocks must be a non-empty sequence of ReversibleBlock")
        self.blocks = nn.ModuleList(blocks)
        self.mode = mode
        self.private_outputs = False
        self.last_record_bytes = 0

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {value!r}")
        self._mode = value

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x1, x2)`` -> ``(y1, y2)``, each ``(batch, length, d_model)``.

        With ``x2=None`` the input is duplicated (``x2 = x1``), as the Reformer does.
        """
        if x2 is None:
            x2 = x1
        _check_halves(x1, x2, "x1", "x2")
        if self.mode == "ordinary":
            for block in self.blocks:
                x1, x2 = block(x1, x2)
            return x1, x2
        if self.mode == "checkpoint":
            for block in self.blocks:
                x1, x2 = checkpoint(block, x1, x2, use_reentrant=False, preserve_rng_state=True)
            return x1, x2
        params = [p for p in self.parameters() if p.requires_grad]
        return _ReversibleFunction.apply(x1, x2, self, *params)

    def inverse(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        """The stack's inputs reconstructed from its outputs, block by block from the top."""
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2)
        return y1, y2


# --------------------------------------------------------------------------- Reformer's f and g
class NormAttention(nn.Module):
    """The Reformer's ``f``: ``attention(LayerNorm(x))``; ``(batch, length, d_model)`` both ways.

    ``attention="lsh"`` (:class:`~longctx_lib.lsh.LSHSelfAttention`; its buckets are
    recorded in a reversible forward pass and reused when recomputing), ``"full"``
    (:class:`~longctx_lib.attention.MultiHeadAttention` with fused SDPA), ``"naive"``
    (the same with chapter 1's reference attention, which builds every score) or ``"local"``
    (causal only: each chunk of ``chunk_size`` positions attends to itself and the chunk
    before it, with the same shared-QK layer as LSH and every position in one bucket;
    the Reformer interleaves such layers with LSH layers).
    ``lsh_options`` go to ``LSHSelfAttention`` (``n_hashes``, ``chunk_size``, ...).

    ``one_head_at_a_time=True`` (LSH and local attention only) runs the heads one after
    another with :func:`~longctx_lib.chunking.apply_summed`: one head's queries, keys,
    values and attention buffers exist at a time, in the forward and in the backward
    pass (chunking along the head axis, chapter 4). Same function, same parameters.
    """

    def __init__(self, d_model: int, n_heads: int, *, attention: str = "lsh", causal: bool = True,
                 dropout: float = 0.0, one_head_at_a_time: bool = False, **lsh_options: Any) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f'attention must be one of {ATTENTIONS}; got {attention!r}')
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be True or False; got {causal!r}")
        if not isinstance(one_head_at_a_time, bool):
            raise TypeError(f"one_head_at_a_time must be True or False; got {one_head_at_a_time!r}")
        full = attention in ("full", "naive")
        if full and lsh_options:
            raise ValueError(f"{sorted(lsh_options)} apply only to attention='lsh' or 'local'")
        if full and one_head_at_a_time:
            raise ValueError("one_head_at_a_time applies only to attention='lsh' or 'local' "
                             "(full attention's fused kernel runs every head at once)")
        if attention == "local":
            if not causal:
                raise ValueError("attention='local' needs causal=True (a chunk's look-back wraps around "
                                 "to the last chunk, which only the causal mask hides)")
            if set(lsh_options) - {"chunk_size"}:
                raise ValueError(f"attention='local' takes only chunk_size; got {sorted(lsh_options)}")
            lsh_options = {**lsh_options, "n_hashes": 1, "n_buckets": 2}
        self.norm = nn.LayerNorm(d_model)
        if attention in ("lsh", "local"):
            self.attn: nn.Module = LSHSelfAttention(d_model, n_heads, **lsh_options)
        else:
            self.attn = MultiHeadAttention(d_model, n_heads, impl="sdpa" if attention == "full" else "naive")
        self.kind, self.causal, self.one_head_at_a_time = attention, causal, one_head_at_a_time
        self.drop = _dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.norm.normalized_shape[0])
        h = self.norm(x)
        if self.kind in ("full", "naive"):
            return self.drop(self.attn(h, causal=self.causal))
        attn = self.attn
        if self.kind == "local":  # one bucket: the sorted order is the original order
            zeros = torch.zeros(h.shape[0], attn.n_heads, 1, h.shape[1], dtype=torch.long, device=h.device)
            return self.drop(self._attend(h, buckets=zeros)[0])
        # Draw the rotations even when replaying, so that the random stream (and with it
        # the dropout mask below) is the same as in the forward pass.
        work = torch.float64 if h.dtype == torch.float64 else torch.float32
        rotations = random_rotations(attn.d_model // attn.n_heads, self._n_buckets(h), attn.n_hashes,
                                     device=h.device, dtype=work)
        buckets = replayed("buckets")
        if buckets is not None:  # a reversible backward pass: the forward pass's buckets
            return self.drop(self._attend(h, buckets=buckets)[0])
        y, buckets = self._attend(h, rotations=rotations)
        remember("buckets", buckets)
        return self.drop(y)

    def _n_buckets(self, h: Tensor) -> Any:
        attn = self.attn
        return attn.n_buckets if attn.n_buckets is not None else default_n_buckets(h.shape[1], attn.chunk_size)

    def _attend(self, h: Tensor, *, rotations: Tensor | None = None,
                buckets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """LSH (or local) attention of the normalised input ``h``: output and buckets ``(B, H, R, L)``."""
        if not self.one_head_at_a_time:
            return self.attn(h, causal=self.causal, rotations=rotations, buckets=buckets, return_buckets=True)
        from .chunking import apply_summed  # chunking builds on this module

        found = list(buckets.unbind(1)) if buckets is not None else [None] * self.attn.n_heads  # each (B, R, L)
        y = apply_summed(lambda x, i: self._head(x, i, found, rotations), h, self.attn.n_heads,
                         params=list(self.attn.parameters()))
        return y, torch.stack(found, dim=1)

    def _head(self, x: Tensor, i: int, found: list[Tensor | None], rotations: Tensor | None) -> Tensor:
        """Head ``i``'s share of the output ``(B, L, d_model)``; its buckets ``(B, R, L)`` go into ``found[i]``."""
        attn = self.attn
        width = attn.d_model // attn.n_heads
        rows = slice(i * width, (i + 1) * width)
        # one product for the head's queries/keys and values: one (B, L, d_model) input gradient
        weight = torch.cat([attn.qk.weight[rows], attn.v.weight[rows]])  # (2 width, d_model)
        bias = None if attn.qk.bias is None else torch.cat([attn.qk.bias[rows], attn.v.bias[rows]])
        qk, v = F.linear(x, weight, bias)[:, None].split(width, dim=-1)  # (B, 1, L, width) each
        known = found[i]
        y, bk = lsh_attention(qk, v, n_buckets=self._n_buckets(x), n_hashes=attn.n_hashes,
                              chunk_size=attn.chunk_size, causal=self.causal,
                              rotations=rotations if known is None else None,
                              buckets=None if known is None else known[:, None],
                              count_duplicates=attn.count_duplicates, return_buckets=True)
        found[i] = bk[:, 0]
        bias = attn.out.bias if i == 0 else None  # the output bias once
        return F.linear(y[:, 0], attn.out.weight[:, rows], bias)

    def forward_backward(self, x: Tensor, grad_out: Tensor
                         ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor | None]]] | None:
        """The output for ``x`` and the gradients for ``grad_out``, one head at a time; both ``(B, L, d_model)``.

        Used by the reversible backward pass (which knows ``grad_out`` before it
        recomputes this layer): each head runs forward and backward once, instead of a
        forward pass of all heads for the value followed by
        :func:`~longctx_lib.chunking.apply_summed`'s backward, which runs every head
        again. Returns ``None`` (recompute the ordinary way) unless the heads run one at
        a time with buckets known from the forward pass and no active output dropout
        (whose mask would be needed before the first head's backward).
        """
        _check_x(x, self.norm.normalized_shape[0])
        _check_grad_out(grad_out, x.shape[:2] + (self.norm.normalized_shape[0],))
        if not self.one_head_at_a_time or (self.training and isinstance(self.drop, nn.Dropout)):
            return None
        n_heads = self.attn.n_heads
        if self.kind == "local":
            buckets = torch.zeros(x.shape[0], n_heads, 1, x.shape[1], dtype=torch.long, device=x.device)
        else:
            buckets = replayed("buckets")
            if buckets is None:  # not inside a reversible backward pass
                return None
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            h = self.norm(xg)
        hd = h.detach().requires_grad_(True)
        params = [p for p in self.attn.parameters() if p.requires_grad]
        found, value = list(buckets.unbind(1)), None
        dh: list[Tensor | None] = [None] * (len(params) + 1)
        for i in range(n_heads):
            with torch.enable_grad():
                out = self._head(hd, i, found, None)
                got = torch.autograd.grad(out, [hd, *params], grad_out, allow_unused=True)
            value = out.detach() if value is None else value.add_(out.detach())
            for j, g in enumerate(got):
                if g is not None:
                    dh[j] = g if dh[j] is None else dh[j].add_(g)
        norm_params = [p for p in self.norm.parameters() if p.requires_grad]
        with torch.enable_grad():
            got = torch.autograd.grad(h, [xg, *norm_params], dh[0])
        return value, got[0], list(zip([*params, *norm_params], [*dh[1:], *got[1:]]))


class NormFeedForward(nn.Module):
    """The Reformer's ``g``: ``FeedForward(LayerNorm(x))``, with dropout inside and after."""

    def __init__(self, d_model: int, d_ff: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout=dropout)
        self.drop = _dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.norm.normalized_shape[0])
        return self.drop(self.ff(self.norm(x)))


# --------------------------------------------------------------------------- builders and measurements
def reversible_stack(
    d_model: int,
    n_heads: int,
    d_ff: int,
    n_layers: int,
    *,
    attention: str = "lsh",
    causal: bool = True,
    dropout: float = 0.0,
    mode: str = "reversible",
    **lsh_options: Any,
) -> ReversibleSequence:
    """The Reformer's stack: ``n_layers`` blocks with ``f = NormAttention``, ``g = NormFeedForward``."""
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer; got {n_layers!r}")
    blocks = [
        ReversibleBlock(
            NormAttention(d_model, n_heads, attention=attention, causal=causal, dropout=dropout, **lsh_options),
            NormFeedForward(d_model, d_ff, dropout=dropout),
        )
        for _ in range(n_layers)
    ]
    return ReversibleSequence(blocks, mode=mode)


@torch.no_grad()
def reconstruction_error(seq: ReversibleSequence, x1: Tensor, x2: Tensor | None = None) -> list[float]:
    """How far inverting the stack drifts from the true activations, block by block.

    Runs ``seq``'s blocks forward (recording random state and LSH buckets, as the
    reversible forward pass does), keeps every block's true inputs for comparison, then
    inverts from the top. Entry ``j`` is ``max |x_hat - x| / max |x|`` over both halves
    after inverting ``j + 1`` blocks (so the last entry is the error of the stack's
    reconstructed input). Exact in exact arithmetic; in floating point the rounding
    errors of every ``f`` and ``g`` add up.
    """
    if not isinstance(seq, ReversibleSequence):
        raise TypeError(f"seq must be a ReversibleSequence; got {type(seq).__name__}")
    x2 = x1 if x2 is None else x2
    _check_halves(x1, x2, "x1", "x2")
    inputs, records = [], []
    for block in seq.blocks:
        inputs.append((x1, x2))
        x1, x2, rec = _run_forward([block], x1, x2)
        records += rec
    errors = []
    for block, (rec_f, rec_g), (t1, t2) in zip(reversed(seq.blocks), reversed(records), reversed(inputs)):
        with rec_g.replay():
            x2 = x2 - block.g(x1)
        with rec_f.replay():
            x1 = x1 - block.f(x2)
        scale = max(t1.abs().max().item(), t2.abs().max().item())
        err = max((x1 - t1).abs().max().item(), (x2 - t2).abs().max().item())
        errors.append(err / scale)
    return errors


def reversible_stack_step(
    length: int,
    n_layers: int,
    *,
    mode: str = "reversible",
    attention: str = "lsh",
    d_model: int = 256,
    n_heads: int = 4,
    d_ff: int = 1024,
    n_hashes: int = 2,
    chunk_size: int = 64,
    batch: int = 1,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    backward: bool = True,
) -> None:
    """One training step's forward and backward through :func:`reversible_stack`: a workload.

    With ``backward=False`` only the forward pass runs, without autograd (the cost of
    running the blocks once more, as a reversible or checkpointed backward does).

    It builds its own model and input, so it can run in a fresh process to measure
    peak memory (:func:`longctx_lib.measure.peak_memory`). The peak includes the
    weights and their gradients (about ``n_layers * 2 * 4 * (4 d_model^2 + 2 d_model d_ff)``
    bytes in float32: weights plus gradients) besides the activations.
    """
    from .device import resolve_device

    for name, value in (("length", length), ("n_layers", n_layers), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f'attention must be one of {ATTENTIONS}; got {attention!r}')
    dev = resolve_device(device)
    torch.manual_seed(seed)
    options = {"lsh": {"n_hashes": n_hashes, "chunk_size": chunk_size}, "local": {"chunk_size": chunk_size}}
    options = options.get(attention, {})
    seq = reversible_stack(d_model, n_heads, d_ff, n_layers, attention=attention, mode=mode, **options)
    seq = seq.to(dev, dtype)
    x = torch.randn(batch, length, d_model, device=dev, dtype=dtype)
    with torch.set_grad_enabled(backward):
        y1, y2 = seq(x)
        if backward:
            (y1 + y2).square().mean().backward()
