"""Chunking: position-wise layers and the loss, a slice of the sequence at a time.

Chapter 4 (chunking and the assembled Reformer) defines and explains everything here.
Reference: Kitaev, Kaiser, Levskaya, "Reformer" (ICLR 2020), section 3, "Chunking".

A position-wise function (the feed-forward layer, the output projection) treats every
position on its own, so it can run on ``chunk_size`` positions at a time. Chunking the
forward pass alone is not enough: autograd would keep every chunk's intermediates for
backward, and the full ``(batch, length, d_ff)`` activation would exist again, in
pieces. :func:`apply_chunked` therefore keeps only its input, and its backward pass
recomputes one chunk at a time (the random state of each chunk is recorded so that
dropout masks match). :func:`chunked_cross_entropy` does the same for the loss, by hand:
the ``(length x vocab)`` logits never exist, only one chunk's at a time, plus one
log-sum-exp per position kept for backward.

Both work inside :class:`~longctx_lib.reversible.ReversibleSequence`'s backward pass,
which recomputes ``g`` knowing the gradient of its output: :class:`ChunkedFeedForward`
then runs each chunk forward and backward once (``forward_backward``), and peak memory
stays that of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .reversible import _Record

__all__ = ["apply_chunked", "apply_summed", "ChunkedFeedForward", "chunked_cross_entropy"]


def _check_chunk_size(chunk_size: object) -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (positions per chunk); got {chunk_size!r}")
    return chunk_size


def _check_sequence(x: object) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (batch, length, d); got {got}")


def _spans(length: int, chunk_size: int) -> list[slice]:
    return [slice(s, min(s + chunk_size, length)) for s in range(0, length, chunk_size)]


class _ChunkedApply(torch.autograd.Function):
    """``fn`` over chunks of axis 1; backward recomputes one chunk at a time."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], chunk_size: int, *params: Tensor) -> Tensor:
        spans = _spans(x.shape[1], chunk_size)
        records, outs = [], []
        for span in spans:
            records.append(_Record.capture(x))
            outs.append(fn(x[:, span]))  # autograd is off inside forward: nothing is kept
        ctx.fn, ctx.spans, ctx.records = fn, spans, records
        ctx.save_for_backward(x, *params)
        return torch.cat(outs, dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grads: list[Tensor | None] = [None] * len(params)
        for span, record in zip(ctx.spans, ctx.records):
            with torch.enable_grad(), record.replay():
                xc = x[:, span].detach().requires_grad_(dx is not None)
                out = ctx.fn(xc)  # this chunk's intermediates, freed after the next line
                wanted = ([xc] if dx is not None else []) + list(params)
                found = torch.autograd.grad(out, wanted, grad_out[:, span], allow_unused=True)
            if dx is not None:
                dx[:, span] = found[0]
                found = found[1:]
            _accumulate(grads, found, grad_out)
        return (dx, None, None, *grads)


def _accumulate(grads: list[Tensor | None], found: Sequence[Tensor | None], grad_out: Tensor) -> None:
    """Add each gradient in ``found`` into its slot of ``grads``, in place.

    A slot's first gradient becomes its accumulator, unless it is (a view of)
    ``grad_out``, which autograd hands back for a part that returns its input unchanged.
    """
    for i, g in enumerate(found):
        if g is None:
            continue
        if grads[i] is not None:
            grads[i].add_(g)
        else:
            grads[i] = g.clone() if g.untyped_storage().data_ptr() == grad_out.untyped_storage().data_ptr() else g


def apply_chunked(fn: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int,
                  params: Sequence[Tensor] | None = None) -> Tensor:
    """``fn(x)`` for a position-wise ``fn``, computed ``chunk_size`` positions at a time.

    Args:
        fn: maps ``(batch, n, d_in)`` to ``(batch, n, d_out)`` for any ``n``, treating
            each position on its own (a feed-forward layer, a projection).
        x: ``(batch, length, d_in)``.
        chunk_size: positions per chunk.
        params: the tensors ``fn`` uses that need gradients; by default the parameters
            of ``fn`` when it is an ``nn.Module`` (pass them for a plain function).

    Returns:
        ``(batch, length, d_out)``, equal to ``fn(x)``. Only ``x`` is kept for
        backward; the backward pass recomputes ``fn`` chunk by chunk, replaying each
        chunk's random state (dropout).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (a position-wise function); got {type(fn).__name__}")
    _check_sequence(x)
    _check_chunk_size(chunk_size)
    if params is None:
        params = list(fn.parameters()) if isinstance(fn, nn.Module) else []
    params = [p for p in params if isinstance(p, Tensor) and p.requires_grad]
    if x.shape[1] <= chunk_size:
        return fn(x)  # one chunk: nothing to save by chunking
    return _ChunkedApply.apply(x, fn, chunk_size, *params)


class _SummedApply(torch.autograd.Function):
    """``sum_i fn(x, i)``; backward recomputes one part at a time."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor, int], Tensor], n_parts: int, *params: Tensor) -> Tensor:
        records, total = [], None
        for i in range(n_parts):
            records.append(_Record.capture(x))
            part = fn(x, i)  # autograd is off inside forward: nothing is kept
            total = part.clone() if total is None else total.add_(part)
        ctx.fn, ctx.records = fn, records
        ctx.save_for_backward(x, *params)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        want_x = ctx.needs_input_grad[0]
        grads: list[Tensor | None] = [None] * (len(params) + 1)
        for i, record in enumerate(ctx.records):
            with torch.enable_grad(), record.replay():
                xi = x.detach().requires_grad_(want_x)
                out = ctx.fn(xi, i)  # this part's intermediates, freed after the next line
                wanted = ([xi] if want_x else []) + list(params)
                found = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
            _accumulate(grads, found if want_x else (None, *found), grad_out)
        return (grads[0], None, None, *grads[1:])


def apply_summed(fn: Callable[[Tensor, int], Tensor], x: Tensor, n_parts: int, *,
                 params: Sequence[Tensor] | None = None) -> Tensor:
    """``fn(x, 0) + ... + fn(x, n_parts - 1)``, with one part's intermediates alive at a time.

    Chunking along another axis than the sequence: multi-head attention is the sum over
    heads of each head's output times its slice of the output projection, so the heads
    can run one after another. Autograd would keep every head's intermediates (queries,
    keys, values, outputs) for backward; here only ``x`` is kept and the backward pass
    recomputes one part at a time, replaying each part's random state.

    Args:
        fn: ``fn(x, i)`` -> a tensor of one shape for every ``i``.
        x: the input, any shape.
        n_parts: how many parts to sum.
        params: the tensors ``fn`` uses that need gradients (those of ``fn`` when it is
            an ``nn.Module``, else none).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(x, i); got {type(fn).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor; got {type(x).__name__}")
    if not isinstance(n_parts, int) or isinstance(n_parts, bool) or n_parts < 1:
        raise ValueError(f"n_parts must be a positive integer (how many parts to sum); got {n_parts!r}")
    if params is None:
        params = list(fn.parameters()) if isinstance(fn, nn.Module) else []
    params = [p for p in params if isinstance(p, Tensor) and p.requires_grad]
    if n_parts == 1:
        return fn(x, 0)
    return _SummedApply.apply(x, fn, n_parts, *params)


class ChunkedFeedForward(nn.Module):
    """A feed-forward module whose ``(batch, length, d_ff)`` hidden layer exists one chunk at a time.

    Wraps ``ff`` (any position-wise module, e.g. :class:`~longctx_lib.transformer.FeedForward`);
    ``chunk_size=None`` runs it unchunked. Input and output ``(batch, length, d_model)``.
    """

    def __init__(self, ff: nn.Module, *, chunk_size: int | None) -> None:
        super().__init__()
        if not isinstance(ff, nn.Module):
            raise TypeError(f"ff must be a torch.nn.Module; got {type(ff).__name__}")
        if chunk_size is not None:
            _check_chunk_size(chunk_size)
        self.ff, self.chunk_size = ff, chunk_size

    def forward(self, x: Tensor) -> Tensor:
        if self.chunk_size is None:
            return self.ff(x)
        return apply_chunked(self.ff, x, chunk_size=self.chunk_size)

    def forward_backward(self, x: Tensor, grad_out: Tensor
                         ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor | None]]]:
        """The output for ``x`` and the gradients for ``grad_out``, a chunk at a time; both ``(B, L, d_model)``.

        Used by the reversible backward pass, which knows ``grad_out`` before it
        recomputes this layer: each chunk runs forward and backward once (the forward
        pass of every chunk for the value, then the chunked backward pass, would run each
        chunk twice). Chunks run in order, so dropout draws the forward pass's masks.
        Returns ``(output, d x, [(parameter, gradient), ...])``.
        """
        _check_sequence(x)
        if not isinstance(grad_out, Tensor) or grad_out.dim() != 3 or grad_out.shape[:2] != x.shape[:2]:
            got = tuple(grad_out.shape) if isinstance(grad_out, Tensor) else type(grad_out).__name__
            raise ValueError(f"grad_out must be the gradient of the output, of shape ({x.shape[0]}, "
                             f"{x.shape[1]}, d_out) for x of shape {tuple(x.shape)}; got {got}")
        params = [p for p in self.ff.parameters() if p.requires_grad]
        length = x.shape[1]
        spans = _spans(length, self.chunk_size) if self.chunk_size is not None else [slice(0, length)]
        value, dx, grads = None, None, [None] * len(params)
        for span in spans:
            with torch.enable_grad():
                xc = x[:, span].detach().requires_grad_(True)
                out = self.ff(xc)
                found = torch.autograd.grad(out, [xc, *params], grad_out[:, span], allow_unused=True)
            if len(spans) == 1:
                value, dx = out.detach(), found[0]
            else:
                if value is None:
                    value, dx = out.new_empty(x.shape[:2] + out.shape[2:]), torch.zeros_like(x)
                value[:, span] = out.detach()
                if found[0] is not None:
                    dx[:, span] = found[0]
            _accumulate(grads, found[1:], grad_out)
        if dx is None:
            dx = torch.zeros_like(x)
        return value, dx, list(zip(params, grads))


# --------------------------------------------------------------------------- the loss
class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_size: int,
                mean: bool) -> Tensor:
        """hidden ``(N, d)``, targets ``(N,)`` with -1 where a position does not count."""
        work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        valid = targets >= 0  # (N,)
        lse = hidden.new_empty(targets.shape, dtype=work)  # (N,) one log-sum-exp per position
        total = hidden.new_zeros((), dtype=work)
        for span in _spans(targets.shape[0], chunk_size):
            logits = _logits(hidden[span], weight, bias, work)  # (chunk, vocab): the only big tensor
            lse[span] = logits.logsumexp(dim=-1)
            picked = logits.gather(1, targets[span].clamp(min=0)[:, None])[:, 0]
            total += ((lse[span] - picked) * valid[span]).sum()
        count = valid.sum()
        ctx.chunk_size, ctx.mean, ctx.has_bias = chunk_size, mean, bias is not None
        ctx.save_for_backward(hidden, weight, bias if bias is not None else hidden.new_empty(0), targets, lse,
                              count)
        return (total / count.clamp(min=1) if mean else total).to(hidden.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse, count = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        work = lse.dtype
        scale = grad_loss.to(work) / count.clamp(min=1) if ctx.mean else grad_loss.to(work)
        dh = torch.empty_like(hidden)
        dw = torch.zeros_like(weight, dtype=work)
        db = torch.zeros(weight.shape[0], dtype=work, device=weight.device) if bias is not None else None
        for span in _spans(targets.shape[0], ctx.chunk_size):
            logits = _logits(hidden[span], weight, bias, work)
            p = (logits - lse[span, None]).exp_()  # softmax, (chunk, vocab)
            t = targets[span]
            keep = t >= 0
            p.scatter_add_(1, t.clamp(min=0)[:, None], -torch.ones_like(p[:, :1]))
            p.mul_((keep.to(work) * scale)[:, None])  # d loss / d logits
            dh[span] = (p @ weight.to(work)).to(hidden.dtype)
            dw += p.T @ hidden[span].to(work)
            if db is not None:
                db += p.sum(0)
        return dh, dw.to(weight.dtype), (db.to(bias.dtype) if db is not None else None), None, None, None


def _logits(h: Tensor, weight: Tensor, bias: Tensor | None, work: torch.dtype) -> Tensor:
    logits = h.to(work) @ weight.to(work).T
    return logits + bias.to(work) if bias is not None else logits


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, chunk by chunk.

    Equal to ``F.cross_entropy(hidden @ weight.T + bias, targets)`` without ever
    building the ``(positions x vocab)`` logits: the forward and the backward pass
    compute them for ``chunk_size`` positions at a time, keeping one log-sum-exp per
    position in between. Logits are computed in float32 for half-precision inputs.

    Args:
        hidden: ``(..., d)``, e.g. ``(batch, length, d)``.
        weight: the output projection ``(vocab, d)``; bias: ``(vocab,)`` or ``None``.
        targets: int64 class ids of shape ``hidden.shape[:-1]``; ``ignore_index``
            marks positions that do not count.
        reduction: ``"mean"`` over counted positions, or ``"sum"``.

    Returns:
        A scalar in ``hidden``'s dtype.
    """
    _check_ce(hidden, weight, targets, bias, reduction)
    _check_chunk_size(chunk_size)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int; got {ignore_index!r}")
    d = hidden.shape[-1]
    flat_t = targets.reshape(-1)
    bad = (flat_t != ignore_index) & ((flat_t < 0) | (flat_t >= weight.shape[0]))
    if bool(bad.any()):
        raise ValueError(f"targets must lie in [0, vocab={weight.shape[0]}) or equal ignore_index={ignore_index}")
    flat_t = flat_t.masked_fill(flat_t == ignore_index, -1)  # -1: not counted (see backward)
    return _ChunkedCrossEntropy.apply(hidden.reshape(-1, d), weight, bias, flat_t, chunk_size, reduction == "mean")


def _check_ce(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, reduction: str) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if not hidden.is_floating_point() or hidden.dim() < 2:
        raise ValueError(f"hidden must be a floating-point tensor (..., d); got {hidden.dtype} {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape (vocab, d={hidden.shape[-1]}); got {tuple(weight.shape)}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 class ids; got {targets.dtype}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}; "
                         f"got {tuple(targets.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"bias must be None or a tensor of shape (vocab,) = ({weight.shape[0]},)")
    if reduction not in ("mean", "sum"):
        raise ValueError(f'reduction must be "mean" or "sum"; got {reduction!r}')
