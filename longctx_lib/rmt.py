"""The Recurrent Memory Transformer: memory tokens carried from segment to segment.

Chapter 6 defines and explains everything here. References: Bulatov, Kuratov and
Burtsev, "Recurrent Memory Transformer" (NeurIPS 2022); Bulatov, Kuratov, Kapushev and
Burtsev, "Scaling Transformer to 1M tokens and beyond with RMT" (arXiv 2304.11062, 2023).

A long input is cut into segments of ``segment_length`` tokens. An unchanged transformer
(the library's :class:`~longctx_lib.transformer.Transformer`) reads one segment at a time
together with ``n_memory`` memory vectors:

- **decoder** (NeurIPS 2022): ``[read memory ; tokens ; write memory]``. The tokens see the
  read memory and, causally, each other; the write memory sees everything; the read
  memory sees only itself (were it to see the tokens, a token could learn about later
  tokens through it one layer up). The outputs at the write positions are the next
  segment's memory.
- **encoder** (the 1M-token paper, a BERT): ``[memory ; tokens]``, all positions see all;
  the outputs at the memory positions are the next memory. A bidirectional model would
  see the answers it should predict, so they are replaced by ``blank_token``.

Gradients flow from segment to segment through the memory (backpropagation through
time). ``bptt_depth = k`` lets them flow back through at most ``k`` segments, counted
from the last segment, where the tasks of this chapter ask their question; ``None``
keeps every segment. The cost is linear in the input's length: see :func:`rmt_flops`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .costs import attention_flops
from .device import resolve_device, synchronize
from .transformer import Transformer

__all__ = [
    "VARIANTS",
    "segment_mask",
    "RecurrentMemoryTransformer",
    "evaluate_segments",
    "train_curriculum",
    "streaming_run",
    "training_step_run",
    "OPT_MODELS",
    "transformer_flops",
    "rmt_flops",
]

VARIANTS = ("decoder", "encoder")

Batcher = Callable[[int, int, torch.Generator], tuple[Tensor, Tensor]]
"""``make_batch(batch, n_segments, generator) -> (tokens, answer_mask)``, both ``(batch, length)``."""


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")


def segment_mask(n_memory: int, n_tokens: int, variant: str = "decoder",
                 device: torch.device | str | None = None) -> Tensor:
    """Bool ``(T, T)``, True where position ``i`` may NOT see position ``j``.

    decoder: ``T = 2 n_memory + n_tokens`` laid out ``[read ; tokens ; write]``: read rows
    see the read block only, token rows see the read block and earlier tokens, write rows
    see everything. encoder: ``T = n_memory + n_tokens``, nothing is blocked.
    """
    _check_int("n_memory", n_memory, 0)
    _check_int("n_tokens", n_tokens, 1)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    dev = resolve_device(device) if device is not None else None
    if variant == "encoder":
        size = n_memory + n_tokens
        return torch.zeros(size, size, dtype=torch.bool, device=dev)
    m, n = n_memory, n_tokens
    blocked = torch.ones(2 * m + n, 2 * m + n, dtype=torch.bool, device=dev)
    blocked[:m, :m] = False  # read <- read
    blocked[m:m + n, :m] = False  # tokens <- read
    blocked[m:m + n, m:m + n] = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1)  # tokens <- earlier tokens
    blocked[m + n:] = False  # write <- everything
    return blocked


class RecurrentMemoryTransformer(nn.Module):
    """A language model that reads its input segment by segment, with memory tokens between.

    Args:
        vocab_size, d_model, n_heads, d_ff, n_layers: the backbone's sizes.
        segment_length: tokens per segment (the last segment may be shorter).
        n_memory: memory tokens (0 gives a plain segment-by-segment transformer).
        variant: ``"decoder"`` (read and write memory, causal tokens) or ``"encoder"``.
        bptt_depth: segments the gradient flows back through from the last one (``None``: all).
        blank_token: the token that hides answers from the encoder (required by it).
        dropout, impl: passed to the backbone.

    Tokens get learned positions that restart in every segment, so the model runs on any
    number of segments. Input ``tokens`` ``(batch, length)``; logits ``(batch, length, vocab)``.
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, *,
                 segment_length: int, n_memory: int = 4, variant: str = "decoder",
                 bptt_depth: int | None = None, blank_token: int | None = None,
                 dropout: float = 0.0, impl: str = "naive") -> None:
        super().__init__()
        _check_int("vocab_size", vocab_size, 1)
        _check_int("segment_length", segment_length, 1)
        _check_int("n_memory", n_memory, 0)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
        if variant == "encoder" and (isinstance(blank_token, bool) or not isinstance(blank_token, int)
                                     or not 0 <= blank_token < vocab_size):
            raise ValueError(f"blank_token must be a token id in [0, {vocab_size}) for the encoder variant, "
                             f"which sees the whole segment and must not see the answers; got {blank_token!r}. "
                             "Pass blank_token=tasks.BLANK_TOKEN")
        self.vocab_size, self.d_model, self.segment_length = vocab_size, d_model, segment_length
        self.n_memory, self.variant, self.blank_token = n_memory, variant, blank_token
        self.bptt_depth = bptt_depth  # checked by the property setter
        self.embed = nn.Embedding(vocab_size, d_model)
        n_positions = segment_length + (2 if variant == "decoder" else 1) * n_memory
        self.pos = nn.Embedding(n_positions, d_model)
        self.memory = nn.Parameter(torch.randn(n_memory, d_model) * 0.02)  # the first segment's memory
        self.backbone = Transformer(d_model, n_heads, d_ff, n_layers, dropout=dropout, impl=impl)
        self.head = nn.Linear(d_model, vocab_size)

    @property
    def bptt_depth(self) -> int | None:
        return self._bptt_depth

    @bptt_depth.setter
    def bptt_depth(self, k: int | None) -> None:
        if k is not None:
            _check_int("bptt_depth", k, 0)
        self._bptt_depth = k

    def initial_memory(self, batch: int) -> Tensor:
        """The learned starting memory, ``(batch, n_memory, d_model)``."""
        _check_int("batch", batch, 1)
        return self.memory.unsqueeze(0).expand(batch, -1, -1)

    def segment(self, tokens: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """One segment: ``tokens`` ``(batch, n)`` with ``n <= segment_length``, ``memory``
        ``(batch, n_memory, d_model)`` -> logits ``(batch, n, vocab)`` and the next memory."""
        b, n = tokens.shape
        m = self.n_memory
        if not 1 <= n <= self.segment_length:
            raise ValueError(f"a segment holds 1 .. segment_length={self.segment_length} tokens; got {n}")
        if memory.shape != (b, m, self.d_model):
            raise ValueError(f"memory must have shape (batch, n_memory, d_model) = {(b, m, self.d_model)}; "
                             f"got {tuple(memory.shape)}")
        pos = self.pos.weight
        parts = [memory + pos[:m], self.embed(tokens) + pos[m:m + n]]  # (B, m, d), (B, n, d)
        if self.variant == "decoder":
            parts.append(memory + pos[m + self.segment_length:])  # write memory: (B, m, d)
        x = torch.cat(parts, dim=1)  # (B, T, d)
        mask = segment_mask(m, n, "decoder", x.device) if self.variant == "decoder" else None  # encoder: all see all
        h = self.backbone(x, mask=mask)
        out = self.head(h[:, m:m + n])  # (B, n, V)
        new_memory = h[:, m + n:] if self.variant == "decoder" else h[:, :m]
        return out, new_memory

    # -- helpers shared by forward, loss and evaluation --------------------------------
    def _check_tokens(self, tokens: object) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[1] < 1:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a tensor (batch, length) of token ids; got {got}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
            raise TypeError(f"tokens must be integer token ids; got dtype {tokens.dtype}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"tokens must lie in [0, vocab_size={self.vocab_size}); got values "
                             f"{int(tokens.min())} .. {int(tokens.max())}")
        return tokens

    def _bounds(self, length: int) -> list[tuple[int, int]]:
        s = self.segment_length
        return [(i, min(i + s, length)) for i in range(0, length, s)]

    def _attached(self, i: int, n_segments: int, initial: bool = False) -> bool:
        """Whether the memory entering segment ``i`` keeps its gradient path (BPTT depth).

        ``initial``: it is the learned :attr:`memory` entering segment 0, a parameter of that
        segment rather than an earlier segment's output; it is never cut (cutting it saves
        nothing), so it learns whenever segment 0 is within reach (``bptt_depth >= n_segments - 1``).
        """
        k = self.bptt_depth
        return k is None or (initial and i == 0) or i > n_segments - 1 - k

    def forward(self, tokens: Tensor, *, memory: Tensor | None = None,
                return_memory: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``(batch, length, vocab)`` for ``tokens`` ``(batch, length)``, segment by segment.

        ``memory`` continues from an earlier call (default: the learned initial memory);
        ``return_memory=True`` also returns the memory after the last segment.
        """
        tokens = self._check_tokens(tokens)
        initial = memory is None
        memory = self.initial_memory(tokens.shape[0]) if initial else memory
        bounds = self._bounds(tokens.shape[1])
        outs = []
        for i, (a, b) in enumerate(bounds):
            if not self._attached(i, len(bounds), initial):
                memory = memory.detach()
            out, memory = self.segment(tokens[:, a:b], memory)
            outs.append(out)
        logits = torch.cat(outs, dim=1)
        return (logits, memory) if return_memory else logits

    def _scored(self, tokens: Tensor, answer_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs, targets and the scored positions, all ``(batch, length)``."""
        tokens = self._check_tokens(tokens)
        if not isinstance(answer_mask, Tensor) or answer_mask.dtype != torch.bool or \
                answer_mask.shape != tokens.shape:
            raise ValueError(f"answer_mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}")
        if self.variant == "encoder":  # predict each hidden answer at its own position
            return tokens.masked_fill(answer_mask, self.blank_token), tokens, answer_mask
        if bool(answer_mask[:, 0].any()):
            raise ValueError("answer_mask cannot mark position 0: a causal model predicts it from nothing")
        targets = torch.zeros_like(tokens)
        scored = torch.zeros_like(answer_mask)
        targets[:, :-1], scored[:, :-1] = tokens[:, 1:], answer_mask[:, 1:]  # predict the next token
        return tokens, targets, scored

    def _scored_segments(self, tokens: Tensor, answer_mask: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Run the segments a loss needs; yield ``(logits, targets, scored)`` of each scored one.

        A segment runs with gradients only if a later loss can reach it (its own answers,
        or attached memory to a segment that needs them); the others run under no_grad,
        so that the activations kept for backward follow ``bptt_depth``.
        """
        inputs, targets, scored = self._scored(tokens, answer_mask)
        bounds = self._bounds(tokens.shape[1])
        n = len(bounds)
        has = [bool(scored[:, a:b].any()) for a, b in bounds]
        needs = [False] * n
        for i in reversed(range(n)):
            later = i + 1 < n and self._attached(i + 1, n) and needs[i + 1]
            needs[i] = torch.is_grad_enabled() and (has[i] or later)
        last = max((i for i in range(n) if has[i]), default=-1)
        memory = self.initial_memory(tokens.shape[0])
        for i, (a, b) in enumerate(bounds[:last + 1]):
            if not self._attached(i, n, initial=True):
                memory = memory.detach()
            with torch.set_grad_enabled(needs[i]):
                out, memory = self.segment(inputs[:, a:b], memory)
            if has[i]:
                yield out, targets[:, a:b], scored[:, a:b]

    def answer_loss(self, tokens: Tensor, answer_mask: Tensor) -> Tensor:
        """Mean cross-entropy of the answers marked by ``answer_mask`` (both ``(batch, length)``)."""
        total, count = None, 0
        for out, tgt, sc in self._scored_segments(tokens, answer_mask):
            term = F.cross_entropy(out[sc], tgt[sc], reduction="sum")
            total = term if total is None else total + term
            count += int(sc.sum())
        if total is None:
            raise ValueError("answer_mask marks no answer to score")
        return total / count

    @torch.no_grad()
    def answer_accuracy(self, tokens: Tensor, answer_mask: Tensor) -> float:
        """Fraction of sequences whose every answer is predicted exactly (greedy)."""
        right = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for out, tgt, sc in self._scored_segments(tokens, answer_mask):
            right &= ((out.argmax(-1) == tgt) | ~sc).all(dim=1)
        return right.float().mean().item()

    @torch.no_grad()
    def stream(self, segments: Iterable[Tensor]) -> Iterator[Tensor]:
        """Read segments one at a time (no gradients); yield each one's logits ``(batch, n, vocab)``.

        Only the memory ``(batch, n_memory, d_model)`` travels between segments, so memory
        use does not grow with the number of segments.
        """
        memory = None
        for seg in segments:
            seg = self._check_tokens(seg)
            memory = self.initial_memory(seg.shape[0]) if memory is None else memory
            out, memory = self.segment(seg, memory)
            yield out


def _check_model_and_batcher(model: object, make_batch: object) -> None:
    if not isinstance(model, RecurrentMemoryTransformer):
        raise TypeError(f"model must be a RecurrentMemoryTransformer; got {type(model).__name__}")
    if not callable(make_batch):
        raise TypeError("make_batch must be a function (batch, n_segments, generator) -> (tokens, answer_mask); "
                        f"got {make_batch!r}")


def evaluate_segments(model: RecurrentMemoryTransformer, make_batch: Batcher, segments: Iterable[int], *,
                      n_sequences: int = 256, batch: int = 64, seed: int = 1234,
                      progress: bool = False) -> dict[int, float]:
    """Answer accuracy at each number of segments: ``{n_segments: accuracy}``.

    ``make_batch(batch, n_segments, generator)`` makes the task; ``n_sequences`` fresh
    sequences per entry, drawn from ``seed`` (the same ones for every model).
    """
    from tqdm.auto import tqdm

    _check_model_and_batcher(model, make_batch)
    _check_int("n_sequences", n_sequences, 1)
    _check_int("batch", batch, 1)
    segments = list(segments)
    for n in segments:
        _check_int("segments (each)", n, 1)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result = {}
    for n in tqdm(segments, desc="segments", disable=not progress):
        gen = torch.Generator().manual_seed(seed + n)
        hits = 0.0
        for start in range(0, n_sequences, batch):
            size = min(batch, n_sequences - start)
            tokens, mask = make_batch(size, n, gen)
            hits += model.answer_accuracy(tokens.to(dev), mask.to(dev)) * size
        result[n] = hits / n_sequences
    model.train(was_training)
    return result


def train_curriculum(model: RecurrentMemoryTransformer, make_batch: Batcher, *, max_segments: int,
                     curriculum: bool = True, threshold: float = 0.9, steps: int = 2000, batch: int = 32,
                     lr: float = 1e-3, eval_every: int = 50, eval_sequences: int = 128, seed: int = 0,
                     stop_when_done: bool = True, progress: bool = True) -> dict:
    """Train on a task, adding a segment each time validation accuracy passes ``threshold``.

    With ``curriculum`` the model starts on one segment; every ``eval_every`` steps it is
    scored on ``eval_sequences`` fixed sequences of the current length, and a segment is
    added when the accuracy reaches ``threshold`` (the 1M-token paper's schedule: train
    on 1 segment, add one when converged). Without it, every step uses ``max_segments``.
    Training stops after ``steps`` steps, or (``stop_when_done``) once ``max_segments``
    passes the threshold.

    Returns ``{"history": [{"step", "segments", "loss", "accuracy"}, ...], "reached":
    {n_segments: step}, "steps", "seconds", "final_accuracy"}``: ``reached[n]`` is the
    step whose evaluation added the n-th segment (training on ``n`` starts at the next
    step); ``accuracy`` is the validation accuracy at that step's length (``None``
    between evaluations); ``final_accuracy`` the last evaluation's, at its length.
    """
    from tqdm.auto import tqdm

    _check_model_and_batcher(model, make_batch)
    _check_int("max_segments", max_segments, 1)
    for name, value in (("steps", steps), ("batch", batch), ("eval_every", eval_every),
                        ("eval_sequences", eval_sequences)):
        _check_int(name, value, 1)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold!r}")
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = 1 if curriculum else max_segments
    history, reached, accuracy = [], {n: 0}, 0.0
    begin = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc="curriculum" if curriculum else "training", disable=not progress)
    model.train()
    for step in bar:
        tokens, mask = make_batch(batch, n, gen)
        loss = model.answer_loss(tokens.to(dev), mask.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = {"step": step, "segments": n, "loss": loss.item(), "accuracy": None}
        history.append(row)
        if step % eval_every == 0 or step == steps:
            accuracy = evaluate_segments(model, make_batch, [n], n_sequences=eval_sequences, seed=seed + 10_000)[n]
            model.train()
            row["accuracy"] = accuracy
            bar.set_postfix(segments=n, loss=f"{row['loss']:.3f}", acc=f"{accuracy:.2f}")
            if accuracy >= threshold:
                if n == max_segments and stop_when_done:
                    break
                if curriculum and n < max_segments:
                    n += 1
                    reached[n] = step
    return {"history": history, "reached": reached, "steps": len(history),
            "seconds": time.perf_counter() - begin, "final_accuracy": accuracy}


def streaming_run(n_segments: int, *, segment_length: int = 512, n_memory: int = 16, vocab_size: int = 256,
                  d_model: int = 128, n_heads: int = 4, d_ff: int = 512, n_layers: int = 2,
                  device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Read ``n_segments`` random segments through a fresh RMT with :meth:`~RecurrentMemoryTransformer.stream`.

    Tokens are drawn a segment at a time, so only the weights, one segment's activations
    and the memory are alive: a workload for :func:`~longctx_lib.measure.peak_memory`
    (module-level, picklable). Returns ``{"tokens", "seconds", "memory_bytes", "checksum", "sizes"}``
    (``sizes``: the segment length, memory tokens, width and layers it ran with).
    """
    _check_int("n_segments", n_segments, 1)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = RecurrentMemoryTransformer(vocab_size, d_model, n_heads, d_ff, n_layers, segment_length=segment_length,
                                       n_memory=n_memory).to(dev).eval()
    gen = torch.Generator(device=dev).manual_seed(seed)
    segments = (torch.randint(0, vocab_size, (1, segment_length), generator=gen, device=dev)
                for _ in range(n_segments))
    begin = time.perf_counter()
    out = None
    for out in model.stream(segments):
        pass
    synchronize(dev)
    memory_bytes = n_memory * d_model * model.memory.element_size()
    return {"tokens": n_segments * segment_length, "seconds": time.perf_counter() - begin,
            "memory_bytes": memory_bytes, "checksum": float(out.float().mean()),
            "sizes": {"segment_length": segment_length, "n_memory": n_memory, "d_model": d_model,
                      "n_layers": n_layers}}


def training_step_run(n_segments: int, *, bptt_depth: int | None = None, segment_length: int = 128,
                      n_memory: int = 8, batch: int = 8, vocab_size: int = 32, d_model: int = 128, n_heads: int = 4,
                      d_ff: int = 512, n_layers: int = 2, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """One forward and backward of :meth:`~RecurrentMemoryTransformer.answer_loss` with the answer at the end.

    The activations kept for backward are those of the last ``bptt_depth + 1`` segments
    (all with ``None``): a workload for :func:`~longctx_lib.measure.peak_memory`
    (module-level, picklable). Returns ``{"loss", "seconds", "grad_reaches_memory", "sizes"}``:
    whether the initial memory got a gradient, and the segments, segment length and batch.
    """
    _check_int("n_segments", n_segments, 1)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = RecurrentMemoryTransformer(vocab_size, d_model, n_heads, d_ff, n_layers, segment_length=segment_length,
                                       n_memory=n_memory, bptt_depth=bptt_depth).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    length = n_segments * segment_length
    tokens = torch.randint(0, vocab_size, (batch, length), generator=gen, device=dev)
    answers = torch.zeros(batch, length, dtype=torch.bool, device=dev)
    answers[:, -1] = True
    begin = time.perf_counter()
    loss = model.answer_loss(tokens, answers)
    loss.backward()
    synchronize(dev)
    grad = model.memory.grad
    return {"loss": loss.item(), "seconds": time.perf_counter() - begin,
            "grad_reaches_memory": grad is not None and bool(grad.abs().sum() > 0),
            "sizes": {"n_segments": n_segments, "segment_length": segment_length, "batch": batch}}


# --- FLOPs: full attention against RMT -----------------------------------------------------

OPT_MODELS: dict[str, dict[str, int]] = {
    name: {"n_layers": n_layers, "n_heads": n_heads, "d_model": d_model, "d_ff": 4 * d_model, "vocab_size": 50272}
    for name, n_layers, n_heads, d_model in (
        ("OPT-125M", 12, 12, 768), ("OPT-350M", 24, 16, 1024), ("OPT-1.3B", 24, 32, 2048),
        ("OPT-2.7B", 32, 32, 2560), ("OPT-6.7B", 32, 32, 4096), ("OPT-13B", 40, 40, 5120),
        ("OPT-30B", 48, 56, 7168), ("OPT-66B", 64, 72, 9216), ("OPT-175B", 96, 96, 12288))
}
"""The OPT family's shapes (Zhang et al. 2022, Table 1; feed-forward 4 d_model; vocabulary 50,272),
the models of the 1M-token paper's FLOP estimate."""


def transformer_flops(length: int, *, n_layers: int, n_heads: int, d_model: int, d_ff: int, vocab_size: int,
                      n_logits: int | None = None) -> int:
    """Forward FLOPs of a transformer on one sequence of ``length`` positions (full attention).

    Counted from the matrix products, two operations (multiply, add) per multiply-add:
    per layer ``Q, K, V`` and output projections ``4 * 2 L d^2``, the feed-forward
    ``2 * 2 L d d_ff``, and attention's ``Q K^T`` and ``weights V``
    (:func:`~longctx_lib.costs.attention_flops`, ``4 L^2 d``); then the output layer
    ``2 d V`` for each of ``n_logits`` positions (default: all). Softmax, norms and
    embedding look-ups are O(L d) or O(L^2 h), small beside these, and not counted.
    """
    _check_int("length", length, 1)
    for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("d_model", d_model), ("d_ff", d_ff),
                        ("vocab_size", vocab_size)):
        _check_int(name, value, 1)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
    n_logits = length if n_logits is None else n_logits
    _check_int("n_logits", n_logits, 0)
    dense = 2 * length * (4 * d_model * d_model + 2 * d_model * d_ff)
    attn = attention_flops(1, n_heads, length, d_model // n_heads)
    return n_layers * (dense + attn) + 2 * n_logits * d_model * vocab_size


def rmt_flops(length: int, *, segment_length: int, n_memory: int, variant: str = "encoder",
              **model: int) -> int:
    """Forward FLOPs of an RMT reading ``length`` tokens in segments of ``segment_length``.

    Each segment is one :func:`transformer_flops` pass over its tokens plus the memory
    (``n_memory`` positions for the encoder, ``2 n_memory`` for the decoder), with logits
    for the tokens only. Linear in ``length``: the attention term stays at the segment's
    size. ``model``: the sizes of :func:`transformer_flops` (e.g. ``**OPT_MODELS["OPT-125M"]``).
    """
    _check_int("length", length, 1)
    _check_int("segment_length", segment_length, 1)
    _check_int("n_memory", n_memory, 0)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    extra = (2 if variant == "decoder" else 1) * n_memory
    full, rest = divmod(length, segment_length)
    total = full * transformer_flops(segment_length + extra, n_logits=segment_length, **model)
    if rest:
        total += transformer_flops(rest + extra, n_logits=rest, **model)
    return total
