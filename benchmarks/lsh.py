"""Benchmark: our LSH attention layer versus Hugging Face's Reformer layer and SDPA.

Run from the repository root:

    python benchmarks/lsh.py --device cpu --lengths 4096 8192 16384 32768 65536 \
        --extra-lengths 131072 262144

Configuration (the same for every implementation): 4 heads x 64 (d_model 256), 4
hashing rounds, chunks of 64, causal, the paper's bucket count ``2 * length / 64``
(factorised above 128 buckets, exactly as Hugging Face does), batch 1, float32.

For each length it measures, in one run on one device, the median time of a forward
pass and of a forward+backward pass (:func:`longctx_lib.measure.time_fn`) and the peak
memory of each (:func:`longctx_lib.measure.peak_memory`: on the CPU a fresh child
process per measurement), and prints the ratios ours / Hugging Face and ours / SDPA
(full causal attention with the fused kernel, no projections: the quadratic baseline).
``--extra-lengths`` carries our layer alone further, to find the longest sequence whose
forward+backward fits in ``--memory-limit-gib``.

On a CPU shared with other processes the times swing by 2-5x from one run to the next,
and ours (a loop over tiles of chunks, a few hundred parallel operations) suffers more
from busy cores than Hugging Face's few large operations: compare ratios from one run,
and prefer an idle machine (or ``OMP_NUM_THREADS=1`` for a steadier comparison).

Before timing, a correctness cross-check runs both layers on the same weights and the
same buckets (Hugging Face's, passed into ours) in float64 and prints the largest
difference, explained:

* temperature: Hugging Face (like trax) computes logits ``q_i . k_j`` with unit keys and
  no ``1/sqrt(dim)``; ours divides by ``sqrt(dim)`` as ordinary attention does. The
  cross-check feeds ours ``sqrt(dim) * qk`` (same buckets, same unit keys) to compare;
  in a trained model the factor is absorbed by the shared QK projection;
* 1 round: the two then compute the same function (difference ~1e-6: Hugging Face adds
  1e-6 to the mean square in its key normalisation);
* 4 rounds without our duplicate correction: they differ only for queries in the FIRST
  chunk of a round's sorted order: Hugging Face (like trax) sorts all rounds as one
  sequence, so that chunk looks back at the last chunk of the previous round; ours
  looks back at the last chunk of its own round;
* 4 rounds with the correction (our default, the paper's appendix A; Hugging Face
  omits it): everywhere keys are reached in several rounds.

Hugging Face transformers is an optional dependency (``pip install
"transformers>=4.40,<6"``; Reformer is still in 5.x); without it the benchmark says so
and measures ours and SDPA only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys

import torch
from tqdm.auto import tqdm

from longctx_lib.attention import attention, attention_step
from longctx_lib.device import describe_device, resolve_device
from longctx_lib.lsh import LSHSelfAttention, default_n_buckets, lsh_attention
from longctx_lib.measure import peak_memory, time_fn

MiB = 2**20
HEADS, HEAD_DIM, N_HASHES, CHUNK = 4, 64, 4, 64


# ------------------------------------------------------------------ the two layers
def hf_available() -> str | None:
    """The installed transformers version if it has the Reformer layer, else None."""
    try:
        import transformers
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention as _  # noqa: F401
    except ImportError:
        return None
    return transformers.__version__


class HFLayer(torch.nn.Module):
    """Hugging Face's LSHSelfAttention followed by an output projection, as ours has."""

    def __init__(self, length: int, n_hashes: int = N_HASHES, chunk: int = CHUNK, causal: bool = True) -> None:
        super().__init__()
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention as HFLSH

        buckets = default_n_buckets(length, chunk)
        config = ReformerConfig(
            hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, attention_head_size=HEAD_DIM,
            num_hashes=n_hashes, lsh_attn_chunk_length=chunk, lsh_num_chunks_before=1,
            lsh_num_chunks_after=0, num_buckets=list(buckets) if isinstance(buckets, tuple) else buckets,
            is_decoder=causal, lsh_attention_probs_dropout_prob=0.0, max_position_embeddings=length,
            hash_seed=0, attn_layers=["lsh"],
        )
        self.attn = HFLSH(config)
        self.out = torch.nn.Linear(HEADS * HEAD_DIM, HEADS * HEAD_DIM, bias=False)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out(self.attn(x, **kwargs).hidden_states)


def make_layer(impl: str, length: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if impl == "hf":
        layer = HFLayer(length)
    else:
        layer = LSHSelfAttention(HEADS * HEAD_DIM, HEADS, n_hashes=N_HASHES, chunk_size=CHUNK)
    return layer.to(device)


def layer_step(impl: str, length: int, *, backward: bool = False, device: str = "cpu", seed: int = 0) -> None:
    """One causal call of a layer on random inputs (and its backward): a workload.

    Module-level and building its own inputs, so that
    :func:`longctx_lib.measure.peak_memory` can run it in a fresh process.
    """
    dev = resolve_device(device)
    layer = make_layer(impl, length, dev, seed)
    x = torch.randn(1, length, HEADS * HEAD_DIM, device=dev, requires_grad=backward)
    run_layer(layer, impl, x, backward)


def run_layer(layer: torch.nn.Module, impl: str, x: torch.Tensor, backward: bool) -> None:
    with torch.set_grad_enabled(backward):
        y = layer(x, causal=True) if impl == "ours" else layer(x)
        if backward:
            y.sum().backward()


def sdpa_step(length: int, *, backward: bool = False, device: str = "cpu") -> None:
    attention_step(length, heads=HEADS, head_dim=HEAD_DIM, impl="sdpa", causal=True,
                   backward=backward, device=device)


# ------------------------------------------------------------------- cross-check
def cross_check(length: int = 1024, seed: int = 0) -> list[str]:
    """Same weights, same buckets (Hugging Face's), float64: how far apart are the outputs?"""
    torch.manual_seed(seed)
    lines = [f"cross-check against Hugging Face, float64, length {length}, causal, chunk {CHUNK}:"]
    x = torch.randn(1, length, HEADS * HEAD_DIM, dtype=torch.float64)
    for n_hashes in (1, N_HASHES):
        hf = HFLayer(length, n_hashes=n_hashes).double().eval()
        with torch.no_grad():
            res = hf.attn(x)
            ref = res.hidden_states.view(1, length, HEADS, HEAD_DIM).transpose(1, 2)  # (B, H, L, hd)
            n_total = math.prod(hf.attn.num_buckets) if isinstance(hf.attn.num_buckets, list) else hf.attn.num_buckets
            buckets = res.buckets.view(1, HEADS, n_hashes, length)
            buckets = buckets - (torch.arange(n_hashes) * n_total).view(1, 1, -1, 1)  # drop HF's round offsets
            qk = (x @ hf.attn.query_key.weight.T).view(1, length, HEADS, HEAD_DIM).transpose(1, 2)
            v = (x @ hf.attn.value.weight.T).view(1, length, HEADS, HEAD_DIM).transpose(1, 2)
            # queries in the first chunk of some round's sorted order: HF's look-back differs there
            order = torch.sort(buckets, dim=-1, stable=True).indices  # (B, H, R, L)
            first = torch.zeros(1, HEADS, length, dtype=torch.bool)
            first.scatter_(2, order[..., :CHUNK].reshape(1, HEADS, -1), True)
            for dup in ((False, True) if n_hashes > 1 else (True,)):
                # HF (like trax) uses logits q . k_unit without 1/sqrt(d): scale qk by sqrt(d)
                # (the hash and the unit keys do not change) to compare the same temperature
                ours = lsh_attention(qk * math.sqrt(HEAD_DIM), v, n_buckets=n_total, n_hashes=n_hashes, chunk_size=CHUNK,
                                     causal=True, buckets=buckets, count_duplicates=dup)
                diff = (ours - ref).abs().amax(-1)  # (B, H, L)
                rest = diff.masked_fill(first, 0).max().item()
                lines.append(
                    f"  {n_hashes} round(s), duplicate correction {'on ' if dup else 'off'}: max |ours - HF| "
                    f"{diff.max().item():.2e}; outside first chunks {rest:.2e}; "
                    f"queries differing by > 1e-4: {(diff > 1e-4).float().mean().item():.1%} "
                    f"(first-chunk queries: {first.float().mean().item():.1%})"
                )
    return lines


# --------------------------------------------------------------------- measuring
def measure(impl: str, length: int, device: torch.device, repeats: int, memory: bool = True) -> dict:
    row = {}
    if impl == "sdpa":
        q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, device=device, requires_grad=True) for _ in range(3))

        def fwd():
            with torch.no_grad():
                attention(q, k, v, causal=True, impl="sdpa")

        def fwdbwd():
            attention(q, k, v, causal=True, impl="sdpa").sum().backward()
        step = functools.partial(sdpa_step, length)
    else:
        layer = make_layer(impl, length, device)
        x = torch.randn(1, length, HEADS * HEAD_DIM, device=device, requires_grad=True)
        fwd = lambda: run_layer(layer, impl, x, False)  # noqa: E731
        fwdbwd = lambda: run_layer(layer, impl, x, True)  # noqa: E731
        step = functools.partial(layer_step, impl, length)
    row["fwd_s"] = time_fn(fwd, repeats=repeats, device=device).median
    row["fwdbwd_s"] = time_fn(fwdbwd, repeats=repeats, device=device).median
    if memory:
        for key, bwd in (("peak_fwd_MiB", False), ("peak_fwdbwd_MiB", True)):
            # peak_memory's `device` is where it measures; the workload gets its own bound
            bound = functools.partial(step, backward=bwd, device=str(device))
            row[key] = peak_memory(bound, device=str(device)) / MiB
    return row


def run(lengths: list[int], extra: list[int], device: str, repeats: int, sdpa_max: int) -> dict:
    dev = resolve_device(device)
    have_hf = hf_available() is not None
    rows = []
    for n in tqdm(lengths, desc="lengths"):
        row: dict = {"length": n, "ours": measure("ours", n, dev, repeats)}
        if have_hf:
            row["hf"] = measure("hf", n, dev, repeats)
        if n <= sdpa_max:
            row["sdpa"] = measure("sdpa", n, dev, repeats)
        rows.append(row)
    extra_rows = []
    for n in tqdm(extra, desc="ours, longer"):
        r = {"length": n}
        step = functools.partial(layer_step, "ours", n, backward=True, device=str(dev))  # bound: see measure()
        r["fwdbwd_s"] = time_fn(step, device=str(dev), warmup=0, repeats=1).median
        r["peak_fwdbwd_MiB"] = peak_memory(step, device=str(dev), warmup=False) / MiB
        extra_rows.append(r)
    return {"rows": rows, "extra": extra_rows}


def report(result: dict, device: str, memory_limit_gib: float) -> str:
    rows, extra = result["rows"], result["extra"]
    version = hf_available()
    hf_text = version or "not installed (or without Reformer)"
    lines = [f"device: {describe_device(device)}; torch {torch.__version__}; transformers {hf_text}",
             f"config: {HEADS} heads x {HEAD_DIM}, {N_HASHES} rounds, chunk {CHUNK}, causal, batch 1, float32", ""]
    metrics = (("fwd_s", "fwd time", "{:.2f}s"), ("fwdbwd_s", "fwd+bwd time", "{:.2f}s"),
               ("peak_fwd_MiB", "peak fwd", "{:.0f}M"), ("peak_fwdbwd_MiB", "peak fwd+bwd", "{:.0f}M"))
    for other, name in (("hf", "Hugging Face"), ("sdpa", "SDPA full attention")):
        if not any(other in r for r in rows):
            continue
        head = f"{'length':>7} | " + " | ".join(f"{title + ' ours/' + other:>27}" for _, title, _ in metrics)
        lines += [f"ours versus {name} (ratio < 1: ours is better)", head, "-" * len(head)]
        for r in rows:
            if other not in r:
                continue
            cells = []
            for key, _, fmt in metrics:
                a, b = r["ours"][key], r[other][key]
                cells.append(f"{fmt.format(a)}/{fmt.format(b)} = {a / b:5.2f}x")
            lines.append(f"{r['length']:>7} | " + " | ".join(f"{c:>27}" for c in cells))
        lines.append("")
    if extra:
        lines.append("ours alone, longer (forward+backward, one run each):")
        for r in extra:
            lines.append(f"{r['length']:>9} tokens: {r['fwdbwd_s']:.1f}s, peak {r['peak_fwdbwd_MiB'] / 1024:.2f} GiB")
        fits = [r["length"] for r in extra + [{"length": r["length"], **r["ours"]} for r in rows]
                if r["peak_fwdbwd_MiB"] <= memory_limit_gib * 1024]
        last = max(extra, key=lambda r: r["length"])
        per_token = last["peak_fwdbwd_MiB"] / last["length"]
        lines.append(f"longest measured length within {memory_limit_gib:g} GiB: {max(fits) if fits else 'none'}; "
                     f"linear extrapolation from {last['length']}: about "
                     f"{int(memory_limit_gib * 1024 / per_token):,} tokens")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--extra-lengths", type=int, nargs="*", default=[131072, 262144])
    parser.add_argument("--sdpa-max-length", type=int, default=16384,
                        help="skip full attention above this length (it is quadratic in time)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--no-cross-check", action="store_true")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if hf_available() is None:
        print("Hugging Face transformers with the Reformer model is not installed: measuring ours and "
              "SDPA only. Install it with: pip install \"transformers>=4.40,<6\"")
    elif not args.no_cross_check:
        print("\n".join(cross_check()), "\n", flush=True)
    result = run(args.lengths, args.extra_lengths, args.device, args.repeats, args.sdpa_max_length)
    print(report(result, args.device, args.memory_limit_gib))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": describe_device(args.device), "transformers": hf_available(), **result}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
