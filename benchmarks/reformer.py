"""Benchmark: the assembled Reformer's training step, up to a million tokens, and against Hugging Face.

Run from the repository root (``make bench-reformer`` runs the first two)::

    python benchmarks/reformer.py --million                 # one step on 1,048,576 tokens
    python benchmarks/reformer.py --hf --length 65536       # ours against transformers' Reformer
    python benchmarks/reformer.py --lengths 16384 65536     # peak memory and time against length

The model is chapter 4's :class:`~longctx_lib.reformer.ReformerLM` with the issue's
configuration: 2 layers, d_model 256, 4 heads of 64, d_ff 1024, LSH attention with 4
rounds and chunks of 64, axial position embeddings, reversible blocks, chunked
feed-forward and loss (4096 positions), attention one head at a time; float32, one
sequence, byte vocabulary (256). One training step is the forward pass, the backward
pass and an Adam update on random tokens (``reformer_train_step``).

Peak memory is measured in a fresh process on the CPU (resident set, with large
allocations served by ``mmap`` so that freed tensors leave it at once; see
``longctx_lib.measure.peak_memory``) and with the CUDA allocator's peak on a GPU. The
step's time is measured in the same call, so on the CPU it includes the page faults of
that measuring mode (a few percent to a third more than an ordinary process).

``--hf`` builds Hugging Face's ``ReformerModelWithLMHead`` with the same sizes (the
optional ``transformers`` dependency: ``pip install -e ".[bench]"``), and times the
forward+backward pass of both models' language-model loss in this process, alternating
the two models, then measures both peaks in fresh processes. Hugging Face's chunked
feed-forward chunks only the forward pass; its LM head builds every logit.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import torch
from tqdm.auto import tqdm

from longctx_lib.device import describe_device, resolve_device, synchronize
from longctx_lib.lsh import default_n_buckets
from longctx_lib.measure import peak_memory
from longctx_lib.reformer import ReformerConfig, ReformerLM, reformer_train_step

GiB, MiB = 2**30, 2**20
MILLION = 2**20
BUDGET_GIB = 16  # the paper's claim: one 16 GB accelerator


def config_for(length: int, **overrides) -> ReformerConfig:
    """The benchmark's model for sequences of up to ``length`` tokens."""
    return ReformerConfig(max_length=max(length, 2), **overrides)


# ------------------------------------------------------------------ one training step
def step(length: int, device: str, **overrides) -> dict:
    """Peak memory and time of one training step on ``length`` tokens, in a fresh process (CPU)."""
    work = functools.partial(reformer_train_step, length, config=config_for(length, **overrides), device=device)
    peak, result = peak_memory(work, device=device, warmup=False, return_value=True)
    return {"length": length, "peak_bytes": peak, "bytes_per_token": peak / length, **result}


def million(device: str) -> dict:
    print(f"one training step on {MILLION:,} tokens ({describe_device(device)}); "
          "this takes minutes on a CPU ...", flush=True)
    row = step(MILLION, device)
    row["fits_16_gib"] = row["peak_bytes"] <= BUDGET_GIB * GiB
    print(f"  time {row['seconds']:.0f} s, peak {row['peak_bytes'] / GiB:.2f} GiB "
          f"({row['bytes_per_token'] / 1024:.1f} KiB per token), loss {row['loss']:.3f} nats")
    verdict = "within" if row["fits_16_gib"] else "ABOVE"
    print(f"  {verdict} the {BUDGET_GIB} GiB budget of the paper's claim")
    return row


def scaling(lengths: list[int], device: str) -> list[dict]:
    rows = []
    for length in tqdm(lengths, desc="lengths"):
        rows.append(step(length, device))
    print(f"{'length':>9} {'time s':>8} {'peak MiB':>9} {'KiB/token':>9}")
    for r in rows:
        print(f"{r['length']:>9,} {r['seconds']:>8.1f} {r['peak_bytes'] / MiB:>9.0f} {r['bytes_per_token'] / 1024:>9.2f}")
    return rows


# ------------------------------------------------------------------ Hugging Face
def hf_available() -> str | None:
    try:
        import transformers
        from transformers import ReformerModelWithLMHead  # noqa: F401
    except ImportError:
        return None
    return transformers.__version__


def hf_model(length: int) -> torch.nn.Module:
    """``transformers``' Reformer with our configuration, for sequences of exactly ``length`` tokens."""
    from transformers import ReformerConfig as HFConfig
    from transformers import ReformerModelWithLMHead

    c = config_for(length)
    buckets = default_n_buckets(length, c.chunk_size)
    hf = HFConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_attention_heads=c.n_heads,
        attention_head_size=c.d_model // c.n_heads, feed_forward_size=c.d_ff, hidden_act="gelu",
        attn_layers=["lsh"] * c.n_layers, num_hashes=c.n_hashes, lsh_attn_chunk_length=c.chunk_size,
        lsh_num_chunks_before=1, lsh_num_chunks_after=0,
        num_buckets=list(buckets) if isinstance(buckets, tuple) else buckets,
        axial_pos_embds=True, axial_pos_shape=list(axial_exact(length)), axial_pos_embds_dim=[c.d_model // 2] * 2,
        max_position_embeddings=length, is_decoder=True, chunk_size_feed_forward=c.ff_chunk_size or 0,
        hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, hash_seed=None,
    )
    return ReformerModelWithLMHead(hf)


def axial_exact(length: int) -> tuple[int, int]:
    """Two powers of two with product ``length`` (Hugging Face needs the exact product in training)."""
    if length & (length - 1):
        raise ValueError(f"--length must be a power of two for the Hugging Face model; got {length}")
    b = 2 ** (length.bit_length() // 2)
    return length // b, b


def hf_step(length: int, *, device: str = "cpu") -> dict:
    """One forward+backward pass of Hugging Face's model: a workload for ``peak_memory``."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = hf_model(length).to(dev).train()
    tokens = torch.randint(0, 256, (1, length), device=dev)
    start = time.perf_counter()
    model(tokens, labels=tokens).loss.backward()
    synchronize(dev)
    return {"seconds": time.perf_counter() - start}


def ours_step(length: int, *, device: str = "cpu", one_head_at_a_time: bool = True) -> dict:
    """The same for ours: ``length`` tokens, the LM loss on the last ``length - 1``."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = ReformerLM(config_for(length, one_head_at_a_time=one_head_at_a_time)).to(dev)
    tokens = torch.randint(0, 256, (1, length), device=dev)
    start = time.perf_counter()
    model.loss(tokens).backward()
    synchronize(dev)
    return {"seconds": time.perf_counter() - start}


VARIANTS = {"ours": {"one_head_at_a_time": True}, "ours, all heads at once": {"one_head_at_a_time": False}}


def against_hf(length: int, device: str, repeats: int) -> dict:
    """Ours (one head at a time, and all heads at once) against Hugging Face, timed alternately."""
    version = hf_available()
    if version is None:
        print('transformers (with the Reformer) is not installed: pip install -e ".[bench]"')
        return {}
    dev = resolve_device(device)
    tokens = torch.randint(0, 256, (1, length), device=dev)
    runs = {}
    for name, options in VARIANTS.items():
        model = ReformerLM(config_for(length, **options)).to(dev)
        runs[name] = functools.partial(lambda m: m.loss(tokens).backward(), model)
    runs["hf"] = functools.partial(lambda m: m(tokens, labels=tokens).loss.backward(), hf_model(length).to(dev).train())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in tqdm(range(repeats), desc="alternating ours / HF"):
        for name, run in runs.items():
            synchronize(dev)
            start = time.perf_counter()
            run()
            synchronize(dev)
            times[name].append(time.perf_counter() - start)
    del runs
    peaks = {name: peak_memory(functools.partial(ours_step, length, device=device, **options), device=device,
                               warmup=False) for name, options in VARIANTS.items()}
    peaks["hf"] = peak_memory(functools.partial(hf_step, length, device=device), device=device, warmup=False)
    row = {"length": length, "transformers": version, "repeats": repeats,
           "seconds": {k: statistics.median(v) for k, v in times.items()}, "peak_bytes": peaks}
    print(f"{length:,} tokens, forward+backward of the LM loss, {describe_device(device)}, transformers {version}, "
          f"median of {repeats}, timed alternately:")
    for name in VARIANTS:
        t, p = row["seconds"][name] / row["seconds"]["hf"], peaks[name] / peaks["hf"]
        row[f"time_ratio[{name}]"], row[f"memory_ratio[{name}]"] = t, p
        print(f"  {name:24s} {row['seconds'][name]:7.1f} s ({t:.2f}x HF; target <= 0.5x)   "
              f"peak {peaks[name] / MiB:7.0f} MiB ({p:.2f}x HF; target <= 0.6x)")
    print(f"  {'Hugging Face':24s} {row['seconds']['hf']:7.1f} s                          "
          f"peak {peaks['hf'] / MiB:7.0f} MiB")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--million", action="store_true", help=f"one training step on {MILLION:,} tokens")
    parser.add_argument("--hf", action="store_true", help="compare with Hugging Face's Reformer at --length")
    parser.add_argument("--length", type=int, default=65536, help="length of the Hugging Face comparison")
    parser.add_argument("--lengths", type=int, nargs="*", default=[], help="lengths of a memory/time sweep")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of the comparison (median)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if not (args.million or args.hf or args.lengths):
        parser.error("say what to run: --million, --hf and/or --lengths")
    device = str(resolve_device(args.device))
    result: dict = {"device": describe_device(device), "torch": torch.__version__}
    if args.lengths:
        result["scaling"] = scaling(args.lengths, device)
    if args.hf:
        result["hf"] = against_hf(args.length, device, args.repeats)
    if args.million:
        result["million"] = million(device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
