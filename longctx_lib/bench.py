"""The capstone harness: every method of the course on the same workloads, on any device.

Chapter 7 defines and explains everything here. Six methods, one causal language model
each, built from the earlier chapters' modules:

- ``"naive"`` and ``"sdpa"``: exact attention with every score built (chapter 1's
  reference) or fused (PyTorch's ``scaled_dot_product_attention``), in a pre-LN
  transformer with rotary positions (:class:`FullAttentionLM`);
- ``"lsh"``: the Reformer's model with LSH attention but an ordinary residual stack and
  nothing chunked (chapter 2; chapter 4's ablation stage ``"+LSH"``);
- ``"reformer"``: the assembled Reformer, LSH attention, reversible layers, chunked
  feed-forward and loss (chapter 4);
- ``"infini"``: Infini-attention, compressive memory per layer, segment by segment (chapter 5);
- ``"rmt"``: the Recurrent Memory Transformer, memory tokens between segments (chapter 6).

Two measurements:

- **speed and memory** (:func:`measure_speed`): for each method and each mode
  (``"forward"``: the loss without autograd, ``"forward+backward"``: the loss and its
  gradients, a training step without the update) the time and peak memory of one
  sequence, for lengths doubling from ``start`` until the peak passes the memory budget,
  the run fails for want of memory or time, or the length reaches ``stop``;
- **quality** (:func:`measure_quality`): the methods at matched parameter counts, trained
  on one length of each task (passkey retrieval, associative retrieval, copy) and
  evaluated at that length and at multiples of it (:func:`task_batch`).

:func:`run_benchmark` does both and returns a JSON-ready dict with the machine's
description; :func:`save_results` / :func:`load_results` write and read it,
:func:`compare_results` gives ratios between two result files, :func:`plot_results` draws
them. ``python -m longctx_lib.bench --help`` is the command line.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checkpoints import (
    find_checkpoint_dir,
    load_else_train,
    read_checkpoint,
    same_config,
    save_weights,
)
from .attention import attention
from .device import describe_device, resolve_device, synchronize
from .infini import InfiniTransformer, rotary
from .measure import peak_memory
from .reformer import ReformerLM, ablation_config
from .rmt import RecurrentMemoryTransformer
from .tasks import (
    ASK_TOKEN,
    DISTRACTOR_TOKENS,
    N_SYMBOLS,
    SEP_TOKEN,
    TASK_VOCAB,
    answer_accuracy,
    passkey_batch,
)
from .transformer import FeedForward

__all__ = [
    "METHODS",
    "MODES",
    "TASKS",
    "ModelSizes",
    "SpeedConfig",
    "QualityConfig",
    "PROFILES",
    "FullAttentionLM",
    "build_model",
    "n_parameters",
    "matched_sizes",
    "lm_logits",
    "lm_loss",
    "speed_step",
    "measure_speed",
    "longest_fitting",
    "task_batch",
    "answer_logits",
    "train_quality",
    "evaluate_quality",
    "load_or_train_quality",
    "measure_quality",
    "machine_description",
    "run_benchmark",
    "save_results",
    "load_results",
    "compare_results",
    "format_comparison",
    "results_table",
    "plot_results",
]

METHODS: tuple[str, ...] = ("naive", "sdpa", "lsh", "reformer", "infini", "rmt")
"""The course's methods, in the order of its chapters."""
MODES: tuple[str, ...] = ("forward", "forward+backward")
"""``forward``: the loss without autograd (reading); ``forward+backward``: the loss and its gradients (training)."""
TASKS: tuple[str, ...] = ("passkey", "associative", "copy")
"""The long-context tasks of the quality comparison (:func:`task_batch`)."""
SAME_FUNCTION = {"naive": "sdpa", "reformer": "lsh"}
"""Methods that compute another's function (chapters 1, 3 and 4 prove it): quality is measured once per pair."""

REGENERATE_COMMAND = "make checkpoints-bench (python -m longctx_lib.bench train)"
CHECKPOINT_DIR = find_checkpoint_dir(Path("checkpoints") / "bench", "LONGCTX_BENCH_CHECKPOINTS")
"""Where the quality models live (``$LONGCTX_BENCH_CHECKPOINTS`` overrides it)."""


def _check_int(name: str, value: object, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")
    return value


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return method  # type: ignore[return-value]


def _check_names(name: str, values: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values \
            or any(v not in allowed for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list of distinct names from {allowed}; got {values!r}")
    return tuple(values)


def _check_model(model: object) -> nn.Module:
    kinds = (FullAttentionLM, ReformerLM, InfiniTransformer, RecurrentMemoryTransformer)
    if not isinstance(model, kinds):
        raise TypeError(f"model must be a model of build_model (one of {[k.__name__ for k in kinds]}); "
                        f"got {type(model).__name__}")
    return model  # type: ignore[return-value]


def _check_tokens(tokens: object, model: nn.Module, name: str = "tokens") -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2 or tokens.shape[1] < 2:
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be an int64 tensor (batch, length >= 2) of token ids; got {got}")
    vocab = model.embed.num_embeddings
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"{name} must lie in [0, vocab_size={vocab}); got {int(tokens.min())} .. {int(tokens.max())}")
    return tokens


def _check_rows(rows: object, keys: tuple[str, ...] = ("method", "mode", "length", "status")) -> list[dict]:
    if not isinstance(rows, (list, tuple)) or any(not isinstance(r, dict) or not set(keys) <= set(r) for r in rows):
        raise ValueError(f"rows must be a list of dicts with the keys {keys} (measure_speed's rows)")
    return list(rows)


def _check_results(results: object, name: str = "results") -> dict:
    if not isinstance(results, dict) or not {"speed", "quality"} <= set(results):
        raise ValueError(f"{name} must be a results dict with 'speed' and 'quality' entries "
                         "(run_benchmark or load_results)")
    return results


# --------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class ModelSizes:
    """The sizes every method's model shares; ``d_ff`` is the full-attention model's.

    ``segment_length`` is that of Infini-attention and RMT, ``n_memory`` RMT's memory
    tokens, ``chunk_size`` and ``n_hashes`` LSH's. :func:`matched_sizes` changes ``d_ff``
    per method so that every model has the full-attention model's parameter count.
    """

    vocab_size: int = TASK_VOCAB
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256
    segment_length: int = 32
    n_memory: int = 8
    chunk_size: int = 32
    n_hashes: int = 2
    max_length: int = 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_int(f.name, getattr(self, f.name))
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must be n_heads={self.n_heads} times an even head size "
                             "(rotary positions rotate pairs of dimensions)")
        if self.vocab_size < TASK_VOCAB:
            raise ValueError(f"vocab_size must be >= {TASK_VOCAB} (the tasks' tokens); got {self.vocab_size}")


@dataclass(frozen=True)
class SpeedConfig:
    """What :func:`measure_speed` sweeps: lengths ``start, 2 start, ... <= stop`` under ``budget_mib``.

    ``timeout`` (seconds, the CPU only) stops one measurement that takes longer: that
    length counts as not fitting. ``repeats`` timed calls per length (median).
    """

    sizes: ModelSizes = field(default_factory=lambda: ModelSizes(d_model=128, d_ff=512, segment_length=512,
                                                                 n_memory=16, chunk_size=64, max_length=2**20))
    methods: tuple[str, ...] = METHODS
    modes: tuple[str, ...] = MODES
    start: int = 1024
    stop: int = 2**20
    budget_mib: float = 4096.0
    repeats: int = 1
    timeout: float | None = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.sizes, ModelSizes):
            raise TypeError(f"sizes must be a ModelSizes; got {type(self.sizes).__name__}")
        object.__setattr__(self, "methods", _check_names("methods", self.methods, METHODS))
        object.__setattr__(self, "modes", _check_names("modes", self.modes, MODES))
        _check_int("start", self.start, 2)
        _check_int("stop", self.stop, self.start)
        _check_int("repeats", self.repeats)
        if isinstance(self.budget_mib, bool) or not isinstance(self.budget_mib, (int, float)) \
                or not self.budget_mib > 0:
            raise ValueError(f"budget_mib must be a positive number of MiB; got {self.budget_mib!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None; got {self.timeout!r}")
        if self.stop > self.sizes.max_length:
            raise ValueError(f"stop={self.stop} exceeds sizes.max_length={self.sizes.max_length} "
                             "(the Reformer's axial positions): raise max_length")


@dataclass(frozen=True)
class QualityConfig:
    """How the quality models are trained and evaluated (the shipped checkpoints use the defaults).

    Every model trains ``steps`` Adam steps on ``batch`` fresh sequences of ``train_length``
    tokens, the loss on the answer tokens only, and is evaluated on ``eval_sequences``
    new sequences at ``train_length`` times each of ``eval_multiples``.
    """

    sizes: ModelSizes = field(default_factory=ModelSizes)
    methods: tuple[str, ...] = ("sdpa", "lsh", "infini", "rmt")
    tasks: tuple[str, ...] = TASKS
    train_length: int = 128
    eval_multiples: tuple[int, ...] = (1, 2, 4, 8)
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    eval_sequences: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.sizes, ModelSizes):
            raise TypeError(f"sizes must be a ModelSizes; got {type(self.sizes).__name__}")
        object.__setattr__(self, "methods", _check_names("methods", self.methods, METHODS))
        object.__setattr__(self, "tasks", _check_names("tasks", self.tasks, TASKS))
        for name in ("steps", "batch", "eval_sequences"):
            _check_int(name, getattr(self, name))
        _check_int("train_length", self.train_length, 32)
        _check_int("warmup", self.warmup, 0)
        _check_int("seed", self.seed, 0)
        multiples = self.eval_multiples
        if not isinstance(multiples, (list, tuple)) or not multiples or \
                any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in multiples):
            raise ValueError(f"eval_multiples must be a non-empty list of positive integers; got {multiples!r}")
        object.__setattr__(self, "eval_multiples", tuple(multiples))
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number; got {self.lr!r}")
        if self.train_length * max(multiples) > self.sizes.max_length:
            raise ValueError(f"the longest evaluation ({self.train_length} x {max(multiples)} tokens) exceeds "
                             f"sizes.max_length={self.sizes.max_length}: raise max_length")

    def training_key(self) -> dict:
        """What a trained model depends on (evaluation settings excluded), as JSON."""
        return {"sizes": asdict(self.sizes), "train_length": self.train_length, "steps": self.steps,
                "batch": self.batch, "lr": self.lr, "warmup": self.warmup, "seed": self.seed}


def _check_quality_config(config: object) -> QualityConfig:
    config = config if config is not None else QualityConfig()
    if not isinstance(config, QualityConfig):
        raise TypeError(f"config must be a QualityConfig; got {type(config).__name__}")
    return config


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"speed": {"start": 1024, "stop": 4096, "budget_mib": 384.0, "repeats": 1, "timeout": 300.0},
              "quality": {"eval_sequences": 32, "eval_multiples": (1, 2, 4)}},
    "cpu": {"speed": {"start": 1024, "stop": 65536, "budget_mib": 4096.0, "repeats": 2, "timeout": 600.0},
            "quality": {}},
    "gpu": {"speed": {"start": 1024, "stop": 2**20, "budget_mib": 40960.0, "repeats": 3, "timeout": None},
            "quality": {"eval_sequences": 512}},
}
"""Named sizes of a whole run (:func:`run_benchmark`): ``smoke`` for CI, ``cpu`` a laptop
in minutes to an hour, ``gpu`` up to a million tokens in a 40 GiB budget."""


# --------------------------------------------------------------------------- models
class _RotaryBlock(nn.Module):
    """Pre-LN block with exact causal attention on rotary positions. ``(B, L, d)`` in and out."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, impl: str) -> None:
        super().__init__()
        self.n_heads, self.impl = n_heads, impl
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = attention(rotary(q), rotary(k), v, causal=True, impl=self.impl)  # (B, H, L, hd)
        x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
        return x + self.ff(self.norm2(x))


class FullAttentionLM(nn.Module):
    """The baseline: a causal pre-LN transformer with exact attention and rotary positions.

    ``impl="naive"`` builds every score (chapter 1's reference), ``"sdpa"`` calls PyTorch's
    fused kernel (FlashAttention or memory-efficient attention where the device has them).
    Rotary positions, as in Infini-attention's segments, so the model runs at any length.
    ``forward(tokens (B, L)) -> logits (B, L, vocab)``.
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, *,
                 impl: str = "sdpa") -> None:
        super().__init__()
        if impl not in ("naive", "sdpa"):
            raise ValueError(f'impl must be "naive" or "sdpa"; got {impl!r}')
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_heads", n_heads),
                            ("d_ff", d_ff), ("n_layers", n_layers)):
            _check_int(name, value)
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model={d_model} must be n_heads={n_heads} times an even head size "
                             "(rotary positions rotate pairs of dimensions)")
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(_RotaryBlock(d_model, n_heads, d_ff, impl) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens, self)
        x = self.embed(tokens)  # (B, L, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, L, vocab)


def build_model(method: str, sizes: ModelSizes | None = None) -> nn.Module:
    """A fresh causal language model of ``method`` with ``sizes`` (default :class:`ModelSizes`)."""
    method = _check_method(method)
    s = sizes if sizes is not None else ModelSizes()
    if not isinstance(s, ModelSizes):
        raise TypeError(f"sizes must be a ModelSizes; got {type(s).__name__}")
    if method in ("naive", "sdpa"):
        return FullAttentionLM(s.vocab_size, s.d_model, s.n_heads, s.d_ff, s.n_layers, impl=method)
    if method in ("lsh", "reformer"):
        stage = "+LSH" if method == "lsh" else "+chunking"
        config = ablation_config(stage, vocab_size=s.vocab_size, d_model=s.d_model, n_heads=s.n_heads,
                                 d_ff=s.d_ff, n_layers=s.n_layers, n_hashes=s.n_hashes, chunk_size=s.chunk_size,
                                 max_length=s.max_length, ff_chunk_size=max(s.chunk_size, 1024),
                                 loss_chunk_size=max(s.chunk_size, 1024))
        return ReformerLM(config)
    if method == "infini":
        return InfiniTransformer(s.vocab_size, s.d_model, s.n_heads, s.d_ff, s.n_layers,
                                 segment_length=s.segment_length, rule="linear")
    return RecurrentMemoryTransformer(s.vocab_size, s.d_model, s.n_heads, s.d_ff, s.n_layers,
                                      segment_length=s.segment_length, n_memory=s.n_memory, impl="sdpa")


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_sizes(method: str, sizes: ModelSizes | None = None) -> ModelSizes:
    """``sizes`` with ``d_ff`` chosen so that ``method``'s model has the full-attention model's parameter count.

    Parameters grow linearly with ``d_ff``, so two builds give the slope; the result
    is within one feed-forward unit per layer of the target.
    """
    method = _check_method(method)
    s = sizes if sizes is not None else ModelSizes()
    target = n_parameters(build_model("sdpa", s))
    if method in ("naive", "sdpa"):
        return s
    one, two = (n_parameters(build_model(method, replace(s, d_ff=d))) for d in (1, 2))
    d_ff = round(1 + (target - one) / (two - one))
    if d_ff < 1:
        raise ValueError(f"{method} has more parameters than the full-attention model at any d_ff; "
                         f"raise sizes.d_ff (now {s.d_ff})")
    return replace(s, d_ff=d_ff)


# --------------------------------------------------------------------------- losses
def _wide(x: Tensor) -> Tensor:
    """Half-precision logits in float32 for the loss; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def lm_logits(model: nn.Module, tokens: Tensor) -> Tensor:
    """Next-token logits ``(B, L, vocab)`` of any method's model for ``tokens`` ``(B, L)``."""
    _check_tokens(tokens, _check_model(model))
    if isinstance(model, InfiniTransformer):
        return model(tokens)[0]
    if isinstance(model, ReformerLM):
        return model.logits(tokens)
    return model(tokens)


def lm_loss(model: nn.Module, tokens: Tensor, *, streamed: bool = False) -> Tensor:
    """Mean next-token cross-entropy (nats) of ``tokens`` ``(B, L)`` under any method's model.

    ``streamed`` (reading, without autograd) runs Infini-attention and RMT through their
    ``stream`` methods and sums the loss segment by segment: only one segment's logits and
    the memory are alive, so their memory does not grow with the length. The Reformer
    uses its chunked loss.
    """
    _check_tokens(tokens, _check_model(model))
    if isinstance(model, ReformerLM):
        return model.loss(tokens)
    if streamed and isinstance(model, (InfiniTransformer, RecurrentMemoryTransformer)):
        total, start, length = None, 0, tokens.shape[1]
        for logits in model.stream(tokens.split(model.segment_length, dim=1)):  # (B, n, vocab), no autograd
            n = min(start + logits.shape[1], length - 1) - start  # the last token has no successor
            if n > 0:
                part = F.cross_entropy(_wide(logits[:, :n].flatten(0, 1)), tokens[:, start + 1:start + 1 + n].flatten(),
                                       reduction="sum")
                total = part if total is None else total + part
            start += logits.shape[1]
        return total / (tokens.shape[0] * (length - 1))
    logits = lm_logits(model, tokens)
    return F.cross_entropy(_wide(logits[:, :-1].flatten(0, 1)), tokens[:, 1:].flatten())


# --------------------------------------------------------------------------- speed and memory
def speed_step(method: str, length: int, *, mode: str = "forward", sizes: ModelSizes | None = None,
               repeats: int = 1, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Build ``method``'s model, then time ``repeats`` passes over one random sequence of ``length`` tokens.

    ``mode="forward"`` computes the loss without autograd (Infini-attention and RMT
    streamed segment by segment); ``"forward+backward"`` the loss and every gradient
    (through every segment: full backpropagation through time). A workload for
    :func:`~longctx_lib.measure.peak_memory` (module-level and picklable, builds its own
    model and input). Returns ``{"seconds": median, "loss": nats}``.
    """
    method = _check_method(method)
    _check_int("length", length, 2)
    _check_int("repeats", repeats)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_model(method, sizes).to(dev)
    model.train(mode != "forward")
    vocab = model.embed.num_embeddings
    tokens = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed)).to(dev)
    times, loss = [], float("nan")
    for _ in range(repeats):
        synchronize(dev)
        begin = time.perf_counter()
        if mode == "forward":
            with torch.no_grad():
                value = lm_loss(model, tokens, streamed=True)
        else:
            value = lm_loss(model, tokens)
            value.backward()
            model.zero_grad(set_to_none=True)
        loss = value.item()
        times.append(time.perf_counter() - begin)
    return {"seconds": statistics.median(times), "loss": loss}


def _failure(error: BaseException) -> str | None:
    """``"oom"`` or ``"timeout"`` for the failures that mean "does not fit"; None for a bug."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() \
            or "killed by signal 9" in text or "DefaultCPUAllocator" in text:
        return "oom"
    return None


def measure_speed(config: SpeedConfig | None = None, *, device: str | torch.device = "cpu",
                  progress: bool = True) -> list[dict]:
    """Time and peak memory of every method and mode at doubling lengths, each until it no longer fits.

    One row per measurement: ``{"method", "mode", "length", "status", "seconds",
    "peak_bytes", "loss"}``; ``status`` is ``"ok"``, ``"over_budget"`` (measured, but the
    peak passed ``budget_mib``), ``"oom"`` or ``"timeout"`` (then the numbers are None).
    The first length that does not fit ends that method's sweep. On the CPU each
    measurement runs in a fresh process (see :func:`~longctx_lib.measure.peak_memory`).
    """
    config = config if config is not None else SpeedConfig()
    if not isinstance(config, SpeedConfig):
        raise TypeError(f"config must be a SpeedConfig; got {type(config).__name__}")
    dev = resolve_device(device)
    budget = config.budget_mib * 2**20
    lengths = [config.start * 2**i for i in range(int(math.log2(config.stop // config.start)) + 1)]
    jobs = [(m, mode) for m in config.methods for mode in config.modes]
    rows: list[dict] = []
    bar = tqdm(total=len(jobs) * len(lengths), desc="speed and memory", disable=not progress)
    for method, mode in jobs:
        for i, length in enumerate(lengths):
            bar.set_postfix_str(f"{method} {mode} {length}")
            work = functools.partial(speed_step, method, length, mode=mode, sizes=config.sizes,
                                     repeats=config.repeats, device=str(dev))
            row = {"method": method, "mode": mode, "length": length, "status": "ok",
                   "seconds": None, "peak_bytes": None, "loss": None}
            try:
                timeout = config.timeout if dev.type == "cpu" else None
                peak, value = peak_memory(work, device=dev, return_value=True, timeout=timeout)
                row.update(seconds=value["seconds"], peak_bytes=int(peak), loss=value["loss"])
                if peak > budget:
                    row["status"] = "over_budget"
            except (RuntimeError, TimeoutError, MemoryError) as error:
                status = _failure(error)
                if status is None:
                    raise
                row["status"] = status
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            bar.update(1)
            if row["status"] != "ok":
                bar.update(len(lengths) - i - 1)
                break
    bar.close()
    return rows


def longest_fitting(rows: Sequence[dict]) -> dict[str, dict[str, int | None]]:
    """``{method: {mode: longest length with status "ok" (None if none)}}`` from :func:`measure_speed` rows."""
    rows = _check_rows(rows)
    best: dict[str, dict[str, int | None]] = {}
    for row in rows:
        slot = best.setdefault(row["method"], {}).setdefault(row["mode"], None)
        if row["status"] == "ok" and (slot is None or row["length"] > slot):
            best[row["method"]][row["mode"]] = row["length"]
    return best


# --------------------------------------------------------------------------- tasks
N_PAIRS = 8
"""Key-value pairs stored at the start of an associative-retrieval sequence."""
PASSKEY_DIGITS = 3
"""Digits of a passkey (chance 0.1 %), as in chapter 5."""


def task_batch(task: str, batch: int, length: int, *, generator: torch.Generator | None = None,
               device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``batch`` sequences of exactly ``length`` tokens of ``task``: ``(tokens, answer_mask)``, both ``(B, L)``.

    - ``"passkey"``: chapter 5's passkey (:func:`~longctx_lib.tasks.passkey_batch`,
      3 digits) at a random depth in repeated filler; the answer is the 3 digits at the end.
    - ``"associative"``: :data:`N_PAIRS` key-value pairs (chapter 6's associative
      retrieval) at the start, random distractor words, then ``ASK key value``; the
      answer is the value. The distance to bridge grows with the length; the amount to
      remember does not.
    - ``"copy"``: ``x1 .. xn SEP x1 .. xn`` with ``n = (length - 1) // 2`` (one distractor
      first if ``length`` is even); the answer is the whole copy. What must be
      remembered grows with the length.

    Every token id is below :data:`~longctx_lib.tasks.TASK_VOCAB`.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    _check_int("batch", batch)
    _check_int("length", length, 2 * N_PAIRS + 4 if task == "associative" else 8)
    if task == "passkey":
        tokens, _ = passkey_batch(batch, length, n_digits=PASSKEY_DIGITS, generator=generator)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, length - PASSKEY_DIGITS:] = True
    elif task == "associative":
        keys = torch.rand(batch, N_SYMBOLS, generator=generator).argsort(dim=1)[:, :N_PAIRS]  # distinct
        values = torch.randint(0, N_SYMBOLS, (batch, N_PAIRS), generator=generator)
        pairs = torch.stack([keys, values], dim=2).reshape(batch, 2 * N_PAIRS)
        words = torch.tensor(DISTRACTOR_TOKENS)
        filler = words[torch.randint(0, len(words), (batch, length - 2 * N_PAIRS - 3), generator=generator)]
        asked = torch.randint(0, N_PAIRS, (batch, 1), generator=generator)
        question = torch.cat([torch.full((batch, 1), ASK_TOKEN), keys.gather(1, asked), values.gather(1, asked)], 1)
        tokens = torch.cat([pairs, filler, question], dim=1)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, -1] = True
    else:
        n = (length - 1) // 2
        x = torch.randint(0, N_SYMBOLS, (batch, n), generator=generator)
        lead = torch.tensor(DISTRACTOR_TOKENS[:1]).expand(batch, length - 2 * n - 1)
        tokens = torch.cat([lead, x, torch.full((batch, 1), SEP_TOKEN), x], dim=1)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, length - n:] = True
    if device is not None:
        dev = resolve_device(device)
        tokens, mask = tokens.to(dev), mask.to(dev)
    return tokens, mask


def answer_logits(model: nn.Module, tokens: Tensor, answer_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Logits of the predictions of the answer tokens ``(n_answers, vocab)`` and those tokens ``(n_answers,)``.

    A causal model predicts token ``t + 1`` at position ``t``.
    """
    _check_tokens(tokens, _check_model(model))
    if not isinstance(answer_mask, Tensor) or answer_mask.dtype != torch.bool or answer_mask.shape != tokens.shape:
        raise ValueError(f"answer_mask must be a bool tensor of the shape of tokens {tuple(tokens.shape)}")
    if bool(answer_mask[:, 0].any()):
        raise ValueError("answer_mask cannot mark position 0 (nothing precedes it to predict it from)")
    logits = lm_logits(model, tokens)  # (B, L, V)
    scored = answer_mask[:, 1:]
    return logits[:, :-1][scored], tokens[:, 1:][scored]


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, step / warmup) if warmup else 1.0


def train_quality(method: str, task: str, config: QualityConfig | None = None, *, progress: bool = True,
                  device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Train ``method``'s model (matched sizes) on ``task`` at ``config.train_length`` tokens from scratch.

    Adam, linear warm-up, gradients clipped at norm 1, the cross-entropy of the answer
    tokens only. Returns ``(model in eval mode, history)``; ``history`` holds the loss and
    the training-batch accuracy every 50 steps, the seconds and the parameter count.
    The caller's random state is left as it was.
    """
    config = _check_quality_config(config)
    method = _check_method(method)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    dev = resolve_device(device)
    history: dict = {"step": [], "loss": [], "accuracy": []}
    begin = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model(method, matched_sizes(method, config.sizes)).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        data = torch.Generator().manual_seed(config.seed + 1)
        losses, hits = [], []
        bar = tqdm(range(1, config.steps + 1), desc=f"{method} on {task}", disable=not progress, leave=False)
        for step in bar:
            tokens, mask = task_batch(task, config.batch, config.train_length, generator=data, device=dev)
            logits, targets = answer_logits(model, tokens, mask)
            loss = F.cross_entropy(_wide(logits), targets)
            for group in opt.param_groups:
                group["lr"] = config.lr * _lr_factor(step, config.warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            right = (logits.argmax(-1) == targets).view(config.batch, -1).all(dim=1)
            hits.append(right.float().mean().item())
            if step % 50 == 0 or step == config.steps:
                history["step"].append(step)
                history["loss"].append(statistics.fmean(losses))
                history["accuracy"].append(statistics.fmean(hits))
                bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{history['accuracy'][-1]:.2f}")
                losses, hits = [], []
    history.update(seconds=time.perf_counter() - begin, n_parameters=n_parameters(model))
    return model.eval(), history


@torch.no_grad()
def evaluate_quality(model: nn.Module, task: str, lengths: Sequence[int], *, n_sequences: int = 128,
                     batch: int = 32, seed: int = 1234, device: str | torch.device | None = None) -> dict[int, float]:
    """Fraction of ``n_sequences`` fresh sequences of each length whose every answer token is predicted (greedy).

    The same sequences for every model (seeded per length). Returns ``{length: accuracy}``.
    """
    _check_model(model)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if isinstance(lengths, (str, int)) or not isinstance(lengths, (list, tuple)) or not lengths:
        raise ValueError(f"lengths must be a non-empty list of sequence lengths; got {lengths!r}")
    _check_int("n_sequences", n_sequences)
    _check_int("batch", batch)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = {}
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for length in lengths:
            _check_int("length", length, 2)
            torch.manual_seed(seed)  # LSH draws its rotations: the same ones for every run
            data = torch.Generator().manual_seed(seed + length)
            right = 0
            for start in range(0, n_sequences, batch):
                b = min(batch, n_sequences - start)
                tokens, mask = task_batch(task, b, length, generator=data, device=dev)
                right += round(answer_accuracy(lm_logits(model, tokens), tokens, mask) * b)
            scores[int(length)] = right / n_sequences
    model.train(was_training)
    return scores


def _checkpoint_path(method: str, task: str, directory: Path | None = None) -> Path:
    return (directory if directory is not None else CHECKPOINT_DIR) / f"{task}-{method}.pt"


def load_or_train_quality(method: str, task: str, config: QualityConfig | None = None, *,
                          retrain: bool = False, progress: bool = True, device: str | torch.device = "cpu",
                          directory: str | Path | None = None) -> tuple[nn.Module, dict]:
    """The shipped model of ``method`` on ``task`` when it was trained with ``config``'s training
    settings; else :func:`train_quality` (with a warning), saved if none was there."""
    config = _check_quality_config(config)
    method = _check_method(method)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    dev = resolve_device(device)
    path = _checkpoint_path(method, task, Path(directory) if directory is not None else None)
    key = config.training_key()

    def load(p: Path) -> tuple:
        ckpt = read_checkpoint(p, REGENERATE_COMMAND)
        return ckpt, ckpt.get("history", {})

    def matches(loaded: tuple) -> bool:
        return same_config(loaded[0].get("key"), key)

    def train() -> tuple:
        return train_quality(method, task, config, progress=progress, device=dev)

    def save(trained: tuple, p: Path) -> None:
        save_weights(trained[0], p, torch.bfloat16, key=key, history=trained[1])

    got = load_else_train(path, load=load, matches=matches, train=train, save=save, retrain=retrain,
                          regenerate=REGENERATE_COMMAND)
    if isinstance(got[0], nn.Module):
        return got
    model = build_model(method, matched_sizes(method, config.sizes))
    model.load_state_dict(got[0]["state_dict"])
    return model.to(dev).eval(), got[1]


def measure_quality(config: QualityConfig | None = None, *, device: str | torch.device = "cpu",
                    retrain: bool = False, progress: bool = True, directory: str | Path | None = None) -> list[dict]:
    """Accuracy of every method on every task at each evaluation length (shipped models, else trained).

    One row per (task, method, length): ``{"task", "method", "length", "multiple",
    "accuracy", "n_parameters", "train_seconds"}``.
    """
    config = _check_quality_config(config)
    dev = resolve_device(device)
    lengths = [config.train_length * m for m in config.eval_multiples]
    rows = []
    pairs = [(t, m) for t in config.tasks for m in config.methods]
    for task, method in tqdm(pairs, desc="quality", disable=not progress):
        model, history = load_or_train_quality(method, task, config, retrain=retrain, progress=progress,
                                               device=dev, directory=directory)
        scores = evaluate_quality(model, task, lengths, n_sequences=config.eval_sequences, device=dev)
        for length, accuracy in scores.items():
            rows.append({"task": task, "method": method, "length": length,
                         "multiple": length // config.train_length, "accuracy": accuracy,
                         "n_parameters": n_parameters(model), "train_seconds": history.get("seconds")})
    return rows


# --------------------------------------------------------------------------- results
def machine_description(device: str | torch.device = "cpu") -> dict:
    """Where a result came from: the device, processor, cores, memory, software and time."""
    dev = resolve_device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    info = {"device": describe_device(dev), "device_type": dev.type, "cpu": cpu, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "memory_bytes": memory, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _profile(name: str) -> dict:
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}; got {name!r}")
    return copy.deepcopy(PROFILES[name])


def run_benchmark(profile: str = "cpu", *, device: str | torch.device = "auto", speed: bool = True,
                  quality: bool = True, speed_config: SpeedConfig | None = None,
                  quality_config: QualityConfig | None = None, progress: bool = True) -> dict:
    """The whole comparison: ``{"machine", "profile", "speed_config", "quality_config", "speed", "longest", "quality"}``.

    ``profile`` (:data:`PROFILES`) sets the sizes unless a config is given.
    """
    chosen = _profile(profile)
    dev = resolve_device(device)
    speed_config = speed_config if speed_config is not None else SpeedConfig(**chosen["speed"])
    quality_config = quality_config if quality_config is not None else QualityConfig(**chosen["quality"])
    result: dict = {"version": 1, "machine": machine_description(dev), "profile": profile,
                    "speed_config": asdict(speed_config), "quality_config": asdict(quality_config)}
    begin = time.perf_counter()
    rows = measure_speed(speed_config, device=dev, progress=progress) if speed else []
    result.update(speed=rows, longest=longest_fitting(rows))
    result["quality"] = measure_quality(quality_config, device=dev, progress=progress) if quality else []
    result["seconds"] = time.perf_counter() - begin
    return result


def save_results(results: dict, path: str | Path) -> Path:
    """Write ``results`` as indented JSON (the parent folder is created)."""
    if not isinstance(results, dict) or "machine" not in results:
        raise ValueError("results must be a dict from run_benchmark (with a 'machine' entry)")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path; got {type(path).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def load_results(path: str | Path) -> dict:
    """Read a results file written by :func:`save_results`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path; got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}; write one with: python -m longctx_lib.bench run")
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or not {"machine", "speed", "quality"} <= set(results):
        raise ValueError(f"{path} is not a results file of longctx_lib.bench (no machine, speed, quality entries)")
    return results


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def compare_results(a: dict, b: dict) -> dict:
    """Ratios ``b / a`` for every measurement both result sets share.

    ``{"speed": [{"method", "mode", "length", "time_ratio", "memory_ratio"}],
    "longest": [{"method", "mode", "a", "b"}], "quality": [{"task", "method", "length", "a", "b", "difference"}]}``.
    """
    _check_results(a, "a")
    _check_results(b, "b")
    index = {(r["method"], r["mode"], r["length"]): r for r in a["speed"] if r["status"] == "ok"}
    speed = []
    for r in b["speed"]:
        key = (r["method"], r["mode"], r["length"])
        if r["status"] == "ok" and key in index:
            old = index[key]
            speed.append({"method": key[0], "mode": key[1], "length": key[2],
                          "time_ratio": _ratio(old["seconds"], r["seconds"]),
                          "memory_ratio": _ratio(old["peak_bytes"], r["peak_bytes"])})
    la, lb = longest_fitting(a["speed"]), longest_fitting(b["speed"])
    longest = [{"method": m, "mode": mode, "a": la[m][mode], "b": lb[m][mode]}
               for m in la if m in lb for mode in la[m] if mode in lb[m]]
    qa = {(r["task"], r["method"], r["length"]): r["accuracy"] for r in a["quality"]}
    quality = [{"task": r["task"], "method": r["method"], "length": r["length"], "a": qa[key],
                "b": r["accuracy"], "difference": r["accuracy"] - qa[key]}
               for r in b["quality"] if (key := (r["task"], r["method"], r["length"])) in qa]
    return {"speed": speed, "longest": longest, "quality": quality,
            "machines": [a.get("machine", {}).get("device"), b.get("machine", {}).get("device")]}


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_comparison(comparison: dict) -> str:
    """A plain-text table of :func:`compare_results` (ratios b / a: below 1 means b is faster or smaller)."""
    if not isinstance(comparison, dict) or not {"speed", "longest", "quality"} <= set(comparison):
        raise ValueError("comparison must be the dict of compare_results (speed, longest, quality)")
    a, b = comparison.get("machines", [None, None])
    lines = [f"a: {a}", f"b: {b}", "", "time and peak memory, ratio b / a",
             f"{'method':<10} {'mode':<17} {'length':>8} {'time':>8} {'memory':>8}"]
    for r in comparison["speed"]:
        lines.append(f"{r['method']:<10} {r['mode']:<17} {r['length']:>8} {_fmt(r['time_ratio'], '8.2f')} "
                     f"{_fmt(r['memory_ratio'], '8.2f')}")
    lines += ["", "longest length within the budget", f"{'method':<10} {'mode':<17} {'a':>9} {'b':>9}"]
    for r in comparison["longest"]:
        lines.append(f"{r['method']:<10} {r['mode']:<17} {_fmt(r['a'], '9d')} {_fmt(r['b'], '9d')}")
    lines += ["", "accuracy (b - a)", f"{'task':<12} {'method':<10} {'length':>7} {'a':>6} {'b':>6} {'b-a':>7}"]
    for r in comparison["quality"]:
        lines.append(f"{r['task']:<12} {r['method']:<10} {r['length']:>7} {r['a']:6.2f} {r['b']:6.2f} "
                     f"{r['difference']:+7.2f}")
    return "\n".join(lines)


def results_table(results: dict) -> list[dict]:
    """One row per method: the longest length within the budget and the time and peak there, per mode,
    plus the mean accuracy per task beyond the training length (multiples > 1)."""
    _check_results(results)
    rows = []
    methods = list(dict.fromkeys([r["method"] for r in results["speed"]] +
                                 [r["method"] for r in results["quality"]]))
    for method in methods:
        row: dict = {"method": method}
        for mode in MODES:
            ok = [r for r in results["speed"] if r["method"] == method and r["mode"] == mode and r["status"] == "ok"]
            top = max(ok, key=lambda r: r["length"]) if ok else None
            row[mode] = {"longest": top["length"] if top else None, "seconds": top["seconds"] if top else None,
                         "peak_bytes": top["peak_bytes"] if top else None}
        for task in TASKS:
            cells = [r for r in results["quality"] if r["method"] == method and r["task"] == task]
            beyond = [r["accuracy"] for r in cells if r["multiple"] > 1]
            at = [r["accuracy"] for r in cells if r["multiple"] == 1]
            row[task] = {"trained": at[0] if at else None,
                         "beyond": statistics.fmean(beyond) if beyond else None}
        rows.append(row)
    return rows


def _length_axis(ax, lengths: list[int]) -> None:
    """Log-scaled x axis ticked at the measured lengths, labelled 512, 1K, 2K, ... 1M."""
    import matplotlib.ticker

    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [f"{n // 2**20}M" if n >= 2**20 and n % 2**20 == 0 else
                          f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n) for n in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _plot_speed(ax, results: dict, mode: str, key: str) -> None:
    for method in METHODS:
        ok = [r for r in results["speed"] if r["method"] == method and r["mode"] == mode and r["status"] == "ok"]
        if ok:
            scale = 2**-20 if key == "peak_bytes" else 1.0
            ax.plot([r["length"] for r in ok], [r[key] * scale for r in ok], "o-", label=method,
                    color=f"C{METHODS.index(method)}")
    budget = results.get("speed_config", {}).get("budget_mib")
    if key == "peak_bytes" and budget:
        ax.axhline(budget, color="gray", linestyle="--", label="budget")
    what = "peak memory (MiB)" if key == "peak_bytes" else "time per sequence (s)"
    ax.set(yscale="log", xlabel="sequence length (tokens)", ylabel=what, title=f"{mode}: {what.split(' (')[0]}")
    _length_axis(ax, [r["length"] for r in results["speed"] if r["mode"] == mode])
    ax.legend(fontsize=8)


def _plot_task(ax, results: dict, task: str) -> None:
    for method in METHODS:
        cells = sorted((r for r in results["quality"] if r["task"] == task and r["method"] == method),
                       key=lambda r: r["length"])
        if cells:
            ax.plot([r["length"] for r in cells], [r["accuracy"] for r in cells], "o-", label=method,
                    color=f"C{METHODS.index(method)}")
    trained = results.get("quality_config", {}).get("train_length")
    if trained:
        ax.axvline(trained, color="gray", linestyle=":", label="training length")
    ax.set(ylim=(-0.05, 1.05), xlabel="sequence length (tokens)", ylabel="accuracy (whole answers)",
           title=f"{task}: accuracy")
    _length_axis(ax, [r["length"] for r in results["quality"] if r["task"] == task] or [1])
    ax.legend(fontsize=8)


def plot_results(results: dict, path: str | Path | None = None):
    """Time and peak memory against length (a column per mode) and accuracy against length (a panel per task).

    Draws only the parts ``results`` holds (a speed-only or quality-only run gives fewer panels).

    Returns the matplotlib figure, titled with the device; writes it to ``path`` when given.
    """
    import matplotlib.pyplot as plt

    _check_results(results)
    speed, quality = bool(results["speed"]), bool(results["quality"])
    n_rows = 2 * speed + quality or 1
    fig = plt.figure(figsize=(15, 4 * n_rows))
    grid = fig.add_gridspec(n_rows, 6)
    if speed:
        for col, mode in enumerate(MODES):
            _plot_speed(fig.add_subplot(grid[0, 3 * col:3 * col + 3]), results, mode, "seconds")
            _plot_speed(fig.add_subplot(grid[1, 3 * col:3 * col + 3]), results, mode, "peak_bytes")
    if quality:
        for i, task in enumerate(TASKS):
            _plot_task(fig.add_subplot(grid[n_rows - 1, 2 * i:2 * i + 2]), results, task)
    fig.suptitle(f"longctx_lib.bench on {results.get('machine', {}).get('device', 'an unknown device')}")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m longctx_lib.bench run | compare | plot | train``."""
    parser = argparse.ArgumentParser(prog="python -m longctx_lib.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure every method and write a results file")
    run.add_argument("--profile", default="cpu", choices=tuple(PROFILES))
    run.add_argument("--device", default="auto")
    run.add_argument("--out", default="_build/bench/results.json")
    run.add_argument("--plot", default=None, help="also write the figure here (default: beside --out)")
    run.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    run.add_argument("--no-speed", action="store_true")
    run.add_argument("--no-quality", action="store_true")
    cmp_ = sub.add_parser("compare", help="ratios between two results files (b / a)")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    plot = sub.add_parser("plot", help="draw a results file")
    plot.add_argument("results")
    plot.add_argument("--out", required=True)
    train = sub.add_parser("train", help="retrain the shipped quality models into checkpoints/bench/")
    train.add_argument("--device", default="cpu")
    train.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    train.add_argument("--tasks", nargs="+", default=None, choices=TASKS)
    args = parser.parse_args(argv)
    if args.command == "run":
        chosen = _profile(args.profile)
        if args.methods:
            chosen["speed"]["methods"] = tuple(args.methods)
            # naive attention computes SDPA's function and the Reformer the LSH model's: one model per pair
            chosen["quality"]["methods"] = tuple(dict.fromkeys(SAME_FUNCTION.get(m, m) for m in args.methods))
        results = run_benchmark(args.profile, device=args.device, speed=not args.no_speed,
                                quality=not args.no_quality, speed_config=SpeedConfig(**chosen["speed"]),
                                quality_config=QualityConfig(**chosen["quality"]))
        out = save_results(results, args.out)
        figure = Path(args.plot) if args.plot else out.with_suffix(".png")
        plot_results(results, figure)
        print(json.dumps(results_table(results), indent=1))
        print(f"wrote {out} and {figure}")
    elif args.command == "compare":
        print(format_comparison(compare_results(load_results(args.a), load_results(args.b))))
    elif args.command == "plot":
        plot_results(load_results(args.results), args.out)
        print(f"wrote {args.out}")
    else:
        config = QualityConfig()
        for task in args.tasks or config.tasks:
            for method in args.methods or config.methods:
                _, history = load_or_train_quality(method, task, config, retrain=True, device=args.device)
                print(f"{task:<12} {method:<9} {history['n_parameters']:>7} parameters, "
                      f"{history['seconds']:.0f} s, last training accuracy {history['accuracy'][-1]:.2f}")
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so that the workloads sent to child processes
    # pickle under their real name (longctx_lib.bench.speed_step, not __main__.speed_step).
    import longctx_lib.bench as _bench  # noqa: PLW0406

    sys.exit(_bench.main())
