"""Benchmark: Infini-attention reads a million tokens in constant memory, and against infini-transformer-pytorch.

Run from the repository root (``make bench-infini`` runs all three parts)::

    python benchmarks/infini.py --stream                 # peak memory and tokens/s, 16K .. 1M tokens
    python benchmarks/infini.py --stream --full-attention   # + full attention, up to a memory budget
    python benchmarks/infini.py --package                # throughput against lucidrains' package

The model is chapter 5's :class:`~longctx_lib.infini.InfiniTransformer`: byte vocabulary
(256), d_model 256, 4 heads of 64, d_ff 1024, 2 layers, segments of 2048 tokens, the
linear memory update, gate ``beta = 0``, rotary positions on the local path; float32,
one sequence. Every size is an option (``--layers 4``, ``--rule delta``, ...).

``--stream`` reads 16,384, 65,536, 262,144 and 1,048,576 random tokens through
:meth:`~longctx_lib.infini.InfiniTransformer.stream`. The segments are generated one at
a time as they are read, so the input is never one tensor; each segment's logits are
scored (next-token negative log-likelihood within the segment) and dropped. Peak memory
is measured with :func:`longctx_lib.measure.peak_memory`: on the CPU in a fresh process
per length (the rise of the resident set, with large allocations served by ``mmap`` so
that freed tensors leave it at once), on a GPU the CUDA allocator's peak; in both, above
the state after a warm-up that streams two segments (the model's parameters exist
before and are not counted). The goal is ``peak(1M) / peak(16K) <= 1.1``: only the
per-layer memories (``n_layers * heads * (64 * 64 + 64)`` numbers, 130 KiB here) pass
from one segment to the next. Tokens per second are timed in the same call, so on the
CPU they include the page faults of that measuring mode.

``--full-attention`` contrasts a full-attention language model of the same sizes
(:class:`~longctx_lib.transformer.Transformer`, reference attention that stores the
score matrix, tied embedding, no positions) run on the whole input at once, from one
segment's length upwards, doubling while its peak stays within ``--full-budget-gib``.

``--package`` compares with ``infini-transformer-pytorch`` (Phil Wang's implementation,
the optional ``bench`` extra: ``pip install -e ".[bench]"``) built with the same sizes:
``dim 256, depth 2, heads 4, dim_head 64, ff_mult 4`` (GEGLU inner width
``int(4 * 256 * 2 / 3) = 682``: the same multiply-adds per token as our d_ff 1024 to
0.1 %), ``use_mem_delta_rule`` for ``--rule delta``, and the gate started at the same
mix. In one process, alternating the two models and swapping their order each repeat,
it times (a) forward-only streaming of ``--compare-length`` tokens segment by segment
under ``no_grad`` (ours: ``stream``; theirs: the model called with
``return_new_memories=True`` per segment) and (b) forward+backward of the language-model
loss over ``--train-segments`` segments with gradients through the memories (ours:
``forward`` with ``truncate=None``; theirs: ``InfiniTransformerWrapper`` with
``detach_mems_every_num_segments`` equal to the number of segments, one backward at
the end), and prints the medians and the ratio ours / theirs.

The two models are the same architecture but not identical (:func:`differences`,
printed with the results): normalisation (LayerNorm against RMSNorm), feed-forward
(GELU MLP against GEGLU), biases, the local attention kernel (fused SDPA against an
explicit softmax over a stored score matrix), rotary pairing, the first segment's
memory read (ours reads the empty memory, theirs skips it), the gate's orientation and
the output layer (tied against separate). Timings on a CPU shared with other processes
swing from run to run: compare the ratios of one run, and note the load average that
the output prints.
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from longctx_lib.device import describe_device, resolve_device, synchronize
from longctx_lib.infini import InfiniTransformer
from longctx_lib.measure import fit_loglog_slope, longest_within, peak_memory
from longctx_lib.transformer import Transformer
try:  # imported as benchmarks.<name> (the tests), or run as a script from benchmarks/
    from benchmarks._compare import alternate, load, n_params, print_comparison, training_comparison
except ImportError:
    from _compare import alternate, load, n_params, print_comparison, training_comparison

KiB, MiB, GiB = 2**10, 2**20, 2**30
LENGTHS = (16_384, 65_536, 262_144, 1_048_576)
GOAL = 1.1  # peak(longest) / peak(shortest)
PACKAGE = "infini-transformer-pytorch"



# ------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class BenchConfig:
    """The sizes both implementations are built with."""

    vocab_size: int = 256
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    n_layers: int = 2
    segment_length: int = 2048
    rule: str = "linear"
    gate_init: float = 0.0

    def ours(self, *, truncate: int | None = None) -> InfiniTransformer:
        return InfiniTransformer(self.vocab_size, self.d_model, self.n_heads, self.d_ff, self.n_layers,
                                 segment_length=self.segment_length, rule=self.rule, gate_init=self.gate_init,
                                 truncate=truncate)

    def theirs(self) -> nn.Module:
        """``infini_transformer_pytorch.InfiniTransformer`` with the same sizes."""
        from infini_transformer_pytorch import InfiniTransformer as Theirs

        if self.d_ff % self.d_model:
            raise ValueError(f"the package's feed-forward width is ff_mult * d_model; d_ff={self.d_ff} is not a "
                             f"multiple of d_model={self.d_model}")
        model = Theirs(num_tokens=self.vocab_size, dim=self.d_model, depth=self.n_layers,
                       dim_head=self.d_model // self.n_heads, heads=self.n_heads, ff_mult=self.d_ff // self.d_model,
                       use_mem_delta_rule=self.rule == "delta")
        with torch.no_grad():  # theirs gates the local path (ours the memory): g = -beta, the same mix
            for attn, _ in model.layers:
                attn.fastweight_mem.head_gates.fill_(-self.gate_init)
        return model

    def memory_bytes(self) -> int:
        """Bytes of state carried between segments: every layer's M and z (float32)."""
        dh = self.d_model // self.n_heads
        return self.n_layers * self.n_heads * (dh * dh + dh) * 4

    def describe(self) -> str:
        return (f"vocab {self.vocab_size}, d_model {self.d_model}, {self.n_heads} heads of "
                f"{self.d_model // self.n_heads}, d_ff {self.d_ff}, {self.n_layers} layers, segments of "
                f"{self.segment_length}, {self.rule} memory update, float32, batch 1")


def differences(cfg: BenchConfig) -> list[str]:
    """Where our model and the package's differ, with this configuration's sizes."""
    d, f = cfg.d_model, cfg.d_ff
    inner = int(f // d * d * 2 / 3)  # the package's GEGLU width: int(ff_mult * dim * 2 / 3)
    return [
        "normalisation: ours LayerNorm (pre-LN, with bias) before attention and feed-forward and at the end; "
        "theirs RMSNorm (F.normalize * sqrt(dim) * gamma)",
        f"feed-forward: ours Linear({d}, {f}) -> GELU -> Linear({f}, {d}), with biases; theirs GEGLU, "
        f"Linear({d}, 2 * {inner}) -> gelu(gate) * x -> Linear({inner}, {d}) "
        f"({3 * d * inner / (2 * d * f):.3f}x our multiply-adds)",
        "projections: ours q/k/v and output projections have biases; theirs none",
        "local attention: ours fused F.scaled_dot_product_attention(is_causal=True); theirs an explicit "
        "softmax over a stored (heads, segment, segment) score matrix with a causal mask",
        "rotary positions: both on the local path only, base 10000; ours rotates half-split pairs, recomputed "
        "per call; theirs interleaved pairs (rotary-embedding-torch) from a frequency cache",
        "memory: both ELU + 1 features, M and z summed over segments; ours starts from M = z = 0 and reads it "
        "on the first segment too (zeros, denominator + 1e-6); theirs skips the read on the first segment "
        "(denominator clamped at 1e-10)",
        "gate: ours sigmoid(beta) * memory + (1 - sigmoid(beta)) * local, theirs sigmoid(g) * local + "
        "(1 - sigmoid(g)) * memory; set to the same starting mix here (g = -beta; their default is g = 10)",
        "output: ours tied to the embedding, no bias; theirs a separate Linear with bias (and the embedding "
        "initialised N(0, 1), ours N(0, 1/d_model))",
    ]


# ------------------------------------------------------------------ the token stream
def segments(length: int, segment_length: int, vocab_size: int, *, seed: int = 0,
             device: str | torch.device = "cpu") -> Iterator[Tensor]:
    """``length`` random tokens as segments ``(1, segment_length)`` (the last may be shorter), made one at a time."""
    dev = resolve_device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    for start in range(0, length, segment_length):
        size = min(segment_length, length - start)
        yield torch.randint(0, vocab_size, (1, size), generator=gen, device=dev)


def stream_tokens(model: InfiniTransformer, length: int, *, vocab_size: int, segment_length: int,
                  device: str = "cpu") -> dict:
    """Read ``length`` tokens through ``model.stream``; the time and the mean next-token NLL within segments."""
    dev = resolve_device(device)
    current: list[Tensor] = []

    def feed() -> Iterator[Tensor]:
        for part in segments(length, segment_length, vocab_size, device=dev):
            current[:] = [part]  # the segment being read, to score its logits; nothing else is kept
            yield part

    nll, count = torch.zeros((), dtype=torch.float64, device=dev), 0
    synchronize(dev)
    start = time.perf_counter()
    for logits in model.stream(feed()):
        part = current[0]
        if part.shape[1] > 1:
            nll += F.cross_entropy(logits[0, :-1], part[0, 1:], reduction="sum").double()
            count += part.shape[1] - 1
    synchronize(dev)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": length / seconds, "nll": float(nll) / max(count, 1)}


class FullAttentionLM(nn.Module):
    """The contrast: embedding, :class:`Transformer` (causal, whole input at once), logits tied to the embedding."""

    def __init__(self, cfg: BenchConfig, impl: str = "naive") -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.body = Transformer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_layers, impl=impl)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.body(self.embed(tokens), causal=True) @ self.embed.weight.T  # (B, L, vocab)


def full_tokens(model: FullAttentionLM, length: int, *, vocab_size: int, device: str = "cpu") -> dict:
    """The full-attention model on ``length`` tokens at once (the input is one tensor here)."""
    dev = resolve_device(device)
    tokens = next(segments(length, length, vocab_size, device=dev))
    synchronize(dev)
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(tokens)
        nll = F.cross_entropy(logits[0, :-1], tokens[0, 1:]).item()
    synchronize(dev)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": length / seconds, "nll": nll}


class Workload:
    """A workload for ``peak_memory``: the first call (its warm-up) reads two segments, later calls ``length`` tokens.

    ``peak_memory`` calls a workload twice with the same arguments, warm-up then
    measurement; a million-token warm-up would double the run, while two segments start
    the thread pools and allocate every buffer one segment needs (the memory included).
    Picklable, so the CPU measurement can run it in a fresh process.
    """

    def __init__(self, model: nn.Module, length: int, cfg: BenchConfig, device: str) -> None:
        self.model, self.length, self.cfg, self.device, self.warmed = model, length, cfg, device, False

    def __call__(self) -> dict:
        length = self.length if self.warmed else min(self.length, 2 * self.cfg.segment_length)
        self.warmed = True
        if isinstance(self.model, InfiniTransformer):
            return stream_tokens(self.model, length, vocab_size=self.cfg.vocab_size,
                                 segment_length=self.cfg.segment_length, device=self.device)
        return full_tokens(self.model, length, vocab_size=self.cfg.vocab_size, device=self.device)


def measure(model: nn.Module, length: int, cfg: BenchConfig, device: str) -> dict:
    """Peak bytes (fresh process on the CPU) and time of ``model`` on ``length`` tokens."""
    peak, result = peak_memory(Workload(model, length, cfg, device), device=device, return_value=True)
    return {"length": length, "peak_bytes": peak, **result}


# ------------------------------------------------------------------ part 1: streaming
def stream_benchmark(cfg: BenchConfig, lengths: list[int], device: str) -> dict:
    torch.manual_seed(0)
    model = cfg.ours().to(resolve_device(device)).eval()
    print(f"Infini-attention streaming: {cfg.describe()}; {n_params(model):,} parameters; "
          f"{describe_device(device)}; {load()}", flush=True)
    rows = [measure(model, n, cfg, device) for n in tqdm(lengths, desc="stream lengths")]
    first, last = rows[0], rows[-1]
    ratio = last["peak_bytes"] / max(first["peak_bytes"], 1)
    print(f"{'tokens':>11} {'segments':>9} {'peak MiB':>9} {'x first':>8} {'tokens/s':>9} {'seconds':>8} {'NLL':>6}")
    for r in rows:
        r["ratio_to_first"] = r["peak_bytes"] / max(first["peak_bytes"], 1)
        print(f"{r['length']:>11,} {math.ceil(r['length'] / cfg.segment_length):>9,} "
              f"{r['peak_bytes'] / MiB:>9.1f} {r['ratio_to_first']:>8.2f} {r['tokens_per_s']:>9,.0f} "
              f"{r['seconds']:>8.1f} {r['nll']:>6.3f}")
    met = ratio <= GOAL
    print(f"peak({last['length']:,}) / peak({first['length']:,}) = {ratio:.3f}  "
          f"(goal <= {GOAL}: {'met' if met else 'NOT met'})")
    print(f"state carried between segments: {cfg.n_layers} layers x {cfg.n_heads} heads x "
          f"(M {cfg.d_model // cfg.n_heads}x{cfg.d_model // cfg.n_heads} + z) float32 = "
          f"{cfg.memory_bytes() / KiB:.0f} KiB at every length; {load()}", flush=True)
    return {"rows": rows, "ratio": ratio, "goal": GOAL, "goal_met": met, "memory_state_bytes": cfg.memory_bytes(),
            "parameters": n_params(model)}


def full_attention_benchmark(cfg: BenchConfig, stop: int, device: str, budget_gib: float,
                             impl: str = "naive") -> dict:
    torch.manual_seed(0)
    model = FullAttentionLM(cfg, impl).to(resolve_device(device)).eval()
    rows: dict[int, dict] = {}

    def cost(length: int) -> float:
        rows[length] = measure(model, length, cfg, device)
        return rows[length]["peak_bytes"]

    print(f"full attention ({impl}: the score matrix is stored), the whole input at once, same sizes; "
          f"budget {budget_gib:g} GiB", flush=True)
    best, _ = longest_within(cost, budget_gib * GiB, start=cfg.segment_length, stop=max(stop, cfg.segment_length))
    print(f"{'tokens':>11} {'peak MiB':>9} {'tokens/s':>9} {'seconds':>8}")
    for r in rows.values():
        over = "  over budget" if r["peak_bytes"] > budget_gib * GiB else ""
        print(f"{r['length']:>11,} {r['peak_bytes'] / MiB:>9.1f} {r['tokens_per_s']:>9,.0f} {r['seconds']:>8.1f}{over}")
    lengths, peaks = list(rows), [rows[n]["peak_bytes"] for n in rows]
    slope = fit_loglog_slope(lengths, peaks) if len(rows) >= 2 and min(peaks) > 0 else None
    print(f"longest within {budget_gib:g} GiB: {best:,} tokens" if best else
          f"not even {cfg.segment_length:,} tokens fit in {budget_gib:g} GiB", end="")
    print(f"; peak grows as length^{slope:.2f}" if slope is not None else "", flush=True)
    return {"impl": impl, "budget_gib": budget_gib, "rows": list(rows.values()), "longest_within": best,
            "loglog_slope": slope}


# ------------------------------------------------------------------ part 2: the package
def package_available() -> str | None:
    """The installed infini-transformer-pytorch version, or None."""
    try:
        import infini_transformer_pytorch  # noqa: F401
    except ImportError:
        return None
    return importlib.metadata.version(PACKAGE)


def their_stream(model: nn.Module, length: int, cfg: BenchConfig, device: str) -> None:
    """Theirs, forward only, segment by segment: only the memories pass on."""
    memories = None
    with torch.no_grad():
        for part in segments(length, cfg.segment_length, cfg.vocab_size, device=device):
            _, _, memories = model(part, past_memories=memories, return_new_memories=True)


def our_stream(model: InfiniTransformer, length: int, cfg: BenchConfig, device: str) -> None:
    for _ in model.stream(segments(length, cfg.segment_length, cfg.vocab_size, device=device)):
        pass


def our_train(model: InfiniTransformer, tokens: Tensor) -> float:
    """Forward+backward of the LM loss on ``tokens`` ``(1, n + 1)``, gradients through every memory."""
    logits, _ = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.item()


def their_train(wrapper: nn.Module, tokens: Tensor) -> float:
    """The same through the package's own wrapper (it calls backward itself, once, at the last segment)."""
    return wrapper(tokens, backward=True).item()


def package_benchmark(cfg: BenchConfig, device: str, length: int, train_segments: int, repeats: int) -> dict:
    version = package_available()
    if version is None:
        print(f'{PACKAGE} is not installed (pip install -e ".[bench]"): package comparison skipped')
        return {}
    from infini_transformer_pytorch import InfiniTransformerWrapper

    dev = resolve_device(device)
    torch.manual_seed(0)
    ours, theirs = cfg.ours(truncate=None).to(dev), cfg.theirs().to(dev)
    print(f"ours against {PACKAGE} {version}: {cfg.describe()}; parameters ours {n_params(ours):,}, "
          f"theirs {n_params(theirs):,}; {describe_device(device)}; {load()}", flush=True)
    row: dict = {"package_version": version, "repeats": repeats, "parameters": {"ours": n_params(ours),
                                                                                 "theirs": n_params(theirs)}}
    # (a) forward only, streaming
    ours.eval(), theirs.eval()
    times = alternate({"ours": functools.partial(our_stream, ours, length, cfg, device),
                       "theirs": functools.partial(their_stream, theirs, length, cfg, device)},
                      repeats, device, "forward, alternating")
    fwd = {name: length / statistics.median(t) for name, t in times.items()}
    row["forward"] = {"tokens": length, "tokens_per_s": fwd, "seconds": times,
                      "ratio": fwd["ours"] / fwd["theirs"]}
    # (b) forward+backward of the LM loss, gradients through the memories
    ours.train(), theirs.train()
    n = train_segments * cfg.segment_length
    tokens = torch.randint(0, cfg.vocab_size, (1, n + 1), generator=torch.Generator().manual_seed(1)).to(dev)
    wrapper = InfiniTransformerWrapper(theirs, segment_length=cfg.segment_length,
                                       detach_mems_every_num_segments=train_segments)
    row["train"] = training_comparison(ours, theirs, functools.partial(our_train, ours),
                                       functools.partial(their_train, wrapper), tokens, n, train_segments,
                                       repeats, device)
    row["differences"] = differences(cfg)
    print_comparison(row, repeats=repeats, length=length, segment_length=cfg.segment_length,
                     vocab_size=cfg.vocab_size, width=34)
    return row


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", action="store_true", help="peak memory and tokens/s of streaming, per length")
    parser.add_argument("--full-attention", action="store_true",
                        help="contrast: full attention on the whole input, doubling up to the budget")
    parser.add_argument("--package", action="store_true", help=f"throughput against {PACKAGE}")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="stream lengths (tokens)")
    parser.add_argument("--full-budget-gib", type=float, default=2.0, help="memory budget of the full-attention runs")
    parser.add_argument("--compare-length", type=int, default=16_384, help="tokens streamed in the package comparison")
    parser.add_argument("--train-segments", type=int, default=4, help="segments of the forward+backward comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the comparison (median)")
    defaults = BenchConfig()
    parser.add_argument("--vocab", type=int, default=defaults.vocab_size)
    parser.add_argument("--d-model", type=int, default=defaults.d_model)
    parser.add_argument("--heads", type=int, default=defaults.n_heads)
    parser.add_argument("--d-ff", type=int, default=defaults.d_ff)
    parser.add_argument("--layers", type=int, default=defaults.n_layers)
    parser.add_argument("--segment-length", type=int, default=defaults.segment_length)
    parser.add_argument("--rule", choices=("linear", "delta"), default=defaults.rule)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if not (args.stream or args.full_attention or args.package):
        parser.error("say what to run: --stream, --full-attention and/or --package")
    for name in ("lengths", "compare_length", "train_segments", "repeats", "segment_length"):
        value = getattr(args, name)
        if any(v < 1 for v in (value if isinstance(value, list) else [value])):
            parser.error(f"--{name.replace('_', '-')} must be positive; got {value}")
    cfg = BenchConfig(args.vocab, args.d_model, args.heads, args.d_ff, args.layers, args.segment_length, args.rule)
    device = str(resolve_device(args.device))
    result: dict = {"device": describe_device(device), "torch": torch.__version__, "config": asdict(cfg),
                    "load_at_start": load()}
    if args.stream:
        result["stream"] = stream_benchmark(cfg, sorted(args.lengths), device)
    if args.full_attention:
        result["full_attention"] = full_attention_benchmark(cfg, max(args.lengths), device, args.full_budget_gib)
    if args.package:
        result["package"] = package_benchmark(cfg, device, args.compare_length, args.train_segments, args.repeats)
    result["load_at_end"] = load()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
