"""What the package comparisons of ``benchmarks/infini.py`` and ``benchmarks/rmt.py`` share.

Both time our model against a third-party one of the same configuration: alternately,
the order reversed every repeat, on a CPU that other work may share, so only the ratios
of one run are compared. Imported by those scripts (not part of ``longctx_lib``).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable

from torch import Tensor, nn
from tqdm.auto import tqdm

from longctx_lib.bench import n_parameters as n_params  # noqa: F401 (the scripts import it from here)
from longctx_lib.device import resolve_device, synchronize


def load() -> str:
    """The 1/5/15-minute load average and the core count, for the record."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def alternate(runs: dict[str, Callable[[], object]], repeats: int, device: str, desc: str,
              before: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Time each run ``repeats`` times after one warm-up, alternating, the order reversed every repeat.

    ``before`` runs (untimed) before every call, the warm-up included.
    """
    dev = resolve_device(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for name in names:  # warm-up
        if before is not None:
            before()
        runs[name]()
    for i in tqdm(range(repeats), desc=desc):
        for name in (names if i % 2 == 0 else names[::-1]):
            if before is not None:
                before()
            synchronize(dev)
            start = time.perf_counter()
            runs[name]()
            synchronize(dev)
            times[name].append(time.perf_counter() - start)
    return times


def training_comparison(ours: nn.Module, theirs: nn.Module, run_ours: Callable[[Tensor], float],
                        run_theirs: Callable[[Tensor], float], tokens: Tensor, n_tokens: int, train_segments: int,
                        repeats: int, device: str) -> dict:
    """Forward+backward of both models' LM loss on ``tokens``, timed by :func:`alternate` with the
    gradients cleared before every call. ``run_*`` return the loss. Returns the row of the result."""
    losses: dict[str, float] = {}

    def run(name: str, fn: Callable[[Tensor], float]) -> None:
        losses[name] = fn(tokens)

    def clear() -> None:
        ours.zero_grad(set_to_none=True)
        theirs.zero_grad(set_to_none=True)

    times = alternate({"ours": functools.partial(run, "ours", run_ours),
                       "theirs": functools.partial(run, "theirs", run_theirs)},
                      repeats, device, "forward+backward, alternating", before=clear)
    clear()
    per_s = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    return {"tokens": n_tokens, "segments": train_segments, "tokens_per_s": per_s, "seconds": times,
            "loss": losses, "ratio": per_s["ours"] / per_s["theirs"]}


def print_comparison(row: dict, *, repeats: int, length: int, segment_length: int, vocab_size: int,
                     width: int = 36) -> None:
    """The table of a package comparison: tokens/s of both and ours/theirs, then the differences."""
    fwd, train, losses = row["forward"]["tokens_per_s"], row["train"]["tokens_per_s"], row["train"]["loss"]
    print(f"median of {repeats}, timed alternately, {load()}:")
    print(f"{'':{width}} {'ours tok/s':>11} {'theirs tok/s':>13} {'ours/theirs':>12}")
    print(f"{f'forward, stream {length:,} tokens':{width}} {fwd['ours']:>11,.0f} {fwd['theirs']:>13,.0f} "
          f"{row['forward']['ratio']:>11.2f}x")
    label = f"fwd+bwd LM loss, {row['train']['segments']} x {segment_length}"
    print(f"{label:{width}} {train['ours']:>11,.0f} {train['theirs']:>13,.0f} {row['train']['ratio']:>11.2f}x")
    print(f"  (throughput ratio: above 1 ours is faster; loss at initialisation: ours {losses['ours']:.3f}, "
          f"theirs {losses['theirs']:.3f} nats; ln {vocab_size} = {math.log(vocab_size):.3f})")
    print("where the two models differ (same architecture and sizes, not the same function):")
    for d in row["differences"]:
        print(f"  - {d}")
