"""Benchmark: reference (naive) attention versus PyTorch's fused SDPA, side by side.

Run from the repository root (``make bench`` does):

    python benchmarks/attention.py --device auto --lengths 1024 2048 4096 8192

For each length it measures, in one run on one device, the median time of a causal
forward and forward+backward pass and the peak memory of each, and prints the ratios
naive / SDPA. Ratios measured side by side are what to compare across machines; the
absolute numbers depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch
from tqdm.auto import tqdm

from longctx_lib.attention import attention, attention_step
from longctx_lib.device import describe_device, resolve_device
from longctx_lib.measure import fit_loglog_slope, peak_memory, time_fn

MiB = 2**20


def fwd_bwd(q, k, v, impl):
    attention(q, k, v, causal=True, impl=impl).sum().backward()


def run(lengths: list[int], device: str, heads: int, repeats: int) -> list[dict]:
    dev = resolve_device(device)
    rows = []
    for n in tqdm(lengths, desc="lengths"):
        row: dict = {"length": n}
        q, k, v = (torch.randn(1, heads, n, 64, device=dev, requires_grad=True) for _ in range(3))
        for impl in ("naive", "sdpa"):
            with torch.no_grad():
                row[f"{impl}_fwd_s"] = time_fn(
                    attention, q, k, v, causal=True, impl=impl, repeats=repeats, device=dev
                ).median
            row[f"{impl}_fwdbwd_s"] = time_fn(fwd_bwd, q, k, v, impl, repeats=repeats, device=dev).median
            # peak_memory's `device` is where it measures; the workload gets its own bound
            step = functools.partial(attention_step, n, heads=heads, impl=impl, device=str(dev))
            row[f"{impl}_peak_fwd_MiB"] = peak_memory(step, device=str(dev)) / MiB
            row[f"{impl}_peak_fwdbwd_MiB"] = peak_memory(step, backward=True, device=str(dev)) / MiB
        rows.append(row)
        del q, k, v
    return rows


def report(rows: list[dict], device: str) -> str:
    lines = [f"device: {describe_device(device)}", ""]
    head = (f"{'length':>8} | {'fwd time naive/sdpa':>22} | {'fwd+bwd time':>22} | "
            f"{'peak fwd MiB':>22} | {'peak fwd+bwd MiB':>22}")
    lines += [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key, fmt in (("fwd_s", "{:.3f}s"), ("fwdbwd_s", "{:.3f}s"),
                         ("peak_fwd_MiB", "{:.0f}"), ("peak_fwdbwd_MiB", "{:.0f}")):
            a, b = r[f"naive_{key}"], r[f"sdpa_{key}"]
            cells.append(f"{fmt.format(a)}/{fmt.format(b)} = {a / b:5.1f}x")
        lines.append(f"{r['length']:>8} | " + " | ".join(f"{c:>22}" for c in cells))
    if len(rows) >= 2:
        x = [r["length"] for r in rows]
        lines.append("")
        for key in ("fwd_s", "peak_fwd_MiB"):
            slopes = {impl: fit_loglog_slope(x, [r[f"{impl}_{key}"] for r in rows]) for impl in ("naive", "sdpa")}
            lines.append(f"log-log slope of {key}: naive {slopes['naive']:.2f}, sdpa {slopes['sdpa']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    rows = run(args.lengths, args.device, args.heads, args.repeats)
    print(report(rows, args.device))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": describe_device(args.device), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
