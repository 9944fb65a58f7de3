"""Infini-attention: local softmax attention plus a compressive memory of past segments.

Chapter 5 (Infini-attention) defines and explains everything here.
Reference: Munkhdalai, Faruqui, Gopal, "Leave no context behind: efficient infinite
context transformers with Infini-attention" (2024, arXiv 2404.07143). No official code
was released; where the paper leaves a choice open, the choice made here is stated.

A long input is cut into segments. Within a segment each head runs ordinary causal
softmax attention. Across segments it reads a fixed-size **compressive memory**: per
head, a matrix ``M`` (``d_key x d_value``) and a normaliser ``z`` (``d_key``), with
``sigma = ELU + 1``::

    retrieve:  A_mem = sigma(Q) M / (sigma(Q) z)              (the memory *before* this segment)
    linear:    M <- M + sigma(K)^T V
    delta:     M <- M + sigma(K)^T (V - sigma(K) M / (sigma(K) z))
               z <- z + sum_t sigma(K_t)                      (both rules)
    gate:      A = sigmoid(beta) * A_mem + (1 - sigmoid(beta)) * A_dot

with one learned scalar ``beta`` per head. The memory path sees no positions; rotary
position embeddings act on the local path only (the paper applies positions after the
memory read and update).

Choices the paper leaves open, made here:

* **Initial memory:** ``M_0 = 0`` and ``z_0 = 0``; the retrieval divides by
  ``sigma(Q) z + eps`` with ``eps = 1e-6``, so the empty memory returns zeros (not 0/0)
  and the first segment's delta update equals the linear one. ``sigma(Q) z`` grows with
  every stored token (about ``d_key`` per token), so ``eps`` is negligible afterwards.
* **Gate initialisation:** ``beta = 0`` (a half-open gate); ``gate_init`` changes it.
* **Gradient through the memory:** flows across segments by default;
  ``InfiniTransformer(truncate=k)`` cuts it every ``k`` segments (truncated
  back-propagation through time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import resolve_device, synchronize
from .transformer import FeedForward, _check_x

__all__ = [
    "RULES",
    "EPS",
    "sigma",
    "rotary",
    "CompressiveMemory",
    "InfiniAttention",
    "InfiniBlock",
    "InfiniTransformer",
    "streaming_run",
]

RULES = ("linear", "delta")
"""Memory update rules."""
EPS = 1e-6
"""Added to the retrieval's denominator ``sigma(Q) z``: the empty memory retrieves zeros."""


def sigma(x: Tensor) -> Tensor:
    """The paper's feature map ``ELU(x) + 1``: positive, so the normaliser never changes sign."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor; got {getattr(x, 'dtype', type(x).__name__)}")
    return F.elu(x) + 1.0


def rotary(x: Tensor, *, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of ``x`` ``(batch, heads, length, dim)`` at positions ``0 .. length-1``.

    Pairs ``(x[..., i], x[..., i + dim/2])`` are rotated by the angle ``p * base^(-2i/dim)``
    at position ``p``, so a query-key product depends on the positions' difference only.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] % 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor (batch, heads, length, dim) with an even dim; got {got}")
    half = x.shape[-1] // 2
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    freq = base ** (-torch.arange(half, device=x.device, dtype=work) / half)  # (dim/2,)
    angle = torch.arange(x.shape[2], device=x.device, dtype=work)[:, None] * freq  # (length, dim/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def _check_rule(rule: object) -> str:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    return rule  # type: ignore[return-value]


def _check_heads(name: str, t: object, batch: int, heads: int, width: int, width_name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (batch, heads, length, {width_name}); got {type(t).__name__}")
    if t.dim() != 4 or t.shape[0] != batch or t.shape[1] != heads or t.shape[-1] != width:
        raise ValueError(f"{name} must have shape (batch={batch}, heads={heads}, length, {width_name}={width}) "
                         f"to match the memory; got {tuple(t.shape)}")


# --------------------------------------------------------------------------- the memory
@dataclass(frozen=True)
class CompressiveMemory:
    """One layer's memory: ``M`` ``(batch, heads, d_key, d_value)`` and ``z`` ``(batch, heads, d_key)``.

    Immutable: :meth:`update` returns a new memory, so autograd can follow the memory
    from segment to segment (and :meth:`detach` cuts it). Its size does not depend on how
    many tokens it has stored.
    """

    M: Tensor
    z: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.M, Tensor) or not isinstance(self.z, Tensor):
            raise TypeError("M and z must be torch.Tensors")
        if self.M.dim() != 4 or self.z.shape != self.M.shape[:3]:
            raise ValueError(f"M must be (batch, heads, d_key, d_value) and z (batch, heads, d_key); "
                             f"got {tuple(self.M.shape)} and {tuple(self.z.shape)}")

    @classmethod
    def empty(cls, batch: int, heads: int, d_key: int, d_value: int, *,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> CompressiveMemory:
        """The initial memory: ``M = 0``, ``z = 0`` (retrieves zeros; see the module docstring)."""
        for name, n in (("batch", batch), ("heads", heads), ("d_key", d_key), ("d_value", d_value)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive integer; got {n!r}")
        return cls(torch.zeros(batch, heads, d_key, d_value, dtype=dtype, device=device),
                   torch.zeros(batch, heads, d_key, dtype=dtype, device=device))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(batch, heads, d_key, d_value)``."""
        return tuple(self.M.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes of state: ``batch * heads * (d_key * d_value + d_key)`` numbers."""
        return self.M.numel() * self.M.element_size() + self.z.numel() * self.z.element_size()

    def retrieve(self, q: Tensor) -> Tensor:
        """``sigma(q) M / (sigma(q) z + eps)``: queries ``(B, H, L, d_key)`` -> ``(B, H, L, d_value)``."""
        b, h, dk, _ = self.shape
        _check_heads("q", q, b, h, dk, "d_key")
        sq = sigma(q)
        return (sq @ self.M) / ((sq @ self.z[..., None]) + EPS)

    def update(self, k: Tensor, v: Tensor, rule: str = "linear") -> CompressiveMemory:
        """The memory after storing keys ``(B, H, L, d_key)`` and values ``(B, H, L, d_value)``.

        ``"linear"`` adds ``sigma(K)^T V``; ``"delta"`` adds ``sigma(K)^T (V - retrieved)``,
        only what the memory does not already return for those keys. Both add
        ``sum_t sigma(K_t)`` to ``z``.
        """
        b, h, dk, dv = self.shape
        _check_heads("k", k, b, h, dk, "d_key")
        _check_heads("v", v, b, h, dv, "d_value")
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"k and v must have the same length; got {k.shape[2]} and {v.shape[2]}")
        sk = sigma(k)  # (B, H, L, d_key)
        if _check_rule(rule) == "delta":
            v = v - (sk @ self.M) / ((sk @ self.z[..., None]) + EPS)  # what is not yet stored
        return CompressiveMemory(self.M + sk.transpose(-1, -2) @ v, self.z + sk.sum(dim=2))

    def detach(self) -> CompressiveMemory:
        """The same state, cut from the autograd graph (no gradient to earlier segments)."""
        return CompressiveMemory(self.M.detach(), self.z.detach())


# --------------------------------------------------------------------------- the layer
class InfiniAttention(nn.Module):
    """Multi-head Infini-attention over one segment: ``(batch, length, d_model)`` both ways.

    ``forward(x, memory)`` returns the output and the memory after this segment.
    ``rule`` is ``"linear"`` or ``"delta"``; ``rotary`` applies rotary positions to the
    local path's queries and keys (never to the memory path); ``gate_init`` is the
    initial ``beta`` of every head (``sigmoid(0) = 0.5``: half memory, half local).
    """

    def __init__(self, d_model: int, n_heads: int, *, rule: str = "linear", rotary: bool = True,
                 gate_init: float = 0.0) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive integer; got {d_model!r}")
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads must be a positive integer dividing d_model={d_model}; got {n_heads!r}")
        if not isinstance(rotary, bool):
            raise TypeError(f"rotary must be True or False; got {rotary!r}")
        if rotary and (d_model // n_heads) % 2:
            raise ValueError(f"rotary positions need an even head width; d_model / n_heads = {d_model // n_heads}")
        if isinstance(gate_init, bool) or not isinstance(gate_init, (int, float)) or not math.isfinite(gate_init):
            raise ValueError(f"gate_init must be a finite number (the initial beta); got {gate_init!r}")
        self.rule = _check_rule(rule)
        self.d_model, self.n_heads, self.rotary = d_model, n_heads, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.gate = nn.Parameter(torch.full((n_heads,), float(gate_init)))  # beta, one per head

    def empty_memory(self, batch: int, *, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> CompressiveMemory:
        """This layer's initial memory for ``batch`` sequences."""
        width = self.d_model // self.n_heads
        weight = self.qkv.weight
        return CompressiveMemory.empty(batch, self.n_heads, width, width, dtype=dtype or weight.dtype,
                                       device=device if device is not None else weight.device)

    def forward(self, x: Tensor, memory: CompressiveMemory | None = None) -> tuple[Tensor, CompressiveMemory]:
        """One segment ``x`` ``(B, L, d_model)``; returns ``(output (B, L, d_model), memory after it)``."""
        _check_x(x, self.d_model)
        b, length, _ = x.shape
        if memory is None:
            memory = self.empty_memory(b, dtype=x.dtype, device=x.device)
        elif not isinstance(memory, CompressiveMemory):
            raise TypeError(f"memory must be a CompressiveMemory or None; got {type(memory).__name__}")
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, L, dh) each
        a_mem = memory.retrieve(q)  # the memory before this segment: no position information
        memory = memory.update(k, v, self.rule)
        if self.rotary:
            q, k = rotary(q), rotary(k)
        a_dot = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, dh)
        g = torch.sigmoid(self.gate).to(x.dtype)[:, None, None]  # (H, 1, 1)
        a = g * a_mem + (1 - g) * a_dot
        return self.out(a.transpose(1, 2).reshape(b, length, self.d_model)), memory


# --------------------------------------------------------------------------- the model
class InfiniBlock(nn.Module):
    """Pre-LN block: ``x + InfiniAttention(LN(x))``, then ``x + FF(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, rule: str = "linear", rotary: bool = True,
                 gate_init: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = InfiniAttention(d_model, n_heads, rule=rule, rotary=rotary, gate_init=gate_init)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, x: Tensor, memory: CompressiveMemory | None = None) -> tuple[Tensor, CompressiveMemory]:
        a, memory = self.attn(self.norm1(x), memory)
        x = x + a
        return x + self.ff(self.norm2(x)), memory


class InfiniTransformer(nn.Module):
    """A small decoder that reads its input a segment at a time through Infini-attention.

    Token embedding (no absolute positions: rotary positions act inside each segment),
    ``n_layers`` :class:`InfiniBlock` s, a final LayerNorm and an output layer tied to
    the embedding. Every layer keeps one :class:`CompressiveMemory`, whose size does not
    grow with the input: :meth:`stream` reads inputs of any length in constant memory.

    Args:
        segment_length: tokens per segment (the last segment may be shorter).
        truncate: ``None`` lets gradients flow through the memory across all segments;
            ``k`` detaches the memory before every ``k``-th segment, so a loss reaches back
            at most to the start of its window of ``k`` segments (``1``: never across a
            segment boundary).
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_heads: int = 4, d_ff: int = 256,
                 n_layers: int = 2, *, segment_length: int = 64, rule: str = "linear", rotary: bool = True,
                 gate_init: float = 0.0, truncate: int | None = None) -> None:
        super().__init__()
        for name, n in (("vocab_size", vocab_size), ("d_ff", d_ff), ("n_layers", n_layers),
                        ("segment_length", segment_length)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive integer; got {n!r}")
        self.truncate = _check_truncate(truncate)
        self.segment_length = segment_length
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(InfiniBlock(d_model, n_heads, d_ff, rule=rule, rotary=rotary,
                                                gate_init=gate_init) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)

    def gates(self) -> Tensor:
        """``sigmoid(beta)`` of every layer and head ``(n_layers, n_heads)``: the share of the memory path."""
        return torch.stack([torch.sigmoid(b.attn.gate.detach()) for b in self.blocks])

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' ``beta`` parameters (for an optimizer group with its own learning rate)."""
        return [b.attn.gate for b in self.blocks]

    def segment(self, tokens: Tensor, memories: list[CompressiveMemory] | None = None
                ) -> tuple[Tensor, list[CompressiveMemory]]:
        """One segment ``(B, S)`` of tokens: logits ``(B, S, vocab)`` and every layer's memory after it."""
        x = self.embed(tokens)  # (B, S, d_model)
        memories = memories if memories is not None else [None] * len(self.blocks)
        new = []
        for block, memory in zip(self.blocks, memories):
            x, memory = block(x, memory)
            new.append(memory)
        return self.norm(x) @ self.embed.weight.T, new

    def forward(self, tokens: Tensor, memories: list[CompressiveMemory] | None = None
                ) -> tuple[Tensor, list[CompressiveMemory]]:
        """Logits ``(B, L, vocab)`` for tokens ``(B, L)``, read segment by segment, and the final memories.

        ``memories`` (one per layer) continue from an earlier call.
        """
        _check_tokens(tokens, self.embed.num_embeddings)
        k = _check_truncate(self.truncate)
        _check_memories(memories, len(self.blocks))
        outputs = []
        for s, part in enumerate(tokens.split(self.segment_length, dim=1)):
            if memories is not None and k is not None and s % k == 0:
                memories = [m.detach() for m in memories]
            logits, memories = self.segment(part, memories)
            outputs.append(logits)
        return torch.cat(outputs, dim=1), memories

    @torch.no_grad()
    def stream(self, segments: Iterable[Tensor]) -> Iterator[Tensor]:
        """Logits ``(B, S, vocab)`` for each segment of tokens ``(B, S)`` in turn, without autograd.

        Only the memories pass from one segment to the next, so memory use is that of one
        segment however long the stream: the way Infini-attention reads a million tokens.
        """
        memories = None
        for part in segments:
            _check_tokens(part, self.embed.num_embeddings)
            logits, memories = self.segment(part, memories)
            yield logits


def streaming_run(length: int, *, vocab_size: int = 256, d_model: int = 128, n_heads: int = 4, d_ff: int = 512,
                  n_layers: int = 2, segment_length: int = 512, rule: str = "linear",
                  device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Read ``length`` random tokens through a fresh :class:`InfiniTransformer` with :meth:`~InfiniTransformer.stream`.

    The tokens are drawn one segment at a time, so not even the input exists whole: what
    stays alive is the weights, one segment's activations and the memories. A workload
    for :func:`~longctx_lib.measure.peak_memory` (module-level, so it can run in a fresh
    process). Returns ``{"tokens", "seconds", "memory_bytes", "checksum"}`` (``checksum``:
    the mean of the last segment's logits, to show the run computed something).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer (tokens to read); got {length!r}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = InfiniTransformer(vocab_size, d_model, n_heads, d_ff, n_layers, segment_length=segment_length,
                              rule=rule).to(dev).eval()
    gen = torch.Generator(device=dev).manual_seed(seed)

    def segments() -> Iterator[Tensor]:
        for start in range(0, length, segment_length):
            n = min(segment_length, length - start)
            yield torch.randint(0, vocab_size, (1, n), generator=gen, device=dev)

    begin = time.perf_counter()
    logits = None
    for logits in model.stream(segments()):
        pass
    synchronize(dev)
    memory = sum(block.attn.empty_memory(1).nbytes for block in model.blocks)  # what stream() carries
    return {"tokens": length, "seconds": time.perf_counter() - begin, "memory_bytes": memory,
            "checksum": float(logits.float().mean())}


def _check_truncate(truncate: object) -> int | None:
    if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 1):
        raise ValueError(f"truncate must be None (gradients across every segment) or a positive number of "
                         f"segments; got {truncate!r}")
    return truncate  # type: ignore[return-value]


def _check_tokens(tokens: object, vocab_size: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a tensor (batch, length) of token ids; got {got}")
    if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"tokens must be integer token ids; got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"tokens must lie in [0, vocab_size={vocab_size}); got values "
                         f"{int(tokens.min())} .. {int(tokens.max())}")


def _check_memories(memories: object, n_layers: int) -> None:
    if memories is None:
        return
    if not isinstance(memories, (list, tuple)) or len(memories) != n_layers or not all(
            isinstance(m, CompressiveMemory) for m in memories):
        raise ValueError(f"memories must be None or a list of {n_layers} CompressiveMemory (one per layer, "
                         "as returned by an earlier call)")
