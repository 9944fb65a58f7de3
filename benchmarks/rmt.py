"""Benchmark: RMT streams in constant memory; its BPTT cost, its FLOPs; against recurrent-memory-transformer-pytorch.

Run from the repository root (``make bench-rmt`` runs every part at full sizes)::

    python benchmarks/rmt.py                     # every part at small sizes (measured on 2 busy CPU cores: 1 minute with --threads 1, 3 without)
    python benchmarks/rmt.py --full              # every part at full sizes (streams 16K .. 1M; 6 minutes with --threads 1)
    python benchmarks/rmt.py --stream --full     # one part (--stream, --bptt, --flops, --package), full sizes
    python benchmarks/rmt.py --flops             # the FLOP table alone (arithmetic, instant)
    python benchmarks/rmt.py --full --threads 1  # on a CPU shared with other work: steadier, often faster

With no part named every part runs. ``--full`` switches the defaults of the sizes below
from small to full; an option given explicitly (``--lengths 16384 65536``) wins over both.

The model is chapter 6's :class:`~longctx_lib.rmt.RecurrentMemoryTransformer`, decoder
variant (``[read memory ; tokens ; write memory]``) with the sizes of
:func:`~longctx_lib.rmt.streaming_run`: byte vocabulary (256), d_model 128, 4 heads of
32, d_ff 512, 2 layers, segments of 512 tokens, 16 memory tokens; reference attention
(the score matrix is stored), float32, one sequence. Every size is an option.

``--stream`` reads 16,384, 65,536, 262,144 and 1,048,576 random tokens (small: 1,024,
4,096 and 16,384) through :func:`~longctx_lib.rmt.streaming_run`, which makes the
segments one at a time as they are read, so only the weights, one segment's activations
and the ``n_memory x d_model`` memory are ever alive. Peak memory is measured with
:func:`longctx_lib.measure.peak_memory`: on the CPU in a fresh process per length (the
rise of the resident set, large allocations served by ``mmap`` so that freed tensors
leave it at once), on a GPU the CUDA allocator's peak; in both above the state after a
warm-up that streams two segments. The workload builds its model, so the peaks include
the weights (2 MiB here), at every length alike. The goal: ``peak(longest) /
peak(shortest) <= 1.1``. The contrast is the same model reading the whole input as one
segment without memory (full causal attention, the score matrix stored), from one
segment's length upwards, doubling while its peak stays within ``--full-budget-gib``
(small: 0.5 GiB, full: 2 GiB); ``--no-full-attention`` leaves it out. Times are taken in
the same call, so on the CPU they include the page faults of that measuring mode.

``--bptt`` measures one training step (:func:`~longctx_lib.rmt.training_step_run`:
forward and backward of the answer loss, the answer in the last segment; segments of
128 tokens, 8 memory tokens, vocabulary 32, batch ``--bptt-batch``: small 4, full 8) on
``--bptt-segments`` segments (small: 6, full: 16) for BPTT depths 0, 1, 2, 4, ... and all. Segments that no gradient
can reach run without autograd, so the activations kept for backward are those of the
last ``k + 1`` segments: the peak grows linearly in ``k + 1``. It prints each peak over
depth 0's and the least-squares line ``peak = a + b (k + 1)``; ``a`` holds the weights
and their gradients (the workload builds its model), so the ratio to depth 0 is a little
below ``k + 1``. On the CPU each depth runs in a fresh process, twice (warm-up).

``--flops`` prints the forward FLOPs of full attention against RMT (encoder, segments of
512 tokens, 10 memory tokens) for the OPT family at 32,768, 262,144 and 2,048,000
tokens (:func:`~longctx_lib.rmt.transformer_flops`, :func:`~longctx_lib.rmt.rmt_flops`).
The 1M-token paper reports 295x fewer FLOPs for OPT-125M and 29x for OPT-175B at about
2M tokens; our count of the matrix products gives 280x and 28x.

``--package`` compares with ``recurrent-memory-transformer-pytorch`` (Phil Wang's
implementation, optional: ``pip install "recurrent-memory-transformer-pytorch>=0.7,<0.8"``)
built with the same sizes: ``dim 128, depth 2, heads 4, dim_head 32, ff_mult 4``
(GEGLU inner width ``int(4 * 128 * 2 / 3) = 341``: the same multiply-adds per token as
our d_ff 512 to 0.1 %), ``num_memory_tokens 16, seq_len 512``, causal with read memory,
tokens and write memory laid out and masked as ours, explicit-softmax attention
(``use_flash_attn=False``), and its extras that can be switched off switched off:
Transformer-XL memories (``use_xl_memories=False``), hyper-connections
(``num_residual_streams=1``), the embedding's gradient scaling (``emb_gradient_frac=1``).
In one process, alternating the two models and swapping their order each repeat, it
times (a) forward-only streaming of ``--compare-length`` tokens segment by segment
under ``no_grad`` and (b) forward+backward of the language-model loss over
``--train-segments`` segments with gradients through every memory (ours: ``forward``
with ``bptt_depth=None``; theirs: ``RecurrentMemoryTransformerWrapper`` with
``return_loss=True``), and prints the medians and the ratio ours / theirs. What the
comparison cannot remove is printed with it (:func:`differences`). Timings on a CPU
shared with other processes swing from run to run: compare the ratios of one run, and
note the load average that the output prints (``--threads 1`` steadies them on a busy
machine).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from longctx_lib.device import describe_device, resolve_device, synchronize
from longctx_lib.measure import fit_loglog_slope, longest_within, peak_memory
from longctx_lib.rmt import (
    OPT_MODELS,
    RecurrentMemoryTransformer,
    rmt_flops,
    streaming_run,
    training_step_run,
    transformer_flops,
)
try:  # imported as benchmarks.<name> (the tests), or run as a script from benchmarks/
    from benchmarks._compare import alternate, load, n_params, print_comparison, training_comparison
except ImportError:
    from _compare import alternate, load, n_params, print_comparison, training_comparison

KiB, MiB, GiB = 2**10, 2**20, 2**30
GOAL = 1.1  # peak(longest) / peak(shortest) of streaming
PACKAGE = "recurrent-memory-transformer-pytorch"
PACKAGE_SPEC = "recurrent-memory-transformer-pytorch>=0.7,<0.8"
PAPER_RATIOS = {"OPT-125M": 295, "OPT-175B": 29}  # Bulatov et al. 2023, at about 2M tokens
FLOP_LENGTHS = (32_768, 262_144, 2_048_000)

# the sizes that --full switches; an explicit option wins over both
SIZES = {
    "small": {"lengths": [1_024, 4_096, 16_384], "full_budget_gib": 0.5, "bptt_segments": 6, "bptt_batch": 4,
              "compare_length": 2_048, "train_segments": 2, "repeats": 3},
    "full": {"lengths": [16_384, 65_536, 262_144, 1_048_576], "full_budget_gib": 2.0, "bptt_segments": 16,
             "bptt_batch": 8,
             "compare_length": 16_384, "train_segments": 4, "repeats": 5},
}


# ------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class BenchConfig:
    """The model both implementations are built with (streaming and the package comparison)."""

    vocab_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    n_layers: int = 2
    segment_length: int = 512
    n_memory: int = 16

    def sizes(self) -> dict:
        """Keyword arguments of :func:`~longctx_lib.rmt.streaming_run`."""
        return asdict(self)

    def ours(self, *, bptt_depth: int | None = None) -> RecurrentMemoryTransformer:
        return RecurrentMemoryTransformer(self.vocab_size, self.d_model, self.n_heads, self.d_ff, self.n_layers,
                                          segment_length=self.segment_length, n_memory=self.n_memory,
                                          variant="decoder", bptt_depth=bptt_depth)

    def theirs(self) -> nn.Module:
        """``recurrent_memory_transformer_pytorch.RecurrentMemoryTransformer`` with the same sizes."""
        from recurrent_memory_transformer_pytorch import (
            RecurrentMemoryTransformer as Theirs,
        )

        if self.d_ff % self.d_model:
            raise ValueError(f"the package's feed-forward width is ff_mult * d_model; d_ff={self.d_ff} is not a "
                             f"multiple of d_model={self.d_model}")
        if self.n_memory < 1:
            raise ValueError("the package needs at least one memory token")
        return Theirs(self.d_model, num_tokens=self.vocab_size, depth=self.n_layers, num_memory_tokens=self.n_memory,
                      seq_len=self.segment_length, causal=True, dim_head=self.d_model // self.n_heads,
                      heads=self.n_heads, ff_mult=self.d_ff // self.d_model, use_flash_attn=False,
                      use_xl_memories=False, num_residual_streams=1, emb_gradient_frac=1.0)

    def memory_bytes(self) -> int:
        """Bytes carried from segment to segment: the memory, ``n_memory x d_model`` float32."""
        return self.n_memory * self.d_model * 4

    def describe(self) -> str:
        return (f"decoder RMT, vocab {self.vocab_size}, d_model {self.d_model}, {self.n_heads} heads of "
                f"{self.d_model // self.n_heads}, d_ff {self.d_ff}, {self.n_layers} layers, segments of "
                f"{self.segment_length}, {self.n_memory} memory tokens, float32, batch 1")


@dataclass(frozen=True)
class BpttConfig:
    """The training step of ``--bptt`` (:func:`~longctx_lib.rmt.training_step_run`'s sizes)."""

    segment_length: int = 128
    n_memory: int = 8
    batch: int = 8
    vocab_size: int = 32
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    n_layers: int = 2

    def weight_bytes(self) -> int:
        """Bytes of the weights and their gradients (float32)."""
        model = RecurrentMemoryTransformer(self.vocab_size, self.d_model, self.n_heads, self.d_ff, self.n_layers,
                                           segment_length=self.segment_length, n_memory=self.n_memory)
        return 2 * 4 * n_params(model)

    def describe(self) -> str:
        return (f"batch {self.batch}, segments of {self.segment_length} tokens, {self.n_memory} memory tokens, "
                f"vocab {self.vocab_size}, d_model {self.d_model}, {self.n_heads} heads, d_ff {self.d_ff}, "
                f"{self.n_layers} layers, float32")


def differences(cfg: BenchConfig) -> list[str]:
    """Where our model and the package's differ, with this configuration's sizes."""
    d, f = cfg.d_model, cfg.d_ff
    inner = int(f // d * d * 2 / 3)  # the package's GEGLU width: int(ff_mult * dim * 2 / 3)
    return [
        ("normalisation: ours LayerNorm (pre-LN, with bias) before attention and feed-forward and at the end; "
         "theirs RMSNorm"),
        (f"feed-forward: ours Linear({d}, {f}) -> GELU -> Linear({f}, {d}), with biases; theirs GEGLU, "
         f"Linear({d}, 2 * {inner}) -> x * gelu(gate) -> Linear({inner}, {d}), no biases "
         f"({3 * d * inner / (2 * d * f):.3f}x our multiply-adds)"),
        ("projections: ours one fused q/k/v Linear and an output Linear, with biases; theirs to_q and to_kv, "
         "no biases"),
        "null key: theirs prepends a learned key/value per head to every attention (T + 1 keys), ours none",
        ("value residual: theirs mixes every layer's values after the first with the first layer's through a "
         "learned sigmoid gate (an extra Linear(d_model, heads) per layer; cannot be switched off); ours none"),
        ("memory: both read memory -> tokens (causal) -> write memory, masked alike (read sees read, tokens see "
         "read and earlier tokens, write sees all); ours writes into the same memory vectors plus write "
         "positions, theirs into its fixed learned write tokens (add_write_to_next_write_mem=False, "
         "its default), and adds a learned read embedding to the "
         "memory it reads; on the first segment ours reads its learned memory, theirs the read embedding"),
        ("positions: ours a learned table over the whole [read ; tokens ; write] block; theirs learned positions "
         "on the tokens only"),
        ("masking: ours a bool (T, T) mask built per segment, -inf fill; theirs a custom mask built per "
         "segment, -finfo.max fill; both an explicit softmax over a stored score matrix"),
        ("loss (fwd+bwd): ours the model's logits then one cross-entropy over all tokens; theirs a "
         "cross-entropy per segment weighted by its share of the tokens (the same mean)"),
        ("switched off in theirs to match ours: Transformer-XL memories, hyper-connections (4 residual "
         "streams by default), the 0.1 embedding-gradient scale"),
    ]


def full_attention_run(length: int, *, vocab_size: int = 256, d_model: int = 128, n_heads: int = 4, d_ff: int = 512,
                       n_layers: int = 2, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """The contrast: the same model reading ``length`` random tokens as ONE segment, no memory.

    A :class:`~longctx_lib.rmt.RecurrentMemoryTransformer` with ``segment_length=length``
    and ``n_memory=0`` is a causal transformer over the whole input (reference attention,
    the ``(heads, length, length)`` score matrix stored). Module-level and picklable, like
    :func:`~longctx_lib.rmt.streaming_run`; returns ``{"tokens", "seconds"}``.
    """
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = RecurrentMemoryTransformer(vocab_size, d_model, n_heads, d_ff, n_layers, segment_length=length,
                                       n_memory=0).to(dev).eval()
    gen = torch.Generator(device=dev).manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (1, length), generator=gen, device=dev)
    synchronize(dev)
    begin = time.perf_counter()
    with torch.no_grad():
        logits = model(tokens)
    synchronize(dev)
    seconds = time.perf_counter() - begin
    del logits
    return {"tokens": length, "seconds": seconds}


class Workload:
    """A workload for ``peak_memory``: the first call (its warm-up) reads two segments, later calls ``length`` tokens.

    ``peak_memory`` calls a workload twice, warm-up then measurement; a million-token
    warm-up would double the run, while two segments start the thread pools and allocate
    every buffer one segment needs. ``kind`` is ``"rmt"`` (:func:`~longctx_lib.rmt.streaming_run`)
    or ``"full"`` (:func:`full_attention_run`). Picklable, so the CPU measurement can run
    it in a fresh process.
    """

    def __init__(self, kind: str, length: int, cfg: BenchConfig, device: str) -> None:
        if kind not in ("rmt", "full"):
            raise ValueError(f"kind must be 'rmt' or 'full'; got {kind!r}")
        self.kind, self.length, self.cfg, self.device, self.warmed = kind, length, cfg, device, False

    def __call__(self) -> dict:
        seg = self.cfg.segment_length
        length = self.length if self.warmed else min(self.length, 2 * seg)
        self.warmed = True
        if self.kind == "rmt":
            return streaming_run(math.ceil(length / seg), **self.cfg.sizes(), device=self.device)
        sizes = {k: v for k, v in self.cfg.sizes().items() if k not in ("segment_length", "n_memory")}
        return full_attention_run(length, **sizes, device=self.device)


def measure(kind: str, length: int, cfg: BenchConfig, device: str) -> dict:
    """Peak bytes (fresh process on the CPU) and time of one workload on ``length`` tokens."""
    peak, result = peak_memory(Workload(kind, length, cfg, device), device=device, return_value=True)
    return {"length": length, "peak_bytes": peak, "seconds": result["seconds"],
            "tokens_per_s": result["tokens"] / max(result["seconds"], 1e-9)}


def stream_benchmark(cfg: BenchConfig, lengths: list[int], device: str) -> dict:
    """RMT streaming of each length (multiples of the segment length), peak and time."""
    seg = cfg.segment_length
    lengths = sorted({math.ceil(n / seg) * seg for n in lengths})  # streaming_run reads whole segments
    print(f"RMT streaming: {cfg.describe()}; {n_params(cfg.ours()):,} parameters; "
          f"{describe_device(device)}; {load()}", flush=True)
    rows = [measure("rmt", n, cfg, device) for n in tqdm(lengths, desc="stream lengths")]
    first, last = rows[0], rows[-1]
    ratio = last["peak_bytes"] / max(first["peak_bytes"], 1)
    print(f"{'tokens':>11} {'segments':>9} {'peak MiB':>9} {'x first':>8} {'tokens/s':>9} {'seconds':>8}")
    for r in rows:
        r["segments"] = r["length"] // seg
        r["ratio_to_first"] = r["peak_bytes"] / max(first["peak_bytes"], 1)
        print(f"{r['length']:>11,} {r['segments']:>9,} {r['peak_bytes'] / MiB:>9.1f} {r['ratio_to_first']:>8.2f} "
              f"{r['tokens_per_s']:>9,.0f} {r['seconds']:>8.1f}")
    met = ratio <= GOAL
    print(f"peak({last['length']:,}) / peak({first['length']:,}) = {ratio:.3f}  "
          f"(constant in the number of segments; goal <= {GOAL}: {'met' if met else 'NOT met'})")
    print(f"state carried between segments: the memory, {cfg.n_memory} x {cfg.d_model} float32 = "
          f"{cfg.memory_bytes() / KiB:.0f} KiB at every length; {load()}", flush=True)
    return {"rows": rows, "ratio": ratio, "goal": GOAL, "goal_met": met, "memory_state_bytes": cfg.memory_bytes(),
            "parameters": n_params(cfg.ours())}


def full_attention_benchmark(cfg: BenchConfig, stop: int, device: str, budget_gib: float,
                             rmt_peak: float | None = None) -> dict:
    """Full attention (one segment, no memory), doubling from one segment's length while within the budget."""
    rows: dict[int, dict] = {}

    def cost(length: int) -> float:
        rows[length] = measure("full", length, cfg, device)
        return rows[length]["peak_bytes"]

    print(f"full attention (the same model, the whole input as one segment, no memory; reference attention: "
          f"the score matrix is stored); budget {budget_gib:g} GiB", flush=True)
    seg = cfg.segment_length
    best, _ = longest_within(cost, budget_gib * GiB, start=seg, stop=max(stop, seg))
    extra = f" {'x RMT peak':>11}" if rmt_peak else ""
    print(f"{'tokens':>11} {'peak MiB':>9} {'tokens/s':>9} {'seconds':>8}{extra}")
    for r in rows.values():
        over = "  over budget" if r["peak_bytes"] > budget_gib * GiB else ""
        cell = ""
        if rmt_peak:
            r["ratio_to_rmt"] = r["peak_bytes"] / rmt_peak
            cell = f" {r['ratio_to_rmt']:>10.1f}x"
        print(f"{r['length']:>11,} {r['peak_bytes'] / MiB:>9.1f} {r['tokens_per_s']:>9,.0f} {r['seconds']:>8.2f}"
              f"{cell}{over}")
    lengths, peaks = list(rows), [rows[n]["peak_bytes"] for n in rows]
    slope = fit_loglog_slope(lengths, peaks) if len(rows) >= 2 and min(peaks) > 0 else None
    print(f"longest within {budget_gib:g} GiB: {best:,} tokens" if best else
          f"not even {seg:,} tokens fit in {budget_gib:g} GiB", end="")
    print(f"; peak grows as length^{slope:.2f}" if slope is not None else "", end="")
    print(f" (x RMT peak: against the RMT's streaming peak at its shortest length, {rmt_peak / MiB:.1f} MiB)"
          if rmt_peak else "", flush=True)
    return {"budget_gib": budget_gib, "rows": list(rows.values()), "longest_within": best, "loglog_slope": slope}


# ------------------------------------------------------------------ part 2: BPTT depth
def bptt_depths(n_segments: int) -> list[int | None]:
    """0, 1, 2, 4, ... below ``n_segments - 1``, then ``None`` (all: the same as ``n_segments - 1``)."""
    depths: list[int | None] = [0]
    k = 1
    while k < n_segments - 1:
        depths.append(k)
        k *= 2
    if n_segments > 1:
        depths.append(None)
    return depths


def line_fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: ``(a, b)``."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((v - mx) ** 2 for v in x)
    b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx if sxx else 0.0
    return my - b * mx, b


def bptt_benchmark(bcfg: BpttConfig, n_segments: int, device: str,
                   depths: list[int | None] | None = None) -> dict:
    """Peak memory and time of one training step for each BPTT depth, ``n_segments`` segments."""
    depths = bptt_depths(n_segments) if depths is None else depths
    print(f"RMT training step, BPTT depth k: {n_segments} segments, the answer in the last; {bcfg.describe()}; "
          f"{describe_device(device)}; {load()}", flush=True)
    rows = []
    for k in tqdm(depths, desc="bptt depths"):
        step = functools.partial(training_step_run, n_segments, bptt_depth=k, **asdict(bcfg), device=device)
        peak, result = peak_memory(step, device=device, return_value=True)
        kept = n_segments if k is None else min(k, n_segments - 1) + 1
        rows.append({"bptt_depth": k, "kept_segments": kept, "peak_bytes": peak, "seconds": result["seconds"],
                     "loss": result["loss"], "grad_reaches_memory": result["grad_reaches_memory"]})
    base, base_s = max(rows[0]["peak_bytes"], 1), max(rows[0]["seconds"], 1e-9)
    a, b = line_fit([r["kept_segments"] for r in rows], [r["peak_bytes"] for r in rows])
    print(f"{'depth k':>8} {'k + 1':>6} {'peak MiB':>9} {'x k=0':>7} {'fit MiB':>8} {'seconds':>8} {'x k=0':>6} "
          f"{'grad reaches first memory':>26}")
    for r in rows:
        r["ratio_to_depth0"] = r["peak_bytes"] / base
        r["time_ratio_to_depth0"] = r["seconds"] / base_s
        r["fit_bytes"] = a + b * r["kept_segments"]
        label = "all" if r["bptt_depth"] is None else str(r["bptt_depth"])
        print(f"{label:>8} {r['kept_segments']:>6} {r['peak_bytes'] / MiB:>9.1f} {r['ratio_to_depth0']:>6.2f}x "
              f"{r['fit_bytes'] / MiB:>8.1f} {r['seconds']:>8.2f} {r['time_ratio_to_depth0']:>5.2f}x "
              f"{r['grad_reaches_memory']!s:>26}")
    worst = max(abs(r["peak_bytes"] - r["fit_bytes"]) / max(r["peak_bytes"], 1) for r in rows)
    print(f"peak = {a / MiB:.1f} MiB + {b / MiB:.1f} MiB x (k + 1): linear in the segments kept for backward "
          f"(largest gap to the line {100 * worst:.1f} %); the weights and their gradients take "
          f"{bcfg.weight_bytes() / MiB:.1f} MiB of the constant; {load()}", flush=True)
    return {"segments": n_segments, "config": asdict(bcfg), "rows": rows, "fit_const_bytes": a,
            "fit_bytes_per_segment": b, "fit_worst_rel_gap": worst}


# ------------------------------------------------------------------ part 3: FLOPs
def flops_table(lengths: list[int] | tuple[int, ...] = FLOP_LENGTHS, *, segment_length: int = 512,
                n_memory: int = 10, variant: str = "encoder", models: list[str] | None = None) -> list[dict]:
    """Forward FLOPs of full attention and of RMT for each OPT model and length; ``ratio`` full / RMT."""
    rows = []
    for name in models or list(OPT_MODELS):
        sizes = OPT_MODELS[name]
        for length in lengths:
            full = transformer_flops(length, **sizes)
            rmt = rmt_flops(length, segment_length=segment_length, n_memory=n_memory, variant=variant, **sizes)
            rows.append({"model": name, "length": length, "full_flops": full, "rmt_flops": rmt, "ratio": full / rmt})
    return rows


def flops_benchmark(lengths: list[int], segment_length: int = 512, n_memory: int = 10) -> dict:
    rows = flops_table(lengths, segment_length=segment_length, n_memory=n_memory)
    lengths = list(dict.fromkeys(r["length"] for r in rows))
    longest = lengths[-1]
    print(f"forward FLOPs, full attention / RMT (encoder, segments of {segment_length} tokens + {n_memory} memory "
          "tokens), matrix products only, OPT shapes:")
    head = "".join(f" {f'{n:,}':>11}" for n in lengths)
    print(f"{'model':>9}{head}   {f'full PFLOP at {longest:,}':>22} {'RMT PFLOP':>10} {'paper':>6}")
    by_model: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["length"]] = r
    for name, per in by_model.items():
        ratios = "".join(f" {per[n]['ratio']:>10.1f}x" for n in lengths)
        paper = f"{PAPER_RATIOS[name]}x" if name in PAPER_RATIOS else ""
        print(f"{name:>9}{ratios}   {per[longest]['full_flops'] / 1e15:>22,.1f} "
              f"{per[longest]['rmt_flops'] / 1e15:>10,.2f} {paper:>6}")
    print("paper (Bulatov et al. 2023): 295x for OPT-125M and 29x for OPT-175B at about 2M tokens; RMT's cost is "
          "linear in the length, full attention's quadratic term (4 L^2 d per layer) passes its linear one "
          "(24 L d^2) beyond L = 6 d_model")
    return {"segment_length": segment_length, "n_memory": n_memory, "variant": "encoder", "rows": rows,
            "paper": PAPER_RATIOS}


# ------------------------------------------------------------------ part 4: the package
def package_available() -> str | None:
    """The installed recurrent-memory-transformer-pytorch version, or None."""
    try:
        import recurrent_memory_transformer_pytorch  # noqa: F401
    except ImportError:
        return None
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # importable from a path, not installed
        return "unknown version"


def skip_reason() -> str:
    return (f"{PACKAGE} is not installed: package comparison skipped "
            f'(pip install -e ".[bench]", or pip install "{PACKAGE_SPEC}")')


def our_stream(model: RecurrentMemoryTransformer, parts: tuple[Tensor, ...]) -> None:
    for _ in model.stream(parts):
        pass


def their_stream(model: nn.Module, parts: tuple[Tensor, ...]) -> None:
    """Theirs, forward only, segment by segment: only the write memory passes on."""
    memories = None
    with torch.no_grad():
        for part in parts:
            _, memories, _ = model(part, memories)


def our_train(model: RecurrentMemoryTransformer, tokens: Tensor) -> float:
    """Forward+backward of the LM loss on ``tokens`` ``(1, n + 1)``, gradients through every memory."""
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.item()


def their_train(wrapper: nn.Module, tokens: Tensor) -> float:
    """The same through the package's wrapper (loss per segment, weighted by its share of the tokens)."""
    loss, _ = wrapper(tokens, return_loss=True)
    loss.backward()
    return loss.item()


def package_benchmark(cfg: BenchConfig, device: str, length: int, train_segments: int, repeats: int) -> dict:
    version = package_available()
    if version is None:
        print(skip_reason(), flush=True)
        return {"skipped": skip_reason()}
    from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformerWrapper

    dev = resolve_device(device)
    torch.manual_seed(0)
    ours, theirs = cfg.ours().to(dev), cfg.theirs().to(dev)
    print(f"ours against {PACKAGE} {version}: {cfg.describe()}; parameters ours {n_params(ours):,}, "
          f"theirs {n_params(theirs):,}; {describe_device(device)}; {load()}", flush=True)
    row: dict = {"package_version": version, "repeats": repeats,
                 "parameters": {"ours": n_params(ours), "theirs": n_params(theirs)}}
    gen = torch.Generator().manual_seed(1)
    # (a) forward only, streaming, the same segments for both
    ours.eval(), theirs.eval()
    parts = torch.randint(0, cfg.vocab_size, (1, length), generator=gen).to(dev).split(cfg.segment_length, dim=1)
    times = alternate({"ours": functools.partial(our_stream, ours, parts),
                       "theirs": functools.partial(their_stream, theirs, parts)},
                      repeats, device, "forward, alternating")
    fwd = {name: length / statistics.median(t) for name, t in times.items()}
    row["forward"] = {"tokens": length, "tokens_per_s": fwd, "seconds": times, "ratio": fwd["ours"] / fwd["theirs"]}
    # (b) forward+backward of the LM loss, gradients through every memory
    ours.train(), theirs.train()
    n = train_segments * cfg.segment_length
    tokens = torch.randint(0, cfg.vocab_size, (1, n + 1), generator=gen).to(dev)
    wrapper = RecurrentMemoryTransformerWrapper(theirs)  # no truncation: backward through every segment
    row["train"] = training_comparison(ours, theirs, functools.partial(our_train, ours),
                                       functools.partial(their_train, wrapper), tokens, n, train_segments,
                                       repeats, device)
    row["differences"] = differences(cfg)
    print_comparison(row, repeats=repeats, length=length, segment_length=cfg.segment_length,
                     vocab_size=cfg.vocab_size)
    return row


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="With no part named, every part runs.")
    parser.add_argument("--stream", action="store_true", help="peak memory and time of streaming, per length, "
                        "with full attention for contrast")
    parser.add_argument("--bptt", action="store_true", help="peak memory and time of a training step per BPTT depth")
    parser.add_argument("--flops", action="store_true", help="FLOPs of full attention against RMT, OPT sizes")
    parser.add_argument("--package", action="store_true", help=f"time against {PACKAGE} (skipped if absent)")
    parser.add_argument("--full", action="store_true",
                        help="full sizes (stream 16K..1M, 16 BPTT segments, longer comparison); default small")
    parser.add_argument("--lengths", type=int, nargs="+", help="stream lengths in tokens (small: 1024 4096 16384; "
                        "full: 16384 65536 262144 1048576)")
    parser.add_argument("--no-full-attention", action="store_true", help="leave out the full-attention contrast")
    parser.add_argument("--full-budget-gib", type=float, help="memory budget of the full-attention runs "
                        "(small 0.5, full 2)")
    parser.add_argument("--bptt-segments", type=int, help="segments of the training step (small 6, full 16)")
    parser.add_argument("--bptt-batch", type=int, help="sequences in the training step (small 4, full 8)")
    parser.add_argument("--bptt-depths", type=int, nargs="+",
                        help="BPTT depths to measure (default 0 1 2 4 ... and all)")
    parser.add_argument("--flop-lengths", type=int, nargs="+", default=list(FLOP_LENGTHS))
    parser.add_argument("--compare-length", type=int, help="tokens streamed in the package comparison "
                        "(small 2048, full 16384)")
    parser.add_argument("--train-segments", type=int, help="segments of the forward+backward comparison "
                        "(small 2, full 4)")
    parser.add_argument("--repeats", type=int, help="timed repeats of the comparison, median (small 3, full 5)")
    defaults = BenchConfig()
    parser.add_argument("--vocab", type=int, default=defaults.vocab_size)
    parser.add_argument("--d-model", type=int, default=defaults.d_model)
    parser.add_argument("--heads", type=int, default=defaults.n_heads)
    parser.add_argument("--d-ff", type=int, default=defaults.d_ff)
    parser.add_argument("--layers", type=int, default=defaults.n_layers)
    parser.add_argument("--segment-length", type=int, default=defaults.segment_length)
    parser.add_argument("--memory-tokens", type=int, default=defaults.n_memory)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    parts = [p for p in ("stream", "bptt", "flops", "package") if getattr(args, p)] or \
        ["stream", "bptt", "flops", "package"]
    size = "full" if args.full else "small"
    for name, value in SIZES[size].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("lengths", "compare_length", "train_segments", "repeats", "segment_length", "bptt_segments",
                 "bptt_batch", "flop_lengths", "vocab", "d_model", "heads", "d_ff", "layers", "threads"):
        value = getattr(args, name)
        if value is not None and any(v < 1 for v in (value if isinstance(value, list) else [value])):
            parser.error(f"--{name.replace('_', '-')} must be positive; got {value}")
    if args.memory_tokens < 0 or any(k < 0 for k in args.bptt_depths or []):
        parser.error("--memory-tokens and --bptt-depths must be >= 0")
    if not args.full_budget_gib > 0:
        parser.error(f"--full-budget-gib must be positive; got {args.full_budget_gib}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig(args.vocab, args.d_model, args.heads, args.d_ff, args.layers, args.segment_length,
                      args.memory_tokens)
    device = str(resolve_device(args.device))
    result: dict = {"device": describe_device(device), "torch": torch.__version__, "sizes": size, "parts": parts,
                    "config": asdict(cfg), "load_at_start": load()}
    begin = time.perf_counter()
    if "stream" in parts:
        result["stream"] = stream_benchmark(cfg, args.lengths, device)
        if not args.no_full_attention:
            rmt_peak = result["stream"]["rows"][0]["peak_bytes"]
            result["full_attention"] = full_attention_benchmark(cfg, max(args.lengths), device, args.full_budget_gib,
                                                                rmt_peak=rmt_peak if rmt_peak > 0 else None)
        print()
    if "bptt" in parts:
        bcfg = BpttConfig(batch=args.bptt_batch, d_model=args.d_model, n_heads=args.heads, d_ff=args.d_ff,
                          n_layers=args.layers)
        result["bptt"] = bptt_benchmark(bcfg, args.bptt_segments, device, args.bptt_depths)
        print()
    if "flops" in parts:
        result["flops"] = flops_benchmark(args.flop_lengths)
        print()
    if "package" in parts:
        result["package"] = package_benchmark(cfg, device, args.compare_length, args.train_segments, args.repeats)
    result["seconds"] = time.perf_counter() - begin
    result["load_at_end"] = load()
    print(f"done in {result['seconds']:.0f} s ({size} sizes); {result['load_at_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
