"""Benchmark: memory and time of reversible, ordinary and checkpointed stacks against depth.

Run from the repository root (``make bench-reversible`` does):

    python benchmarks/reversible.py --device auto --length 16384 --depths 2 4 8 12 16 24

The stack is the Reformer's (chapter 3): blocks with LSH attention as ``f`` and the
feed-forward layer as ``g``, d_model 256, 4 heads, d_ff 1024, 2 hashing rounds, chunk 64,
float32, one sequence of ``--length`` tokens. For each depth and mode it measures, in one
run on one device, the peak memory of a training step's forward and backward pass (in a
fresh process on the CPU; the CUDA allocator's peak on a GPU) and, with ``--repeats``,
the median time of forward+backward. It prints each mode's peak relative to its own
2-layer figure (the issue's goal: reversible at 12 layers <= 1.2x; ordinary grows about
linearly) and the time of reversible and checkpointed stacks relative to the ordinary
one. The peaks include the weights and their gradients, which grow with depth in every
mode; the table shows that share.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch
from tqdm.auto import tqdm

from longctx_lib.device import describe_device, resolve_device
from longctx_lib.measure import peak_memory, time_fn
from longctx_lib.reversible import MODES, reversible_stack, reversible_stack_step

MiB = 2**20
CONFIG = {"d_model": 256, "n_heads": 4, "d_ff": 1024, "n_hashes": 2, "chunk_size": 64}


def param_bytes(n_layers: int) -> int:
    """Bytes of the weights plus their gradients (float32) of an ``n_layers`` stack."""
    seq = reversible_stack(CONFIG["d_model"], CONFIG["n_heads"], CONFIG["d_ff"], n_layers,
                           n_hashes=CONFIG["n_hashes"], chunk_size=CONFIG["chunk_size"])
    return 2 * 4 * sum(p.numel() for p in seq.parameters())


def step_time(length: int, n_layers: int, mode: str, device: torch.device, repeats: int) -> float:
    torch.manual_seed(0)
    seq = reversible_stack(CONFIG["d_model"], CONFIG["n_heads"], CONFIG["d_ff"], n_layers, mode=mode,
                           n_hashes=CONFIG["n_hashes"], chunk_size=CONFIG["chunk_size"]).to(device)
    x = torch.randn(1, length, CONFIG["d_model"], device=device)

    def step() -> None:
        y1, y2 = seq(x)
        (y1 + y2).square().mean().backward()

    return time_fn(step, repeats=repeats, device=device).median


def run(length: int, depths: list[int], device: str, repeats: int) -> dict:
    dev = resolve_device(device)
    rows = []
    for n in tqdm(depths, desc="depths"):
        row: dict = {"depth": n, "param_grad_MiB": param_bytes(n) / MiB}
        for mode in MODES:
            # peak_memory's `device` is where it measures; the workload gets its own bound
            work = functools.partial(reversible_stack_step, length, n, mode=mode, device=str(dev))
            row[f"{mode}_peak_MiB"] = peak_memory(work, device=str(dev), warmup=False) / MiB
            if repeats:
                row[f"{mode}_s"] = step_time(length, n, mode, dev, repeats)
        rows.append(row)
    return {"device": describe_device(dev), "length": length, "config": CONFIG, "rows": rows}


def report(result: dict) -> str:
    rows = result["rows"]
    base = rows[0]
    lines = [f"device: {result['device']}", f"length {result['length']}, {result['config']}", ""]
    head = (f"{'depth':>5} | {'weights+grads':>13} | " + " | ".join(f"{m + ' MiB (x own ' + str(base['depth']) + ')':>26}"
                                                           for m in MODES))
    timed = "reversible_s" in base
    if timed:
        head += f" | {'time rev/ord':>12} | {'time ckpt/ord':>13}"
    lines += [head, "-" * len(head)]
    for r in rows:
        line = f"{r['depth']:>5} | {r['param_grad_MiB']:>13.0f} | " + " | ".join(
            f"{r[f'{m}_peak_MiB']:>16.0f} ({r[f'{m}_peak_MiB'] / base[f'{m}_peak_MiB']:>5.2f}x)" for m in MODES)
        if timed:
            line += f" | {r['reversible_s'] / r['ordinary_s']:>11.2f}x | {r['checkpoint_s'] / r['ordinary_s']:>12.2f}x"
        lines.append(line)
    last = rows[-1]
    lines += ["", f"at {last['depth']} layers: ordinary / reversible peak = "
              f"{last['ordinary_peak_MiB'] / last['reversible_peak_MiB']:.2f}x, checkpoint / reversible = "
              f"{last['checkpoint_peak_MiB'] / last['reversible_peak_MiB']:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 12, 16, 24])
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per point (0: memory only)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if args.length < 1 or any(d < 1 for d in args.depths):
        parser.error("--length and --depths must be positive integers")
    result = run(args.length, sorted(args.depths), args.device, args.repeats)
    print(report(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
