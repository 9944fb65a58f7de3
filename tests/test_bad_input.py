"""The library under bad input (issue 10).

1. Table-driven: every public callable of every ``longctx_lib`` module (found through the
   modules' ``__all__``, so a new module is covered as soon as it exists) is called with
   wrong shapes, dtypes, devices, lengths and parameter values, and must raise a
   ``ValueError`` or ``TypeError`` whose message names the parameter. A public callable
   without a row here fails :func:`test_every_public_callable_has_rows`. Every row passes:
   a gap found here is closed in the library.
2. Long sequences in float16/bfloat16: attention at a few thousand tokens gives no NaN or inf.
3. The same seed gives the same numbers on the CPU.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import longctx_lib

# ------------------------------------------------------------------ the public callables
def public_callables() -> dict[str, Any]:
    """{"module.name": object} for every callable in the ``__all__`` of every longctx_lib module."""
    found: dict[str, Any] = {}
    seen: set[int] = set()
    modules = [longctx_lib] + [importlib.import_module(f"longctx_lib.{m.name}")
                               for m in pkgutil.iter_modules(longctx_lib.__path__) if not m.name.startswith("_")]
    for module in sorted(modules, key=lambda m: m.__name__.count(".") == 0):  # submodules first
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found[f"{obj.__module__.removeprefix('longctx_lib.')}.{obj.__qualname__}"] = obj
    return found


def T(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


def QKV(**changes):
    qkv = {"q": T(1, 2, 3, 4), "k": T(1, 2, 5, 4), "v": T(1, 2, 5, 6)}
    qkv.update(changes)
    return qkv


def _sdpa(**kw):
    from longctx_lib.attention import scaled_dot_product_attention
    args = QKV(**{k: kw.pop(k) for k in "qkv" if k in kw})
    return scaled_dot_product_attention(args["q"], args["k"], args["v"], **kw)


def _attention(**kw):
    from longctx_lib.attention import attention
    args = QKV(**{k: kw.pop(k) for k in "qkv" if k in kw})
    return attention(args["q"], args["k"], args["v"], **kw)


def _lsh(**kw):
    from longctx_lib.lsh import lsh_attention
    args = {"qk": T(1, 2, 8, 4), "v": T(1, 2, 8, 4), "n_buckets": 4, "n_hashes": 1, "chunk_size": 4}
    args.update(kw)
    return lsh_attention(args.pop("qk"), args.pop("v"), **args)


def _mha_forward(x, **kw):
    from longctx_lib.attention import MultiHeadAttention
    return MultiHeadAttention(8, 2)(x, **kw)


def _tiny_reformer():
    from longctx_lib.reformer import ReformerLM
    return ReformerLM(vocab_size=5, d_model=8, n_heads=2, d_ff=16, n_layers=1, chunk_size=4, max_length=64)


def _rev_block():
    from longctx_lib.reversible import NormAttention, NormFeedForward, ReversibleBlock
    return ReversibleBlock(NormAttention(8, 2, attention="full"), NormFeedForward(8, 16))


def _block_forward(x):
    from longctx_lib.transformer import TransformerBlock
    return TransformerBlock(8, 2, 16)(x)


def _ff_forward(x):
    from longctx_lib.transformer import FeedForward
    return FeedForward(8, 16)(x)


def _transformer_forward(x, **kw):
    from longctx_lib.transformer import Transformer
    return Transformer(8, 2, 16, 1)(x, **kw)


def _tiny_rmt(**kw):
    from longctx_lib.rmt import RecurrentMemoryTransformer
    args = {"segment_length": 4, "n_memory": 2}
    args.update(kw)
    return RecurrentMemoryTransformer(10, 8, 2, 16, 1, **args)


def _ids(*shape):
    return torch.zeros(*shape, dtype=torch.long)


def _answers(batch, length, *positions):
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, list(positions)] = True
    return mask


def _batcher(batch, n_segments, generator):
    from longctx_lib.tasks import fact_batch
    return fact_batch(batch, 4 * n_segments, generator=generator)


FLOP_SIZES = {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_ff": 16, "vocab_size": 10}  # model sizes for the FLOP rows


def _bench():
    from longctx_lib import bench
    return bench


def _bench_tiny():
    return _bench().ModelSizes(d_model=8, n_heads=2, n_layers=1, d_ff=16, segment_length=4, n_memory=2,
                               chunk_size=4, n_hashes=1, max_length=64)


def _bench_model(method="sdpa"):
    return _bench().build_model(method, _bench_tiny())


def _bench_results():
    return {"machine": {}, "speed": [], "quality": []}


def _cuda_absent():
    return pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")


def _nonempty(x):  # rows for objects that take no input worth checking
    return x


# Rows: (public callable, what is wrong, call, exception type(s), regex the message must match)
#   The regex names the parameter (and, where it helps, the fix).
ROWS: list[tuple[str, str, Callable[[], Any], type | tuple, str, tuple]] = [
    # attention.scaled_dot_product_attention
    ("attention.check_head_tensors", "3-D", lambda: longctx_lib.attention.check_head_tensors(q=T(2, 3, 4)), ValueError, r"\bq\b.*4 dimensions", ()),
    ("attention.check_head_tensors", "not a tensor", lambda: longctx_lib.attention.check_head_tensors(x=[1.0]), TypeError, r"\bx\b", ()),
    ("attention.check_head_tensors", "mixed dtypes", lambda: longctx_lib.attention.check_head_tensors(a=T(1, 1, 2, 2), b=T(1, 1, 2, 2, dtype=torch.float64)), TypeError, r"a and b must share a dtype", ()),
    ("attention.check_head_tensors", "mixed devices", lambda: longctx_lib.attention.check_head_tensors(a=T(1, 1, 2, 2), b=T(1, 1, 2, 2, device="meta")), ValueError, r"a and b must be on one device", ()),
    ("attention.scaled_dot_product_attention", "q is a list", lambda: _sdpa(q=[[1.0]]), TypeError, r"\bq\b", ()),
    ("attention.scaled_dot_product_attention", "q has 3 dims", lambda: _sdpa(q=T(2, 3, 4)), ValueError, r"\bq\b.*4 dimensions", ()),
    ("attention.scaled_dot_product_attention", "int dtype", lambda: _sdpa(q=T(1, 2, 3, 4, dtype=torch.int64)), TypeError, r"\bq\b.*floating", ()),
    ("attention.scaled_dot_product_attention", "q/k dim differ", lambda: _sdpa(k=T(1, 2, 5, 3)), ValueError, r"q and k", ()),
    ("attention.scaled_dot_product_attention", "k/v length differ", lambda: _sdpa(v=T(1, 2, 4, 6)), ValueError, r"k and v", ()),
    ("attention.scaled_dot_product_attention", "batch differs", lambda: _sdpa(k=T(2, 2, 5, 4), v=T(2, 2, 5, 6)), ValueError, r"q, k and v.*\(batch, heads\)", ()),
    ("attention.scaled_dot_product_attention", "mixed dtypes", lambda: _sdpa(k=T(1, 2, 5, 4, dtype=torch.float64)), TypeError, r"dtype", ()),
    ("attention.scaled_dot_product_attention", "k on the meta device", lambda: _sdpa(k=T(1, 2, 5, 4, device="meta")), ValueError, r"device", ()),
    ("attention.scaled_dot_product_attention", "float padding mask", lambda: _sdpa(key_padding_mask=T(1, 5)), TypeError, r"key_padding_mask", ()),
    ("attention.scaled_dot_product_attention", "padding mask shape", lambda: _sdpa(key_padding_mask=T(1, 4, dtype=torch.bool)), ValueError, r"key_padding_mask", ()),
    ("attention.scaled_dot_product_attention", "padding mask on meta", lambda: _sdpa(key_padding_mask=T(1, 5, dtype=torch.bool, device="meta")), ValueError, r"key_padding_mask", ()),
    ("attention.scaled_dot_product_attention", "dropout_p = 1.5", lambda: _sdpa(dropout_p=1.5), ValueError, r"dropout_p", ()),
    ("attention.scaled_dot_product_attention", "scale is a string", lambda: _sdpa(scale="x"), TypeError, r"\bscale\b", ()),
    ("attention.scaled_dot_product_attention", "causal is a string", lambda: _sdpa(causal="yes"), TypeError, r"\bcausal\b", ()),
    # attention.attention
    ("attention.attention", "impl unknown", lambda: _attention(impl="flash"), ValueError, r"\bimpl\b", ()),
    ("attention.attention", "q has 3 dims (sdpa)", lambda: _attention(q=T(2, 3, 4), impl="sdpa"), ValueError, r"\bq\b", ()),
    ("attention.attention", "dropout_p = 1.5 (sdpa)", lambda: _attention(dropout_p=1.5, impl="sdpa"), ValueError, r"dropout_p", ()),
    # attention.causal_mask
    ("attention.causal_mask", "negative length", lambda: longctx_lib.attention.causal_mask(-1, 3), ValueError, r"q_len", ()),
    ("attention.causal_mask", "cuda when absent", lambda: longctx_lib.attention.causal_mask(2, 2, device="cuda"), ValueError, r"device", (_cuda_absent(),)),
    # attention.MultiHeadAttention
    ("attention.MultiHeadAttention", "d_model not a multiple of n_heads", lambda: longctx_lib.attention.MultiHeadAttention(10, 3), ValueError, r"n_heads", ()),
    ("attention.MultiHeadAttention", "impl unknown", lambda: longctx_lib.attention.MultiHeadAttention(8, 2, impl="x"), ValueError, r"\bimpl\b", ()),
    ("attention.MultiHeadAttention", "x is 2-D", lambda: _mha_forward(T(3, 8)), ValueError, r"\bx\b.*d_model", ()),
    ("attention.MultiHeadAttention", "x in float64 (weights float32)", lambda: _mha_forward(T(1, 3, 8, dtype=torch.float64)), (TypeError, ValueError), r"\bx\b.*dtype", ()),
    ("attention.MultiHeadAttention", "dropout = 1.5", lambda: longctx_lib.attention.MultiHeadAttention(8, 2, dropout=1.5), ValueError, r"dropout", ()),
    # attention.attention_step
    ("attention.attention_step", "length 0", lambda: longctx_lib.attention.attention_step(0), ValueError, r"length", ()),
    ("attention.attention_step", "heads 2.5", lambda: longctx_lib.attention.attention_step(8, heads=2.5), ValueError, r"heads", ()),
    ("attention.attention_step", "impl unknown", lambda: longctx_lib.attention.attention_step(8, impl="x"), ValueError, r"\bimpl\b", ()),
    ("attention.attention_step", "cuda when absent", lambda: longctx_lib.attention.attention_step(8, device="cuda"), ValueError, r"device", (_cuda_absent(),)),
    ("attention.attention_step", "int dtype", lambda: longctx_lib.attention.attention_step(8, dtype=torch.int64), TypeError, r"dtype", ()),
    # costs
    ("costs.bytes_per_element", "a string", lambda: longctx_lib.costs.bytes_per_element("float32"), TypeError, r"dtype", ()),
    ("costs.bytes_per_element", "0 bytes", lambda: longctx_lib.costs.bytes_per_element(0), ValueError, r"bytes_per_element", ()),
    ("costs.score_matrix_bytes", "batch 0", lambda: longctx_lib.costs.score_matrix_bytes(0, 1, 8), ValueError, r"batch", ()),
    ("costs.score_matrix_bytes", "length 2.5", lambda: longctx_lib.costs.score_matrix_bytes(1, 1, 2.5), ValueError, r"length", ()),
    ("costs.score_matrix_bytes", "key_length -1", lambda: longctx_lib.costs.score_matrix_bytes(1, 1, 8, key_length=-1), ValueError, r"key_length", ()),
    ("costs.score_matrix_bytes", "dtype a string", lambda: longctx_lib.costs.score_matrix_bytes(1, 1, 8, dtype="fp16"), TypeError, r"dtype", ()),
    ("costs.attention_flops", "head_dim 0", lambda: longctx_lib.costs.attention_flops(1, 1, 8, 0), ValueError, r"head_dim", ()),
    ("costs.attention_flops", "heads True", lambda: longctx_lib.costs.attention_flops(1, True, 8, 4), ValueError, r"heads", ()),
    ("costs.max_length_for_budget", "negative budget", lambda: longctx_lib.costs.max_length_for_budget(-1), ValueError, r"budget_bytes", ()),
    ("costs.max_length_for_budget", "float budget", lambda: longctx_lib.costs.max_length_for_budget(1.5e9), ValueError, r"budget_bytes", ()),
    ("costs.max_length_for_budget", "heads 0", lambda: longctx_lib.costs.max_length_for_budget(100, heads=0), ValueError, r"heads", ()),
    ("costs.transformer_activation_bytes", "n_layers 0", lambda: longctx_lib.costs.transformer_activation_bytes(batch=1, length=8, d_ff=4, n_heads=1, n_layers=0), ValueError, r"n_layers", ()),
    ("costs.table3_memory", "unknown model", lambda: longctx_lib.costs.table3_memory("bert", batch=1, length=8, d_model=4, d_ff=4, n_heads=1, n_layers=1), ValueError, r"model", ()),
    ("costs.table3_memory", "n_rounds 0", lambda: longctx_lib.costs.table3_memory("reformer", batch=1, length=8, d_model=4, d_ff=4, n_heads=1, n_layers=1, n_rounds=0), ValueError, r"n_rounds", ()),
    # device
    ("device.resolve_device", "an int", lambda: longctx_lib.device.resolve_device(3), TypeError, r"device", ()),
    ("device.resolve_device", "tpu", lambda: longctx_lib.device.resolve_device("tpu"), ValueError, r"device", ()),
    ("device.resolve_device", "meta", lambda: longctx_lib.device.resolve_device("meta"), ValueError, r"device", ()),
    ("device.resolve_device", "cuda when absent", lambda: longctx_lib.device.resolve_device("cuda"), ValueError, r"device.*CUDA is not available", (_cuda_absent(),)),
    ("device.describe_device", "nonsense", lambda: longctx_lib.device.describe_device("nonsense"), ValueError, r"device", ()),
    ("device.synchronize", "nonsense", lambda: longctx_lib.device.synchronize("nonsense"), ValueError, r"device", ()),
    # measure
    ("measure.time_fn", "repeats 0", lambda: longctx_lib.measure.time_fn(lambda: None, repeats=0), ValueError, r"repeats", ()),
    ("measure.time_fn", "fn not callable", lambda: longctx_lib.measure.time_fn(3), TypeError, r"\bfn\b", ()),
    ("measure.time_fn", "device tpu", lambda: longctx_lib.measure.time_fn(lambda: None, device="tpu"), ValueError, r"device", ()),
    ("measure.peak_memory", "device mps (unsupported)", lambda: longctx_lib.measure.peak_memory(lambda: None, device="meta"), ValueError, r"device", ()),
    ("measure.peak_memory", "timeout 0", lambda: longctx_lib.measure.peak_memory(lambda: None, timeout=0), ValueError, r"timeout", ()),
    ("measure.peak_memory", "fn not callable", lambda: longctx_lib.measure.peak_memory(3), TypeError, r"\bfn\b", ()),
    ("measure.saved_tensor_bytes", "fn not callable", lambda: longctx_lib.measure.saved_tensor_bytes(3), TypeError, r"\bfn\b", ()),
    ("measure.longest_within", "measure not callable", lambda: longctx_lib.measure.longest_within(3, 10, start=1, stop=4), TypeError, r"\bmeasure\b", ()),
    ("measure.longest_within", "stop below start", lambda: longctx_lib.measure.longest_within(len, 10, start=8, stop=4), ValueError, r"\bstop\b", ()),
    ("measure.longest_within", "budget 0", lambda: longctx_lib.measure.longest_within(len, 0, start=1, stop=4), ValueError, r"budget", ()),
    ("measure.fit_loglog_slope", "lengths differ", lambda: longctx_lib.measure.fit_loglog_slope([1, 2], [1]), ValueError, r"\bx\b.*\by\b|sequences", ()),
    ("measure.fit_loglog_slope", "non-positive", lambda: longctx_lib.measure.fit_loglog_slope([0, 2], [1, 2]), ValueError, r"\bx\b and \by\b", ()),
    ("measure.Timing", "negative median", lambda: longctx_lib.measure.Timing(median=-1.0, times=(-1.0,)), ValueError, r"median", ()),
    # transformer
    ("transformer.FeedForward", "d_model 0", lambda: longctx_lib.transformer.FeedForward(0, 4), ValueError, r"d_model", ()),
    ("transformer.FeedForward", "dropout 1.5", lambda: longctx_lib.transformer.FeedForward(8, 4, dropout=1.5), ValueError, r"dropout", ()),
    ("transformer.FeedForward", "x last dim wrong", lambda: _ff_forward(T(1, 3, 5)), ValueError, r"\bx\b.*d_model", ()),
    ("transformer.TransformerBlock", "n_heads does not divide d_model", lambda: longctx_lib.transformer.TransformerBlock(8, 3, 16), ValueError, r"n_heads", ()),
    ("transformer.TransformerBlock", "x last dim wrong", lambda: _block_forward(T(1, 3, 5)), ValueError, r"\bx\b.*d_model", ()),
    ("transformer.Transformer", "n_layers 0", lambda: longctx_lib.transformer.Transformer(8, 2, 16, 0), ValueError, r"n_layers", ()),
    ("transformer.Transformer", "padding mask shape", lambda: _transformer_forward(T(1, 3, 8), key_padding_mask=T(1, 4, dtype=torch.bool)), ValueError, r"key_padding_mask", ()),
    ("transformer.Transformer", "x is 2-D", lambda: _transformer_forward(T(3, 8)), ValueError, r"\bx\b", ()),
    # lsh (chapter 2: Reformer's LSH attention)
    ("lsh.default_n_buckets", "length 0", lambda: longctx_lib.lsh.default_n_buckets(0, 4), ValueError, r"\blength\b", ()),
    ("lsh.default_n_buckets", "chunk_size 2.5", lambda: longctx_lib.lsh.default_n_buckets(8, 2.5), ValueError, r"chunk_size", ()),
    ("lsh.default_n_buckets", "factorise_above a string", lambda: longctx_lib.lsh.default_n_buckets(8, 2, factorise_above="x"), TypeError, r"factorise_above", ()),
    ("lsh.random_rotations", "dim 0", lambda: longctx_lib.lsh.random_rotations(0, 4, 1), ValueError, r"\bdim\b", ()),
    ("lsh.random_rotations", "odd n_buckets", lambda: longctx_lib.lsh.random_rotations(4, 3, 1), ValueError, r"n_buckets.*even", ()),
    ("lsh.random_rotations", "n_buckets a string", lambda: longctx_lib.lsh.random_rotations(4, "8", 1), TypeError, r"n_buckets", ()),
    ("lsh.random_rotations", "n_hashes 0", lambda: longctx_lib.lsh.random_rotations(4, 4, 0), ValueError, r"n_hashes", ()),
    ("lsh.random_rotations", "int dtype", lambda: longctx_lib.lsh.random_rotations(4, 4, 1, dtype=torch.int64), TypeError, r"dtype", ()),
    ("lsh.random_rotations", "device tpu", lambda: longctx_lib.lsh.random_rotations(4, 4, 1, device="tpu"), ValueError, r"device", ()),
    ("lsh.hash_vectors", "x is a list", lambda: longctx_lib.lsh.hash_vectors([[1.0]], 4, 1), TypeError, r"\bx\b", ()),
    ("lsh.hash_vectors", "x is 1-D", lambda: longctx_lib.lsh.hash_vectors(T(4), 4, 1), ValueError, r"\bx\b.*\(\.\.\., length, dim\)", ()),
    ("lsh.hash_vectors", "int dtype", lambda: longctx_lib.lsh.hash_vectors(T(3, 4, dtype=torch.int64), 4, 1), (TypeError, ValueError), r"\bx\b.*floating", ()),
    ("lsh.hash_vectors", "odd n_buckets", lambda: longctx_lib.lsh.hash_vectors(T(3, 4), 3, 1), ValueError, r"n_buckets", ()),
    ("lsh.hash_vectors", "n_hashes 0", lambda: longctx_lib.lsh.hash_vectors(T(3, 4), 4, 0), ValueError, r"n_hashes", ()),
    ("lsh.hash_vectors", "rotations of the wrong shape", lambda: longctx_lib.lsh.hash_vectors(T(3, 4), 4, 1, rotations=T(4, 1, 3)), ValueError, r"rotations.*random_rotations", ()),
    ("lsh.hash_vectors", "rotations on meta", lambda: longctx_lib.lsh.hash_vectors(T(3, 4), 4, 1, rotations=T(4, 1, 2, device="meta")), ValueError, r"rotations.*\.to\(device\)", ()),
    ("lsh.lsh_attention", "qk has 3 dims", lambda: _lsh(qk=T(2, 8, 4)), ValueError, r"\bqk\b.*4 dimensions", ()),
    ("lsh.lsh_attention", "int dtype", lambda: _lsh(qk=T(1, 2, 8, 4, dtype=torch.int64), v=T(1, 2, 8, 4, dtype=torch.int64)), TypeError, r"\bqk\b.*floating", ()),
    ("lsh.lsh_attention", "qk/v length differ", lambda: _lsh(v=T(1, 2, 7, 4)), ValueError, r"qk and v", ()),
    ("lsh.lsh_attention", "mixed dtypes", lambda: _lsh(v=T(1, 2, 8, 4, dtype=torch.float64)), TypeError, r"dtype", ()),
    ("lsh.lsh_attention", "v on meta", lambda: _lsh(v=T(1, 2, 8, 4, device="meta")), ValueError, r"device", ()),
    ("lsh.lsh_attention", "length 0", lambda: _lsh(qk=T(1, 2, 0, 4), v=T(1, 2, 0, 4)), ValueError, r"\bqk\b.*length", ()),
    ("lsh.lsh_attention", "chunk_size 0", lambda: _lsh(chunk_size=0), ValueError, r"chunk_size", ()),
    ("lsh.lsh_attention", "odd n_buckets", lambda: _lsh(n_buckets=5), ValueError, r"n_buckets", ()),
    ("lsh.lsh_attention", "unknown impl", lambda: _lsh(impl="fast"), ValueError, r"\bimpl\b", ()),
    ("lsh.lsh_attention", "buckets of the wrong shape", lambda: _lsh(buckets=torch.zeros(1, 2, 2, 8, dtype=torch.long)), ValueError, r"buckets.*\(batch, heads, n_hashes, length\)", ()),
    ("lsh.lsh_attention", "buckets out of range", lambda: _lsh(buckets=torch.full((1, 2, 1, 8), 4, dtype=torch.long)), ValueError, r"buckets must lie in", ()),
    ("lsh.lsh_attention", "float buckets", lambda: _lsh(buckets=T(1, 2, 1, 8)), TypeError, r"buckets.*int64", ()),
    ("lsh.lsh_attention", "causal is a string", lambda: _lsh(causal="yes"), TypeError, r"\bcausal\b", ()),
    ("lsh.LSHSelfAttention", "d_model not a multiple of n_heads", lambda: longctx_lib.lsh.LSHSelfAttention(10, 3), ValueError, r"n_heads", ()),
    ("lsh.LSHSelfAttention", "n_hashes 0", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2, n_hashes=0), ValueError, r"n_hashes", ()),
    ("lsh.LSHSelfAttention", "chunk_size 0", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2, chunk_size=0), ValueError, r"chunk_size", ()),
    ("lsh.LSHSelfAttention", "odd n_buckets", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2, n_buckets=3), ValueError, r"n_buckets", ()),
    ("lsh.LSHSelfAttention", "x is 2-D", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2)(T(3, 8)), ValueError, r"\bx\b.*d_model", ()),
    ("lsh.LSHSelfAttention", "x is a list", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2)([[1.0]]), (TypeError, ValueError), r"\bx\b", ()),
    ("lsh.LSHSelfAttention", "n_hashes 0 in forward", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2)(T(1, 3, 8), n_hashes=0), ValueError, r"n_hashes", ()),
    ("lsh.LSHSelfAttention", "x in float64 (weights float32)", lambda: longctx_lib.lsh.LSHSelfAttention(8, 2)(T(1, 3, 8, dtype=torch.float64)), (TypeError, ValueError), r"\bx\b.*dtype", ()),
    ("lsh.lsh_attention_step", "length 0", lambda: longctx_lib.lsh.lsh_attention_step(0), ValueError, r"\blength\b", ()),
    ("lsh.lsh_attention_step", "chunk_size 0", lambda: longctx_lib.lsh.lsh_attention_step(64, heads=1, head_dim=4, chunk_size=0), ValueError, r"chunk_size", ()),
    ("lsh.lsh_attention_step", "device tpu", lambda: longctx_lib.lsh.lsh_attention_step(64, device="tpu"), ValueError, r"device", ()),
    ("lsh.lsh_attention_step", "cuda when absent", lambda: longctx_lib.lsh.lsh_attention_step(64, device="cuda"), ValueError, r"device.*CUDA is not available", (_cuda_absent(),)),
    ("lsh.lsh_attention_step", "int dtype", lambda: longctx_lib.lsh.lsh_attention_step(64, heads=1, head_dim=4, dtype=torch.int64), TypeError, r"dtype", ()),
    # tasks (chapter 2: the duplication task)
    ("tasks.duplication_batch", "batch 0", lambda: longctx_lib.tasks.duplication_batch(0, 8), ValueError, r"\bbatch\b", ()),
    ("tasks.duplication_batch", "odd length", lambda: longctx_lib.tasks.duplication_batch(2, 5), ValueError, r"\blength\b.*even", ()),
    ("tasks.duplication_batch", "length 2", lambda: longctx_lib.tasks.duplication_batch(2, 2), ValueError, r"\blength\b.*>= 4", ()),
    ("tasks.duplication_batch", "vocab_size 1", lambda: longctx_lib.tasks.duplication_batch(2, 8, 1), ValueError, r"vocab_size", ()),
    ("tasks.duplication_batch", "device tpu", lambda: longctx_lib.tasks.duplication_batch(2, 8, device="tpu"), ValueError, r"device", ()),
    ("tasks.duplication_targets_mask", "odd length", lambda: longctx_lib.tasks.duplication_targets_mask(7), ValueError, r"\blength\b", ()),
    ("tasks.duplication_targets_mask", "float length", lambda: longctx_lib.tasks.duplication_targets_mask(8.0), ValueError, r"\blength\b", ()),
    ("tasks.duplication_accuracy", "lengths differ", lambda: longctx_lib.tasks.duplication_accuracy(T(2, 8, 5), torch.zeros(2, 7, dtype=torch.long)), ValueError, r"logits.*tokens", ()),
    ("tasks.duplication_accuracy", "tokens are 3-D", lambda: longctx_lib.tasks.duplication_accuracy(T(2, 8, 5), torch.zeros(2, 8, 1, dtype=torch.long)), ValueError, r"tokens", ()),
    ("tasks.duplication_accuracy", "odd length", lambda: longctx_lib.tasks.duplication_accuracy(T(2, 5, 5), torch.zeros(2, 5, dtype=torch.long)), ValueError, r"\blength\b", ()),
    ("tasks.duplication_accuracy", "logits is a list", lambda: longctx_lib.tasks.duplication_accuracy([[1.0]], torch.zeros(2, 8, dtype=torch.long)), TypeError, r"logits", ()),
    ("tasks.duplication_accuracy", "float tokens", lambda: longctx_lib.tasks.duplication_accuracy(T(2, 8, 5), T(2, 8)), TypeError, r"tokens", ()),
    # duplication (chapter 2's Table 2 experiment)
    ("duplication.DuplicationLM", "odd length in config", lambda: longctx_lib.duplication.DuplicationLM(dict(longctx_lib.duplication.DUPLICATION_CONFIG, length=15)), ValueError, r"length", ()),
    ("duplication.DuplicationLM", "unknown train_mode", lambda: longctx_lib.duplication.DuplicationLM(train_mode="fast"), ValueError, r"train_mode", ()),
    ("duplication.DuplicationLM", "unknown mode", lambda: longctx_lib.duplication.DuplicationLM()(torch.zeros(1, 8, dtype=torch.long), "fast"), ValueError, r"\bmode\b", ()),
    ("duplication.DuplicationLM", "mode 0", lambda: longctx_lib.duplication.DuplicationLM()(torch.zeros(1, 8, dtype=torch.long), 0), ValueError, r"\bmode\b", ()),
    ("duplication.DuplicationLM", "float tokens", lambda: longctx_lib.duplication.DuplicationLM()(T(1, 8)), TypeError, r"tokens", ()),
    ("duplication.DuplicationLM", "tokens longer than the position table", lambda: longctx_lib.duplication.DuplicationLM()(torch.zeros(1, 1000, dtype=torch.long)), ValueError, r"tokens", ()),
    ("duplication.checkpoint_name", "unknown mode", lambda: longctx_lib.duplication.checkpoint_name("dense"), ValueError, r"\bmode\b", ()),
    ("lsh.full_shared_qk_attention", "qk has 3 dims", lambda: longctx_lib.lsh.full_shared_qk_attention(T(2, 8, 4), T(1, 2, 8, 4)), ValueError, r"\bqk\b.*4 dimensions", ()),
    ("lsh.full_shared_qk_attention", "qk/v length differ", lambda: longctx_lib.lsh.full_shared_qk_attention(T(1, 2, 8, 4), T(1, 2, 7, 4)), ValueError, r"qk and v", ()),
    ("lsh.full_shared_qk_attention", "return_weights is a string", lambda: longctx_lib.lsh.full_shared_qk_attention(T(1, 2, 8, 4), T(1, 2, 8, 4), return_weights="yes"), TypeError, r"return_weights", ()),
    ("lsh.full_shared_qk_attention", "causal is a string", lambda: longctx_lib.lsh.full_shared_qk_attention(T(1, 2, 8, 4), T(1, 2, 8, 4), causal="yes"), TypeError, r"\bcausal\b", ()),
    ("duplication.train_duplication", "steps 0", lambda: longctx_lib.duplication.train_duplication("full", steps=0, progress=False), ValueError, r"steps", ()),
    ("duplication.train_duplication", "unknown mode", lambda: longctx_lib.duplication.train_duplication("dense", steps=1, progress=False), ValueError, r"\bmode\b", ()),
    ("duplication.train_duplication", "config missing keys", lambda: longctx_lib.duplication.train_duplication("full", config={"length": 8}, steps=1, progress=False), ValueError, r"config", ()),
    ("duplication.evaluate_duplication", "not a model", lambda: longctx_lib.duplication.evaluate_duplication("model"), TypeError, r"model", ()),
    ("duplication.evaluate_duplication", "mode -1", lambda: longctx_lib.duplication.evaluate_duplication(longctx_lib.duplication.DuplicationLM(), ("full", -1)), ValueError, r"modes", ()),
    ("duplication.evaluate_duplication", "n_sequences 0", lambda: longctx_lib.duplication.evaluate_duplication(longctx_lib.duplication.DuplicationLM(), n_sequences=0), ValueError, r"n_sequences", ()),
    ("duplication.save_checkpoint", "not a model", lambda: longctx_lib.duplication.save_checkpoint("model", {}, "x.pt"), TypeError, r"model", ()),
    ("duplication.save_checkpoint", "path is an int", lambda: longctx_lib.duplication.save_checkpoint(longctx_lib.duplication.DuplicationLM(), {}, 3), TypeError, r"path", ()),
    ("duplication.load_checkpoint", "path is an int", lambda: longctx_lib.duplication.load_checkpoint(3), TypeError, r"path", ()),
    ("duplication.load_or_train", "mode lsh0", lambda: longctx_lib.duplication.load_or_train("lsh0"), ValueError, r"\bmode\b", ()),
    ("duplication.load_or_train", "retrain is a string", lambda: longctx_lib.duplication.load_or_train("full", retrain="yes"), TypeError, r"retrain", ()),
    ("duplication.load_or_train", "checkpoint_dir is an int", lambda: longctx_lib.duplication.load_or_train("full", checkpoint_dir=3), TypeError, r"checkpoint_dir", ()),
    # reversible (chapter 3)
    ("reversible.ReversibleBlock", "f is a function", lambda: longctx_lib.reversible.ReversibleBlock(lambda x: x, torch.nn.Identity()), TypeError, r"\bf\b", ()),
    ("reversible.ReversibleBlock", "halves differ", lambda: _rev_block()(T(1, 4, 8), T(1, 5, 8)), ValueError, r"x1 and x2", ()),
    ("reversible.ReversibleBlock", "g changes the shape", lambda: longctx_lib.reversible.ReversibleBlock(torch.nn.Identity(), torch.nn.Linear(8, 3))(T(1, 4, 8), T(1, 4, 8)), ValueError, r"\bg\b must return", ()),
    ("reversible.ReversibleSequence", "no blocks", lambda: longctx_lib.reversible.ReversibleSequence([]), TypeError, r"blocks", ()),
    ("reversible.ReversibleSequence", "a block is a Linear", lambda: longctx_lib.reversible.ReversibleSequence([torch.nn.Linear(2, 2)]), TypeError, r"blocks", ()),
    ("reversible.ReversibleSequence", "unknown mode", lambda: longctx_lib.reversible.ReversibleSequence([_rev_block()], mode="fast"), ValueError, r"\bmode\b", ()),
    ("reversible.ReversibleSequence", "x1 is a list", lambda: longctx_lib.reversible.ReversibleSequence([_rev_block()])([[1.0]]), TypeError, r"\bx1\b", ()),
    ("reversible.ReversibleSequence", "wrong d_model", lambda: longctx_lib.reversible.ReversibleSequence([_rev_block()])(T(1, 4, 6)), ValueError, r"d_model", ()),
    ("reversible.NormAttention", "unknown attention", lambda: longctx_lib.reversible.NormAttention(8, 2, attention="linear"), ValueError, r"attention", ()),
    ("reversible.NormAttention", "LSH options with full attention", lambda: longctx_lib.reversible.NormAttention(8, 2, attention="full", n_hashes=2), ValueError, r"n_hashes", ()),
    ("reversible.NormAttention", "causal is a string", lambda: longctx_lib.reversible.NormAttention(8, 2, causal="yes"), TypeError, r"\bcausal\b", ()),
    ("reversible.NormAttention", "heads do not divide d_model", lambda: longctx_lib.reversible.NormAttention(8, 3), ValueError, r"n_heads", ()),
    ("reversible.NormAttention", "dropout 1", lambda: longctx_lib.reversible.NormAttention(8, 2, dropout=1.0), ValueError, r"dropout", ()),
    ("reversible.NormAttention", "one head at a time with full attention", lambda: longctx_lib.reversible.NormAttention(8, 2, attention="full", one_head_at_a_time=True), ValueError, r"one_head_at_a_time", ()),
    ("reversible.NormAttention", "one_head_at_a_time is 1", lambda: longctx_lib.reversible.NormAttention(8, 2, one_head_at_a_time=1), TypeError, r"one_head_at_a_time", ()),
    ("reversible.NormAttention", "input of width 6", lambda: longctx_lib.reversible.NormAttention(8, 2)(T(1, 4, 6)), ValueError, r"d_model", ()),
    ("reversible.NormFeedForward", "d_ff 0", lambda: longctx_lib.reversible.NormFeedForward(8, 0), ValueError, r"d_ff", ()),
    ("reversible.NormFeedForward", "input of width 6", lambda: longctx_lib.reversible.NormFeedForward(8, 16)(T(1, 4, 6)), ValueError, r"d_model", ()),
    ("reversible.replayed", "key is an int", lambda: longctx_lib.reversible.replayed(3), TypeError, r"\bkey\b", ()),
    ("reversible.remember", "value is a list", lambda: longctx_lib.reversible.remember("buckets", [1, 2]), TypeError, r"\bvalue\b", ()),
    ("reversible.remember", "empty key", lambda: longctx_lib.reversible.remember("", T(2)), TypeError, r"\bkey\b", ()),
    ("reversible.reversible_stack", "n_layers 0", lambda: longctx_lib.reversible.reversible_stack(8, 2, 16, 0), ValueError, r"n_layers", ()),
    ("reversible.reversible_stack", "unknown mode", lambda: longctx_lib.reversible.reversible_stack(8, 2, 16, 1, mode="fast"), ValueError, r"\bmode\b", ()),
    ("reversible.reconstruction_error", "not a sequence", lambda: longctx_lib.reversible.reconstruction_error(_rev_block(), T(1, 4, 8)), TypeError, r"\bseq\b", ()),
    ("reversible.reconstruction_error", "halves differ", lambda: longctx_lib.reversible.reconstruction_error(longctx_lib.reversible.ReversibleSequence([_rev_block()]), T(1, 4, 8), T(1, 3, 8)), ValueError, r"x1 and x2", ()),
    ("reversible.reversible_stack_step", "length 0", lambda: longctx_lib.reversible.reversible_stack_step(0, 2), ValueError, r"\blength\b", ()),
    ("reversible.reversible_stack_step", "unknown mode", lambda: longctx_lib.reversible.reversible_stack_step(8, 2, mode="fast"), ValueError, r"\bmode\b", ()),
    ("reversible.reversible_stack_step", "unknown attention", lambda: longctx_lib.reversible.reversible_stack_step(8, 2, attention="linear"), ValueError, r"attention", ()),
    ("reversible.reversible_stack_step", "device tpu", lambda: longctx_lib.reversible.reversible_stack_step(8, 2, device="tpu"), ValueError, r"device", ()),
    # chunking (chapter 4)
    ("chunking.apply_chunked", "fn not callable", lambda: longctx_lib.chunking.apply_chunked(3, T(1, 4, 8), chunk_size=2), TypeError, r"\bfn\b", ()),
    ("chunking.apply_summed", "fn not callable", lambda: longctx_lib.chunking.apply_summed(3, T(1, 4, 8), 2), TypeError, r"\bfn\b", ()),
    ("chunking.apply_summed", "x is a list", lambda: longctx_lib.chunking.apply_summed(lambda x, i: x, [1.0], 2), TypeError, r"\bx\b", ()),
    ("chunking.apply_summed", "n_parts 0", lambda: longctx_lib.chunking.apply_summed(lambda x, i: x, T(1, 4, 8), 0), ValueError, r"n_parts", ()),
    ("chunking.apply_chunked", "x is 2-D", lambda: longctx_lib.chunking.apply_chunked(torch.nn.Identity(), T(4, 8), chunk_size=2), ValueError, r"\bx\b", ()),
    ("chunking.apply_chunked", "chunk_size 0", lambda: longctx_lib.chunking.apply_chunked(torch.nn.Identity(), T(1, 4, 8), chunk_size=0), ValueError, r"chunk_size", ()),
    ("chunking.ChunkedFeedForward", "ff is a function", lambda: longctx_lib.chunking.ChunkedFeedForward(lambda x: x, chunk_size=2), TypeError, r"\bff\b", ()),
    ("infini.sigma", "integer input", lambda: longctx_lib.infini.sigma(torch.zeros(3, dtype=torch.long)), TypeError, r"\bx\b", ()),
    ("infini.rotary", "odd head width", lambda: longctx_lib.infini.rotary(T(1, 2, 3, 5)), ValueError, r"\bx\b.*even", ()),
    ("infini.CompressiveMemory", "z of another width", lambda: longctx_lib.infini.CompressiveMemory(T(1, 2, 4, 3), T(1, 2, 5)), ValueError, r"\bz\b", ()),
    ("infini.CompressiveMemory", "empty with 0 heads", lambda: longctx_lib.infini.CompressiveMemory.empty(1, 0, 4, 4), ValueError, r"heads", ()),
    ("infini.CompressiveMemory", "retrieve with queries of another width", lambda: longctx_lib.infini.CompressiveMemory.empty(1, 2, 4, 4).retrieve(T(1, 2, 3, 5)), ValueError, r"\bq\b.*d_key", ()),
    ("infini.CompressiveMemory", "update with another batch", lambda: longctx_lib.infini.CompressiveMemory.empty(1, 2, 4, 4).update(T(2, 2, 3, 4), T(2, 2, 3, 4)), ValueError, r"\bk\b", ()),
    ("infini.CompressiveMemory", "update with values of another length", lambda: longctx_lib.infini.CompressiveMemory.empty(1, 2, 4, 4).update(T(1, 2, 3, 4), T(1, 2, 2, 4)), ValueError, r"same length", ()),
    ("infini.CompressiveMemory", "unknown rule", lambda: longctx_lib.infini.CompressiveMemory.empty(1, 2, 4, 4).update(T(1, 2, 3, 4), T(1, 2, 3, 4), rule="hebbian"), ValueError, r"\brule\b", ()),
    ("infini.InfiniAttention", "heads do not divide d_model", lambda: longctx_lib.infini.InfiniAttention(8, 3), ValueError, r"n_heads", ()),
    ("infini.InfiniAttention", "odd head width with rotary", lambda: longctx_lib.infini.InfiniAttention(6, 2), ValueError, r"rotary", ()),
    ("infini.InfiniAttention", "gate_init is inf", lambda: longctx_lib.infini.InfiniAttention(8, 2, gate_init=float("inf")), ValueError, r"gate_init", ()),
    ("infini.InfiniAttention", "memory is a tensor", lambda: longctx_lib.infini.InfiniAttention(8, 2)(T(1, 4, 8), T(1, 2, 4, 4)), TypeError, r"memory", ()),
    ("infini.InfiniAttention", "memory of another batch", lambda: longctx_lib.infini.InfiniAttention(8, 2)(T(1, 4, 8), longctx_lib.infini.CompressiveMemory.empty(3, 2, 4, 4)), ValueError, r"batch", ()),
    ("infini.InfiniAttention", "input of width 6", lambda: longctx_lib.infini.InfiniAttention(8, 2)(T(1, 4, 6)), ValueError, r"d_model", ()),
    ("infini.InfiniBlock", "unknown rule", lambda: longctx_lib.infini.InfiniBlock(8, 2, 16, rule="fast"), ValueError, r"\brule\b", ()),
    ("infini.InfiniTransformer", "segment_length 0", lambda: longctx_lib.infini.InfiniTransformer(10, 8, 2, 16, 1, segment_length=0), ValueError, r"segment_length", ()),
    ("infini.InfiniTransformer", "truncate 0", lambda: longctx_lib.infini.InfiniTransformer(10, 8, 2, 16, 1, truncate=0), ValueError, r"truncate", ()),
    ("infini.InfiniTransformer", "token out of the vocabulary", lambda: longctx_lib.infini.InfiniTransformer(10, 8, 2, 16, 1)(torch.full((1, 4), 10)), ValueError, r"vocab_size", ()),
    ("infini.InfiniTransformer", "float tokens", lambda: longctx_lib.infini.InfiniTransformer(10, 8, 2, 16, 1)(T(1, 4)), TypeError, r"tokens", ()),
    ("infini.InfiniTransformer", "memories of the wrong count", lambda: longctx_lib.infini.InfiniTransformer(10, 8, 2, 16, 2)(torch.zeros(1, 4, dtype=torch.long), [longctx_lib.infini.CompressiveMemory.empty(1, 2, 4, 4)]), ValueError, r"memories", ()),
    ("infini.InfiniTransformer", "stream of 1-D segments", lambda: list(longctx_lib.infini.InfiniTransformer(10, 8, 2, 16, 1).stream([torch.zeros(4, dtype=torch.long)])), ValueError, r"tokens", ()),
    ("infini.streaming_run", "length 0", lambda: longctx_lib.infini.streaming_run(0), ValueError, r"length", ()),
    ("tasks.passkey_batch", "length too short for key and question", lambda: longctx_lib.tasks.passkey_batch(1, 8), ValueError, r"length", ()),
    ("tasks.passkey_batch", "depth 1.5", lambda: longctx_lib.tasks.passkey_batch(1, 64, depth=1.5), ValueError, r"depth", ()),
    ("tasks.passkey_batch", "n_digits 0", lambda: longctx_lib.tasks.passkey_batch(1, 64, n_digits=0), ValueError, r"n_digits", ()),
    ("tasks.passkey_batch", "batch 0", lambda: longctx_lib.tasks.passkey_batch(0, 64), ValueError, r"batch", ()),
    ("tasks.passkey_targets_mask", "length 5", lambda: longctx_lib.tasks.passkey_targets_mask(5), ValueError, r"length", ()),
    ("tasks.passkey_accuracy", "logits without a vocabulary axis", lambda: longctx_lib.tasks.passkey_accuracy(T(2, 64), torch.zeros(2, 64, dtype=torch.long)), ValueError, r"logits", ()),
    ("tasks.passkey_accuracy", "tokens is a list", lambda: longctx_lib.tasks.passkey_accuracy(T(2, 64, 16), [1]), TypeError, r"tokens", ()),
    ("chunking.ChunkedFeedForward", "forward_backward with grad_out of another length", lambda: longctx_lib.chunking.ChunkedFeedForward(torch.nn.Linear(8, 8), chunk_size=2).forward_backward(T(1, 4, 8), T(1, 5, 8)), ValueError, r"grad_out", ()),
    ("reversible.NormAttention", "forward_backward with grad_out of another width", lambda: longctx_lib.reversible.NormAttention(8, 2, one_head_at_a_time=True).forward_backward(T(1, 4, 8), T(1, 4, 6)), ValueError, r"grad_out", ()),
    ("chunking.ChunkedFeedForward", "chunk_size 2.5", lambda: longctx_lib.chunking.ChunkedFeedForward(torch.nn.Identity(), chunk_size=2.5), ValueError, r"chunk_size", ()),
    ("chunking.chunked_cross_entropy", "weight width differs", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 6), torch.zeros(1, 4, dtype=torch.long)), ValueError, r"\bweight\b", ()),
    ("chunking.chunked_cross_entropy", "float targets", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 8), T(1, 4)), TypeError, r"targets", ()),
    ("chunking.chunked_cross_entropy", "targets shape", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 8), torch.zeros(1, 3, dtype=torch.long)), ValueError, r"targets", ()),
    ("chunking.chunked_cross_entropy", "target out of range", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 8), torch.full((1, 4), 5)), ValueError, r"targets", ()),
    ("chunking.chunked_cross_entropy", "bias shape", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 8), torch.zeros(1, 4, dtype=torch.long), bias=T(4)), ValueError, r"\bbias\b", ()),
    ("chunking.chunked_cross_entropy", "reduction none", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 8), torch.zeros(1, 4, dtype=torch.long), reduction="none"), ValueError, r"reduction", ()),
    ("chunking.chunked_cross_entropy", "chunk_size 0", lambda: longctx_lib.chunking.chunked_cross_entropy(T(1, 4, 8), T(5, 8), torch.zeros(1, 4, dtype=torch.long), chunk_size=0), ValueError, r"chunk_size", ()),
    ("chunking.chunked_cross_entropy", "hidden is a list", lambda: longctx_lib.chunking.chunked_cross_entropy([1.0], T(5, 8), torch.zeros(1, 4, dtype=torch.long)), TypeError, r"hidden", ()),
    # reformer (chapter 4)
    ("reformer.axial_shape_for", "max_length 0", lambda: longctx_lib.reformer.axial_shape_for(0), ValueError, r"max_length", ()),
    ("reformer.ReformerConfig", "d_model not a multiple of n_heads", lambda: longctx_lib.reformer.ReformerConfig(d_model=30, n_heads=4), ValueError, r"n_heads", ()),
    ("reformer.ReformerConfig", "unknown attention", lambda: longctx_lib.reformer.ReformerConfig(attention="linear"), ValueError, r"attention", ()),
    ("reformer.ReformerConfig", "one_head_at_a_time is a string", lambda: longctx_lib.reformer.ReformerConfig(one_head_at_a_time="yes"), TypeError, r"one_head_at_a_time", ()),
    ("reformer.ReformerConfig", "axial shape too small", lambda: longctx_lib.reformer.ReformerConfig(max_length=100, axial_shape=(5, 5)), ValueError, r"axial_shape", ()),
    ("reformer.ReformerConfig", "ff_chunk_size 0", lambda: longctx_lib.reformer.ReformerConfig(ff_chunk_size=0), ValueError, r"ff_chunk_size", ()),
    ("reformer.ReformerConfig", "unknown mode", lambda: longctx_lib.reformer.ReformerConfig(mode="fast"), ValueError, r"\bmode\b", ()),
    ("reformer.ReformerConfig", "n_layers 0", lambda: longctx_lib.reformer.ReformerConfig(n_layers=0), ValueError, r"n_layers", ()),
    ("reformer.AxialPositionEmbedding", "shape of three", lambda: longctx_lib.reformer.AxialPositionEmbedding(8, (2, 2, 2)), ValueError, r"\bshape\b", ()),
    ("reformer.AxialPositionEmbedding", "length beyond the table", lambda: longctx_lib.reformer.AxialPositionEmbedding(8, (2, 2))(5), ValueError, r"\blength\b", ()),
    ("reformer.ReformerLM", "config is a dict", lambda: longctx_lib.reformer.ReformerLM({"d_model": 8}), TypeError, r"config", ()),
    ("reformer.ReformerLM", "float tokens", lambda: _tiny_reformer()(T(1, 8)), TypeError, r"tokens", ()),
    ("reformer.ReformerLM", "tokens longer than max_length", lambda: _tiny_reformer()(torch.zeros(1, 65, dtype=torch.long)), ValueError, r"max_length", ()),
    ("reformer.ReformerLM", "loss on one token", lambda: _tiny_reformer().loss(torch.zeros(1, 1, dtype=torch.long)), ValueError, r"tokens", ()),
    ("reformer.ReformerLM", "generate n_new -1", lambda: _tiny_reformer().generate(torch.zeros(1, 2, dtype=torch.long), -1), ValueError, r"n_new", ()),
    ("reformer.ReformerLM", "generate temperature 0", lambda: _tiny_reformer().generate(torch.zeros(1, 2, dtype=torch.long), 1, temperature=0), ValueError, r"temperature", ()),
    ("reformer.reformer_train_step", "length 1", lambda: longctx_lib.reformer.reformer_train_step(1), ValueError, r"\blength\b", ()),
    ("reformer.ablation_config", "unknown stage", lambda: longctx_lib.reformer.ablation_config("+hashing"), ValueError, r"\bstage\b", ()),
    ("reformer.ablation_config", "plain_attention lsh", lambda: longctx_lib.reformer.ablation_config("plain", plain_attention="lsh"), ValueError, r"plain_attention", ()),
    ("reformer.ablation_config", "d_model 0", lambda: longctx_lib.reformer.ablation_config("plain", d_model=0), ValueError, r"d_model", ()),
    # text (chapter 4's corpus)
    ("text.stdlib_files", "root is a file", lambda: longctx_lib.text.stdlib_files(__file__), ValueError, r"\broot\b", ()),
    ("text.stdlib_corpus", "split test", lambda: longctx_lib.text.stdlib_corpus("test"), ValueError, r"\bsplit\b", ()),
    ("text.stdlib_corpus", "validation 1.5", lambda: longctx_lib.text.stdlib_corpus(validation=1.5), ValueError, r"validation", ()),
    ("text.stdlib_corpus", "max_bytes 0", lambda: longctx_lib.text.stdlib_corpus(max_bytes=0), ValueError, r"max_bytes", ()),
    ("text.random_windows", "corpus is 2-D", lambda: longctx_lib.text.random_windows(torch.zeros(2, 5, dtype=torch.long), 1, 2), ValueError, r"corpus", ()),
    ("text.random_windows", "batch 0", lambda: longctx_lib.text.random_windows(torch.zeros(5, dtype=torch.long), 0, 2), ValueError, r"\bbatch\b", ()),
    ("text.random_windows", "length beyond the corpus", lambda: longctx_lib.text.random_windows(torch.zeros(5, dtype=torch.long), 1, 6), ValueError, r"\blength\b", ()),
    ("text.encode", "bytes instead of str", lambda: longctx_lib.text.encode(b"abc"), TypeError, r"\btext\b", ()),
    ("text.decode", "float tokens", lambda: longctx_lib.text.decode(T(3)), TypeError, r"tokens", ()),
    # charlm (chapter 4)
    ("charlm.bits_per_char", "not a model", lambda: longctx_lib.charlm.bits_per_char(torch.nn.Linear(2, 2), torch.zeros(9, dtype=torch.long), context=4), TypeError, r"\bmodel\b", ()),
    ("charlm.bits_per_char", "n_windows 0", lambda: longctx_lib.charlm.bits_per_char(_tiny_reformer(), torch.zeros(9, dtype=torch.long), context=4, n_windows=0), ValueError, r"n_windows", ()),
    ("charlm.train_char_lm", "steps 0", lambda: longctx_lib.charlm.train_char_lm(_tiny_reformer(), torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long), context=4, steps=0), ValueError, r"\bsteps\b", ()),
    ("charlm.train_char_lm", "not a model", lambda: longctx_lib.charlm.train_char_lm("model", torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long), context=4, steps=1), TypeError, r"\bmodel\b", ()),
    ("charlm.train_char_lm", "schedule linear", lambda: longctx_lib.charlm.train_char_lm(_tiny_reformer(), torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long), context=4, steps=1, schedule="linear"), ValueError, r"\bschedule\b", ()),
    ("charlm.train_char_lm", "warmup -1", lambda: longctx_lib.charlm.train_char_lm(_tiny_reformer(), torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long), context=4, steps=1, warmup=-1), ValueError, r"\bwarmup\b", ()),
    ("charlm.train_char_lm", "grad_clip 0", lambda: longctx_lib.charlm.train_char_lm(_tiny_reformer(), torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long), context=4, steps=1, grad_clip=0.0), ValueError, r"grad_clip", ()),
    ("charlm.bits_per_char", "tiled windows beyond the corpus", lambda: longctx_lib.charlm.bits_per_char(_tiny_reformer(), torch.zeros(9, dtype=torch.long), context=4, n_windows=3, tiled=True), ValueError, r"n_windows", ()),
    ("charlm.bits_per_char", "tiled is a string", lambda: longctx_lib.charlm.bits_per_char(_tiny_reformer(), torch.zeros(9, dtype=torch.long), context=4, tiled="yes"), TypeError, r"\btiled\b", ()),
    ("charlm.build_char_lm", "unknown run name", lambda: longctx_lib.charlm.build_char_lm("lsh-2k"), ValueError, r"\brun\b", ()),
    ("charlm.build_char_lm", "unknown position_init", lambda: longctx_lib.charlm.build_char_lm(dict(longctx_lib.charlm.CHARLM_RUNS["lsh-1k"], position_init="zeros")), ValueError, r"position_init", ()),
    ("charlm.build_char_lm", "run is a list", lambda: longctx_lib.charlm.build_char_lm([1024]), TypeError, r"\brun\b", ()),
    ("charlm.train_char_lm_run", "run missing keys", lambda: longctx_lib.charlm.train_char_lm_run({"model": {}}, progress=False), ValueError, r"\brun\b", ()),
    ("charlm.train_char_lm_run", "context beyond max_length", lambda: longctx_lib.charlm.train_char_lm_run(dict(longctx_lib.charlm.CHARLM_RUNS["lsh-1k"], context=4096), progress=False), ValueError, r"max_length", ()),
    ("charlm.train_char_lm_run", "progress is a string", lambda: longctx_lib.charlm.train_char_lm_run("lsh-1k", progress="no"), TypeError, r"progress", ()),
    ("charlm.evaluate_char_lm", "unknown run", lambda: longctx_lib.charlm.evaluate_char_lm(_tiny_reformer(), "lsh-2k"), ValueError, r"\brun\b", ()),
    ("charlm.evaluate_char_lm", "n_tokens 0", lambda: longctx_lib.charlm.evaluate_char_lm(_tiny_reformer(), "lsh-1k", n_tokens=0), ValueError, r"n_tokens", ()),
    ("charlm.evaluate_char_lm", "not a model", lambda: longctx_lib.charlm.evaluate_char_lm("model", "lsh-1k", validation=torch.zeros(4096, dtype=torch.long)), TypeError, r"\bmodel\b", ()),
    ("charlm.save_char_lm", "not a model", lambda: longctx_lib.charlm.save_char_lm("model", {}, "x.pt"), TypeError, r"\bmodel\b", ()),
    ("charlm.save_char_lm", "path is an int", lambda: longctx_lib.charlm.save_char_lm(_tiny_reformer(), {}, 3), TypeError, r"\bpath\b", ()),
    ("charlm.save_char_lm", "integer dtype", lambda: longctx_lib.charlm.save_char_lm(_tiny_reformer(), {}, "x.pt", dtype=torch.int8), TypeError, r"\bdtype\b", ()),
    ("charlm.load_char_lm", "path is an int", lambda: longctx_lib.charlm.load_char_lm(3), TypeError, r"\bpath\b", ()),
    ("charlm.load_char_lm", "no such file", lambda: longctx_lib.charlm.load_char_lm("/nonexistent/lsh-1k.pt"), FileNotFoundError, r"train_charlm\.py", ()),
    ("charlm.load_or_train_char_lm", "unknown name", lambda: longctx_lib.charlm.load_or_train_char_lm("lsh-2k"), ValueError, r"\bname\b", ()),
    ("charlm.load_or_train_char_lm", "name with a slash", lambda: longctx_lib.charlm.load_or_train_char_lm("../x", run=longctx_lib.charlm.CHARLM_RUNS["lsh-1k"]), ValueError, r"\bname\b", ()),
    ("charlm.load_or_train_char_lm", "retrain is a string", lambda: longctx_lib.charlm.load_or_train_char_lm("lsh-1k", retrain="yes"), TypeError, r"retrain", ()),
    ("charlm.load_or_train_char_lm", "checkpoint_dir is an int", lambda: longctx_lib.charlm.load_or_train_char_lm("lsh-1k", checkpoint_dir=3), TypeError, r"checkpoint_dir", ()),
    ("charlm.sample_text", "not a model", lambda: longctx_lib.charlm.sample_text("model", "def ", 3), TypeError, r"\bmodel\b", ()),
    ("charlm.sample_text", "vocabulary smaller than bytes", lambda: longctx_lib.charlm.sample_text(_tiny_reformer(), "def ", 3), ValueError, r"vocab_size", ()),
    ("charlm.sample_text", "empty prompt", lambda: longctx_lib.charlm.sample_text(longctx_lib.reformer.ReformerLM(d_model=8, n_heads=2, d_ff=16, n_layers=1, chunk_size=4, max_length=64), "", 3), ValueError, r"\bprompt\b", ()),
    ("charlm.sample_text", "n_new -1", lambda: longctx_lib.charlm.sample_text(longctx_lib.reformer.ReformerLM(d_model=8, n_heads=2, d_ff=16, n_layers=1, chunk_size=4, max_length=64), "def ", -1), ValueError, r"\bn_new\b", ()),
    # passkey (chapter 5)
    ("passkey.build_passkey_model", "unknown run name", lambda: longctx_lib.passkey.build_passkey_model("linear-2"), ValueError, r"\brun\b", ()),
    ("passkey.build_passkey_model", "run is a list", lambda: longctx_lib.passkey.build_passkey_model([128]), TypeError, r"\brun\b", ()),
    ("passkey.build_passkey_model", "run missing keys", lambda: longctx_lib.passkey.build_passkey_model({"rule": "linear"}), ValueError, r"\brun\b.*missing", ()),
    ("passkey.build_passkey_model", "unknown rule", lambda: longctx_lib.passkey.build_passkey_model(dict(longctx_lib.passkey.PASSKEY_RUNS["linear"], rule="hebbian")), ValueError, r"\brule\b", ()),
    ("passkey.build_passkey_model", "train_length shorter than key and question", lambda: longctx_lib.passkey.build_passkey_model(dict(longctx_lib.passkey.PASSKEY_RUNS["linear"], train_length=4)), ValueError, r"train_length", ()),
    ("passkey.build_passkey_model", "gate_lr 0", lambda: longctx_lib.passkey.build_passkey_model(dict(longctx_lib.passkey.PASSKEY_RUNS["linear"], gate_lr=0.0)), ValueError, r"gate_lr", ()),
    ("passkey.passkey_optimizer", "not an InfiniTransformer", lambda: longctx_lib.passkey.passkey_optimizer(torch.nn.Linear(2, 2), "linear"), TypeError, r"\bmodel\b", ()),
    ("passkey.passkey_optimizer", "unknown run", lambda: longctx_lib.passkey.passkey_optimizer(longctx_lib.passkey.build_passkey_model("linear"), "linear-2"), ValueError, r"\brun\b", ()),
    ("passkey.train_passkey", "steps 0", lambda: longctx_lib.passkey.train_passkey("linear", steps=0), ValueError, r"\bsteps\b", ()),
    ("passkey.train_passkey", "progress is a string", lambda: longctx_lib.passkey.train_passkey("linear", progress="no"), TypeError, r"\bprogress\b", ()),
    ("passkey.train_passkey", "device tpu", lambda: longctx_lib.passkey.train_passkey("linear", steps=1, progress=False, device="tpu"), ValueError, r"device", ()),
    ("passkey.train_passkey", "batch 0", lambda: longctx_lib.passkey.train_passkey(dict(longctx_lib.passkey.PASSKEY_RUNS["linear"], batch=0)), ValueError, r"batch", ()),
    ("passkey.evaluate_passkey", "not a model", lambda: longctx_lib.passkey.evaluate_passkey("model", [128]), TypeError, r"\bmodel\b", ()),
    ("passkey.evaluate_passkey", "no lengths", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), []), ValueError, r"\blengths\b", ()),
    ("passkey.evaluate_passkey", "lengths is an int", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), 128), ValueError, r"\blengths\b", ()),
    ("passkey.evaluate_passkey", "length too short for key and question", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), [6]), ValueError, r"\blengths\b", ()),
    ("passkey.evaluate_passkey", "depth 1.5", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), [128], depths=(1.5,)), ValueError, r"\bdepths\b", ()),
    ("passkey.evaluate_passkey", "n_per_cell 0", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), [128], n_per_cell=0), ValueError, r"n_per_cell", ()),
    ("passkey.evaluate_passkey", "n_digits 0", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), [128], n_digits=0), ValueError, r"n_digits", ()),
    ("passkey.evaluate_passkey", "n_digits unknown for a plain InfiniTransformer", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.infini.InfiniTransformer(16, 8, 2, 16, 1), [128]), ValueError, r"n_digits", ()),
    ("passkey.evaluate_passkey", "seed -1", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), [128], seed=-1), ValueError, r"\bseed\b", ()),
    ("passkey.evaluate_passkey", "device tpu", lambda: longctx_lib.passkey.evaluate_passkey(longctx_lib.passkey.build_passkey_model("linear"), [128], device="tpu"), ValueError, r"device", ()),
    ("passkey.save_passkey", "not a model", lambda: longctx_lib.passkey.save_passkey("model", {}, "x.pt"), TypeError, r"\bmodel\b", ()),
    ("passkey.save_passkey", "history without its run", lambda: longctx_lib.passkey.save_passkey(longctx_lib.passkey.build_passkey_model("linear"), {}, "x.pt"), TypeError, r"\bhistory\b", ()),
    ("passkey.save_passkey", "path is an int", lambda: longctx_lib.passkey.save_passkey(longctx_lib.passkey.build_passkey_model("linear"), {"run": longctx_lib.passkey.PASSKEY_RUNS["linear"]}, 3), TypeError, r"\bpath\b", ()),
    ("passkey.save_passkey", "integer dtype", lambda: longctx_lib.passkey.save_passkey(longctx_lib.passkey.build_passkey_model("linear"), {"run": longctx_lib.passkey.PASSKEY_RUNS["linear"]}, "x.pt", dtype=torch.int8), TypeError, r"\bdtype\b", ()),
    ("passkey.load_passkey", "path is an int", lambda: longctx_lib.passkey.load_passkey(3), TypeError, r"\bpath\b", ()),
    ("passkey.load_passkey", "no such file", lambda: longctx_lib.passkey.load_passkey("/nonexistent/linear.pt"), FileNotFoundError, r"train_passkey\.py", ()),
    ("passkey.load_or_train_passkey", "unknown run", lambda: longctx_lib.passkey.load_or_train_passkey("linear-2"), ValueError, r"\brun\b", ()),
    ("passkey.load_or_train_passkey", "run is a dict", lambda: longctx_lib.passkey.load_or_train_passkey(longctx_lib.passkey.PASSKEY_RUNS["linear"]), TypeError, r"\brun\b", ()),
    ("passkey.load_or_train_passkey", "train_if_missing is a string", lambda: longctx_lib.passkey.load_or_train_passkey("linear", train_if_missing="no"), TypeError, r"train_if_missing", ()),
    ("passkey.load_or_train_passkey", "checkpoint_dir is an int", lambda: longctx_lib.passkey.load_or_train_passkey("linear", checkpoint_dir=3), TypeError, r"checkpoint_dir", ()),
    # tasks (chapter 6: the RMT's tasks)
    ("tasks.copy_batch", "batch 0", lambda: longctx_lib.tasks.copy_batch(0, 4), ValueError, r"\bbatch\b", ()),
    ("tasks.copy_batch", "n 0", lambda: longctx_lib.tasks.copy_batch(2, 0), ValueError, r"\bn\b", ()),
    ("tasks.copy_batch", "n is a string", lambda: longctx_lib.tasks.copy_batch(2, "4"), ValueError, r"\bn\b", ()),
    ("tasks.copy_batch", "device tpu", lambda: longctx_lib.tasks.copy_batch(2, 4, device="tpu"), ValueError, r"device", ()),
    ("tasks.reverse_batch", "n 2.5", lambda: longctx_lib.tasks.reverse_batch(2, 2.5), ValueError, r"\bn\b", ()),
    ("tasks.reverse_batch", "batch True", lambda: longctx_lib.tasks.reverse_batch(True, 4), ValueError, r"\bbatch\b", ()),
    ("tasks.associative_retrieval_batch", "more pairs than symbols", lambda: longctx_lib.tasks.associative_retrieval_batch(2, 17), ValueError, r"n_pairs.*16", ()),
    ("tasks.associative_retrieval_batch", "n_pairs 0", lambda: longctx_lib.tasks.associative_retrieval_batch(2, 0), ValueError, r"n_pairs", ()),
    ("tasks.associative_retrieval_batch", "batch 0", lambda: longctx_lib.tasks.associative_retrieval_batch(0, 3), ValueError, r"\bbatch\b", ()),
    ("tasks.fact_batch", "unknown task", lambda: longctx_lib.tasks.fact_batch(2, 16, task="qa1"), ValueError, r"\btask\b", ()),
    ("tasks.fact_batch", "n_values 1", lambda: longctx_lib.tasks.fact_batch(2, 16, n_values=1), ValueError, r"n_values", ()),
    ("tasks.fact_batch", "n_values 17 (more than the symbols)", lambda: longctx_lib.tasks.fact_batch(2, 16, n_values=17), ValueError, r"n_values", ()),
    ("tasks.fact_batch", "length 3: no room for fact and question", lambda: longctx_lib.tasks.fact_batch(2, 3), ValueError, r"\blength\b", ()),
    ("tasks.fact_batch", "reasoning in 5 tokens", lambda: longctx_lib.tasks.fact_batch(2, 5, task="reasoning"), ValueError, r"\blength\b.*reasoning", ()),
    ("tasks.fact_batch", "batch 0", lambda: longctx_lib.tasks.fact_batch(0, 16), ValueError, r"\bbatch\b", ()),
    ("tasks.answer_accuracy", "logits is a list", lambda: longctx_lib.tasks.answer_accuracy([[1.0]], _ids(2, 8), _answers(2, 8, 7)), TypeError, r"\blogits\b", ()),
    ("tasks.answer_accuracy", "logits without a vocabulary axis", lambda: longctx_lib.tasks.answer_accuracy(T(2, 8), _ids(2, 8), _answers(2, 8, 7)), ValueError, r"\blogits\b", ()),
    ("tasks.answer_accuracy", "mask of another length", lambda: longctx_lib.tasks.answer_accuracy(T(2, 8, 5), _ids(2, 8), _answers(2, 7, 6)), ValueError, r"answer_mask", ()),
    ("tasks.answer_accuracy", "float mask", lambda: longctx_lib.tasks.answer_accuracy(T(2, 8, 5), _ids(2, 8), T(2, 8)), ValueError, r"answer_mask.*bool", ()),
    ("tasks.answer_accuracy", "answer at position 0", lambda: longctx_lib.tasks.answer_accuracy(T(2, 8, 5), _ids(2, 8), _answers(2, 8, 0)), ValueError, r"answer_mask.*position 0", ()),
    # rmt (chapter 6: the Recurrent Memory Transformer)
    ("rmt.segment_mask", "n_memory -1", lambda: longctx_lib.rmt.segment_mask(-1, 4), ValueError, r"n_memory", ()),
    ("rmt.segment_mask", "n_tokens 0", lambda: longctx_lib.rmt.segment_mask(2, 0), ValueError, r"n_tokens", ()),
    ("rmt.segment_mask", "unknown variant", lambda: longctx_lib.rmt.segment_mask(2, 4, "bert"), ValueError, r"\bvariant\b", ()),
    ("rmt.segment_mask", "device tpu", lambda: longctx_lib.rmt.segment_mask(2, 4, device="tpu"), ValueError, r"device", ()),
    ("rmt.RecurrentMemoryTransformer", "vocab_size 0", lambda: longctx_lib.rmt.RecurrentMemoryTransformer(0, 8, 2, 16, 1, segment_length=4), ValueError, r"vocab_size", ()),
    ("rmt.RecurrentMemoryTransformer", "segment_length 0", lambda: _tiny_rmt(segment_length=0), ValueError, r"segment_length", ()),
    ("rmt.RecurrentMemoryTransformer", "segment_length missing", lambda: longctx_lib.rmt.RecurrentMemoryTransformer(10, 8, 2, 16, 1), TypeError, r"segment_length", ()),
    ("rmt.RecurrentMemoryTransformer", "n_memory -1", lambda: _tiny_rmt(n_memory=-1), ValueError, r"n_memory", ()),
    ("rmt.RecurrentMemoryTransformer", "unknown variant", lambda: _tiny_rmt(variant="bert"), ValueError, r"\bvariant\b", ()),
    ("rmt.RecurrentMemoryTransformer", "encoder without blank_token", lambda: _tiny_rmt(variant="encoder"), ValueError, r"blank_token", ()),
    ("rmt.RecurrentMemoryTransformer", "encoder with blank_token out of the vocabulary", lambda: _tiny_rmt(variant="encoder", blank_token=10), ValueError, r"blank_token", ()),
    ("rmt.RecurrentMemoryTransformer", "bptt_depth -1", lambda: _tiny_rmt(bptt_depth=-1), ValueError, r"bptt_depth", ()),
    ("rmt.RecurrentMemoryTransformer", "bptt_depth 1.5", lambda: _tiny_rmt(bptt_depth=1.5), ValueError, r"bptt_depth", ()),
    ("rmt.RecurrentMemoryTransformer", "bptt_depth set to True later", lambda: setattr(_tiny_rmt(), "bptt_depth", True), ValueError, r"bptt_depth", ()),
    ("rmt.RecurrentMemoryTransformer", "n_heads does not divide d_model", lambda: longctx_lib.rmt.RecurrentMemoryTransformer(10, 8, 3, 16, 1, segment_length=4), ValueError, r"n_heads", ()),
    ("rmt.RecurrentMemoryTransformer", "float tokens", lambda: _tiny_rmt()(T(1, 6)), TypeError, r"\btokens\b", ()),
    ("rmt.RecurrentMemoryTransformer", "1-D tokens", lambda: _tiny_rmt()(_ids(6)), ValueError, r"\btokens\b", ()),
    ("rmt.RecurrentMemoryTransformer", "tokens is a list", lambda: _tiny_rmt()([[1, 2]]), ValueError, r"\btokens\b", ()),
    ("rmt.RecurrentMemoryTransformer", "token out of the vocabulary", lambda: _tiny_rmt()(torch.full((1, 6), 10)), ValueError, r"vocab_size", ()),
    ("rmt.RecurrentMemoryTransformer", "forward with memory of another size", lambda: _tiny_rmt()(_ids(1, 6), memory=T(1, 3, 8)), ValueError, r"\bmemory\b", ()),
    ("rmt.RecurrentMemoryTransformer", "segment longer than segment_length", lambda: _tiny_rmt().segment(_ids(1, 5), T(1, 2, 8)), ValueError, r"segment_length", ()),
    ("rmt.RecurrentMemoryTransformer", "segment with memory of another batch", lambda: _tiny_rmt().segment(_ids(1, 4), T(2, 2, 8)), ValueError, r"\bmemory\b", ()),
    ("rmt.RecurrentMemoryTransformer", "initial_memory for batch 0", lambda: _tiny_rmt().initial_memory(0), ValueError, r"\bbatch\b", ()),
    ("rmt.RecurrentMemoryTransformer", "answer_loss with a float mask", lambda: _tiny_rmt().answer_loss(_ids(2, 6), T(2, 6)), ValueError, r"answer_mask", ()),
    ("rmt.RecurrentMemoryTransformer", "answer_loss with a mask of another length", lambda: _tiny_rmt().answer_loss(_ids(2, 6), _answers(2, 5, 4)), ValueError, r"answer_mask", ()),
    ("rmt.RecurrentMemoryTransformer", "answer_loss: the decoder scoring position 0", lambda: _tiny_rmt().answer_loss(_ids(2, 6), _answers(2, 6, 0)), ValueError, r"answer_mask.*position 0", ()),
    ("rmt.RecurrentMemoryTransformer", "answer_loss with no answer", lambda: _tiny_rmt().answer_loss(_ids(2, 6), _answers(2, 6)), ValueError, r"answer_mask", ()),
    ("rmt.RecurrentMemoryTransformer", "answer_loss with float tokens", lambda: _tiny_rmt().answer_loss(T(2, 6), _answers(2, 6, 5)), TypeError, r"\btokens\b", ()),
    ("rmt.RecurrentMemoryTransformer", "answer_accuracy with a float mask", lambda: _tiny_rmt().answer_accuracy(_ids(2, 6), T(2, 6)), ValueError, r"answer_mask", ()),
    ("rmt.RecurrentMemoryTransformer", "stream of 1-D segments", lambda: list(_tiny_rmt().stream([_ids(4)])), ValueError, r"\btokens\b", ()),
    ("rmt.RecurrentMemoryTransformer", "stream of a too-long segment", lambda: list(_tiny_rmt().stream([_ids(1, 5)])), ValueError, r"segment_length", ()),
    ("rmt.evaluate_segments", "not a model", lambda: longctx_lib.rmt.evaluate_segments("model", _batcher, [1]), TypeError, r"\bmodel\b", ()),
    ("rmt.evaluate_segments", "make_batch not callable", lambda: longctx_lib.rmt.evaluate_segments(_tiny_rmt(), 3, [1]), TypeError, r"make_batch", ()),
    ("rmt.evaluate_segments", "0 segments", lambda: longctx_lib.rmt.evaluate_segments(_tiny_rmt(), _batcher, [1, 0]), ValueError, r"\bsegments\b", ()),
    ("rmt.evaluate_segments", "n_sequences 0", lambda: longctx_lib.rmt.evaluate_segments(_tiny_rmt(), _batcher, [1], n_sequences=0), ValueError, r"n_sequences", ()),
    ("rmt.evaluate_segments", "batch 0", lambda: longctx_lib.rmt.evaluate_segments(_tiny_rmt(), _batcher, [1], batch=0), ValueError, r"\bbatch\b", ()),
    ("rmt.train_curriculum", "not a model", lambda: longctx_lib.rmt.train_curriculum(torch.nn.Linear(2, 2), _batcher, max_segments=2), TypeError, r"\bmodel\b", ()),
    ("rmt.train_curriculum", "make_batch not callable", lambda: longctx_lib.rmt.train_curriculum(_tiny_rmt(), None, max_segments=2), TypeError, r"make_batch", ()),
    ("rmt.train_curriculum", "max_segments 0", lambda: longctx_lib.rmt.train_curriculum(_tiny_rmt(), _batcher, max_segments=0), ValueError, r"max_segments", ()),
    ("rmt.train_curriculum", "threshold 1.5", lambda: longctx_lib.rmt.train_curriculum(_tiny_rmt(), _batcher, max_segments=2, threshold=1.5), ValueError, r"threshold", ()),
    ("rmt.train_curriculum", "steps 0", lambda: longctx_lib.rmt.train_curriculum(_tiny_rmt(), _batcher, max_segments=2, steps=0), ValueError, r"\bsteps\b", ()),
    ("rmt.train_curriculum", "eval_every 0", lambda: longctx_lib.rmt.train_curriculum(_tiny_rmt(), _batcher, max_segments=2, eval_every=0), ValueError, r"eval_every", ()),
    ("rmt.streaming_run", "n_segments 0", lambda: longctx_lib.rmt.streaming_run(0), ValueError, r"n_segments", ()),
    ("rmt.streaming_run", "device tpu", lambda: longctx_lib.rmt.streaming_run(1, device="tpu"), ValueError, r"device", ()),
    ("rmt.training_step_run", "n_segments 0", lambda: longctx_lib.rmt.training_step_run(0), ValueError, r"n_segments", ()),
    ("rmt.training_step_run", "bptt_depth -1", lambda: longctx_lib.rmt.training_step_run(1, bptt_depth=-1), ValueError, r"bptt_depth", ()),
    ("rmt.training_step_run", "device tpu", lambda: longctx_lib.rmt.training_step_run(1, device="tpu"), ValueError, r"device", ()),
    ("rmt.transformer_flops", "length 0", lambda: longctx_lib.rmt.transformer_flops(0, **FLOP_SIZES), ValueError, r"\blength\b", ()),
    ("rmt.transformer_flops", "n_heads does not divide d_model", lambda: longctx_lib.rmt.transformer_flops(8, **dict(FLOP_SIZES, n_heads=3)), ValueError, r"n_heads", ()),
    ("rmt.transformer_flops", "n_logits -1", lambda: longctx_lib.rmt.transformer_flops(8, n_logits=-1, **FLOP_SIZES), ValueError, r"n_logits", ()),
    ("rmt.transformer_flops", "d_model missing", lambda: longctx_lib.rmt.transformer_flops(8, n_layers=1, n_heads=1, d_ff=4, vocab_size=4), TypeError, r"d_model", ()),
    ("rmt.rmt_flops", "segment_length 0", lambda: longctx_lib.rmt.rmt_flops(8, segment_length=0, n_memory=2, **FLOP_SIZES), ValueError, r"segment_length", ()),
    ("rmt.rmt_flops", "n_memory -1", lambda: longctx_lib.rmt.rmt_flops(8, segment_length=4, n_memory=-1, **FLOP_SIZES), ValueError, r"n_memory", ()),
    ("rmt.rmt_flops", "unknown variant", lambda: longctx_lib.rmt.rmt_flops(8, segment_length=4, n_memory=2, variant="bert", **FLOP_SIZES), ValueError, r"\bvariant\b", ()),
    ("rmt.rmt_flops", "length 2.5", lambda: longctx_lib.rmt.rmt_flops(2.5, segment_length=4, n_memory=2, **FLOP_SIZES), ValueError, r"\blength\b", ()),
    # grading
    ("grading.check", "unknown suite", lambda: longctx_lib.grading.check("nope", lambda: None), ValueError, r"suite_name", ()),
    ("grading.check", "fn not callable", lambda: longctx_lib.grading.check("max_length", 3), TypeError, r"\bfn\b", ()),
    ("grading.graded_on_its_own", "not a function", lambda: longctx_lib.grading.graded_on_its_own(3).__enter__(), TypeError, r"functions", ()),
    ("grading.draw_cases", "unknown suite", lambda: longctx_lib.grading.draw_cases("nope", "."), ValueError, r"suite_name", ()),
    ("grading.verify", "unknown suite", lambda: longctx_lib.grading.verify("nope", ".", []), ValueError, r"suite_name", ()),
    ("grading.referenced_library_names", "source not a string", lambda: longctx_lib.grading.referenced_library_names(3), TypeError, r"source", ()),
    ("grading.forbidden_uses", "unknown suite", lambda: longctx_lib.grading.forbidden_uses("nope", []), ValueError, r"suite_name", ()),
    ("bench.ModelSizes", "d_model 0", lambda: _bench().ModelSizes(d_model=0), ValueError, r"d_model", ()),
    ("bench.ModelSizes", "odd head size", lambda: _bench().ModelSizes(d_model=12, n_heads=4), ValueError, r"d_model.*n_heads", ()),
    ("bench.ModelSizes", "vocab_size below the tasks", lambda: _bench().ModelSizes(vocab_size=16), ValueError, r"vocab_size", ()),
    ("bench.SpeedConfig", "unknown method", lambda: _bench().SpeedConfig(methods=("flash",)), ValueError, r"methods", ()),
    ("bench.SpeedConfig", "methods a string", lambda: _bench().SpeedConfig(methods="sdpa"), ValueError, r"methods", ()),
    ("bench.SpeedConfig", "unknown mode", lambda: _bench().SpeedConfig(modes=("backward",)), ValueError, r"modes", ()),
    ("bench.SpeedConfig", "stop below start", lambda: _bench().SpeedConfig(start=1024, stop=512), ValueError, r"stop", ()),
    ("bench.SpeedConfig", "budget 0", lambda: _bench().SpeedConfig(budget_mib=0), ValueError, r"budget_mib", ()),
    ("bench.SpeedConfig", "timeout -1", lambda: _bench().SpeedConfig(timeout=-1), ValueError, r"timeout", ()),
    ("bench.SpeedConfig", "stop beyond max_length", lambda: _bench().SpeedConfig(sizes=_bench_tiny(), start=32, stop=128), ValueError, r"max_length", ()),
    ("bench.SpeedConfig", "sizes a dict", lambda: _bench().SpeedConfig(sizes={"d_model": 8}), TypeError, r"sizes", ()),
    ("bench.QualityConfig", "train_length 8", lambda: _bench().QualityConfig(train_length=8), ValueError, r"train_length", ()),
    ("bench.QualityConfig", "evaluation beyond max_length", lambda: _bench().QualityConfig(eval_multiples=(1, 64)), ValueError, r"max_length", ()),
    ("bench.QualityConfig", "eval_multiples 0", lambda: _bench().QualityConfig(eval_multiples=(0,)), ValueError, r"eval_multiples", ()),
    ("bench.QualityConfig", "lr 0", lambda: _bench().QualityConfig(lr=0), ValueError, r"\blr\b", ()),
    ("bench.QualityConfig", "unknown task", lambda: _bench().QualityConfig(tasks=("babi",)), ValueError, r"tasks", ()),
    ("bench.FullAttentionLM", "impl flash", lambda: _bench().FullAttentionLM(32, 8, 2, 16, 1, impl="flash"), ValueError, r"impl", ()),
    ("bench.FullAttentionLM", "n_layers 0", lambda: _bench().FullAttentionLM(32, 8, 2, 16, 0), ValueError, r"n_layers", ()),
    ("bench.FullAttentionLM", "float tokens", lambda: _bench_model()(T(1, 4)), ValueError, r"\btokens\b", ()),
    ("bench.FullAttentionLM", "token out of the vocabulary", lambda: _bench_model()(torch.full((1, 4), 40)), ValueError, r"vocab_size", ()),
    ("bench.build_model", "unknown method", lambda: _bench().build_model("mamba"), ValueError, r"method", ()),
    ("bench.build_model", "sizes a dict", lambda: _bench().build_model("sdpa", {"d_model": 8}), TypeError, r"sizes", ()),
    ("bench.n_parameters", "not a module", lambda: _bench().n_parameters([1, 2]), TypeError, r"model", ()),
    ("bench.matched_sizes", "unknown method", lambda: _bench().matched_sizes("ssm"), ValueError, r"method", ()),
    ("bench.lm_logits", "not a course model", lambda: _bench().lm_logits(torch.nn.Linear(2, 2), _ids(1, 4)), TypeError, r"model", ()),
    ("bench.lm_logits", "1-D tokens", lambda: _bench().lm_logits(_bench_model(), _ids(4)), ValueError, r"\btokens\b", ()),
    ("bench.lm_loss", "one token", lambda: _bench().lm_loss(_bench_model("infini"), _ids(1, 1)), ValueError, r"\btokens\b", ()),
    ("bench.lm_loss", "not a course model", lambda: _bench().lm_loss(None, _ids(1, 4)), TypeError, r"model", ()),
    ("bench.speed_step", "unknown mode", lambda: _bench().speed_step("sdpa", 16, mode="backward", sizes=_bench_tiny()), ValueError, r"mode", ()),
    ("bench.speed_step", "length 1", lambda: _bench().speed_step("sdpa", 1, sizes=_bench_tiny()), ValueError, r"length", ()),
    ("bench.speed_step", "repeats 0", lambda: _bench().speed_step("sdpa", 16, repeats=0, sizes=_bench_tiny()), ValueError, r"repeats", ()),
    ("bench.speed_step", "device tpu", lambda: _bench().speed_step("sdpa", 16, sizes=_bench_tiny(), device="tpu"), ValueError, r"device", ()),
    ("bench.measure_speed", "config a dict", lambda: _bench().measure_speed({"start": 4}), TypeError, r"config", ()),
    ("bench.longest_fitting", "rows without a status", lambda: _bench().longest_fitting([{"method": "sdpa", "mode": "forward", "length": 4}]), ValueError, r"rows", ()),
    ("bench.task_batch", "unknown task", lambda: _bench().task_batch("babi", 2, 64), ValueError, r"task", ()),
    ("bench.task_batch", "associative too short", lambda: _bench().task_batch("associative", 2, 10), ValueError, r"length", ()),
    ("bench.task_batch", "batch 0", lambda: _bench().task_batch("copy", 0, 64), ValueError, r"batch", ()),
    ("bench.answer_logits", "float mask", lambda: _bench().answer_logits(_bench_model(), _ids(1, 4), T(1, 4)), ValueError, r"answer_mask", ()),
    ("bench.answer_logits", "mask at position 0", lambda: _bench().answer_logits(_bench_model(), _ids(1, 4), _answers(1, 4, 0)), ValueError, r"answer_mask.*position 0", ()),
    ("bench.train_quality", "unknown task", lambda: _bench().train_quality("sdpa", "babi"), ValueError, r"task", ()),
    ("bench.train_quality", "config a dict", lambda: _bench().train_quality("sdpa", "copy", {"steps": 1}), TypeError, r"config", ()),
    ("bench.evaluate_quality", "lengths an int", lambda: _bench().evaluate_quality(_bench_model(), "copy", 64), ValueError, r"lengths", ()),
    ("bench.evaluate_quality", "n_sequences 0", lambda: _bench().evaluate_quality(_bench_model(), "copy", [64], n_sequences=0), ValueError, r"n_sequences", ()),
    ("bench.evaluate_quality", "not a course model", lambda: _bench().evaluate_quality(torch.nn.Linear(2, 2), "copy", [64]), TypeError, r"model", ()),
    ("bench.load_or_train_quality", "unknown method", lambda: _bench().load_or_train_quality("ssm", "copy"), ValueError, r"method", ()),
    ("bench.load_or_train_quality", "config a dict", lambda: _bench().load_or_train_quality("sdpa", "copy", {}), TypeError, r"config", ()),
    ("bench.measure_quality", "config a dict", lambda: _bench().measure_quality({"steps": 1}), TypeError, r"config", ()),
    ("bench.machine_description", "device tpu", lambda: _bench().machine_description("tpu"), ValueError, r"device", ()),
    ("bench.run_benchmark", "unknown profile", lambda: _bench().run_benchmark("laptop"), ValueError, r"profile", ()),
    ("bench.save_results", "results without the machine", lambda: _bench().save_results({"speed": []}, "/tmp/x.json"), ValueError, r"results", ()),
    ("bench.save_results", "path an int", lambda: _bench().save_results(_bench_results(), 3), TypeError, r"path", ()),
    ("bench.load_results", "missing file", lambda: _bench().load_results("/nonexistent/results.json"), FileNotFoundError, r"results", ()),
    ("bench.load_results", "path None", lambda: _bench().load_results(None), TypeError, r"path", ()),
    ("bench.compare_results", "b not results", lambda: _bench().compare_results(_bench_results(), [1]), ValueError, r"\bb\b must", ()),
    ("bench.format_comparison", "a results dict", lambda: _bench().format_comparison(_bench_results()), ValueError, r"comparison", ()),
    ("bench.results_table", "a list", lambda: _bench().results_table([]), ValueError, r"results", ()),
    ("bench.plot_results", "no quality entry", lambda: _bench().plot_results({"speed": []}), ValueError, r"results", ()),
]
# Public callables whose inputs there is nothing to check on, and why.
NOTHING_TO_CHECK = {
    "grading.Suite": "a frozen record of functions, built only by the library itself",
    "grading.make_execute_preprocessor": "takes no arguments",
}


def test_every_public_callable_has_rows():
    covered = {row[0] for row in ROWS} | set(NOTHING_TO_CHECK)
    missing = sorted(set(public_callables()) - covered)
    assert not missing, f"public callables without a bad-input row in tests/test_bad_input.py: {missing}"
    unknown = sorted(covered - set(public_callables()))
    assert not unknown, f"rows for names that are not public callables: {unknown}"


@pytest.mark.parametrize(
    "target, call, errors, pattern",
    [pytest.param(t, call, errors, pattern, marks=marks, id=f"{t}: {what}") for t, what, call, errors, pattern, marks in ROWS],
)
def test_bad_input_raises_a_clear_error(target, call, errors, pattern):
    with pytest.raises(errors) as info:
        call()
    assert re.search(pattern, str(info.value)), f"{target}: the message does not name the parameter: {info.value}"


# --------------------------------------------------------- long sequences in half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_long_sequences_in_half_precision_stay_finite(dtype, impl):
    """3,072 tokens, 2 heads of 64. q and k of standard deviation 2 give scores up to |s| ~ 23,
    and exp(23) ~ 1e10 is far beyond float16's largest number (65504): the softmax must
    subtract the row maximum. The output must be finite and close to float64."""
    from longctx_lib.attention import attention

    length = 3072
    gen = torch.Generator().manual_seed(0)
    q, k = (2 * torch.randn(1, 2, length, 64, generator=gen) for _ in range(2))
    v = torch.randn(1, 2, length, 64, generator=gen)
    pad = torch.zeros(1, length, dtype=torch.bool)
    pad[0, -100:] = True
    # Tolerance: a score s is rounded by |s| * eps (eps = 2**-11 for float16, 2**-8 for
    # bfloat16), so the weights by a factor ~exp(23 eps): output errors up to ~0.01 (float16)
    # and ~0.1 (bfloat16) are rounding; a broken softmax gives NaN or errors of order 1.
    tol = {torch.float16: 0.05, torch.bfloat16: 0.25}[dtype]
    for causal, mask in ((True, None), (False, pad)):
        out = attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal, key_padding_mask=mask, impl=impl)
        assert out.dtype == dtype
        assert torch.isfinite(out).all(), f"{impl} {dtype} causal={causal}: NaN or inf at {length} tokens"
        ref = attention(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=mask)
        err = (out.double() - ref).abs().max().item()
        assert err < tol, f"{impl} {dtype}: max |error| {err:.3g} against float64 (tolerance {tol})"


# --------------------------------------------------------------------------- same seed
def test_same_seed_same_numbers_on_cpu():
    from longctx_lib.attention import scaled_dot_product_attention
    from longctx_lib.transformer import Transformer

    def run(seed):
        torch.manual_seed(seed)
        model = Transformer(32, 4, 64, 2, dropout=0.1)
        x = torch.randn(2, 16, 32)
        y = model(x, causal=True)  # training mode: dropout draws from the global generator
        q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
        z = scaled_dot_product_attention(q, k, v, dropout_p=0.3, generator=torch.Generator().manual_seed(seed))
        return y, z

    (y1, z1), (y2, z2), (y3, _) = run(0), run(0), run(1)
    assert torch.equal(y1, y2) and torch.equal(z1, z2), "the same seed must give bit-identical results on the CPU"
    assert not torch.equal(y1, y3), "a different seed should change the numbers"
