"""The assembled Reformer language model: every piece of chapters 2-4 in one model.

Chapter 4 (chunking and the assembled Reformer) defines and explains everything here.
Reference: Kitaev, Kaiser, Levskaya, "Reformer" (ICLR 2020); the layout follows trax's
``ReformerLM`` (the authors' code): token embedding plus axial position embedding,
the input duplicated into two halves, reversible blocks with attention as ``f`` and the
feed-forward layer as ``g`` (layer norm inside each), the halves concatenated, layer
norm, the output projection to the vocabulary.

=====================  ============================================================
piece                  where
=====================  ============================================================
LSH attention          :class:`~longctx_lib.lsh.LSHSelfAttention` (chapter 2), or
                       local attention in some layers (``attention=("local", "lsh")``)
reversible blocks      :class:`~longctx_lib.reversible.ReversibleSequence` (chapter 3)
chunked feed-forward   :class:`~longctx_lib.chunking.ChunkedFeedForward` (this chapter)
chunked loss           :func:`~longctx_lib.chunking.chunked_cross_entropy`
axial positions        :class:`AxialPositionEmbedding`
=====================  ============================================================

``ReformerLM(config, mode="ordinary", ff_chunk_size=None)`` with ``loss(...,
chunked=False)`` is the same function with the same weights built as a plain
(non-reversible, unchunked) model, which the tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunking import ChunkedFeedForward, chunked_cross_entropy
from .reversible import ATTENTIONS, MODES, NormAttention, NormFeedForward, ReversibleBlock, ReversibleSequence

__all__ = [
    "ReformerConfig",
    "AxialPositionEmbedding",
    "ReformerLM",
    "axial_shape_for",
    "reformer_train_step",
    "ABLATION_STAGES",
    "ablation_config",
]


def axial_shape_for(max_length: int) -> tuple[int, int]:
    """Two factors ``(a, b)``, ``a * b >= max_length``, as close to ``sqrt(max_length)`` as powers of two allow."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer; got {max_length!r}")
    b = 2 ** math.ceil(math.log2(max_length) / 2)
    return -(-max_length // b), b


@dataclass
class ReformerConfig:
    """Sizes and switches of a :class:`ReformerLM`; defaults are the chapter's 2-layer model.

    ``attention`` is one kind for every layer or a sequence cycled over the layers
    (``("local", "lsh")``: local attention in even layers, LSH in odd ones).
    ``chunk_size`` is the attention chunk (LSH and local); ``ff_chunk_size`` and
    ``loss_chunk_size`` the positions per chunk of the feed-forward layers and of the
    loss (``None``: unchunked); ``one_head_at_a_time`` chunks LSH and local attention
    along the heads (:class:`~longctx_lib.reversible.NormAttention`; full-attention
    layers always run every head at once). ``mode`` is the stack's mode (chapter 3).
    """

    vocab_size: int = 256
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    n_layers: int = 2
    n_hashes: int = 4
    chunk_size: int = 64
    n_buckets: int | tuple[int, int] | None = None
    attention: str | tuple[str, ...] = "lsh"
    max_length: int = 2**20
    axial_shape: tuple[int, int] | None = None
    ff_chunk_size: int | None = 4096
    loss_chunk_size: int | None = 4096
    one_head_at_a_time: bool = True
    dropout: float = 0.0
    mode: str = "reversible"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "n_hashes", "chunk_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (the axial embedding splits it in two); got {self.d_model}")
        kinds = (self.attention,) if isinstance(self.attention, str) else tuple(self.attention)
        if not kinds or any(k not in ATTENTIONS for k in kinds):
            raise ValueError(f"attention must be one of {ATTENTIONS} or a sequence of them; got {self.attention!r}")
        for name in ("ff_chunk_size", "loss_chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
        if not isinstance(self.one_head_at_a_time, bool):
            raise TypeError(f"one_head_at_a_time must be True or False; got {self.one_head_at_a_time!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        if self.axial_shape is None:
            self.axial_shape = axial_shape_for(self.max_length)
        a, b = self.axial_shape
        if a * b < self.max_length:
            raise ValueError(f"axial_shape {self.axial_shape} must cover max_length={self.max_length} (a * b >= it)")

    def kinds(self) -> list[str]:
        """The attention kind of each layer."""
        kinds = (self.attention,) if isinstance(self.attention, str) else tuple(self.attention)
        return [kinds[i % len(kinds)] for i in range(self.n_layers)]


class AxialPositionEmbedding(nn.Module):
    """Position ``p`` gets ``[E1[p // b] ; E2[p % b]]``: ``a * d1 + b * d2`` parameters, not ``a * b * d``.

    With ``shape = (a, b)`` and ``d1 = d2 = d_model / 2``, a million positions cost
    ``2 * 1024 * d_model / 2`` numbers instead of ``2**20 * d_model`` (the Reformer's
    axial position embeddings). Output ``(1, length, d_model)``.
    """

    def __init__(self, d_model: int, shape: tuple[int, int]) -> None:
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 2:
            raise ValueError(f"d_model must be an integer >= 2; got {d_model!r}")
        if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
            raise ValueError(f"shape must be two positive integers (a, b) with a * b >= the longest length; got {shape!r}")
        a, b = shape
        self.rows = nn.Parameter(torch.randn(a, d_model // 2) * 0.02)
        self.cols = nn.Parameter(torch.randn(b, d_model - d_model // 2) * 0.02)
        self.shape = (a, b)

    def forward(self, length: int) -> Tensor:
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be a positive integer; got {length!r}")
        a, b = self.shape
        if length > a * b:
            raise ValueError(f"length {length} exceeds the axial embedding's {a} x {b} = {a * b} positions; "
                             "build the model with a larger max_length")
        pos = torch.arange(length, device=self.rows.device)
        return torch.cat([self.rows[pos // b], self.cols[pos % b]], dim=-1)[None]  # (1, L, d_model)


class ReformerLM(nn.Module):
    """A causal character/token language model built from the course's pieces.

    ``forward(tokens)`` ``(batch, length)`` int64 -> hidden states ``(batch, length, 2 d_model)``;
    :meth:`loss` is the next-token cross-entropy (chunked), :meth:`logits` the full
    logits (short inputs), :meth:`generate` samples a continuation.
    """

    def __init__(self, config: ReformerConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = ReformerConfig(**overrides)
        elif overrides:
            config = ReformerConfig(**{**asdict(config), **overrides})
        if not isinstance(config, ReformerConfig):
            raise TypeError(f"config must be a ReformerConfig; got {type(config).__name__}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.positions = AxialPositionEmbedding(c.d_model, c.axial_shape)
        blocks = []
        for kind in c.kinds():
            options = {} if kind in ("full", "naive") else {"chunk_size": c.chunk_size,
                                                  "one_head_at_a_time": c.one_head_at_a_time}
            if kind == "lsh":
                options.update(n_hashes=c.n_hashes, n_buckets=c.n_buckets)
            f = NormAttention(c.d_model, c.n_heads, attention=kind, causal=True, dropout=c.dropout, **options)
            g = ChunkedFeedForward(NormFeedForward(c.d_model, c.d_ff, dropout=c.dropout), chunk_size=c.ff_chunk_size)
            blocks.append(ReversibleBlock(f, g))
        self.stack = ReversibleSequence(blocks, mode=c.mode)
        self.stack.private_outputs = True  # y1, y2 only feed the final norm (see forward)
        self.norm = nn.LayerNorm(2 * c.d_model)
        self.out = nn.Linear(2 * c.d_model, c.vocab_size)

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64:
            raise TypeError(f"tokens must be an int64 tensor (batch, length); got "
                            f"{tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}")
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (batch, length >= 1); got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.max_length:
            raise ValueError(f"tokens has length {tokens.shape[1]} > max_length={self.config.max_length}; "
                             "build the model with a larger max_length")

    def forward(self, tokens: Tensor) -> Tensor:
        """``(batch, length)`` -> hidden states ``(batch, length, 2 * d_model)`` after the final norm."""
        self._check_tokens(tokens)
        x = self.embed(tokens) + self.positions(tokens.shape[1]).to(self.embed.weight.dtype)  # (B, L, d)
        y1, y2 = self.stack(x)  # the input duplicated into two halves
        return self.norm(torch.cat([y1, y2], dim=-1))  # (B, L, 2d)

    def logits(self, tokens: Tensor) -> Tensor:
        """``(batch, length, vocab)``: builds every logit (for short inputs and sampling)."""
        return self.out(self(tokens))

    def loss(self, tokens: Tensor, targets: Tensor | None = None, *, chunked: bool = True) -> Tensor:
        """Mean next-token cross-entropy in nats.

        With ``targets=None`` the model predicts ``tokens[:, 1:]`` from ``tokens[:, :-1]``.
        ``chunked`` uses :func:`~longctx_lib.chunking.chunked_cross_entropy` (no
        ``(length x vocab)`` logits; chunk ``config.loss_chunk_size``).
        """
        if targets is None:
            self._check_tokens(tokens)
            if tokens.shape[1] < 2:
                raise ValueError("tokens must have length >= 2 to predict the next token (or pass targets)")
            tokens, targets = tokens[:, :-1], tokens[:, 1:]
        elif not isinstance(targets, Tensor) or targets.shape != tokens.shape:
            raise ValueError(f"targets must be a tensor of the shape of tokens {tuple(tokens.shape)}")
        hidden = self(tokens)
        size = self.config.loss_chunk_size
        if chunked and size is not None:
            return chunked_cross_entropy(hidden, self.out.weight, targets, bias=self.out.bias, chunk_size=size)
        return F.cross_entropy(self.out(hidden).flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(self, prompt: Tensor, n_new: int, *, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Append ``n_new`` sampled tokens to ``prompt`` ``(batch, length)``; returns ``(batch, length + n_new)``.

        Each step runs the model on the whole sequence so far (no cache: LSH buckets
        change as the sequence grows), keeping the last ``max_length`` tokens.
        """
        self._check_tokens(prompt)
        if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 0:
            raise ValueError(f"n_new must be an integer >= 0; got {n_new!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
        was_training = self.training
        self.eval()
        seq = prompt
        for _ in range(n_new):
            window = seq[:, -self.config.max_length:]
            logits = self.out(self(window)[:, -1]).float() / temperature  # (B, vocab)
            if top_k is not None:
                kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(seq.device)
            seq = torch.cat([seq, nxt], dim=1)
        self.train(was_training)
        return seq

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())



def reformer_train_step(
    length: int,
    *,
    config: ReformerConfig | None = None,
    batch: int = 1,
    device: str = "cpu",
    seed: int = 0,
    lr: float = 1e-3,
) -> dict[str, float]:
    """One full training step (forward, backward, Adam update) on random tokens: a workload.

    Builds its own model and input, so it can run in a fresh process to measure peak
    memory (:func:`longctx_lib.measure.peak_memory`, ``return_value=True`` for the
    result). ``length`` tokens go in; the model predicts the last ``length - 1``.
    Returns ``{"loss": nats, "seconds": the step's wall time}`` (building the model
    not included).
    """
    import time

    from .device import resolve_device, synchronize

    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ValueError(f"length must be an integer >= 2; got {length!r}")
    dev = resolve_device(device)
    config = config or ReformerConfig(max_length=max(length, 2))
    torch.manual_seed(seed)
    model = ReformerLM(config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tokens = torch.randint(0, config.vocab_size, (batch, length), device=dev)
    synchronize(dev)
    start = time.perf_counter()
    loss = model.loss(tokens)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    value = loss.item()  # waits for the device
    return {"loss": value, "seconds": time.perf_counter() - start}


ABLATION_STAGES: tuple[str, ...] = ("plain", "+LSH", "+reversible", "+chunking")
"""The paper's Table 3 as cumulative steps: each stage adds one technique to the one before."""


def ablation_config(stage: str, *, plain_attention: str = "naive", **overrides) -> ReformerConfig:
    """The :class:`ReformerConfig` of one stage of the ablation (:data:`ABLATION_STAGES`).

    ``"plain"``: full attention (``plain_attention``: ``"naive"``, every score built, as
    in the paper's baseline; ``"full"`` for fused SDPA), an ordinary residual stack, no chunking; ``"+LSH"``: LSH
    attention instead; ``"+reversible"``: the reversible stack; ``"+chunking"``: the
    feed-forward layers and the loss chunked along the sequence, attention along the
    heads. ``overrides`` set the sizes shared by every
    stage (``d_model``, ``n_layers``, ``max_length``, ``ff_chunk_size`` ...); the stage's own
    switches win over them.
    """
    if stage not in ABLATION_STAGES:
        raise ValueError(f"stage must be one of {ABLATION_STAGES}; got {stage!r}")
    if plain_attention not in ("full", "naive"):
        raise ValueError(f'plain_attention must be "naive" or "full"; got {plain_attention!r}')
    base = ReformerConfig(**overrides)
    level = ABLATION_STAGES.index(stage)
    switches = {
        "attention": base.attention if level >= 1 and base.attention not in ("full", "naive")
        else ("lsh" if level >= 1 else plain_attention),
        "mode": "reversible" if level >= 2 else "ordinary",
        "ff_chunk_size": base.ff_chunk_size if level >= 3 else None,
        "loss_chunk_size": base.loss_chunk_size if level >= 3 else None,
        "one_head_at_a_time": base.one_head_at_a_time if level >= 3 else False,
    }
    return ReformerConfig(**{**asdict(base), **switches})

