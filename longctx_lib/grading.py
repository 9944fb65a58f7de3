"""Tamper-resistant autograding: the verdict is reached outside the student's kernel.

Used by the assignments (every chapter's hidden tests) and by ``nbgrader_config.py``;
chapter 1's assignment introduces the pattern. Students never need to call it.

Why: the student's cells run before the hidden tests, in the same kernel. Anything a
test cell does in that kernel can be undone from there: ``torch.allclose`` or
``torch.Tensor.__sub__`` redefined, the library's reference patched to be the
student's function, IPython's ``showtraceback`` silenced so that a failing cell shows
no error, later cells skipped. No check that runs in the kernel can be trusted.

The design (a *suite* is a named set of cases for one graded function):

1. Before the notebook runs, the grader (nbgrader's process, which never executes
   student code) draws the inputs of every suite the notebook's locked test cells name
   and writes them, as plain tensors and numbers, to a private folder
   (``$LONGCTX_GRADER_DIR``).
2. In the kernel, a test cell calls :func:`check` with the student's function. It runs
   the function on those inputs with the library's own versions blocked
   (:func:`graded_on_its_own`) and writes the outputs back (data only, no code). It
   also compares them with the library there and then, for quick feedback (that local
   comparison is only advice: the kernel may be tampered with).
3. Right after that cell, the grader loads the outputs with ``torch.load(weights_only=True)``,
   computes the expected values itself from its own pristine inputs and its own copy of
   the library (imported before any student code ran), compares, and writes the verdict
   into the cell's outputs. No outputs (the cell was skipped, the kernel died) is a
   failure. A student who wants the points has to produce the right numbers.
4. Student-written cells are scanned (AST) for references to the library functions a
   suite grades; any makes that suite fail ("calling the library instead of writing one").

Run without the grader (papermill, ``nbgrader validate``, a student's own kernel),
:func:`check` draws the cases itself and compares locally.

The nbgrader side (:class:`GradingExecute`, built lazily so that importing this module
does not import nbgrader) also limits the kernel's memory, survives kernel crashes and
timeouts (the cell that killed the kernel is recorded as failed and the rest of the
notebook runs again in a fresh kernel), and refuses partial-credit tricks.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import attention as _attention_module
from . import chunking as _chunking_module
from . import costs as _costs_module
from . import infini as _infini_module
from . import lsh as _lsh_module
from . import reformer as _reformer_module
from . import reversible as _reversible_module
from . import rmt as _rmt_module
from . import transformer as _transformer_module

__all__ = ["Suite", "SUITES", "check", "graded_on_its_own", "draw_cases", "verify", "referenced_library_names",
           "forbidden_uses", "make_execute_preprocessor", "GRADER_DIR_ENV"]

GRADER_DIR_ENV = "LONGCTX_GRADER_DIR"
MAX_OUTPUT_BYTES = 64 * 2**20  # outputs file larger than this: refused unread

# The grader's pristine references, bound when this module is first imported: in the
# grader's process that is before any student code runs, and nothing there patches them.
_REF_SDPA = _attention_module.scaled_dot_product_attention
_REF_SCORE_BYTES = _costs_module.score_matrix_bytes
_REF_FLOPS = _costs_module.attention_flops
_REF_MAX_LENGTH = _costs_module.max_length_for_budget
_REF_HASH = _lsh_module.hash_vectors
_SELF_MASK_VALUE = float(_lsh_module.SELF_MASK_VALUE)
_REF_BLOCK = _reversible_module.ReversibleBlock


# ------------------------------------------------------------------ graded on its own
@contextlib.contextmanager
def graded_on_its_own(*functions: Callable[..., Any], sdpa: bool = True) -> Iterator[None]:
    """While active, calling any of ``functions`` (or torch's fused SDPA if ``sdpa``) raises.

    The functions' code objects are swapped, so names bound with ``from ... import`` raise too.
    """
    def _forbidden(*args, **kwargs):
        raise AssertionError(
            "graded on its own: do not call longctx_lib's or torch's version of the function you write")

    for f in functions:
        if not callable(f) or not hasattr(f, "__code__"):
            raise TypeError(f"functions must be Python functions (with a __code__); got {type(f).__name__}")
    saved = [(f, f.__code__) for f in functions]
    saved_sdpa = F.scaled_dot_product_attention
    try:
        for f, _ in saved:
            f.__code__ = _forbidden.__code__
        if sdpa:
            F.scaled_dot_product_attention = _forbidden
        yield
    finally:
        for f, code in saved:
            f.__code__ = code
        F.scaled_dot_product_attention = saved_sdpa


# ----------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Suite:
    """Cases for one graded function, and how to run, reference and compare them.

    ``cases(seed)`` returns a list of dicts of plain data (tensors, numbers, bools, None,
    strings). ``run(fn, case)`` calls the student's function; ``reference(case)`` the
    library's; ``compare(got, expected, case)`` returns None or what is wrong. ``forbidden``:
    dotted names of library objects the student may not use for this function.
    """

    name: str
    cases: Callable[[int], list[dict]]
    run: Callable[[Callable[..., Any], dict], Any]
    reference: Callable[[dict], Any]
    compare: Callable[[Any, Any, dict], str | None]
    describe: Callable[[dict], str]
    forbidden: tuple[str, ...] = ()
    blocked: Callable[[], tuple[Callable[..., Any], ...]] = field(default=lambda: ())
    seed: int = 0


SUITES: dict[str, Suite] = {}


def _suite(suite_name: Any) -> Suite:
    if suite_name not in SUITES:
        raise ValueError(f"suite_name must be one of {sorted(SUITES)}; got {suite_name!r}")
    return SUITES[suite_name]


def _register(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def _tensor_problem(got: Any, expected: torch.Tensor, tol: float, device: str | None = None) -> str | None:
    """What is wrong with ``got`` against ``expected`` (None if nothing). NaN fails."""
    if not isinstance(got, torch.Tensor) or type(got) is not torch.Tensor:
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if device is not None and str(device) != str(expected.device):
        return f"the output is on device {device}, the inputs on {expected.device}"
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype}, expected {expected.dtype} (the dtype of the inputs)"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(expected).all()):
        return "the output contains NaN or inf"
    err = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    if not err <= tol:  # `not <=` so that NaN fails too
        return f"max |error| {err:.3g} > {tol:g}"
    return None


# --- attention --------------------------------------------------------------------
_ATTN_FORBIDDEN = ("longctx_lib.attention", "longctx_lib.scaled_dot_product_attention",
                   "longctx_lib.MultiHeadAttention", "torch.nn.functional.scaled_dot_product_attention")


def _attn_blocked() -> tuple[Callable[..., Any], ...]:
    return (_attention_module.scaled_dot_product_attention, _attention_module.attention)


def _attn_describe(c: dict) -> str:
    pad = c.get("pad")
    return (f"q {tuple(c['q'].shape)}, k {tuple(c['k'].shape)}, v {tuple(c['v'].shape)}, {c['q'].dtype}, "
            f"causal={c['causal']}, padding={'none' if pad is None else pad.int().tolist()}"
            + (f" ({c['note']})" if c.get("note") else ""))


def _attn_run(fn: Callable[..., Any], c: dict) -> Any:
    return fn(c["q"], c["k"], c["v"], causal=c["causal"], key_padding_mask=c.get("pad"))


def _attn_reference(c: dict) -> torch.Tensor:
    return _REF_SDPA(c["q"], c["k"], c["v"], causal=c["causal"], key_padding_mask=c.get("pad"))


def _attn_compare(got: Any, expected: torch.Tensor, c: dict) -> str | None:
    return _tensor_problem(got, expected, c["tol"], c.get("_device"))


def _attn_small_cases(seed: int) -> list[dict]:
    """float32, small: shapes, masks, a query that sees no key. Head size 1 for q and k, as
    in the visible hand-worked case, so that these cases check what the visible tests check
    (the scale 1/sqrt(d) is 1 here; the hidden suites check it)."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i, (b, h, lq, lk, dv) in enumerate([(2, 3, 5, 7, 6), (2, 3, 6, 6, 6), (1, 1, 1, 2, 1), (2, 2, 6, 6, 5)]):
        q, k = torch.randn(b, h, lq, 1, generator=gen), torch.randn(b, h, lk, 1, generator=gen)
        v = torch.randn(b, h, lk, dv, generator=gen)
        pad = None
        if i >= 2:
            pad = torch.zeros(b, lk, dtype=torch.bool)
            pad[0, -1:] = True
            if b > 1:
                pad[1, :] = True  # batch element 1 sees no key
        for causal in (False, True):
            cases.append({"q": q, "k": k, "v": v, "causal": causal, "pad": pad, "tol": 1e-5})
    return cases


def _attn_value_cases(seed: int) -> list[dict]:
    """float64 on random shapes, seeds and masks (queries that see no key included), one float32."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(60):
        b, h, lq, lk = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 9), rng.randint(1, 9)
        d, dv = rng.randint(2, 8), rng.randint(1, 8)
        q = 2 * torch.randn(b, h, lq, d, generator=gen, dtype=torch.float64)
        k = 2 * torch.randn(b, h, lk, d, generator=gen, dtype=torch.float64)
        v = torch.randn(b, h, lk, dv, generator=gen, dtype=torch.float64)
        pad = None
        if i % 3:
            pad = torch.rand(b, lk, generator=gen) < 0.3
            if i % 5 == 0:
                pad[0] = True
        # Tolerance: float64 rounding at these sizes is ~1e-15; 1e-10 accepts any order of
        # the operations and rejects every real mistake (a missing scale changes values by ~0.1).
        cases.append({"q": q, "k": k, "v": v, "causal": i % 2 == 1, "pad": pad, "tol": 1e-10})
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen) for _ in range(3))
    cases.append({"q": q, "k": k, "v": v, "causal": True, "pad": torch.rand(2, 16, generator=gen) < 0.25,
                  "tol": 1e-5})
    return cases


def _attn_mask_cases(seed: int) -> list[dict]:
    """Causality and padding by perturbation: keys/values changed after t, or at padding.

    Head size 1 for q and k (scale 1): these cases check the masks, not the scale."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    b, h, length, d = 2, 2, 8, 4
    for _ in range(2):
        q, k = (torch.randn(b, h, length, 1, generator=gen, dtype=torch.float64) for _ in range(2))
        v = torch.randn(b, h, length, d, generator=gen, dtype=torch.float64)
        cases.append({"q": q, "k": k, "v": v, "causal": True, "pad": None, "tol": 1e-12, "note": "base"})
        for t in range(length - 1):
            k2, v2 = k.clone(), v.clone()
            k2[..., t + 1:, :] += 3 * torch.randn(b, h, length - t - 1, 1, generator=gen, dtype=torch.float64)
            v2[..., t + 1:, :] += 3 * torch.randn(b, h, length - t - 1, d, generator=gen, dtype=torch.float64)
            cases.append({"q": q, "k": k2, "v": v2, "causal": True, "pad": None, "tol": 1e-12,
                          "note": f"keys and values after position {t} changed"})
        pad = torch.rand(b, length, generator=gen) < 0.4
        pad[:, 0] = False
        m = pad[:, None, :, None]
        noise_k = 100 * torch.randn(k.shape, generator=gen, dtype=torch.float64)
        noise_v = 100 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        for causal in (False, True):
            for kk, vv, note in ((k, v, "base"), (torch.where(m, k + noise_k, k), torch.where(m, v + noise_v, v),
                                                   "padding keys and values changed")):
                cases.append({"q": q, "k": kk, "v": vv, "causal": causal, "pad": pad, "tol": 1e-12, "note": note})
    return cases


def _grad_cases(seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(8):
        b, h, lq, lk, d, dv = 2, 2, 3 + i % 3, 4 + i % 2, 2 + i % 4, 3
        q = 2 * torch.randn(b, h, lq, d, generator=gen, dtype=torch.float64)
        k = 2 * torch.randn(b, h, lk, d, generator=gen, dtype=torch.float64)
        v = torch.randn(b, h, lk, dv, generator=gen, dtype=torch.float64)
        pad = torch.rand(b, lk, generator=gen) < 0.3
        if i % 4 == 0:
            pad[1] = True
        if i % 4 == 2:
            pad[0, 0] = True
        up = torch.randn(b, h, lq, dv, generator=gen, dtype=torch.float64)
        cases.append({"q": q, "k": k, "v": v, "causal": i % 2 == 0, "pad": pad, "up": up, "tol": 1e-10})
    return cases


def _grads(fn: Callable[..., Any], c: dict) -> tuple:
    leaves = [c[n].clone().requires_grad_(True) for n in "qkv"]
    out = fn(*leaves, causal=c["causal"], key_padding_mask=c["pad"])
    (out * c["up"]).sum().backward()
    return tuple(t.grad for t in leaves)


def _grad_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return "no gradients"
    for name, g, e in zip("qkv", got, expected):
        if g is None:
            return f"no gradient reaches {name}"
        problem = _tensor_problem(g, e, c["tol"])
        if problem:
            return f"d/d{name}: {problem}"
    return None


for _name, _cases_fn in (("attention_small", _attn_small_cases), ("attention_values", _attn_value_cases),
                         ("attention_masks", _attn_mask_cases)):
    _register(Suite(_name, _cases_fn, _attn_run, _attn_reference, _attn_compare, _attn_describe,
                    _ATTN_FORBIDDEN, _attn_blocked))
_register(Suite("attention_gradients", _grad_cases, _grads, lambda c: _grads(_REF_SDPA, c), _grad_compare,
                _attn_describe, _ATTN_FORBIDDEN, _attn_blocked))


# --- costs ------------------------------------------------------------------------
_COSTS_FORBIDDEN = ("longctx_lib.costs",)


def _costs_blocked() -> tuple[Callable[..., Any], ...]:
    return (_costs_module.score_matrix_bytes, _costs_module.attention_flops, _costs_module.bytes_per_element,
            _costs_module.max_length_for_budget)


def _exact_int(got: Any, expected: int) -> str | None:
    if type(got) is not int:
        return f"returned {got!r} ({type(got).__name__}), expected the int {expected}"
    return None if got == expected else f"returned {got}, expected {expected}"


def _costs_cases(seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = [{"b": 1, "h": 1, "L": 65536, "d": 64, "bpe": 4}, {"b": 1, "h": 1, "L": 2, "d": 1, "bpe": 2}]
    for _ in range(200):
        cases.append({"b": rng.randint(1, 64), "h": rng.randint(1, 128), "L": rng.randint(1, 2**20),
                      "d": rng.randint(1, 512), "bpe": rng.choice([1, 2, 4, 8])})
    return cases


def _costs_run(fns: Any, c: dict) -> tuple:
    score_matrix_bytes, attention_flops = fns
    return (score_matrix_bytes(c["b"], c["h"], c["L"], bytes_per_element=c["bpe"]),
            attention_flops(c["b"], c["h"], c["L"], c["d"]))


def _costs_reference(c: dict) -> tuple:
    return (_REF_SCORE_BYTES(c["b"], c["h"], c["L"], dtype=c["bpe"]), _REF_FLOPS(c["b"], c["h"], c["L"], c["d"]))


def _costs_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 2:
        return f"returned {got!r}"
    for what, g, e in zip(("score_matrix_bytes", "attention_flops"), got, expected):
        problem = _exact_int(g, e)
        if problem:
            return f"{what} {problem}"
    return None


_register(Suite("costs_small", lambda seed: [{"b": 1, "h": 1, "L": 65536, "d": 64, "bpe": 4},
                                            {"b": 1, "h": 1, "L": 3, "d": 1, "bpe": 2},
                                            {"b": 1, "h": 1, "L": 2, "d": 1, "bpe": 4}],
                _costs_run, _costs_reference, _costs_compare,
                lambda c: f"batch={c['b']}, heads={c['h']}, length={c['L']}, head_dim={c['d']}, "
                          f"bytes_per_element={c['bpe']}", _COSTS_FORBIDDEN, _costs_blocked))
_register(Suite("costs", _costs_cases, _costs_run, _costs_reference, _costs_compare,
                lambda c: f"batch={c['b']}, heads={c['h']}, length={c['L']}, head_dim={c['d']}, "
                          f"bytes_per_element={c['bpe']}", _COSTS_FORBIDDEN, _costs_blocked))


def _max_length_cases(seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = [{"B": 16 * 2**30, "b": 1, "h": 1, "bpe": 4}, {"B": 3, "b": 1, "h": 1, "bpe": 4},
             {"B": 0, "b": 1, "h": 1, "bpe": 4}]
    for _ in range(300):
        cases.append({"B": rng.randint(0, 10 ** rng.randint(0, 30)), "b": rng.randint(1, 16),
                      "h": rng.randint(1, 64), "bpe": rng.choice([1, 2, 4, 8])})
    for length in [1, 2, 3, 1000, 46_341, 65_536, 94_906_266, 94_906_267, 100_000_007, 2**32 + 15, 10**12 + 39]:
        for b, h, bpe in [(1, 1, 4), (1, 1, 1), (3, 8, 2)]:
            exact = b * h * length * length * bpe
            cases += [{"B": x, "b": b, "h": h, "bpe": bpe} for x in (exact, exact - 1, exact + 1)]
    return cases


def _max_length_small_cases(seed: int) -> list[dict]:
    return [{"B": B, "b": 1, "h": h, "bpe": bpe} for B, h, bpe in
            [(16 * 2**30, 1, 4), (16 * 2**30 - 1, 1, 4), (3, 1, 4), (0, 1, 4), (4, 1, 4), (35, 1, 2),
             (80 * 10**9, 8, 4)]]


for _name, _cases_fn in (("max_length_small", _max_length_small_cases), ("max_length", _max_length_cases)):
    _register(Suite(
        _name, _cases_fn,
        lambda fn, c: fn(c["B"], batch=c["b"], heads=c["h"], bytes_per_element=c["bpe"]),
        lambda c: _REF_MAX_LENGTH(c["B"], batch=c["b"], heads=c["h"], dtype=c["bpe"]),
        lambda got, exp, c: _exact_int(got, exp),
        lambda c: f"max_length_for_budget({c['B']}, batch={c['b']}, heads={c['h']}, bytes_per_element={c['bpe']})",
        _COSTS_FORBIDDEN, _costs_blocked))


# --- LSH attention (chapter 2) ----------------------------------------------------
# Assignment 2 grades the four pieces of shared-QK LSH attention, each on its own:
#   lsh_hash(x, rotations)                              -> buckets
#   sort_and_chunk(buckets, chunk_size)                 -> (query_pos, key_pos)
#   chunk_attention(qk, v, query_pos, key_pos, causal)  -> (out, lse), chunk layout
#   combine_rounds(out, lse, query_pos)                 -> output in the original order
# The hash is compared with longctx_lib.lsh.hash_vectors. lsh.py fuses the other three
# into one loop over rounds and exposes none of them, so their references are written
# here from torch alone, with lsh.py's semantics (stable sort by (bucket, position);
# look-back within the round, none with one chunk; causal by original positions; the
# self logit replaced by SELF_MASK_VALUE; rounds combined by log-sum-exp weights).
# tests/test_grading_module.py checks that the four references composed equal
# lsh_attention(..., count_duplicates=False) on random inputs.
_SDPA_NAME = "torch.nn.functional.scaled_dot_product_attention"


def _module_functions(module: Any) -> tuple[Callable[..., Any], ...]:
    """Every Python function of ``module`` and its classes' methods (code swappable)."""
    found = []
    for obj in list(vars(module).values()):
        members = (list(vars(obj).values()) if isinstance(obj, type) and obj.__module__ == module.__name__
                   else [obj])
        for f in members:
            f = f.__func__ if isinstance(f, (staticmethod, classmethod)) else f  # e.g. an autograd.Function's
            f = inspect.unwrap(f) if callable(f) else f  # the function under a decorator (torch.no_grad, ...)
            if (inspect.isfunction(f) and f.__module__ == module.__name__
                    and not f.__code__.co_freevars):  # a closure's code cannot be swapped
                found.append(f)
    return tuple(dict.fromkeys(found))


# Private helpers of lsh.py (functions and classes, whatever they are called now), the whole
# attention, this module.
_LSH_PRIVATE = tuple(f"longctx_lib.lsh.{n}" for n, f in vars(_lsh_module).items()
                     if n.startswith("_") and (inspect.isfunction(f) or inspect.isclass(f))
                     and getattr(f, "__module__", None) == _lsh_module.__name__)
_LSH_FORBIDDEN = ("longctx_lib.lsh.lsh_attention", "longctx_lib.lsh_attention", "longctx_lib.lsh.LSHSelfAttention",
                  "longctx_lib.LSHSelfAttention", "longctx_lib.lsh.lsh_attention_step", "longctx_lib.grading",
                  _SDPA_NAME, *_LSH_PRIVATE)
_HASH_FORBIDDEN = (*_LSH_FORBIDDEN, "longctx_lib.lsh.hash_vectors", "longctx_lib.hash_vectors")


def _lsh_blocked() -> tuple[Callable[..., Any], ...]:
    return (*_module_functions(_lsh_module), _ref_sort_and_chunk, _ref_chunk_attention, _ref_combine_rounds, _rows)


def _ref_sort_and_chunk(buckets: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """buckets (B, H, R, L) -> query_pos (B, H, R, C, m), key_pos (B, H, R, C, 2m) (m wide if C = 1)."""
    b, h, r, length = buckets.shape
    order = torch.sort(buckets, dim=-1, stable=True).indices  # (B, H, R, L): by (bucket, position)
    query_pos = order.reshape(b, h, r, length // chunk_size, chunk_size)  # (B, H, R, C, m)
    if query_pos.shape[-2] == 1:  # one chunk per round: nothing before it
        return query_pos, query_pos.clone()
    # each chunk, then the one before it; the first chunk looks back at the last (same round)
    return query_pos, torch.cat([query_pos, query_pos.roll(1, dims=-2)], dim=-1)


def _rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (B, H, L, d) at positions ``pos`` (B, H, ...) -> (B, H, ..., d)."""
    b, h = x.shape[:2]
    bi = torch.arange(b, device=x.device).view(b, *[1] * (pos.dim() - 1))
    hi = torch.arange(h, device=x.device).view(1, h, *[1] * (pos.dim() - 2))
    return x[bi, hi, pos]


def _ref_chunk_attention(qk: torch.Tensor, v: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor,
                         causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every chunk to its window: out (B, H, R, C, m, dv), lse (B, H, R, C, m)."""
    work = torch.float64 if qk.dtype == torch.float64 else torch.float32
    sq = _rows(qk, query_pos) * (1.0 / math.sqrt(qk.shape[-1]))  # (B, H, R, C, m, d)
    sk = _rows(F.normalize(qk, dim=-1), key_pos)  # (B, H, R, C, w, d): unit keys
    sv = _rows(v, key_pos)  # (B, H, R, C, w, dv)
    logits = (sq @ sk.transpose(-1, -2)).to(work)  # (B, H, R, C, m, w)
    kp, qp = key_pos[..., None, :], query_pos[..., :, None]
    if causal:
        logits = logits.masked_fill(kp > qp, float("-inf"))  # by original positions
    logits = logits.masked_fill(kp == qp, _SELF_MASK_VALUE)  # replaced, not added
    return torch.softmax(logits, dim=-1).to(v.dtype) @ sv, torch.logsumexp(logits, dim=-1)


def _ref_combine_rounds(out: torch.Tensor, lse: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """out (B, H, R, C, m, dv), lse (B, H, R, C, m) in chunk layout -> (B, H, L, dv) in original order."""
    b, h, r, c, m, dv = out.shape
    pos = query_pos.reshape(b, h, r, c * m)
    o = torch.zeros(b, h, r, c * m, dv, dtype=out.dtype, device=out.device).scatter(
        3, pos[..., None].expand(-1, -1, -1, -1, dv), out.reshape(b, h, r, c * m, dv))  # (B, H, R, L, dv)
    z = torch.zeros(b, h, r, c * m, dtype=lse.dtype, device=lse.device).scatter(
        3, pos, lse.reshape(b, h, r, c * m))  # (B, H, R, L)
    weights = torch.softmax(z, dim=2).to(out.dtype)  # exp(z_r - logsumexp over rounds)
    return (o * weights[..., None]).sum(dim=2)


def _close_problem(got: Any, expected: torch.Tensor, tol: float, relative: bool = False) -> str | None:
    """Like :func:`_tensor_problem`; with ``relative`` each error is divided by ``1 + |expected|``
    (for log-sum-exps, which reach SELF_MASK_VALUE = -1e5 where a query sees only itself)."""
    problem = _tensor_problem(got, expected, math.inf)  # type, dtype, shape, NaN
    if problem or not got.numel():
        return problem
    diff = (got.double() - expected.double()).abs()
    if relative:
        diff = diff / (1 + expected.double().abs())
    err = diff.max().item()
    if not err <= tol:
        return f"max |error| {err:.3g} > {tol:g}" + (" (relative to 1 + |expected|)" if relative else "")
    return None


def _tuple_problem(got: Any, expected: tuple, names: tuple[str, ...], tols: tuple[float, ...],
                   relative: tuple[bool, ...] = (False, False)) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        what = f"a {type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
        return f"expected a tuple of {len(expected)} tensors ({', '.join(names)}); got {what}"
    for name, g, e, tol, rel in zip(names, got, expected, tols, relative):
        problem = _close_problem(g, e, tol, rel)
        if problem:
            return f"{name}: {problem}"
    return None


# hash ------------------------------------------------------------------------------
def _hash_describe(c: dict) -> str:
    r = c["rotations"]
    return (f"x {tuple(c['x'].shape)} {c['x'].dtype}, rotations {tuple(r.shape)} (n_hashes={r.shape[1]}, "
            f"n_buckets={2 * r.shape[-1]})" + (f" ({c['note']})" if c.get("note") else ""))


def _hash_reference(c: dict) -> torch.Tensor:
    r = c["rotations"]
    return _REF_HASH(c["x"], 2 * r.shape[-1], r.shape[1], rotations=r)


def _hash_small_cases(seed: int) -> list[dict]:
    """What the visible tests of ``lsh_hash`` use: the hand-worked case, shapes, scale, collisions."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor([[3.0, 1.0], [-1.0, -3.0], [0.5, -2.0], [-2.0, 0.5]])
    cases = [{"x": x, "rotations": torch.eye(2).reshape(2, 1, 2), "note": "hand-worked"}]
    x = torch.randn(2, 3, 5, 4, generator=gen)
    r = torch.randn(4, 3, 2, generator=gen)
    cases += [{"x": x, "rotations": r, "note": "shapes"}, {"x": 2.5 * x, "rotations": r, "note": "scaled by 2.5"}]
    theta = math.pi / 3
    pair = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    cases.append({"x": pair, "rotations": torch.randn(2, 4000, 1, generator=gen, dtype=torch.float64),
                  "note": "two vectors 60 degrees apart, 4000 rounds of 2 buckets"})
    return cases


def _hash_cases(seed: int) -> list[dict]:
    """float64 on random shapes (no leading axes up to two), rounds and bucket counts; zero vectors (ties)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(40):
        lead = [(), (rng.randint(1, 3),), (rng.randint(1, 2), rng.randint(1, 3))][i % 3]
        length, d = rng.randint(1, 16), rng.randint(1, 8)
        n_hashes, half = rng.randint(1, 4), rng.choice([1, 2, 3, 4, 8])
        x = torch.randn(*lead, length, d, generator=gen, dtype=torch.float64) * rng.choice([0.1, 1.0, 10.0])
        note = None
        if i % 5 == 4:  # a zero vector ties every column: the first maximal column (bucket 0) wins
            x[..., 0, :] = 0
            note = "the first vector is zero"
        cases.append({"x": x, "rotations": torch.randn(d, n_hashes, half, generator=gen, dtype=torch.float64),
                      "note": note})
    return cases


def _hash_compare(got: Any, expected: torch.Tensor, c: dict) -> str | None:
    return _tensor_problem(got, expected, 0.0, c.get("_device"))


# sort and chunk --------------------------------------------------------------------
def _sort_describe(c: dict) -> str:
    return (f"buckets {tuple(c['buckets'].shape)} with values in [0, {int(c['buckets'].max()) + 1}), "
            f"chunk_size={c['chunk_size']}" + (f" ({c['note']})" if c.get("note") else ""))


def _sort_small_cases(seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"buckets": torch.tensor([[[[1, 0, 1, 0, 2, 0]]]]), "chunk_size": 2, "note": "hand-worked"},
            {"buckets": torch.randint(0, 4, (2, 2, 3, 12), generator=gen), "chunk_size": 4, "note": "shapes"}]


def _sort_cases(seed: int) -> list[dict]:
    """Random shapes, few buckets (many ties: the sort must keep positions in order), 2 to 6 chunks."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(40):
        b, h, r = rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 4)
        n_chunks, m = rng.randint(2, 6), rng.randint(1, 5)
        nb = rng.choice([2, 4, 8, 16, 64])
        cases.append({"buckets": torch.randint(0, nb, (b, h, r, n_chunks * m), generator=gen), "chunk_size": m})
    return cases


def _sort_edge_cases(seed: int) -> list[dict]:
    """One chunk per round (no look-back), chunks of one entry, two chunks, one bucket for all, all distinct."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for length, m, note in ((6, 6, "one chunk: no look-back"), (1, 1, "length 1"), (7, 1, "chunk_size 1"),
                            (8, 4, "two chunks"), (12, 3, None)):
        cases.append({"buckets": torch.randint(0, 4, (2, 2, 3, length), generator=gen), "chunk_size": m,
                      "note": note})
    cases.append({"buckets": torch.zeros(1, 2, 2, 12, dtype=torch.int64), "chunk_size": 4,
                  "note": "every position in bucket 0"})
    cases.append({"buckets": torch.stack([torch.randperm(12, generator=gen) for _ in range(3)]).view(1, 1, 3, 12),
                  "chunk_size": 3, "note": "every position in its own bucket"})
    return cases


def _sort_compare(got: Any, expected: tuple, c: dict) -> str | None:
    return _tuple_problem(got, expected, ("query_pos", "key_pos"), (0.0, 0.0))


# chunk attention -------------------------------------------------------------------
def _chunk_describe(c: dict) -> str:
    qp = c["query_pos"]
    return (f"qk {tuple(c['qk'].shape)} {c['qk'].dtype}, v {tuple(c['v'].shape)}, {qp.shape[2]} rounds of "
            f"{qp.shape[3]} chunks of {qp.shape[4]}, causal={c['causal']}"
            + (f" ({c['note']})" if c.get("note") else ""))


def _chunk_run(fn: Callable[..., Any], c: dict) -> Any:
    return fn(c["qk"], c["v"], c["query_pos"], c["key_pos"], causal=c["causal"])


def _chunk_reference(c: dict) -> tuple:
    return _ref_chunk_attention(c["qk"], c["v"], c["query_pos"], c["key_pos"], c["causal"])


def _chunk_case(qk: torch.Tensor, v: torch.Tensor, n_hashes: int, n_buckets: int, chunk_size: int, causal: bool,
                gen: torch.Generator, tol: float, note: str | None = None) -> dict:
    """Windows from hashing ``qk`` with random rotations, as LSH attention would make them."""
    rotations = torch.randn(qk.shape[-1], n_hashes, n_buckets // 2, generator=gen, dtype=qk.dtype)
    query_pos, key_pos = _ref_sort_and_chunk(_REF_HASH(qk, n_buckets, n_hashes, rotations=rotations), chunk_size)
    return {"qk": qk, "v": v, "query_pos": query_pos, "key_pos": key_pos, "causal": causal, "tol": tol,
            "note": note}


def _chunk_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: head size 1 for qk (the scale 1/sqrt(d) is 1; the hidden suites check it)."""
    gen = torch.Generator().manual_seed(seed)
    qk, v = torch.tensor([[[[1.0], [2.0]]]]), torch.eye(2).view(1, 1, 2, 2)
    one = torch.tensor([0, 1]).view(1, 1, 1, 1, 2)
    cases = [{"qk": qk, "v": v, "query_pos": one, "key_pos": one.clone(), "causal": causal, "tol": 1e-5,
              "note": "hand-worked"} for causal in (False, True)]
    qk = torch.randn(2, 2, 12, 1, generator=gen)
    for causal in (False, True):
        cases.append(_chunk_case(qk, torch.eye(12).expand(2, 2, 12, 12), 2, 4, 3, causal, gen, 1e-5,
                                 "values = identity: the outputs are the weights"))
    return cases


def _chunk_cases(seed: int) -> list[dict]:
    """float64 on random shapes, rounds, chunk sizes (one chunk, chunks of one entry included), one float32."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(40):
        b, h, n_hashes = rng.randint(1, 2), rng.randint(1, 2), rng.randint(1, 3)
        n_chunks, m = (1 if i % 8 == 3 else rng.randint(2, 5)), (1 if i % 8 == 5 else rng.randint(2, 5))
        d, dv = rng.randint(2, 8), rng.randint(1, 6)
        qk = rng.choice([0.5, 2.0, 4.0]) * torch.randn(b, h, n_chunks * m, d, generator=gen, dtype=torch.float64)
        v = torch.randn(b, h, n_chunks * m, dv, generator=gen, dtype=torch.float64)
        # Tolerance: float64 rounding here is ~1e-15; 1e-10 accepts any order of operations and
        # rejects every real mistake (a missing scale or unnormalised keys change values by ~0.1).
        cases.append(_chunk_case(qk, v, n_hashes, rng.choice([2, 4, 8]), m, i % 2 == 1, gen, 1e-10))
    qk, v = torch.randn(2, 2, 32, 8, generator=gen), torch.randn(2, 2, 32, 8, generator=gen)
    cases.append(_chunk_case(qk, v, 2, 8, 4, True, gen, 1e-4, "float32"))
    return cases


def _chunk_compare(got: Any, expected: tuple, c: dict) -> str | None:
    return _tuple_problem(got, expected, ("out", "lse"), (c["tol"], c["tol"]), (False, True))


def _chunk_grad_cases(seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(6):
        n_chunks, m = (1, 4) if i == 0 else (2 + i % 3, 1 + i % 3)
        qk = 2 * torch.randn(2, 2, n_chunks * m, 3 + i % 3, generator=gen, dtype=torch.float64)
        v = torch.randn(2, 2, n_chunks * m, 3, generator=gen, dtype=torch.float64)
        c = _chunk_case(qk, v, 1 + i % 2, 4, m, i % 2 == 0, gen, 1e-9)
        c["up"] = torch.randn(c["query_pos"].shape + (3,), generator=gen, dtype=torch.float64)
        c["up_lse"] = torch.randn(c["query_pos"].shape, generator=gen, dtype=torch.float64)
        cases.append(c)
    return cases


def _chunk_grads(fn: Callable[..., Any], c: dict) -> tuple:
    qk, v = c["qk"].clone().requires_grad_(True), c["v"].clone().requires_grad_(True)
    out, lse = fn(qk, v, c["query_pos"], c["key_pos"], causal=c["causal"])
    ((out * c["up"]).sum() + (lse * c["up_lse"]).sum()).backward()
    return qk.grad, v.grad


def _chunk_grad_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if isinstance(got, (tuple, list)) and any(g is None for g in got):
        return "no gradient reaches " + " or ".join(n for n, g in zip(("qk", "v"), got) if g is None)
    return _tuple_problem(got, expected, ("d/dqk", "d/dv"), (c["tol"], c["tol"]))


# combine rounds --------------------------------------------------------------------
def _combine_describe(c: dict) -> str:
    return (f"out {tuple(c['out'].shape)} {c['out'].dtype}, lse in [{c['lse'].min().item():.3g}, "
            f"{c['lse'].max().item():.3g}]" + (f" ({c['note']})" if c.get("note") else ""))


def _combine_case(z: torch.Tensor, dv: int, chunk_size: int, gen: torch.Generator, note: str | None = None,
                  tol: float = 1e-10) -> dict:
    """Per-round log-sum-exps ``z`` (B, H, R, L) in original order, laid out in random sorted orders."""
    b, h, r, length = z.shape
    order = torch.stack([torch.randperm(length, generator=gen) for _ in range(b * h * r)]).view(b, h, r, length)
    query_pos = order.view(b, h, r, length // chunk_size, chunk_size)
    lse = z.gather(3, order).view(query_pos.shape)  # the lse of each sorted entry
    out = torch.randn(*query_pos.shape, dv, generator=gen, dtype=z.dtype)
    return {"out": out, "lse": lse, "query_pos": query_pos, "tol": tol, "note": note}


def _combine_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: one round (only the sort is undone), equal weights, weights 1/4 and 3/4."""
    gen = torch.Generator().manual_seed(seed)
    qp = torch.tensor([[1, 3], [0, 2]]).view(1, 1, 1, 2, 2)
    out = torch.tensor([[10.0], [30.0], [0.0], [20.0]]).view(1, 1, 1, 2, 2, 1)
    cases = [{"out": out, "lse": torch.zeros(1, 1, 1, 2, 2), "query_pos": qp, "tol": 1e-5, "note": "one round"}]
    qp2 = torch.cat([qp, torch.tensor([[3, 2], [1, 0]]).view(1, 1, 1, 2, 2)], dim=2)
    out2 = torch.cat([out, torch.tensor([[4.0], [8.0], [12.0], [16.0]]).view(1, 1, 1, 2, 2, 1)], dim=2)
    cases.append({"out": out2, "lse": torch.zeros(1, 1, 2, 2, 2), "query_pos": qp2, "tol": 1e-5,
                  "note": "two rounds, equal lse"})
    lse = torch.stack([torch.zeros(2, 2), torch.full((2, 2), math.log(3.0))]).view(1, 1, 2, 2, 2)
    cases.append({"out": out2, "lse": lse, "query_pos": qp2, "tol": 1e-5, "note": "lse 0 and log 3"})
    z = torch.randn(2, 2, 3, 8, generator=gen)
    cases.append(_combine_case(z, 5, 2, gen, "shapes", 1e-5))
    return cases


def _combine_cases(seed: int) -> list[dict]:
    """float64, random shapes and lse; queries that saw only themselves in every round (all lse = -1e5),
    in some rounds only, and large lse (exp would overflow); one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(30):
        b, h, r = rng.randint(1, 2), rng.randint(1, 2), rng.randint(1, 4)
        n_chunks, m, dv = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 5)
        z = 3 * torch.randn(b, h, r, n_chunks * m, generator=gen, dtype=torch.float64)
        note = None
        if i % 3 == 1:
            alone = torch.rand(b, h, 1, n_chunks * m, generator=gen) < 0.4
            z = torch.where(alone, torch.full_like(z, _SELF_MASK_VALUE), z)
            note = f"{int(alone.sum())} queries see only themselves in every round (lse = {_SELF_MASK_VALUE:g})"
        elif i % 3 == 2:
            z = torch.where(torch.rand(z.shape, generator=gen) < 0.3, torch.full_like(z, _SELF_MASK_VALUE), z)
            z = z + rng.choice([0.0, 800.0])
            note = "some rounds see only the query itself" + (", lse near 800" if z.max() > 100 else "")
        cases.append(_combine_case(z, dv, m, gen, note))
    z = 3 * torch.randn(2, 2, 4, 16, generator=gen)
    z[0, 0, :, :3] = _SELF_MASK_VALUE
    cases.append(_combine_case(z, 8, 4, gen, "float32", 1e-5))
    return cases


def _combine_run(fn: Callable[..., Any], c: dict) -> Any:
    return fn(c["out"], c["lse"], c["query_pos"])


def _combine_reference(c: dict) -> torch.Tensor:
    return _ref_combine_rounds(c["out"], c["lse"], c["query_pos"])


def _combine_compare(got: Any, expected: torch.Tensor, c: dict) -> str | None:
    return _tensor_problem(got, expected, c["tol"], c.get("_device"))


for _name, _cases_fn in (("lsh_hash_small", _hash_small_cases), ("lsh_hash", _hash_cases)):
    _register(Suite(_name, _cases_fn, lambda fn, c: fn(c["x"], c["rotations"]), _hash_reference, _hash_compare,
                    _hash_describe, _HASH_FORBIDDEN, _lsh_blocked))
for _name, _cases_fn in (("lsh_sort_small", _sort_small_cases), ("lsh_sort", _sort_cases),
                         ("lsh_sort_edges", _sort_edge_cases)):
    _register(Suite(_name, _cases_fn, lambda fn, c: fn(c["buckets"], c["chunk_size"]),
                    lambda c: _ref_sort_and_chunk(c["buckets"], c["chunk_size"]), _sort_compare, _sort_describe,
                    _LSH_FORBIDDEN, _lsh_blocked))
for _name, _cases_fn in (("lsh_chunk_small", _chunk_small_cases), ("lsh_chunk", _chunk_cases)):
    _register(Suite(_name, _cases_fn, _chunk_run, _chunk_reference, _chunk_compare, _chunk_describe,
                    _LSH_FORBIDDEN, _lsh_blocked))
_register(Suite("lsh_chunk_gradients", _chunk_grad_cases, _chunk_grads, lambda c: _chunk_grads(_ref_chunk_attention, c),
                _chunk_grad_compare, _chunk_describe, _LSH_FORBIDDEN, _lsh_blocked))
for _name, _cases_fn in (("lsh_combine_small", _combine_small_cases), ("lsh_combine", _combine_cases)):
    _register(Suite(_name, _cases_fn, _combine_run, _combine_reference, _combine_compare, _combine_describe,
                    _LSH_FORBIDDEN, _lsh_blocked))


# --- reversible residual layers (chapter 3) ---------------------------------------
# Assignment 3 grades four functions, each on its own; f and g are torch modules that map
# (batch, length, d) to the same shape:
#   reversible_forward(f, g, x1, x2)                       -> (y1, y2)
#   reversible_inverse(f, g, y1, y2)                       -> (x1, x2)
#   block_backward(f, g, y1, y2, dy1, dy2)                 -> (x1, x2, dx1, dx2), f's and g's .grad += ...
#   reversible_backward(blocks, y1, y2, dy1, dy2, step)    -> (dx1, dx2), every block's .grad += ...
# A case is plain data: each module travels as its kind, its parameters and the .grad they
# start with, and is rebuilt on both sides (_CaseModule); "blocks" lists each block's
# (f, g) as indices into the modules, so one module can serve several blocks (shared
# weights). Forward and inverse are compared with longctx_lib.reversible.ReversibleBlock;
# both backward passes with plain autograd through the ordinary residual stack the blocks
# form (_ref_backward). tests/test_grading_module.py checks that this reference equals the
# reversible backward of longctx_lib.reversible.ReversibleSequence.
_REV_FORBIDDEN = ("longctx_lib.reversible", "longctx_lib.ReversibleBlock", "longctx_lib.ReversibleSequence",
                  "longctx_lib.grading")


class _CaseModule(nn.Module):
    """f or g of a case, (batch, length, d) -> (batch, length, d). Kinds: ``"affine"`` (a
    Linear), ``"mlp"`` (LayerNorm, Linear, GELU, Linear), ``"attention"`` (LayerNorm, then
    causal multi-head self-attention written with matmul and softmax)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.kind, self.heads = spec["kind"], spec["heads"]
        grads = spec["grads"] or {}
        for name in sorted(spec["params"]):  # parameters() yields them in this order
            p = nn.Parameter(spec["params"][name].clone())
            p.grad = grads[name].clone() if name in grads else None
            self.register_parameter(name, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "affine":
            return F.linear(x, self.weight, self.bias)
        h = F.layer_norm(x, x.shape[-1:], self.norm_weight, self.norm_bias)
        if self.kind == "mlp":
            return F.linear(F.gelu(F.linear(h, self.w1, self.b1)), self.w2, self.b2)
        b, length, d = x.shape
        qkv = F.linear(h, self.w_qkv).view(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, dh)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (B, H, L, L)
        later = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = torch.softmax(logits.masked_fill(later, float("-inf")), dim=-1)
        return F.linear((weights @ v).transpose(1, 2).reshape(b, length, d), self.w_out)  # (B, L, d)


def _module_spec(kind: str, d: int, gen: torch.Generator, dtype: torch.dtype = torch.float64, *,
                 hidden: int = 8, heads: int = 1, with_grads: bool = False) -> dict:
    """Random parameters for a :class:`_CaseModule` (and random starting .grad if ``with_grads``)."""
    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen, dtype=dtype)

    norm = {"norm_weight": 1 + 0.2 * rnd(d), "norm_bias": 0.2 * rnd(d)}
    if kind == "affine":
        params = {"weight": rnd(d, d, scale=d ** -0.5), "bias": rnd(d)}
    elif kind == "mlp":
        params = {**norm, "w1": rnd(hidden, d, scale=d ** -0.5), "b1": 0.2 * rnd(hidden),
                  "w2": rnd(d, hidden, scale=hidden ** -0.5), "b2": 0.2 * rnd(d)}
    else:
        params = {**norm, "w_qkv": rnd(3 * d, d, scale=d ** -0.5), "w_out": rnd(d, d, scale=d ** -0.5)}
    grads = {name: rnd(*p.shape) for name, p in params.items()} if with_grads else None
    return {"kind": kind, "params": params, "grads": grads, "heads": heads}


def _case_modules(c: dict) -> list[_CaseModule]:
    return [_CaseModule(spec) for spec in c["modules"]]


def _param_grads(modules: list[_CaseModule]) -> tuple:
    return tuple(p.grad for m in modules for p in m.parameters())


def _param_names(c: dict) -> list[str]:
    """``f of block 0: w1``, ... in the order of :func:`_param_grads`."""
    names = []
    for i, spec in enumerate(c["modules"]):
        roles = [f"{'fg'[j]} of block {b}" for b, pair in enumerate(c["blocks"]) for j in (0, 1) if pair[j] == i]
        names += [f"{' and '.join(roles)} ({spec['kind']}): {name}" for name in sorted(spec["params"])]
    return names


def _ref_stack_forward(modules: list, blocks: list, x1: torch.Tensor, x2: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks as an ordinary residual stack: y1 = x1 + f(x2), y2 = x2 + g(y1), block after block."""
    for fi, gi in blocks:
        x1 = x1 + modules[fi](x2)
        x2 = x2 + modules[gi](x1)
    return x1, x2


def _ref_backward(c: dict) -> tuple:
    """Plain autograd through the ordinary stack: ((x1, x2, dx1, dx2), parameter .grad)."""
    modules = _case_modules(c)
    x1, x2 = (c[k].clone().requires_grad_(True) for k in ("x1", "x2"))
    with torch.enable_grad():
        y1, y2 = _ref_stack_forward(modules, c["blocks"], x1, x2)
        torch.autograd.backward((y1, y2), (c["dy1"], c["dy2"]))
    return (x1.detach(), x2.detach(), x1.grad, x2.grad), _param_grads(modules)


def _rev_step(f: Any, g: Any, y1: torch.Tensor, y2: torch.Tensor, dy1: torch.Tensor, dy2: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A right ``block_backward``: exercise 4's hidden tests give it to the student's loop."""
    with torch.enable_grad():
        y1 = y1.detach().requires_grad_(True)
        gy = g(y1)
        g_params = [p for p in g.parameters() if p.requires_grad]
        torch.autograd.backward(gy, dy2, inputs=[y1, *g_params])  # accumulates into .grad
        dx1 = dy1 + y1.grad  # y1 fed the output and g
        x2 = (y2 - gy).detach().requires_grad_(True)
        fx = f(x2)
        torch.autograd.backward(fx, dx1, inputs=[x2, *[p for p in f.parameters() if p.requires_grad]])
    return (y1 - fx).detach(), x2.detach(), dx1, dy2 + x2.grad


def _rev_case(modules: list[dict], blocks: list, shape: tuple, gen: torch.Generator, *,
              dtype: torch.dtype = torch.float64, tol: float = 1e-9, note: str | None = None,
              no_grad: bool = False, dy1_zero: bool = False) -> dict:
    """Random inputs and output gradients for the stack ``blocks`` of ``modules``; its outputs.

    Tolerance (errors relative to 1 + |expected|): float64 rounding, grown by reconstructing
    through up to 6 blocks, stays below 1e-12 (2.4e-13 seen); 1e-9 rejects every real mistake
    (a missing term or a wrong order is off by ~0.1 or more)."""
    x1, x2, dy1, dy2 = (torch.randn(*shape, generator=gen, dtype=dtype) for _ in range(4))
    if dy1_zero:
        dy1 = torch.zeros_like(dy1)
    c = {"modules": modules, "blocks": [list(b) for b in blocks], "x1": x1, "x2": x2, "dy1": dy1, "dy2": dy2,
         "tol": tol, "note": note, "no_grad": no_grad}
    with torch.no_grad():
        c["y1"], c["y2"] = _ref_stack_forward(_case_modules(c), c["blocks"], x1, x2)
    return c


def _rev_describe(c: dict) -> str:
    kinds = ", ".join(f"({c['modules'][fi]['kind']}, {c['modules'][gi]['kind']})" for fi, gi in c["blocks"])
    extras = [c["note"]] if c.get("note") else []
    if any(s["grads"] for s in c["modules"]):
        extras.append("parameters start with a .grad")
    if c.get("no_grad"):
        extras.append("called under torch.no_grad()")
    return (f"{len(c['blocks'])} block(s) (f, g) = {kinds}, halves {tuple(c['x1'].shape)} {c['x1'].dtype}"
            + (f" ({'; '.join(extras)})" if extras else ""))


def _rev_random_cases(seed: int, n: int, *, depth: tuple[int, int] = (1, 1), grads: bool = False,
                      no_grad: bool = False) -> list[dict]:
    """float64 stacks of random depth, width, length and kinds; shared modules, one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n):
        batch, length, heads = rng.randint(1, 3), rng.randint(1, 9), rng.choice([1, 2])
        d = heads * rng.randint(1, 4) + (1 if heads == 1 else 0)  # >= 2: LayerNorm of one feature is 0
        n_blocks = depth[0] + i % (depth[1] - depth[0] + 1)  # every depth in range, in turn
        specs, blocks = [], []
        for _ in range(n_blocks):
            pair = []
            for _role in "fg":
                if specs and rng.random() < 0.2:  # share an earlier module: its .grad must accumulate
                    pair.append(rng.randrange(len(specs)))
                    continue
                kind = rng.choice(["mlp", "attention", "affine"])
                specs.append(_module_spec(kind, d, gen, hidden=rng.randint(2, 12), heads=heads,
                                          with_grads=grads and rng.random() < 0.5))
                pair.append(len(specs) - 1)
            blocks.append(pair)
        cases.append(_rev_case(specs, blocks, (batch, length, d), gen, no_grad=no_grad and i % 2 == 0,
                               dy1_zero=i % 7 == 3))
    specs = [_module_spec("mlp", 8, gen, torch.float32, hidden=16), _module_spec("attention", 8, gen, torch.float32,
                                                                                   heads=2)]
    # float32: rounding ~1e-7 relative, grown by reconstructing through the blocks (4e-5 seen
    # through 6 blocks); a real mistake is off by ~0.1 or more.
    cases.append(_rev_case(specs, [[0, 1]] * depth[1], (2, 6, 8), gen, dtype=torch.float32, tol=1e-3,
                           note="float32", no_grad=no_grad))
    return cases


def _rev_shared_cases(seed: int) -> list[dict]:
    """f is g; the top's dy1 = 0; length 1; head size 1; attention as g and the MLP as f."""
    gen = torch.Generator().manual_seed(seed)
    mlp = lambda d, **kw: _module_spec("mlp", d, gen, hidden=6, **kw)  # noqa: E731
    attn = lambda d, heads, **kw: _module_spec("attention", d, gen, heads=heads, **kw)  # noqa: E731
    return [
        _rev_case([mlp(4, with_grads=True)], [[0, 0]], (2, 5, 4), gen, note="f and g are the same module"),
        _rev_case([attn(4, 2), mlp(4)], [[0, 1]], (2, 6, 4), gen, dy1_zero=True, note="dy1 = 0"),
        _rev_case([mlp(3), attn(3, 1)], [[0, 1]], (1, 1, 3), gen, note="length 1"),
        _rev_case([attn(4, 4), attn(4, 2, with_grads=True)], [[0, 1]], (3, 5, 4), gen, note="head size 1"),
        _rev_case([attn(6, 2), mlp(6)], [[1, 0]], (2, 7, 6), gen, note="f the MLP, g attention"),
    ]


def _rev_forward_run(fn: Callable[..., Any], c: dict) -> Any:
    modules = _case_modules(c)
    (fi, gi), = c["blocks"]
    return fn(modules[fi], modules[gi], c["x1"].clone(), c["x2"].clone())


def _rev_inverse_run(fn: Callable[..., Any], c: dict) -> Any:
    modules = _case_modules(c)
    (fi, gi), = c["blocks"]
    return fn(modules[fi], modules[gi], c["y1"].clone(), c["y2"].clone())


def _rev_forward_reference(c: dict) -> tuple:
    modules = _case_modules(c)
    (fi, gi), = c["blocks"]
    with torch.no_grad():
        return _REF_BLOCK(modules[fi], modules[gi])(c["x1"], c["x2"])


def _rev_inverse_reference(c: dict) -> tuple:
    modules = _case_modules(c)
    (fi, gi), = c["blocks"]
    with torch.no_grad():
        return _REF_BLOCK(modules[fi], modules[gi]).inverse(c["y1"], c["y2"])


def _rev_pair_compare(names: tuple[str, str]) -> Callable[[Any, Any, dict], str | None]:
    return lambda got, expected, c: _tuple_problem(got, expected, names, (c["tol"],) * 2, (True, True))


def _holds_graph(out: Any) -> tuple[bool, ...]:
    return tuple(isinstance(t, torch.Tensor) and t.grad_fn is not None for t in out) \
        if isinstance(out, (tuple, list)) else ()


def _rev_block_run(fn: Callable[..., Any], c: dict) -> tuple:
    modules = _case_modules(c)
    (fi, gi), = c["blocks"]
    args = [c[k].clone() for k in ("y1", "y2", "dy1", "dy2")]
    with torch.no_grad() if c["no_grad"] else contextlib.nullcontext():
        out = fn(modules[fi], modules[gi], *args)
    return out, _param_grads(modules), _holds_graph(out)


def _rev_block_reference(c: dict) -> tuple:
    values, grads = _ref_backward(c)
    return values, grads, (False,) * 4


def _rev_stack_run(fn: Callable[..., Any], c: dict) -> tuple:
    modules = _case_modules(c)
    blocks = [(modules[fi], modules[gi]) for fi, gi in c["blocks"]]
    args = [c[k].clone() for k in ("y1", "y2", "dy1", "dy2")]
    with torch.no_grad() if c["no_grad"] else contextlib.nullcontext():
        out = fn(blocks, *args, step=_rev_step)
    return out, _param_grads(modules), _holds_graph(out)


def _rev_stack_reference(c: dict) -> tuple:
    values, grads = _ref_backward(c)
    return values[2:], grads, (False,) * 2


def _rev_grads_problem(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != len(expected):
        return "the parameters of f and g changed"
    for name, g, e in zip(_param_names(c), got, expected):
        if g is None:
            return f"{name}: no gradient (its .grad is None)"
        problem = _close_problem(g, e, c["tol"], relative=True)
        if problem:
            return f"{name}: .grad {problem}" + (" (add to the .grad it had; do not replace it)"
                                                 if any(s["grads"] for s in c["modules"]) else "")
    return None


def _rev_backward_compare(names: tuple[str, ...]) -> Callable[[Any, Any, dict], str | None]:
    def compare(got: Any, expected: tuple, c: dict) -> str | None:
        if not isinstance(got, tuple) or len(got) != 3:  # only a hand-made results file
            return "no results"
        out, grads, graphs = got  # graphs: reported by the kernel (what it can check without the tensors)
        graphs = graphs if isinstance(graphs, tuple) else ()
        problem = _tuple_problem(out, expected[0], names, (c["tol"],) * len(names), (True,) * len(names))
        if problem:
            return problem
        problem = _rev_grads_problem(grads, expected[1], c)
        if problem:
            return problem
        kept = [n for n, held in zip(names, graphs) if held]
        if kept and c["no_grad"]:
            return (f"{', '.join(kept)} still attached to an autograd graph (return detached tensors: a graph keeps "
                    "f's and g's activations alive, the memory a reversible stack exists to save)")
        return None
    return compare


def _rev_blocked(step_allowed: bool = False) -> tuple[Callable[..., Any], ...]:
    ours = (_ref_stack_forward, _ref_backward) + (() if step_allowed else (_rev_step,))
    return (*_module_functions(_reversible_module), *ours)


def _rev_small_forward_cases(seed: int) -> list[dict]:
    """What the visible tests use: f(x) = 2x and g(x) = x + 1 on one feature; an MLP pair."""
    gen = torch.Generator().manual_seed(seed)
    two = {"kind": "affine", "params": {"weight": torch.tensor([[2.0]]), "bias": torch.tensor([0.0])},
           "grads": None, "heads": 1}
    plus_one = {"kind": "affine", "params": {"weight": torch.tensor([[1.0]]), "bias": torch.tensor([1.0])},
                "grads": None, "heads": 1}
    hand = _rev_case([two, plus_one], [[0, 1]], (1, 1, 1), gen, dtype=torch.float32, tol=1e-5, note="hand-worked")
    hand["x1"], hand["x2"] = torch.tensor([[[1.0]]]), torch.tensor([[[3.0]]])
    hand["y1"], hand["y2"] = torch.tensor([[[7.0]]]), torch.tensor([[[11.0]]])
    mlps = [_module_spec("mlp", 4, gen, hidden=8), _module_spec("mlp", 4, gen, hidden=8)]
    return [hand, _rev_case(mlps, [[0, 1]], (2, 5, 4), gen, note="two MLPs")]


def _rev_small_block_cases(seed: int) -> list[dict]:
    """What the visible tests of block_backward check: one MLP block against autograd, from
    no .grad and again from the .grad the first call left (the second call adds as much)."""
    gen = torch.Generator().manual_seed(seed)
    specs = [_module_spec("mlp", 4, gen, hidden=8), _module_spec("mlp", 4, gen, hidden=8)]
    first = _rev_case(specs, [[0, 1]], (2, 5, 4), gen, note="one MLP block")
    left = iter(_ref_backward(first)[1])  # the .grad the first call leaves, in parameter order
    again = [{**spec, "grads": {name: next(left) for name in sorted(spec["params"])}} for spec in specs]
    return [first, {**first, "modules": again, "note": "called a second time"}]


def _rev_small_stack_cases(seed: int) -> list[dict]:
    """A stack of three MLP blocks against autograd (the visible test checks the loop with a fake step)."""
    gen = torch.Generator().manual_seed(seed)
    specs = [_module_spec("mlp", 4, gen, hidden=8) for _ in range(6)]
    return [_rev_case(specs, [[0, 1], [2, 3], [4, 5]], (2, 5, 4), gen, note="three MLP blocks")]


for _name, _cases_fn in (("rev_forward_small", _rev_small_forward_cases),
                         ("rev_forward", lambda seed: _rev_random_cases(seed, 30) + _rev_shared_cases(seed))):
    _register(Suite(_name, _cases_fn, _rev_forward_run, _rev_forward_reference, _rev_pair_compare(("y1", "y2")),
                    _rev_describe, _REV_FORBIDDEN, _rev_blocked))
for _name, _cases_fn in (("rev_inverse_small", _rev_small_forward_cases),
                         ("rev_inverse", lambda seed: _rev_random_cases(seed, 30) + _rev_shared_cases(seed))):
    _register(Suite(_name, _cases_fn, _rev_inverse_run, _rev_inverse_reference, _rev_pair_compare(("x1", "x2")),
                    _rev_describe, _REV_FORBIDDEN, _rev_blocked))
for _name, _cases_fn in (("rev_block_small", _rev_small_block_cases),
                         ("rev_block", lambda seed: _rev_random_cases(seed, 30, grads=True)),
                         ("rev_block_in_backward",
                          lambda seed: [{**c, "no_grad": True} for c in _rev_shared_cases(seed)
                                        + _rev_random_cases(seed + 1, 6, grads=True)])):
    _register(Suite(_name, _cases_fn, _rev_block_run, _rev_block_reference,
                    _rev_backward_compare(("x1", "x2", "dx1", "dx2")), _rev_describe, _REV_FORBIDDEN, _rev_blocked))
for _name, _cases_fn in (("rev_stack_small", _rev_small_stack_cases),
                         ("rev_stack", lambda seed: _rev_random_cases(seed, 20, depth=(1, 6), grads=True,
                                                                      no_grad=True))):
    _register(Suite(_name, _cases_fn, _rev_stack_run, _rev_stack_reference, _rev_backward_compare(("dx1", "dx2")),
                    _rev_describe, _REV_FORBIDDEN, lambda: _rev_blocked(step_allowed=True)))


# --- chunking and the assembled Reformer (chapter 4) ------------------------------
# Assignment 4 grades five functions, each on its own; ``fn`` is a position-wise module
# mapping (batch, n, d_in) to (batch, n, d_out) for any n:
#   chunked_forward(fn, x, chunk_size)                                  -> fn(x), no graph kept
#   chunked_backward(fn, x, grad_out, chunk_size)                       -> dx; fn's .grad += ...
#   chunked_ce_forward(hidden, weight, bias, targets, chunk_size)        -> (loss, lse)
#   chunked_ce_backward(hidden, weight, bias, targets, lse, chunk_size)  -> (dhidden, dweight, dbias)
#   reformer_block(f, g, x1, x2, chunk_size, apply=...)                  -> (y1, y2), g through apply
# Cases are plain data, modules as in chapter 3 (_CaseModule specs). Every reference is
# plain autograd on the whole sequence (F.cross_entropy for the loss), written here:
# tests/test_grading_04.py checks that the references agree with longctx_lib.chunking
# and longctx_lib.reversible. Chunking changes no value, only what exists at once, so
# the kernel also reports what only it can see while the student's code runs (data, like
# chapter 3's "holds a graph"): the most positions one call of ``fn`` (or ``g``) saw, the
# most chunks whose autograd graph was alive at once (_Watched), and the largest tensor
# the loss functions created (_LargestTensor, a TorchDispatchMode: it sees every tensor
# allocated, autograd's included).
_CHUNK_FORBIDDEN = ("longctx_lib.chunking", "longctx_lib.reformer", "longctx_lib.grading")
_BLOCK_FORBIDDEN = (*_CHUNK_FORBIDDEN, "longctx_lib.reversible", "longctx_lib.ReversibleBlock",
                    "longctx_lib.ReversibleSequence")


class _Watched(_CaseModule):
    """A :class:`_CaseModule` that notes how it is called: ``most_positions``, the longest
    input (axis 1) of one call; ``most_alive``, the most calls whose output graph was
    alive at once (recorded with autograd and not yet back-propagated through)."""

    def __init__(self, spec: dict) -> None:
        super().__init__(spec)
        self.most_positions, self.alive, self.most_alive = 0, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.most_positions = max(self.most_positions, int(x.shape[1]) if x.dim() > 1 else 0)
        out = super().forward(x)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
            out.register_hook(self._back_propagated)
        return out

    def _back_propagated(self, grad: torch.Tensor) -> None:
        self.alive -= 1


@contextlib.contextmanager
def _largest_tensor() -> Iterator[Any]:
    """While active, ``.largest`` is the most elements of any storage an operation created."""
    from torch.utils._python_dispatch import TorchDispatchMode  # imported here: it loads torch._dynamo
    from torch.utils._pytree import tree_leaves

    class _LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta":
                    self.largest = max(self.largest, t.untyped_storage().nbytes() // max(t.element_size(), 1))
            return out

    mode = _LargestTensor()
    with mode:
        yield mode


class _RefChunked(torch.autograd.Function):
    """A right chunked application of ``fn`` with autograd: exercise 5's hidden tests give it
    to the student's block as ``apply``. Forward keeps only ``x``; backward recomputes one
    chunk at a time and returns the parameters' gradients to autograd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Any, chunk_size: int, *params: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.chunk_size = fn, chunk_size
        ctx.save_for_backward(x, *params)
        return torch.cat([fn(x[:, s:s + chunk_size]) for s in range(0, x.shape[1], chunk_size)], dim=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple:
        x, *params = ctx.saved_tensors
        dx, grads = torch.zeros_like(x), [torch.zeros_like(p) for p in params]
        for s in range(0, x.shape[1], ctx.chunk_size):
            span = slice(s, s + ctx.chunk_size)
            with torch.enable_grad():
                xc = x[:, span].detach().requires_grad_(True)
                found = torch.autograd.grad(ctx.fn(xc), [xc, *params], grad_out[:, span], allow_unused=True)
            dx[:, span] = found[0]
            for total, g in zip(grads, found[1:]):
                if g is not None:
                    total += g
        return (dx, None, None, *grads)


def _ref_chunked_apply(fn: Any, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``apply`` for exercise 5's hidden tests: ``fn(x)``, chunked, with gradients."""
    params = [p for p in fn.parameters() if p.requires_grad] if isinstance(fn, nn.Module) else []
    return _RefChunked.apply(x, fn, chunk_size, *params)


def _chunk_blocked(*, with_reversible: bool = False, apply_allowed: bool = False) -> tuple[Callable[..., Any], ...]:
    ours = (_ref_stack_forward, _ref_backward, _ref_cf_forward, _ref_cf_backward, _ref_ce_forward,
            _ref_ce_backward, _ref_block)
    apply = () if apply_allowed else (_ref_chunked_apply, _RefChunked.forward, _RefChunked.backward)
    rev = _module_functions(_reversible_module) if with_reversible else ()
    return (*_module_functions(_chunking_module), *_module_functions(_reformer_module), *rev, *ours, *apply)


# position-wise fn: chunked forward and backward ----------------------------------------
def _ff_spec(kind: str, d_in: int, d_out: int, gen: torch.Generator, dtype: torch.dtype = torch.float64, *,
             hidden: int = 8, with_grads: bool = False) -> dict:
    """A position-wise :class:`_CaseModule`: ``"affine"`` (Linear d_in -> d_out) or ``"mlp"``
    (LayerNorm, Linear, GELU, Linear d_in -> d_out)."""
    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen, dtype=dtype)

    if kind == "affine":
        params = {"weight": rnd(d_out, d_in, scale=d_in ** -0.5), "bias": rnd(d_out)}
    else:
        params = {"norm_weight": 1 + 0.2 * rnd(d_in), "norm_bias": 0.2 * rnd(d_in),
                  "w1": rnd(hidden, d_in, scale=d_in ** -0.5), "b1": 0.2 * rnd(hidden),
                  "w2": rnd(d_out, hidden, scale=hidden ** -0.5), "b2": 0.2 * rnd(d_out)}
    grads = {name: rnd(*p.shape) for name, p in params.items()} if with_grads else None
    return {"kind": kind, "params": params, "grads": grads, "heads": 1}


def _cf_case(spec: dict, shape: tuple[int, int, int], chunk_size: int, gen: torch.Generator, *,
             tol: float = 1e-10, note: str | None = None, no_grad: bool = False, strict: bool = False) -> dict:
    """Input ``x`` (batch, length, d_in) and output gradient (batch, length, d_out) for ``spec``.

    Tolerance (errors relative to 1 + |expected|): chunking reorders no sum inside a
    position, so float64 results agree to ~1e-16; 1e-10 rejects every real mistake (a
    chunk left out or counted twice is off by ~0.1 or more). float32 cases use 1e-4."""
    dtype = spec["params"][sorted(spec["params"])[0]].dtype
    d_out = spec["params"]["weight" if spec["kind"] == "affine" else "w2"].shape[0]
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    grad_out = torch.randn(*shape[:2], d_out, generator=gen, dtype=dtype)
    return {"fn": spec, "x": x, "grad_out": grad_out, "chunk_size": int(chunk_size), "tol": tol, "note": note,
            "no_grad": no_grad, "strict": strict}


def _cf_describe(c: dict) -> str:
    spec, (b, length, d_in) = c["fn"], c["x"].shape
    d_out = c["grad_out"].shape[-1]
    extras = [c["note"]] if c.get("note") else []
    if spec["grads"]:
        extras.append("parameters start with a .grad")
    if c.get("no_grad"):
        extras.append("called under torch.no_grad()")
    return (f"fn {spec['kind']} {d_in} -> {d_out}, x ({b}, {length}, {d_in}) {c['x'].dtype}, "
            f"chunk_size={c['chunk_size']}" + (f" ({'; '.join(extras)})" if extras else ""))


def _cf_small_forward_cases(seed: int) -> list[dict]:
    """What the visible tests of chunked_forward use: 2x on 7 positions in chunks of 3; an MLP 4 -> 6."""
    gen = torch.Generator().manual_seed(seed)
    twice = {"kind": "affine", "params": {"weight": torch.tensor([[2.0]]), "bias": torch.tensor([0.0])},
             "grads": None, "heads": 1}
    hand = _cf_case(twice, (1, 7, 1), 3, gen, tol=1e-6, note="hand-worked")
    hand["x"] = torch.arange(7.0).view(1, 7, 1)
    return [hand, _cf_case(_ff_spec("mlp", 4, 6, gen), (2, 5, 4), 2, gen, note="an MLP 4 -> 6")]


def _cf_random_cases(seed: int, n: int, *, grads: bool = False) -> list[dict]:
    """float64 on random shapes, kinds and chunk sizes (uneven last chunks, chunk_size 1,
    chunk_size equal to and larger than the length); one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n):
        batch, length = rng.randint(1, 3), rng.randint(1, 20)
        d_in, d_out = rng.randint(2, 6), rng.randint(1, 6)
        chunk_size = [rng.randint(1, max(1, length - 1)), 1, length, length + rng.randint(1, 4),
                      rng.randint(2, 5)][i % 5]
        spec = _ff_spec(rng.choice(["mlp", "affine"]), d_in, d_out, gen, hidden=rng.randint(2, 12),
                        with_grads=grads and rng.random() < 0.5)
        cases.append(_cf_case(spec, (batch, length, d_in), chunk_size, gen))
    spec = _ff_spec("mlp", 8, 8, gen, torch.float32, hidden=32, with_grads=grads)
    cases.append(_cf_case(spec, (2, 30, 8), 7, gen, tol=1e-4, note="float32"))
    return cases


def _cf_edge_cases(seed: int) -> list[dict]:
    """Length 1, chunk_size 1, one chunk (chunk_size = length and larger), an uneven last chunk, d_out 1."""
    gen = torch.Generator().manual_seed(seed)
    mlp = lambda d_in, d_out, **kw: _ff_spec("mlp", d_in, d_out, gen, hidden=6, **kw)  # noqa: E731
    return [
        _cf_case(mlp(3, 3), (2, 1, 3), 1, gen, note="length 1"),
        _cf_case(mlp(4, 2, with_grads=True), (2, 9, 4), 1, gen, note="chunk_size 1"),
        _cf_case(mlp(3, 5), (1, 8, 3), 8, gen, note="chunk_size = length: one chunk"),
        _cf_case(mlp(3, 3, with_grads=True), (2, 6, 3), 50, gen, note="chunk_size > length: one chunk"),
        _cf_case(mlp(5, 4), (3, 22, 5), 5, gen, note="the last chunk holds 2 positions"),
        _cf_case(_ff_spec("affine", 4, 1, gen, with_grads=True), (2, 13, 4), 4, gen, note="d_out 1"),
    ]


def _cf_forward_run(fn: Callable[..., Any], c: dict) -> tuple:
    module = _Watched(c["fn"])
    x = c["x"].clone().requires_grad_(True)  # autograd would record: the function must not let it
    out = fn(module, x, c["chunk_size"])
    return out, isinstance(out, torch.Tensor) and out.requires_grad, module.most_positions


def _ref_cf_forward(c: dict) -> tuple:
    with torch.no_grad():
        return _CaseModule(c["fn"])(c["x"]), False, c["chunk_size"]


def _too_many_positions(most: Any, c: dict, who: str = "fn") -> str | None:
    if type(most) is not int or most > c["chunk_size"]:
        return (f"{who} was called on {most} positions at once; call it on at most chunk_size = {c['chunk_size']} "
                "positions at a time")
    return None


def _cf_forward_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 3:  # only a hand-made results file
        return "no results"
    out, graph, most = got
    problem = _close_problem(out, expected[0], c["tol"], relative=True)
    if problem:
        return f"output: {problem}"
    if graph is not False:
        return ("the output is attached to an autograd graph (compute under torch.no_grad(): a graph keeps every "
                "chunk's intermediates, the memory chunking is meant to save)")
    return _too_many_positions(most, c)


def _cf_backward_run(fn: Callable[..., Any], c: dict) -> tuple:
    module = _Watched(c["fn"])
    x, grad_out = c["x"].clone(), c["grad_out"].clone()
    with torch.no_grad() if c["no_grad"] else contextlib.nullcontext():
        dx = fn(module, x, grad_out, c["chunk_size"])
    graph = isinstance(dx, torch.Tensor) and dx.grad_fn is not None
    return dx, _param_grads([module]), graph, module.most_positions, module.most_alive


def _ref_cf_backward(c: dict) -> tuple:
    module = _CaseModule(c["fn"])
    x = c["x"].clone().requires_grad_(True)
    with torch.enable_grad():
        torch.autograd.backward(module(x), c["grad_out"])
    return x.grad, _param_grads([module]), False, c["chunk_size"], 1


def _cf_backward_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 5:  # only a hand-made results file
        return "no results"
    dx, grads, graph, most, alive = got
    problem = _close_problem(dx, expected[0], c["tol"], relative=True)
    if problem:
        return f"dx: {problem}"
    names = [f"fn ({c['fn']['kind']}): {name}" for name in sorted(c["fn"]["params"])]
    if not isinstance(grads, tuple) or len(grads) != len(expected[1]):
        return "the parameters of fn changed"
    for name, g, e in zip(names, grads, expected[1]):
        if g is None:
            return f"{name}: no gradient (its .grad is None): back-propagate through fn so that its parameters get one"
        problem = _close_problem(g, e, c["tol"], relative=True)
        if problem:
            return f"{name}: .grad {problem}" + (" (add to the .grad it had; do not replace it)"
                                                 if c["fn"]["grads"] or c["chunk_size"] < c["x"].shape[1] else "")
    if not c["strict"]:
        return None
    if graph is not False:
        return ("dx is still attached to an autograd graph (return a detached tensor: a graph keeps fn's "
                "intermediates alive)")
    problem = _too_many_positions(most, c)
    if problem:
        return problem
    if type(alive) is not int or alive > 1:
        return (f"{alive} chunks' autograd graphs were alive at once; back-propagate through each chunk before "
                "computing the next, so that only one chunk's intermediates exist at a time")
    return None


# the loss: chunked cross-entropy forward and backward ----------------------------------
def _ce_case(n: int, d: int, vocab: int, chunk_size: int, gen: torch.Generator, *, dtype: torch.dtype = torch.float64,
             scale: float = 1.0, tol: float = 1e-10, note: str | None = None, measure: bool = False) -> dict:
    """hidden (n, d), weight (vocab, d), bias (vocab,), targets (n,); lse (n,) the right
    log-sum-exps (exercise 4's input). Tolerance relative to 1 + |expected|: float64
    rounding here is ~1e-15; a mistake (a missing mean, bias or maximum) is off by 1e-3 or more."""
    hidden = scale * torch.randn(n, d, generator=gen, dtype=dtype)
    weight = torch.randn(vocab, d, generator=gen, dtype=dtype) * d ** -0.5
    bias = 0.5 * torch.randn(vocab, generator=gen, dtype=dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    lse = torch.logsumexp(F.linear(hidden, weight, bias), dim=-1)
    return {"hidden": hidden, "weight": weight, "bias": bias, "targets": targets, "lse": lse,
            "chunk_size": int(chunk_size), "tol": tol, "note": note, "measure": measure}


def _ce_describe(c: dict) -> str:
    (n, d), vocab = c["hidden"].shape, c["weight"].shape[0]
    return (f"hidden ({n}, {d}) {c['hidden'].dtype}, vocab {vocab}, chunk_size={c['chunk_size']}"
            + (f" ({c['note']})" if c.get("note") else ""))


def _ce_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: the hand-worked case (weight = identity, chunks of 1); 10 positions in chunks of 4."""
    gen = torch.Generator().manual_seed(seed)
    hand = _ce_case(2, 2, 2, 1, gen, note="hand-worked")
    hand["hidden"] = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    hand["weight"], hand["bias"] = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    hand["targets"] = torch.tensor([0, 0])
    hand["lse"] = torch.logsumexp(hand["hidden"], dim=-1)
    return [hand, _ce_case(10, 4, 7, 4, gen, note="10 positions in chunks of 4")]


def _ce_random_cases(seed: int) -> list[dict]:
    """float64 on random sizes and chunk sizes; vocab 1, one position, chunk_size 1 and >= the
    positions; logits near 1000 (exp overflows without subtracting the maximum); float32."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(16):
        n, d, vocab = rng.randint(1, 40), rng.randint(1, 6), rng.randint(2, 30)
        chunk_size = [rng.randint(1, max(1, n - 1)), 1, n, n + rng.randint(1, 5)][i % 4]
        cases.append(_ce_case(n, d, vocab, chunk_size, gen, scale=rng.choice([0.5, 1.0, 3.0])))
    cases += [
        _ce_case(9, 3, 1, 4, gen, note="vocab 1: the loss is 0"),
        _ce_case(1, 4, 6, 1, gen, note="one position"),
        _ce_case(17, 4, 12, 5, gen, scale=600.0, note="logits near 1000: exp overflows without the maximum"),
        _ce_case(40, 8, 30, 9, gen, dtype=torch.float32, tol=1e-4, note="float32"),
    ]
    return cases


def _ce_memory_cases(seed: int) -> list[dict]:
    """Many positions, a large vocabulary, small chunks: the full (positions x vocab) logits are
    at least 4 times larger than any tensor a chunked loss needs (one chunk's logits, the
    weight, hidden and its gradient)."""
    gen = torch.Generator().manual_seed(seed)
    return [_ce_case(n, d, vocab, chunk, gen, measure=True, note="the largest tensor is measured")
            for n, d, vocab, chunk in ((96, 3, 48, 8), (128, 4, 64, 16), (101, 2, 40, 7), (64, 4, 100, 16))]


def _ce_args(c: dict, *names: str) -> list:
    return [c[k].clone() for k in names]


def _ce_forward_run(fn: Callable[..., Any], c: dict) -> tuple:
    args = _ce_args(c, "hidden", "weight", "bias", "targets")
    if not c["measure"]:
        return fn(*args, c["chunk_size"]), -1
    with _largest_tensor() as seen:
        out = fn(*args, c["chunk_size"])
    return out, seen.largest


def _ce_backward_run(fn: Callable[..., Any], c: dict) -> tuple:
    args = _ce_args(c, "hidden", "weight", "bias", "targets", "lse")
    if not c["measure"]:
        return fn(*args, c["chunk_size"]), -1
    with _largest_tensor() as seen:
        out = fn(*args, c["chunk_size"])
    return out, seen.largest


def _ref_ce_forward(c: dict) -> tuple:
    logits = F.linear(c["hidden"], c["weight"], c["bias"])  # (n, vocab): the grader may build it
    return (F.cross_entropy(logits, c["targets"]), torch.logsumexp(logits, dim=-1)), -1


def _ref_ce_backward(c: dict) -> tuple:
    h, w, b = (c[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias"))
    with torch.enable_grad():
        loss = F.cross_entropy(F.linear(h, w, b), c["targets"])
        return torch.autograd.grad(loss, (h, w, b)), -1


def _ce_compare(names: tuple[str, ...]) -> Callable[[Any, Any, dict], str | None]:
    def compare(got: Any, expected: tuple, c: dict) -> str | None:
        if not isinstance(got, tuple) or len(got) != 2:  # only a hand-made results file
            return "no results"
        out, largest = got
        problem = _tuple_problem(out, expected[0], names, (c["tol"],) * len(names), (True,) * len(names))
        if problem or not c["measure"]:
            return problem
        full = c["hidden"].shape[0] * c["weight"].shape[0]
        if type(largest) is not int or not 0 < 2 * largest < full:
            return (f"a tensor of {largest} elements was built, at least half the full logits (positions x vocab = "
                    f"{full}); compute the logits for chunk_size = {c['chunk_size']} positions at a time")
        return None
    return compare


# one Reformer block, g chunked ------------------------------------------------------
def _block_case(modules: list[dict], shape: tuple[int, int, int], chunk_size: int, gen: torch.Generator, *,
                dtype: torch.dtype = torch.float64, tol: float = 1e-9, note: str | None = None) -> dict:
    """x1, x2 and output gradients dy1, dy2 for the block (f, g) = modules. Tolerance as in chapter 3."""
    c = _rev_case(modules, [[0, 1]], shape, gen, dtype=dtype, tol=tol, note=note)
    del c["y1"], c["y2"]  # not needed: the block's outputs are the reference's to compute
    c["chunk_size"] = int(chunk_size)
    return c


def _block_describe(c: dict) -> str:
    return _rev_describe(c) + f", chunk_size={c['chunk_size']}"


def _block_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: f(x) = 2x and g(x) = x + 1 on one feature; causal attention and an MLP."""
    gen = torch.Generator().manual_seed(seed)
    two = {"kind": "affine", "params": {"weight": torch.tensor([[2.0]], dtype=torch.float64),
                                        "bias": torch.tensor([0.0], dtype=torch.float64)}, "grads": None, "heads": 1}
    plus_one = {"kind": "affine", "params": {"weight": torch.tensor([[1.0]], dtype=torch.float64),
                                             "bias": torch.tensor([1.0], dtype=torch.float64)},
                "grads": None, "heads": 1}
    hand = _block_case([two, plus_one], (1, 3, 1), 2, gen, note="hand-worked")
    hand["x1"] = torch.tensor([[[1.0], [2.0], [0.0]]], dtype=torch.float64)
    hand["x2"] = torch.tensor([[[3.0], [-1.0], [0.5]]], dtype=torch.float64)
    pair = [_module_spec("attention", 4, gen, heads=2), _ff_spec("mlp", 4, 4, gen, hidden=16)]
    return [hand, _block_case(pair, (2, 7, 4), 3, gen, note="causal attention and an MLP")]


def _block_cases(seed: int) -> list[dict]:
    """float64: random f (mostly causal attention), position-wise g, shapes and chunk sizes;
    causality by perturbation (inputs after position t changed); one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(12):
        batch, length, heads = rng.randint(1, 3), rng.randint(1, 12), rng.choice([1, 2])
        d = heads * rng.randint(1, 4) + (1 if heads == 1 else 0)  # >= 2: LayerNorm of one feature is 0
        f_kind = "attention" if i % 4 else rng.choice(["mlp", "affine"])
        chunk_size = [rng.randint(1, max(1, length - 1)), 1, length + rng.randint(0, 3), rng.randint(2, 4)][i % 4]
        specs = [_module_spec(f_kind, d, gen, hidden=rng.randint(2, 10), heads=heads),
                 _ff_spec(rng.choice(["mlp", "affine"]), d, d, gen, hidden=rng.randint(2, 16))]
        cases.append(_block_case(specs, (batch, length, d), chunk_size, gen))
    base = _block_case([_module_spec("attention", 4, gen, heads=2), _ff_spec("mlp", 4, 4, gen, hidden=8)],
                       (2, 9, 4), 4, gen, note="causal attention: base")
    cases.append(base)
    for t in (0, 3, 7):
        changed = {**base, "x1": base["x1"].clone(), "x2": base["x2"].clone(),
                   "note": f"causal attention: x1 and x2 after position {t} changed"}
        for k in ("x1", "x2"):
            changed[k][:, t + 1:] += 3 * torch.randn(changed[k][:, t + 1:].shape, generator=gen, dtype=torch.float64)
        cases.append(changed)
    specs = [_module_spec("attention", 8, gen, torch.float32, heads=2), _ff_spec("mlp", 8, 8, gen, torch.float32,
                                                                                   hidden=32)]
    cases.append(_block_case(specs, (2, 12, 8), 5, gen, dtype=torch.float32, tol=1e-4, note="float32"))
    return cases


def _block_run(fn: Callable[..., Any], c: dict) -> tuple:
    f, g = _CaseModule(c["modules"][0]), _Watched(c["modules"][1])
    x1, x2 = (c[k].clone().requires_grad_(True) for k in ("x1", "x2"))
    with torch.enable_grad():
        out = fn(f, g, x1, x2, c["chunk_size"], apply=_ref_chunked_apply)
        if isinstance(out, (tuple, list)) and len(out) == 2:  # back-propagate what can be
            pairs = [(y, c[k]) for y, k in zip(out, ("dy1", "dy2")) if isinstance(y, torch.Tensor) and y.requires_grad
                     and y.shape == c[k].shape]
            if pairs:
                torch.autograd.backward([y for y, _ in pairs], [dy for _, dy in pairs])
    return out, (x1.grad, x2.grad), _param_grads([f, g]), g.most_positions


def _ref_block(c: dict) -> tuple:
    modules = _case_modules(c)
    x1, x2 = (c[k].clone().requires_grad_(True) for k in ("x1", "x2"))
    with torch.enable_grad():
        y1, y2 = _ref_stack_forward(modules, c["blocks"], x1, x2)  # g on the whole sequence
        torch.autograd.backward((y1, y2), (c["dy1"], c["dy2"]))
    return (y1.detach(), y2.detach()), (x1.grad, x2.grad), _param_grads(modules), c["chunk_size"]


def _block_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 4:  # only a hand-made results file
        return "no results"
    out, dx, grads, most = got
    tols = (c["tol"], c["tol"])
    problem = _tuple_problem(out, expected[0], ("y1", "y2"), tols, (True, True))
    if problem:
        return problem
    if not isinstance(dx, tuple) or len(dx) != 2 or any(g is None for g in dx):
        return "no gradient reaches x1 or x2: let autograd record the block (no torch.no_grad(), no detach)"
    if isinstance(grads, tuple) and len(grads) == len(expected[2]):
        n_f = len(c["modules"][0]["params"])
        if all(g is None for g in grads[n_f:]) and not any(g is None for g in grads[:n_f]):
            return ("g's parameters got no gradient: compute g with `apply`, which records it for backward "
                    "(chunked_forward alone keeps no graph)")
    problem = _tuple_problem(dx, expected[1], ("d/dx1", "d/dx2"), tols, (True, True))
    if problem:
        return problem + " (the gradient flows through f, and through g via apply)"
    problem = _rev_grads_problem(grads, expected[2], c)
    if problem:
        return problem
    return _too_many_positions(most, c, "g")


for _name, _cases_fn in (("chunk_forward_small", _cf_small_forward_cases),
                         ("chunk_forward", lambda seed: _cf_random_cases(seed, 20) + _cf_edge_cases(seed))):
    _register(Suite(_name, _cases_fn, _cf_forward_run, _ref_cf_forward, _cf_forward_compare, _cf_describe,
                    _CHUNK_FORBIDDEN, _chunk_blocked))


def _cf_small_backward_cases(seed: int) -> list[dict]:
    """What the visible tests of chunked_backward check: an MLP on 7 positions in chunks of 3 against
    autograd, from no .grad and again from the .grad the first call left (the second adds as much)."""
    gen = torch.Generator().manual_seed(seed)
    first = _cf_case(_ff_spec("mlp", 4, 4, gen), (2, 7, 4), 3, gen, note="an MLP, chunks of 3")
    left = iter(_ref_cf_backward(first)[1])  # the .grad the first call leaves, in parameter order
    again = {**first["fn"], "grads": {name: next(left) for name in sorted(first["fn"]["params"])}}
    return [first, {**first, "fn": again, "note": "called a second time"}]


for _name, _cases_fn in (
        ("chunk_backward_small", _cf_small_backward_cases),
        ("chunk_backward", lambda seed: _cf_random_cases(seed + 1, 20, grads=True)),
        ("chunk_backward_in_backward",
         lambda seed: [{**c, "no_grad": True, "strict": True} for c in _cf_edge_cases(seed + 2)
                       + _cf_random_cases(seed + 3, 5, grads=True)])):
    _register(Suite(_name, _cases_fn, _cf_backward_run, _ref_cf_backward, _cf_backward_compare, _cf_describe,
                    _CHUNK_FORBIDDEN, _chunk_blocked))
for _name, _cases_fn in (("ce_forward_small", _ce_small_cases), ("ce_forward", _ce_random_cases),
                         ("ce_forward_memory", _ce_memory_cases)):
    _register(Suite(_name, _cases_fn, _ce_forward_run, _ref_ce_forward, _ce_compare(("loss", "lse")), _ce_describe,
                    _CHUNK_FORBIDDEN, _chunk_blocked))
for _name, _cases_fn in (("ce_backward_small", _ce_small_cases), ("ce_backward", _ce_random_cases),
                         ("ce_backward_memory", _ce_memory_cases)):
    _register(Suite(_name, _cases_fn, _ce_backward_run, _ref_ce_backward,
                    _ce_compare(("d hidden", "d weight", "d bias")), _ce_describe, _CHUNK_FORBIDDEN, _chunk_blocked))
for _name, _cases_fn in (("reformer_block_small", _block_small_cases), ("reformer_block", _block_cases)):
    _register(Suite(_name, _cases_fn, _block_run, _ref_block, _block_compare, _block_describe, _BLOCK_FORBIDDEN,
                    lambda: _chunk_blocked(with_reversible=True, apply_allowed=True)))


# --- Infini-attention's compressive memory (chapter 5) ----------------------------
# Assignment 5 grades four functions, each on its own. M (batch, heads, d_key, d_value),
# z (batch, heads, d_key), q and k (batch, heads, length, d_key), v (batch, heads, length,
# d_value), beta (heads,); sigma = ELU + 1, EPS = longctx_lib.infini.EPS:
#   retrieve(M, z, q)                  -> sigma(q) M / (sigma(q) z + EPS)       (B, H, L, d_value)
#   linear_update(M, z, k, v)          -> (M + sigma(k)^T v, z + sum_t sigma(k_t))
#   delta_update(M, z, k, v, read=...) -> (M + sigma(k)^T (v - read(M, z, k)), z + sum_t sigma(k_t))
#   gate(a_mem, a_dot, beta)           -> sigmoid(beta) a_mem + (1 - sigmoid(beta)) a_dot, beta per head
# Cases are plain data. Retrieval and both updates are compared in float64 with the library's
# longctx_lib.infini.CompressiveMemory (bound when this module is imported); the gate with
# _ref_gate, the mixing InfiniAttention.forward does (tests/test_grading_05.py checks it
# against the layer). Besides values, the kernel reports gradients (by autograd through the
# student's function, against an upstream gradient the case holds) and whether the inputs
# were left as they were (a memory is a value: the next segment and autograd need the old one).
# Chained cases store a sequence segment after segment, each segment through the student's
# function: the memory after segment s must be what the library's memory holds, which
# tests/test_grading_05.py checks is every key before it (block-causal linear attention) for
# the linear rule. Exercise 3's hidden tests hand the student's delta_update a right
# retrieval as ``read`` (_infini_read), so that exercise 1 is not graded twice.
_REF_MEMORY = _infini_module.CompressiveMemory
_INFINI_EPS = float(_infini_module.EPS)
_INFINI_FORBIDDEN = ("longctx_lib.infini", "longctx_lib.CompressiveMemory", "longctx_lib.InfiniAttention",
                     "longctx_lib.InfiniBlock", "longctx_lib.InfiniTransformer", "longctx_lib.grading")


def _infini_read(M: torch.Tensor, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A right retrieval, written from torch alone: what exercise 3's hidden tests pass as ``read``."""
    sq = F.elu(q) + 1.0  # (B, H, L, d_key)
    return (sq @ M) / (sq @ z[..., None] + _INFINI_EPS)  # (B, H, L, d_value)


def _ref_gate(a_mem: torch.Tensor, a_dot: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The gate as InfiniAttention.forward mixes: one sigmoid(beta) per head."""
    g = torch.sigmoid(beta).to(a_mem.dtype)[:, None, None]  # (H, 1, 1)
    return g * a_mem + (1 - g) * a_dot


def _infini_blocked(read_allowed: bool = False) -> tuple[Callable[..., Any], ...]:
    ours = (_ref_gate, _ref_memory_values, _ref_memory_chain) + (() if read_allowed else (_infini_read,))
    return (*_module_functions(_infini_module), *ours)


def _stored_memory(b: int, h: int, dk: int, dv: int, n: int, gen: torch.Generator, dtype: torch.dtype,
                   noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A memory that has stored ``n`` random bindings by the linear rule (``n = 0``: empty);
    ``noise`` adds a random matrix to M (a delta-rule memory holds negative entries too)."""
    k = torch.randn(b, h, n, dk, generator=gen, dtype=dtype)
    v = torch.randn(b, h, n, dv, generator=gen, dtype=dtype)
    sk = F.elu(k) + 1.0
    M = sk.transpose(-1, -2) @ v + noise * torch.randn(b, h, dk, dv, generator=gen, dtype=dtype)
    return M, sk.sum(dim=2)


def _mem_case(what: str, b: int, h: int, dk: int, dv: int, length: int, n_stored: int, gen: torch.Generator, *,
              dtype: torch.dtype = torch.float64, scale: float = 1.0, noise: float = 0.0, grads: bool = False,
              tol: float = 1e-10, note: str | None = None) -> dict:
    """A case for ``what`` (``"retrieve"``, ``"linear"``, ``"delta"``): a memory, queries or keys
    and values, and (``grads``) upstream gradients for the outputs.

    Tolerance, errors relative to 1 + |expected|: the float64 results agree with the library to
    ~1e-15 (they differ only in the order of sums); 1e-10 rejects every real mistake (no
    normaliser, another EPS, sigma left out or the sum over positions missing change values
    by 1e-7 or far more). float32 cases use 1e-4."""
    M, z = _stored_memory(b, h, dk, dv, n_stored, gen, dtype, noise if n_stored else 0.0)  # empty: M = 0, z = 0
    c = {"what": what, "M": M, "z": z, "tol": tol, "note": note, "up": None}
    if what == "retrieve":
        c["q"] = scale * torch.randn(b, h, length, dk, generator=gen, dtype=dtype)
        if grads:
            c["up"] = [torch.randn(b, h, length, dv, generator=gen, dtype=dtype)]
    else:
        c["k"] = scale * torch.randn(b, h, length, dk, generator=gen, dtype=dtype)
        c["v"] = torch.randn(b, h, length, dv, generator=gen, dtype=dtype)
        if grads:
            c["up"] = [torch.randn(b, h, dk, dv, generator=gen, dtype=dtype),
                       torch.randn(b, h, dk, generator=gen, dtype=dtype)]
    return c


_MEM_INPUTS = {"retrieve": ("M", "z", "q"), "linear": ("M", "z", "k", "v"), "delta": ("M", "z", "k", "v"),
               "gate": ("a_mem", "a_dot", "beta")}
_MEM_OUTPUTS = {"retrieve": ("output",), "linear": ("new M", "new z"), "delta": ("new M", "new z"),
                "gate": ("output",)}


def _mem_describe(c: dict) -> str:
    t = lambda name: f"{name} {tuple(c[name].shape)}"  # noqa: E731
    names = _MEM_INPUTS[c["what"]]
    extras = [c["note"]] if c.get("note") else []
    if c.get("segments"):
        extras.append(f"stored in segments of {c['segments']} positions, one call each")
    if c.get("up") is not None:
        extras.append("gradients checked")
    return (", ".join(t(n) for n in names) + f", {c[names[0]].dtype}" + (f" ({'; '.join(extras)})" if extras else ""))


def _mem_call(fn: Callable[..., Any], what: str, args: list, read: Callable[..., Any]) -> tuple:
    """The student's (or the reference's) function on ``args``; its outputs as a tuple."""
    out = fn(*args, read=read) if what == "delta" else fn(*args)
    if what in ("retrieve", "gate"):
        return (out,)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _mem_grads(values: tuple, ups: list | None, leaves: list) -> tuple | None:
    """Gradients of the leaves for the upstream gradients ``ups`` (None where nothing reaches a leaf)."""
    if ups is None:
        return None
    pairs = [(y, u) for y, u in zip(values, ups)
             if isinstance(y, torch.Tensor) and y.requires_grad and tuple(y.shape) == tuple(u.shape)]
    if not pairs:
        return (None,) * len(leaves)
    return tuple(torch.autograd.grad([y for y, _ in pairs], leaves, [u for _, u in pairs], allow_unused=True))


def _mem_run_with(fn: Callable[..., Any], c: dict, read: Callable[..., Any]) -> tuple:
    """``fn`` on the case (chained over ``segments`` if the case has them): (outputs, gradients,
    whether the inputs were left unchanged)."""
    what, names = c["what"], _MEM_INPUTS[c["what"]]
    grads = c.get("up") is not None
    leaves = [c[n].clone().requires_grad_(grads) for n in names]
    with torch.enable_grad() if grads else contextlib.nullcontext():
        if c.get("segments"):  # (M, z) carried from segment to segment, k and v cut into segments
            M, z, k, v = leaves
            state = (M, z)
            for start in range(0, k.shape[2], c["segments"]):
                part = slice(start, start + c["segments"])
                state = _mem_call(fn, what, [*state[:2], k[:, :, part], v[:, :, part]], read)
                if len(state) != 2:
                    break
            values = state
        else:
            values = _mem_call(fn, what, list(leaves), read)
        found = _mem_grads(values, c.get("up"), leaves)
    unchanged = all(torch.equal(leaf.detach(), c[n]) for leaf, n in zip(leaves, names))
    return values, found, unchanged


def _mem_run(fn: Callable[..., Any], c: dict) -> tuple:
    return _mem_run_with(fn, c, _infini_read)


def _ref_memory_function(what: str) -> Callable[..., Any]:
    if what == "retrieve":
        return lambda M, z, q: _REF_MEMORY(M, z).retrieve(q)
    if what == "gate":
        return _ref_gate

    def update(M: torch.Tensor, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor, read: Any = None) -> tuple:
        after = _REF_MEMORY(M, z).update(k, v, what)
        return after.M, after.z
    return update


def _ref_memory_values(c: dict) -> tuple:
    """The library on one call: (outputs, gradients, inputs unchanged)."""
    return _mem_run_with(_ref_memory_function(c["what"]), {**c, "segments": None}, _infini_read)


def _ref_memory_chain(c: dict) -> tuple:
    """The library's memory, segment after segment."""
    return _mem_run_with(_ref_memory_function(c["what"]), c, _infini_read)


def _mem_reference(c: dict) -> tuple:
    return _ref_memory_chain(c) if c.get("segments") else _ref_memory_values(c)


def _mem_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 3:  # only a hand-made results file
        return "no results"
    values, grads, unchanged = got
    names = _MEM_OUTPUTS[c["what"]]
    tol = c["tol"]
    if c["what"] in ("linear", "delta") and not (isinstance(values, tuple) and len(values) == 2):
        return "return a tuple (new M, new z)"
    problem = _tuple_problem(values, expected[0], names, (tol,) * len(names), (True,) * len(names))
    if problem:
        return problem
    if unchanged is not True:
        return ("the function changed its inputs in place; return new tensors (the memory before the update is "
                "still needed: by autograd, and by the retrieval that reads it)")
    if expected[1] is None:
        return None
    if not isinstance(grads, tuple) or len(grads) != len(expected[1]):
        return "no gradients: let autograd record the computation (no torch.no_grad(), no detach)"
    for name, g, e in zip(_MEM_INPUTS[c["what"]], grads, expected[1]):
        if e is None:  # nothing reaches this input in the reference either (never with the grader's library)
            continue
        if g is None:
            return f"no gradient reaches {name}: let autograd record the computation (no detach, no torch.no_grad())"
        problem = _close_problem(g, e, tol, relative=True)
        if problem:
            return f"the gradient with respect to {name}: {problem}"
    return None


# retrieve -------------------------------------------------------------------------------
def _retrieve_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: the hand-worked memory of two bindings; the empty memory; a random one."""
    gen = torch.Generator().manual_seed(seed)
    hand = _mem_case("retrieve", 1, 1, 2, 1, 2, 0, gen, note="hand-worked")
    hand["M"] = torch.tensor([[[[1.0], [3.0]]]], dtype=torch.float64)
    hand["z"] = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    hand["q"] = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)
    return [hand, _mem_case("retrieve", 2, 3, 4, 5, 6, 0, gen, note="the empty memory"),
            _mem_case("retrieve", 2, 3, 4, 5, 6, 10, gen, note="10 bindings stored")]


def _retrieve_cases(seed: int) -> list[dict]:
    """float64 on random shapes and memories (empty, a few bindings, many, with negative entries),
    queries of several scales, gradients; d_key 1, length 1; one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(30):
        b, h, dk, dv, length = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 8), rng.randint(1, 8), \
            rng.randint(1, 9)
        n = 0 if i % 6 == 0 else rng.choice([1, 3, rng.randint(5, 60)])
        cases.append(_mem_case("retrieve", b, h, dk, dv, length, n, gen, scale=rng.choice([0.5, 1.0, 3.0]),
                               noise=rng.choice([0.0, 0.0, 1.0]), grads=n > 0 and i % 3 == 1,
                               note="the empty memory" if n == 0 else None))
    cases += [_mem_case("retrieve", 2, 2, 1, 3, 4, 5, gen, note="d_key 1"),
              _mem_case("retrieve", 1, 3, 6, 2, 1, 8, gen, grads=True, note="length 1"),
              _mem_case("retrieve", 2, 4, 16, 16, 32, 100, gen, dtype=torch.float32, tol=1e-4, note="float32")]
    return cases


# linear and delta updates ------------------------------------------------------------------
def _update_small_cases(what: str, seed: int) -> list[dict]:
    """What the visible tests use: the hand-worked bindings; a random memory against the library."""
    gen = torch.Generator().manual_seed(seed)
    hands = []
    if what == "linear":  # the empty memory stores k = (0, 0) -> v = 2, then k = (1, 0) -> v = 1
        steps = [([0.0, 0.0], 2.0, [[0.0], [0.0]], [0.0, 0.0]), ([1.0, 0.0], 1.0, [[2.0], [2.0]], [1.0, 1.0])]
    else:  # the same binding again (nothing to add), then k = (1, 0) -> v = 4
        steps = [([0.0, 0.0], 2.0, [[2.0], [2.0]], [1.0, 1.0]), ([1.0, 0.0], 4.0, [[2.0], [2.0]], [2.0, 2.0])]
    for k, v, M, z in steps:
        hand = _mem_case(what, 1, 1, 2, 1, 1, 0, gen, note="hand-worked")
        hand["k"] = torch.tensor([[[k]]], dtype=torch.float64)
        hand["v"] = torch.tensor([[[[v]]]], dtype=torch.float64)
        hand["M"], hand["z"] = torch.tensor([[M]], dtype=torch.float64), torch.tensor([[z]], dtype=torch.float64)
        hands.append(hand)
    return hands + [_mem_case(what, 2, 3, 4, 5, 6, 0, gen, note="the empty memory"),
                    _mem_case(what, 2, 3, 4, 5, 6, 10, gen, note="10 bindings stored")]


def _update_cases(what: str, seed: int) -> list[dict]:
    """float64 on random shapes and memories, keys of several scales, gradients; d_key 1,
    length 1, d_value 1; one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(30):
        b, h, dk, dv, length = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 8), rng.randint(1, 8), \
            rng.randint(1, 9)
        n = 0 if i % 6 == 0 else rng.choice([1, 3, rng.randint(5, 60)])
        cases.append(_mem_case(what, b, h, dk, dv, length, n, gen, scale=rng.choice([0.5, 1.0, 3.0]),
                               noise=rng.choice([0.0, 0.0, 1.0]), grads=i % 3 == 1,
                               note="the empty memory" if n == 0 else None))
    cases += [_mem_case(what, 2, 2, 1, 3, 4, 5, gen, note="d_key 1"),
              _mem_case(what, 1, 3, 6, 2, 1, 8, gen, grads=True, note="length 1"),
              _mem_case(what, 2, 2, 5, 1, 7, 4, gen, grads=True, note="d_value 1"),
              _mem_case(what, 2, 4, 16, 16, 32, 100, gen, dtype=torch.float32, tol=1e-4, note="float32")]
    return cases


def _chain_case(what: str, b: int, h: int, dk: int, dv: int, length: int, segment: int, gen: torch.Generator, *,
                n_stored: int = 0, grads: bool = False, tol: float = 1e-9, note: str | None = None) -> dict:
    """A sequence stored ``segment`` positions at a time, one call per segment, from a memory
    holding ``n_stored`` bindings. Tolerance 1e-9 (relative): rounding grows a little over the
    calls (1e-14 seen); a mistake is off by far more."""
    c = _mem_case(what, b, h, dk, dv, length, n_stored, gen, grads=grads, tol=tol, note=note)
    c["segments"] = int(segment)
    return c


def _linear_segment_cases(seed: int) -> list[dict]:
    """Segment after segment: every segment length (1, uneven last segments, one segment of the
    whole sequence); from the empty memory and from a full one; gradients through every call."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    return _segment_chain_cases("linear", 12, rng, gen)


def _segment_chain_cases(rule: str, n: int, rng: random.Random, gen: torch.Generator) -> list[dict]:
    """``n`` sequences stored segment after segment under ``rule``: segments of 1, of an uneven
    length, of the whole sequence, of 2-5; every other one from a full memory; gradients in a third."""
    cases = []
    for i in range(n):
        length = rng.randint(2, 24)
        segment = [1, rng.randint(2, max(2, length - 1)), length, rng.randint(2, 5)][i % 4]
        cases.append(_chain_case(rule, rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 6), rng.randint(1, 6),
                                 length, segment, gen, n_stored=0 if i % 2 else rng.randint(1, 20),
                                 grads=i % 3 == 2))
    return cases


def _delta_law_cases(seed: int) -> list[dict]:
    """What only the delta rule has: from the empty memory it equals the linear rule (nothing
    retrieved yet); a binding the memory already returns changes nothing in M (z still counts
    the keys); the same binding stored again and again (the retrieval tends to v / 2); a
    sequence segment after segment, with gradients through every call. (The empty-memory
    cases compare values only: there the delta rule's gradient with respect to M holds the
    1 / EPS of the retrieval it subtracts, which the linear rule's does not.)"""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(4):
        c = _mem_case("delta", rng.randint(1, 2), rng.randint(1, 3), rng.randint(2, 6), rng.randint(1, 6),
                      rng.randint(1, 8), 0, gen, note="the empty memory: the same as the linear rule")
        c["reference_rule"] = "linear"
        cases.append(c)
    for i in range(6):
        b, h, dk, dv, length = rng.randint(1, 2), rng.randint(1, 3), rng.randint(2, 8), rng.randint(1, 6), \
            rng.randint(1, 5)
        c = _mem_case("delta", b, h, dk, dv, length, rng.randint(3, 30), gen, noise=0.5 * (i % 2),
                      note="v is what the memory already returns for k: M must not change")
        c["v"] = _infini_read(c["M"], c["z"], c["k"])
        c["stored"] = True
        cases.append(c)
    gen_one = torch.Generator().manual_seed(seed + 1)
    k = torch.randn(1, 2, 1, 6, generator=gen_one, dtype=torch.float64)
    v = torch.randn(1, 2, 1, 3, generator=gen_one, dtype=torch.float64)
    again = _chain_case("delta", 1, 2, 6, 3, 40, 1, gen, n_stored=10, note="one binding stored 40 times")
    again["k"], again["v"] = k.expand(1, 2, 40, 6).clone(), v.expand(1, 2, 40, 3).clone()
    cases.append(again)
    return cases + _segment_chain_cases("delta", 8, rng, gen)


def _delta_law_reference(c: dict) -> tuple:
    if c.get("reference_rule") == "linear":  # the empty memory: delta == linear, by the library's linear rule
        return _ref_memory_values({**c, "what": "linear"})
    return _mem_reference(c)


def _delta_law_compare(got: Any, expected: tuple, c: dict) -> str | None:
    problem = _mem_compare(got, expected, c)
    if problem and c.get("stored"):
        return problem + " (the memory already returned v for these keys: the delta rule adds nothing to M)"
    if problem and c.get("reference_rule") == "linear":
        return problem + " (from the empty memory the delta rule stores what the linear rule stores)"
    return problem


# gate ---------------------------------------------------------------------------------------
def _gate_case(b: int, h: int, length: int, dv: int, gen: torch.Generator, *, beta: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float64, grads: bool = False, tol: float = 1e-10,
               note: str | None = None) -> dict:
    """a_mem and a_dot (B, H, L, d_value), beta (H,). Tolerance as for the memory: the mixing is
    three multiplications and an addition; a gate per batch element, per position or per
    feature instead of per head is off by ~0.1."""
    c = {"what": "gate", "a_mem": torch.randn(b, h, length, dv, generator=gen, dtype=dtype),
         "a_dot": torch.randn(b, h, length, dv, generator=gen, dtype=dtype),
         "beta": (2 * torch.randn(h, generator=gen, dtype=dtype)) if beta is None else beta.to(dtype),
         "tol": tol, "note": note, "up": None}
    if grads:
        c["up"] = [torch.randn(b, h, length, dv, generator=gen, dtype=dtype)]
    return c


def _gate_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: two heads with gates 1/2 and 3/4; the closed and the open gate."""
    gen = torch.Generator().manual_seed(seed)
    hand = _gate_case(1, 2, 1, 1, gen, beta=torch.tensor([0.0, math.log(3.0)]), note="hand-worked")
    hand["a_mem"] = torch.full((1, 2, 1, 1), 4.0, dtype=torch.float64)
    hand["a_dot"] = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    return [hand, _gate_case(2, 3, 4, 5, gen, note="three heads"),
            _gate_case(2, 3, 4, 5, gen, beta=torch.full((3,), -40.0), note="closed: local attention only"),
            _gate_case(2, 3, 4, 5, gen, beta=torch.full((3,), 40.0), note="open: the memory only")]


def _gate_cases(seed: int) -> list[dict]:
    """float64 on random shapes (heads != d_value != length mostly), gates of every opening,
    closed and open heads side by side, gradients (beta's included); one float32 case."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(24):
        h = rng.randint(1, 6)
        beta = None
        if i % 4 == 3:  # heads closed, open and half-open side by side
            beta = torch.tensor([rng.choice([-40.0, 40.0, 0.0, 5.0 * rng.random() - 2.5]) for _ in range(h)])
        cases.append(_gate_case(rng.randint(1, 3), h, rng.randint(1, 9), rng.randint(1, 8), gen, beta=beta,
                                grads=i % 3 == 1))
    cases += [_gate_case(2, 4, 4, 4, gen, grads=True, note="heads = length = d_value"),
              _gate_case(1, 1, 5, 3, gen, beta=torch.tensor([-40.0]), note="one head, closed: local attention"),
              _gate_case(3, 5, 7, 2, gen, beta=torch.full((5,), 40.0), grads=True, note="every head open"),
              _gate_case(2, 4, 16, 8, gen, dtype=torch.float32, tol=1e-5, note="float32")]
    return cases


for _name, _cases_fn in (("infini_retrieve_small", _retrieve_small_cases), ("infini_retrieve", _retrieve_cases)):
    _register(Suite(_name, _cases_fn, _mem_run, _mem_reference, _mem_compare, _mem_describe, _INFINI_FORBIDDEN,
                    _infini_blocked))
for _name, _cases_fn in (("infini_linear_small", lambda seed: _update_small_cases("linear", seed)),
                         ("infini_linear", lambda seed: _update_cases("linear", seed)),
                         ("infini_linear_segments", _linear_segment_cases)):
    _register(Suite(_name, _cases_fn, _mem_run, _mem_reference, _mem_compare, _mem_describe, _INFINI_FORBIDDEN,
                    _infini_blocked))
for _name, _cases_fn, _reference, _compare in (
        ("infini_delta_small", lambda seed: _update_small_cases("delta", seed), _mem_reference, _mem_compare),
        ("infini_delta", lambda seed: _update_cases("delta", seed), _mem_reference, _mem_compare),
        ("infini_delta_laws", _delta_law_cases, _delta_law_reference, _delta_law_compare)):
    _register(Suite(_name, _cases_fn, _mem_run, _reference, _compare, _mem_describe, _INFINI_FORBIDDEN,
                    lambda: _infini_blocked(read_allowed=True)))
for _name, _cases_fn in (("infini_gate_small", _gate_small_cases), ("infini_gate", _gate_cases)):
    _register(Suite(_name, _cases_fn, _mem_run, _mem_reference, _mem_compare, _mem_describe, _INFINI_FORBIDDEN,
                    _infini_blocked))


# --- the Recurrent Memory Transformer (chapter 6) ---------------------------------
# Assignment 6 grades five functions, each on its own. ``model`` is a decoder RMT with the
# library's attributes: n_memory m, segment_length S, d_model, embed, pos (S + 2m rows: read
# memory, tokens, write memory), backbone (longctx_lib.transformer.Transformer, called with
# mask=...), head, memory (the first segment's memory), initial_memory(batch) and segment(...):
#   decoder_mask(m, n)                                -> bool (2m + n, 2m + n), True = blocked
#   rmt_segment(model, tokens, memory, mask_fn=...)   -> (logits (B, n, V), new memory (B, m, d))
#   run_segments(model, tokens, bptt_depth)           -> logits (B, L, V): the loop, BPTT truncated
#   full_attention_flops(L, n_layers, n_heads, d_model, d_ff, vocab_size, n_logits=None)  -> int
#   rmt_forward_flops(L, S, m, n_layers, n_heads, d_model, d_ff, vocab_size, flops=...)   -> int
# A model travels as its sizes and float64 parameters and is rebuilt on both sides: for the
# student's function as _CaseRMT (those attributes around the library's Transformer, nothing
# of longctx_lib.rmt), for the reference as longctx_lib.rmt.RecurrentMemoryTransformer with
# the same parameters. The masks are compared with rmt.segment_mask, a segment with
# RecurrentMemoryTransformer.segment, the loop with RecurrentMemoryTransformer.forward (its
# bptt_depth set), values and the gradients of every parameter, in float64; the FLOPs, exact
# integers, with rmt.transformer_flops and rmt.rmt_flops (encoder variant). So that one
# mistake is not graded twice, exercise 2's hidden tests hand rmt_segment a right mask
# (_ref_decoder_mask), exercise 3's model.segment is a right segment (_CaseRMT.segment), and
# rmt_forward_flops gets a right full_attention_flops (_ref_full_flops); tests/test_grading_06.py
# checks that the three agree with the library. Which segments a loss on the last segment
# reaches is read from the embedding's gradient: the bptt cases use every token id once, so
# each row of embed.weight's gradient belongs to one position.
_REF_RMT = _rmt_module.RecurrentMemoryTransformer
_REF_SEGMENT_MASK = _rmt_module.segment_mask
_REF_TRANSFORMER_FLOPS = _rmt_module.transformer_flops
_REF_RMT_FLOPS = _rmt_module.rmt_flops
_RMT_FORBIDDEN = ("longctx_lib.rmt", "longctx_lib.grading")


def _ref_decoder_mask(n_memory: int, n_tokens: int) -> torch.Tensor:
    """A right decoder mask, written from torch alone: what exercise 2's hidden tests pass as ``mask_fn``."""
    m, n = n_memory, n_tokens
    blocked = torch.ones(2 * m + n, 2 * m + n, dtype=torch.bool)
    blocked[:m, :m] = False  # read <- read
    blocked[m:m + n, :m] = False  # tokens <- read
    blocked[m:m + n, m:m + n] = torch.ones(n, n, dtype=torch.bool).triu(1)  # tokens <- earlier tokens
    blocked[m + n:] = False  # write <- everything
    return blocked


def _ref_full_flops(length: int, n_layers: int, n_heads: int, d_model: int, d_ff: int, vocab_size: int,
                    n_logits: int | None = None) -> int:
    """A right ``full_attention_flops``: what the hidden tests of ``rmt_forward_flops`` pass as ``flops``."""
    n_logits = length if n_logits is None else n_logits
    per_layer = 8 * length * d_model * d_model + 4 * length * d_model * d_ff + 4 * length * length * d_model
    return n_layers * per_layer + 2 * n_logits * d_model * vocab_size


class _CaseRMT(nn.Module):
    """The model a student's function gets: the library's attributes, the library's Transformer
    as backbone, and a right ``segment`` (exercise 3 uses it; blocked elsewhere)."""

    def __init__(self, sizes: dict, dtype: torch.dtype = torch.float64) -> None:
        nn.Module.__init__(self)
        d, m, s = sizes["d_model"], sizes["n_memory"], sizes["segment_length"]
        self.vocab_size, self.d_model, self.segment_length, self.n_memory = sizes["vocab_size"], d, s, m
        with torch.random.fork_rng(devices=[]):  # the initial values are replaced: leave the caller's RNG alone
            self.embed = nn.Embedding(sizes["vocab_size"], d)
            self.pos = nn.Embedding(s + 2 * m, d)
            self.memory = nn.Parameter(torch.zeros(m, d))
            self.backbone = _transformer_module.Transformer(d, sizes["n_heads"], sizes["d_ff"], sizes["n_layers"])
            self.head = nn.Linear(d, sizes["vocab_size"])
        self.to(dtype)

    def initial_memory(self, batch: int) -> torch.Tensor:
        return self.memory.unsqueeze(0).expand(batch, -1, -1)

    def segment(self, tokens: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, m = tokens.shape[1], self.n_memory
        pos = self.pos.weight
        x = torch.cat([memory + pos[:m], self.embed(tokens) + pos[m:m + n], memory + pos[m + self.segment_length:]],
                      dim=1)  # (B, 2m + n, d)
        h = self.backbone(x, mask=_ref_decoder_mask(m, n).to(x.device))
        return self.head(h[:, m:m + n]), h[:, m + n:]


def _sorted_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return sorted(model.named_parameters())


def _case_rmt(spec: dict) -> _CaseRMT:
    model = _CaseRMT(spec["sizes"])
    model.load_state_dict(spec["state"])
    return model


def _ref_rmt(spec: dict, bptt_depth: int | None = None) -> nn.Module:
    s = spec["sizes"]
    with torch.random.fork_rng(devices=[]):
        model = _REF_RMT(s["vocab_size"], s["d_model"], s["n_heads"], s["d_ff"], s["n_layers"],
                         segment_length=s["segment_length"], n_memory=s["n_memory"], bptt_depth=bptt_depth)
    model.to(torch.float64).load_state_dict(spec["state"])
    return model


def _rmt_spec(gen: torch.Generator, *, vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int,
              segment_length: int, n_memory: int) -> dict:
    """Sizes and random float64 parameters of a decoder RMT (plain data): LayerNorm gains near 1,
    weights scaled by 1/sqrt(fan_in), embeddings and memory of order 1."""
    sizes = {"vocab_size": vocab_size, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff, "n_layers": n_layers,
             "segment_length": segment_length, "n_memory": n_memory}
    state = {}
    for name, p in _CaseRMT(sizes).state_dict().items():
        r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        parts = name.split(".")
        if len(parts) > 1 and parts[-2].startswith("norm") and parts[-1] == "weight":
            r = 1 + 0.2 * r
        elif name.endswith("bias"):
            r = 0.2 * r
        elif name == "pos.weight":
            r = 0.5 * r
        elif p.dim() == 2 and name not in ("embed.weight", "memory"):
            r = r * p.shape[1] ** -0.5
        state[name] = r
    return {"sizes": sizes, "state": state}


def _random_rmt_spec(rng: random.Random, gen: torch.Generator, *, vocab_size: int | None = None,
                     segment_length: int | None = None, n_memory: int | None = None) -> dict:
    heads = rng.choice([1, 2, 4])
    vocab_size = vocab_size or rng.randint(3, 40)
    d_model = heads * rng.randint(1, 4) + 4 * (heads == 1)  # >= 2: LayerNorm of one feature is 0
    return _rmt_spec(gen, vocab_size=vocab_size, d_model=d_model, n_heads=heads, d_ff=rng.randint(4, 24),
                     n_layers=rng.randint(1, 2), segment_length=segment_length or rng.randint(1, 8),
                     n_memory=rng.randint(0, 4) if n_memory is None else n_memory)


def _rmt_describe(c: dict) -> str:
    s = c["model"]["sizes"]
    extras = [c["note"]] if c.get("note") else []
    shape = f"tokens {tuple(c['tokens'].shape)}"
    if c["what"] == "segment":
        if c["tokens"].shape[1] < s["segment_length"]:
            extras.append("a segment shorter than segment_length")
        if c.get("up") is not None:
            extras.append("gradients checked")
    else:
        k = c["bptt"]
        n_seg = -(-c["tokens"].shape[1] // s["segment_length"])
        shape += f" = {n_seg} segment(s), bptt_depth={k}"
        extras.append("loss on the last segment" if c.get("last_only") else "gradients checked")
    return (f"model(d_model={s['d_model']}, n_heads={s['n_heads']}, d_ff={s['d_ff']}, n_layers={s['n_layers']}, "
            f"vocab_size={s['vocab_size']}, segment_length={s['segment_length']}, n_memory={s['n_memory']}), "
            + shape + (f" ({'; '.join(extras)})" if extras else ""))


# decoder mask ---------------------------------------------------------------------------
def _mask_cases(seed: int) -> list[dict]:
    """Every n_memory 0-6 with n_tokens 1-12, and a few larger."""
    cases = [{"m": m, "n": n} for m in range(7) for n in range(1, 13)]
    return cases + [{"m": 16, "n": 64}, {"m": 1, "n": 100}, {"m": 10, "n": 1}, {"m": 0, "n": 50}]


def _mask_compare(got: Any, expected: torch.Tensor, c: dict) -> str | None:
    if not isinstance(got, torch.Tensor) or type(got) is not torch.Tensor:
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if got.dtype != torch.bool:
        return f"dtype {got.dtype}; return a bool tensor (True where position i may NOT see position j)"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)} = (2 n_memory + n_tokens, the same)"
    got = got.cpu()
    wrong = (got != expected).nonzero().tolist()
    if not wrong:
        return None
    if len(wrong) == got.numel():
        return "every entry is the opposite of the expected one: True means blocked (may NOT see)"
    m, n = c["m"], c["n"]
    kind = lambda t: "read memory" if t < m else "token" if t < m + n else "write memory"  # noqa: E731
    i, j = wrong[0]
    return (f"{len(wrong)} entries wrong, e.g. ({i}, {j}): row {i} ({kind(i)}) and column {j} ({kind(j)}) should be "
            f"{'blocked (True)' if expected[i, j] else 'visible (False)'}")


def _mask_describe(c: dict) -> str:
    return f"decoder_mask(n_memory={c['m']}, n_tokens={c['n']})"


# one segment ------------------------------------------------------------------------------
def _segment_case(spec: dict, batch: int, n: int, gen: torch.Generator, *, grads: bool = False,
                  tol: float = 1e-9, note: str | None = None) -> dict:
    """Tokens, an incoming memory (random, order 1) and, with ``grads``, upstream gradients for both
    outputs. Tolerance, relative to 1 + |expected|: float64 through a few layers with LayerNorms
    agrees to ~1e-14; a mistake (a position, the mask, the wrong outputs) is off by 1e-2 or more."""
    s = spec["sizes"]
    tokens = torch.randint(0, s["vocab_size"], (batch, n), generator=gen)
    c = {"what": "segment", "model": spec, "tokens": tokens,
         "memory": torch.randn(batch, s["n_memory"], s["d_model"], generator=gen, dtype=torch.float64),
         "up": None, "tol": tol, "note": note}
    if grads:
        c["up"] = [torch.randn(batch, n, s["vocab_size"], generator=gen, dtype=torch.float64),
                   torch.randn(batch, s["n_memory"], s["d_model"], generator=gen, dtype=torch.float64)]
    return c


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread while a case runs: the cases' models are tiny, and on a busy machine two
    threads synchronising over every small operation made the suites 10-35 times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _segment_values(model: nn.Module, call: Callable[..., Any], c: dict) -> tuple:
    """``call(model, tokens, memory)`` on the case: (outputs, gradients of (memory, *parameters), memory unchanged)."""
    grads = c.get("up") is not None
    memory = c["memory"].clone().requires_grad_(grads)
    leaves = [memory, *(p for _, p in _sorted_parameters(model))]
    with _one_thread(), torch.enable_grad():
        out = call(model, c["tokens"].clone(), memory)
        values = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        found = _mem_grads(values, c["up"], leaves) if grads else None
    return values, found, torch.equal(memory.detach(), c["memory"])


def _segment_run(fn: Callable[..., Any], c: dict) -> tuple:
    return _segment_values(_case_rmt(c["model"]),
                           lambda model, tokens, memory: fn(model, tokens, memory, mask_fn=_ref_decoder_mask), c)


def _segment_reference(c: dict) -> tuple:
    return _segment_values(_ref_rmt(c["model"]), lambda model, tokens, memory: model.segment(tokens, memory), c)


def _rmt_grad_problem(grads: Any, expected: tuple | None, names: list[str], tol: float) -> str | None:
    if expected is None:
        return None
    if not isinstance(grads, tuple) or len(grads) != len(expected):
        return "no gradients: let autograd record the computation (no torch.no_grad(), no detach)"
    for name, g, e in zip(names, grads, expected):
        if e is None or not e.numel():  # nothing to reach (no memory)
            continue
        if g is None and not e.any():  # None and zeros say the same (nothing reached it)
            continue
        if g is None:
            return f"no gradient reaches {name}: let autograd record the computation (no detach, no torch.no_grad())"
        problem = _close_problem(g, e, tol, relative=True)
        if problem:
            return f"the gradient with respect to {name}: {problem}"
    return None


def _segment_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 3:  # only a hand-made results file
        return "no results"
    values, grads, unchanged = got
    if not (isinstance(values, tuple) and len(values) == 2):
        return "return a tuple (logits, new_memory)"
    tol = c["tol"]
    problem = _tuple_problem(values, expected[0], ("logits", "new memory"), (tol, tol), (True, True))
    if problem:
        return problem
    if unchanged is not True:
        return "the function changed the memory it was given in place; return new tensors"
    names = ["the incoming memory", *(name for name in sorted(c["model"]["state"]))]
    return _rmt_grad_problem(grads, expected[1], names, tol)


def _segment_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: a full segment, a shorter one, no memory at all."""
    gen = torch.Generator().manual_seed(seed)
    spec = _rmt_spec(gen, vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=1, segment_length=4, n_memory=2)
    no_memory = _rmt_spec(gen, vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=1, segment_length=4,
                          n_memory=0)
    return [_segment_case(spec, 2, 4, gen, note="a full segment"), _segment_case(spec, 2, 2, gen),
            _segment_case(no_memory, 2, 4, gen, note="n_memory 0")]


def _segment_cases(seed: int) -> list[dict]:
    """float64 on random models and sizes: full and shorter segments, one token, no memory, batch 1."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(24):
        spec = _random_rmt_spec(rng, gen, n_memory=0 if i % 6 == 0 else None)
        s = spec["sizes"]["segment_length"]
        n = s if i % 2 else rng.randint(1, s)
        cases.append(_segment_case(spec, rng.randint(1, 3), n, gen, note="n_memory 0" if i % 6 == 0 else None))
    spec = _random_rmt_spec(rng, gen, segment_length=6, n_memory=3)
    cases += [_segment_case(spec, 2, 1, gen, note="one token"), _segment_case(spec, 1, 6, gen, note="batch 1")]
    return cases


def _segment_grad_cases(seed: int) -> list[dict]:
    """Gradients of the incoming memory and every parameter; causality by perturbation: the
    same segment with the tokens after position t changed (the logits up to t do not change)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for i in range(12):
        spec = _random_rmt_spec(rng, gen, n_memory=0 if i % 6 == 0 else None)
        s = spec["sizes"]["segment_length"]
        cases.append(_segment_case(spec, rng.randint(1, 3), s if i % 2 else rng.randint(1, s), gen, grads=True))
    for _ in range(2):
        spec = _random_rmt_spec(rng, gen, segment_length=6, n_memory=rng.randint(1, 3))
        base = _segment_case(spec, 2, 6, gen, grads=True, note="base")
        cases.append(base)
        for t in (0, 2, 4):
            tokens = base["tokens"].clone()
            tokens[:, t + 1:] = (tokens[:, t + 1:] + 1 + torch.randint(0, spec["sizes"]["vocab_size"] - 1,
                                                                        (2, 5 - t), generator=gen)) \
                % spec["sizes"]["vocab_size"]
            cases.append({**base, "tokens": tokens, "note": f"tokens after position {t} changed"})
    return cases


# the segment loop -------------------------------------------------------------------------
def _run_case(spec: dict, batch: int, length: int, bptt: int | None, gen: torch.Generator, *,
              last_only: bool = False, distinct: bool = False, tol: float = 1e-9, note: str | None = None) -> dict:
    """Tokens (every id once with ``distinct``: then each row of the embedding's gradient is one
    position's), the BPTT depth, and an upstream gradient for the logits: over every position, or
    (``last_only``) over the last segment's (a loss where the paper's tasks ask their question).
    Tolerance as for one segment: rounding grows a little over the segments (~1e-13)."""
    s = spec["sizes"]
    if distinct:
        tokens = torch.randperm(s["vocab_size"], generator=gen)[:batch * length].view(batch, length)
    else:
        tokens = torch.randint(0, s["vocab_size"], (batch, length), generator=gen)
    up = torch.randn(batch, length, s["vocab_size"], generator=gen, dtype=torch.float64)
    if last_only:
        up[:, :(length - 1) // s["segment_length"] * s["segment_length"]] = 0.0
    return {"what": "run", "model": spec, "tokens": tokens, "bptt": bptt, "up": up, "last_only": last_only,
            "tol": tol, "note": note}


def _run_values(model: nn.Module, call: Callable[..., Any], c: dict) -> tuple:
    """``call(model, tokens, bptt_depth)``: (logits, gradients of every parameter for the case's upstream)."""
    params = [p for _, p in _sorted_parameters(model)]
    with _one_thread(), torch.enable_grad():
        logits = call(model, c["tokens"].clone(), c["bptt"])
        found = None
        if isinstance(logits, torch.Tensor) and logits.requires_grad and tuple(logits.shape) == tuple(c["up"].shape):
            found = tuple(torch.autograd.grad(logits, params, c["up"], allow_unused=True))
    return logits, found


def _run_run(fn: Callable[..., Any], c: dict) -> tuple:
    return _run_values(_case_rmt(c["model"]), fn, c)


def _run_reference(c: dict) -> tuple:
    model = _ref_rmt(c["model"], c["bptt"])
    return _run_values(model, lambda model, tokens, bptt: model(tokens), c)


def _segments_reached(grads: tuple, c: dict) -> list[int]:
    """Segments whose tokens' embeddings got a gradient (``distinct`` tokens: one row per position)."""
    embed = grads[sorted(c["model"]["state"]).index("embed.weight")]
    s, length = c["model"]["sizes"]["segment_length"], c["tokens"].shape[1]
    return [i for i, a in enumerate(range(0, length, s))
            if embed is not None and bool(embed[c["tokens"][:, a:a + s].reshape(-1)].abs().sum() > 0)]


def _run_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 2:  # only a hand-made results file
        return "no results"
    logits, grads = got
    problem = _close_problem(logits, expected[0], c["tol"], relative=True)
    if problem:
        return f"logits: {problem}"
    if grads is None:
        return ("no gradients reach the parameters: let autograd record every segment (detach only the memory "
                "passed between segments)")
    if not isinstance(grads, tuple) or len(grads) != len(expected[1]):
        return "no gradients"
    if c.get("last_only"):
        reached, want = _segments_reached(grads, c), _segments_reached(expected[1], c)
        if reached != want:
            k = c["bptt"]
            return (f"a loss on the last segment reaches segments {reached}; with bptt_depth={k} it must reach "
                    + ("every segment" if k is None else f"the last {k} + 1") + f": {want}")
    names = sorted(c["model"]["state"])
    problem = _rmt_grad_problem(grads, expected[1], names, c["tol"])
    if problem:
        return problem + (" (each segment's logits keep their graph; only the memory passed from one segment to "
                          "the next is detached, where bptt_depth says)")
    return None


def _random_run_case(rng: random.Random, gen: torch.Generator, *, last_only: bool = False) -> dict:
    s = rng.randint(1, 5)
    n_seg = rng.randint(1, 6)
    length = (n_seg - 1) * s + rng.randint(1, s)  # the last segment may be shorter
    batch = rng.randint(1, 2)
    k = rng.choice([None, 0, 1, 2, n_seg - 1, n_seg, n_seg + 3])
    spec = _random_rmt_spec(rng, gen, segment_length=s, vocab_size=batch * length + rng.randint(0, 4)
                            if last_only else None)
    return _run_case(spec, batch, length, k, gen, last_only=last_only, distinct=last_only)


def _run_small_cases(seed: int) -> list[dict]:
    """What the visible tests check: four segments (the last shorter), every token id once, bptt_depth
    None and 1: the logits, and the segments a loss on the last segment reaches."""
    gen = torch.Generator().manual_seed(seed)
    spec = _rmt_spec(gen, vocab_size=40, d_model=8, n_heads=2, d_ff=16, n_layers=1, segment_length=4, n_memory=2)
    return [_run_case(spec, 2, 14, k, gen, last_only=True, distinct=True) for k in (None, 1)]


def _run_cases(seed: int) -> list[dict]:
    """Random models, lengths (shorter last segments, one segment, one token per segment), depths
    (None, 0, more than the segments) and n_memory 0; values and every parameter's gradient."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = [_random_run_case(rng, gen) for _ in range(16)]
    spec = _random_rmt_spec(rng, gen, segment_length=3, n_memory=0)
    cases.append(_run_case(spec, 2, 8, None, gen, note="n_memory 0: segments that never meet"))
    spec = _random_rmt_spec(rng, gen, segment_length=5, n_memory=2)
    cases += [_run_case(spec, 2, 4, 0, gen, note="shorter than one segment"),
              _run_case(spec, 1, 10, 0, gen, note="two full segments")]
    spec = _random_rmt_spec(rng, gen, segment_length=1, n_memory=2)
    cases.append(_run_case(spec, 2, 5, 2, gen, note="one token per segment"))
    return cases


def _run_bptt_cases(seed: int) -> list[dict]:
    """A loss on the last segment only: it must reach exactly the last bptt_depth + 1 segments
    (every one with None). Depths 0, 1, n - 1, n, None; a shorter last segment; random cases."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    cases = []
    for s, length, n_memory in ((3, 14, 2), (4, 16, 1)):  # 5 segments, the last of 2 tokens; 4 full segments
        n_seg = -(-length // s)
        spec = _random_rmt_spec(rng, gen, segment_length=s, n_memory=n_memory, vocab_size=2 * length + 3)
        for k in (0, 1, 2, n_seg - 1, n_seg, None):
            cases.append(_run_case(spec, 2, length, k, gen, last_only=True, distinct=True))
    return cases + [_random_run_case(rng, gen, last_only=True) for _ in range(10)]


# FLOPs ----------------------------------------------------------------------------------------
_OPT_125M = dict(_rmt_module.OPT_MODELS["OPT-125M"])  # the smallest model of the paper's FLOP comparison


def _model_sizes(rng: random.Random) -> dict:
    heads = rng.choice([1, 2, 4, 8, 12, 16, 32])
    d = heads * rng.randint(1, 128)
    return {"n_layers": rng.randint(1, 96), "n_heads": heads, "d_model": d,
            "d_ff": rng.choice([d, 2 * d, 4 * d, rng.randint(1, 8192)]), "vocab_size": rng.randint(2, 60000)}


def _flops_args(c: dict) -> list[int]:
    return [c[k] for k in ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size")]


def _full_flops_run(fn: Callable[..., Any], c: dict) -> Any:
    args = [c["length"], *_flops_args(c)]
    return fn(*args) if c["n_logits"] is None else fn(*args, n_logits=c["n_logits"])


def _full_flops_reference(c: dict) -> int:
    return _REF_TRANSFORMER_FLOPS(c["length"], n_logits=c["n_logits"],
                                  **{k: c[k] for k in ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size")})


def _rmt_flops_run(fn: Callable[..., Any], c: dict) -> Any:
    return fn(c["length"], c["segment_length"], c["n_memory"], *_flops_args(c), flops=_ref_full_flops)


def _rmt_flops_reference(c: dict) -> int:
    return _REF_RMT_FLOPS(c["length"], segment_length=c["segment_length"], n_memory=c["n_memory"], variant="encoder",
                          **{k: c[k] for k in ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size")})


def _flops_describe(c: dict) -> str:
    sizes = ", ".join(f"{k}={c[k]}" for k in ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size"))
    if "segment_length" in c:
        return f"rmt_forward_flops(length={c['length']}, segment_length={c['segment_length']}, " \
               f"n_memory={c['n_memory']}, {sizes})"
    return f"full_attention_flops(length={c['length']}, {sizes}" + \
        (f", n_logits={c['n_logits']})" if c["n_logits"] is not None else ")")


def _flops_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: one layer by hand, OPT-125M at 2,048 tokens, one RMT by hand."""
    tiny = {"n_layers": 1, "n_heads": 1, "d_model": 2, "d_ff": 4, "vocab_size": 3}
    return [{"length": 3, "n_logits": None, **tiny}, {"length": 3, "n_logits": 1, **tiny},
            {"length": 2048, "n_logits": None, **_OPT_125M},
            {"length": 5, "segment_length": 2, "n_memory": 1, "n_logits": None, **tiny},
            {"length": 2_048_000, "segment_length": 512, "n_memory": 10, "n_logits": None, **_OPT_125M}]


def _full_flops_cases(seed: int) -> list[dict]:
    """Random sizes and lengths to 2^21, scored positions all, none or some; OPT-125M at 2,048,000 tokens."""
    rng = random.Random(seed)
    cases = []
    for i in range(200):
        length = rng.randint(1, 2 ** rng.randint(1, 21))
        n_logits = [None, 0, rng.randint(0, length)][i % 3]
        cases.append({"length": length, "n_logits": n_logits, **_model_sizes(rng)})
    return cases + [{"length": 2_048_000, "n_logits": None, **_OPT_125M},
                    {"length": 1, "n_logits": None, **_OPT_125M}]


def _rmt_flops_cases(seed: int) -> list[dict]:
    """Random sizes, segments and memories (0 included); lengths that are and are not a multiple of
    the segment length, and shorter than one segment; OPT-125M at 2,048,000 tokens."""
    rng = random.Random(seed)
    cases = []
    for i in range(200):
        s = rng.randint(1, 4096)
        length = [s * rng.randint(1, 2000), s * rng.randint(0, 2000) + rng.randint(1, s), rng.randint(1, s)][i % 3]
        cases.append({"length": length, "segment_length": s, "n_memory": 0 if i % 10 == 0 else rng.randint(1, 128),
                      "n_logits": None, **_model_sizes(rng)})
    return cases + [{"length": 2_048_000, "segment_length": 512, "n_memory": 10, "n_logits": None, **_OPT_125M},
                    {"length": 2_048_001, "segment_length": 512, "n_memory": 10, "n_logits": None, **_OPT_125M}]


def _flops_small_run(fns: Any, c: dict) -> Any:
    full, rmt = fns
    return _rmt_flops_run(rmt, c) if "segment_length" in c else _full_flops_run(full, c)


def _flops_small_reference(c: dict) -> int:
    return _rmt_flops_reference(c) if "segment_length" in c else _full_flops_reference(c)


def _rmt_blocked(*, mask_allowed: bool = False, segment_allowed: bool = False,
                 flops_allowed: bool = False) -> tuple[Callable[..., Any], ...]:
    ours = (_segment_reference, _run_reference, _full_flops_reference, _rmt_flops_reference, _flops_small_reference,
            _ref_rmt)
    ours += () if mask_allowed else (_ref_decoder_mask,)
    ours += () if segment_allowed else (_CaseRMT.segment,)
    ours += () if flops_allowed else (_ref_full_flops,)
    return (*_module_functions(_rmt_module), *ours)


for _name, _cases_fn in (("rmt_mask_small", lambda seed: [{"m": 1, "n": 2}, {"m": 2, "n": 3}, {"m": 0, "n": 4}]),
                         ("rmt_mask", _mask_cases)):
    _register(Suite(_name, _cases_fn, lambda fn, c: fn(c["m"], c["n"]),
                    lambda c: _REF_SEGMENT_MASK(c["m"], c["n"], "decoder"), _mask_compare, _mask_describe,
                    _RMT_FORBIDDEN, _rmt_blocked))
for _name, _cases_fn in (("rmt_segment_small", _segment_small_cases), ("rmt_segment", _segment_cases),
                         ("rmt_segment_grads", _segment_grad_cases)):
    _register(Suite(_name, _cases_fn, _segment_run, _segment_reference, _segment_compare, _rmt_describe,
                    _RMT_FORBIDDEN, lambda: _rmt_blocked(mask_allowed=True)))
for _name, _cases_fn in (("rmt_run_small", _run_small_cases), ("rmt_run", _run_cases),
                         ("rmt_run_bptt", _run_bptt_cases)):
    _register(Suite(_name, _cases_fn, _run_run, _run_reference, _run_compare, _rmt_describe, _RMT_FORBIDDEN,
                    lambda: _rmt_blocked(mask_allowed=True, segment_allowed=True)))
_register(Suite("rmt_flops_small", _flops_small_cases, _flops_small_run, _flops_small_reference,
                lambda got, exp, c: _exact_int(got, exp), _flops_describe, _RMT_FORBIDDEN,
                lambda: _rmt_blocked(flops_allowed=True)))
_register(Suite("rmt_flops_full", _full_flops_cases, _full_flops_run, _full_flops_reference,
                lambda got, exp, c: _exact_int(got, exp), _flops_describe, _RMT_FORBIDDEN, _rmt_blocked))
_register(Suite("rmt_flops_segments", _rmt_flops_cases, _rmt_flops_run, _rmt_flops_reference,
                lambda got, exp, c: _exact_int(got, exp), _flops_describe, _RMT_FORBIDDEN,
                lambda: _rmt_blocked(flops_allowed=True)))


# --- the capstone: a method for a budget (chapter 7) -------------------------------
# Assignment 7 grades three functions, each on its own, and a project:
#   longest_within(rows, budget_bytes)   -> {(method, mode): the longest length L such that every row of
#                                           that pair with length <= L is "ok" and within the budget | None}
#   memory_exponent(rows, method, mode)  -> the least-squares slope of log peak_bytes against log length
#                                           over the pair's "ok" rows (ValueError naming both below two)
#   windowed_accuracy(model, task, length, window, n_sequences, seed)
#                                        -> the fraction of bench.task_batch's sequences (one call, a
#                                           generator seeded with seed) whose every answer token the model
#                                           predicts greedily from the last `window` tokens alone
#   CHOICE = {"method": ..., "window": int | None}
#                                        -> fits CAPSTONE_SCENARIO's memory budget (2 points) and beats
#                                           its baseline by its margin (2 points)
# Rows are plain dicts as longctx_lib.bench.measure_speed writes them; the references for the first
# two are written here from the prompts (not bench.longest_fitting, whose "ok" rule ignores a budget,
# nor measure.fit_loglog_slope). Exercise 3's reference draws the sequences with bench.task_batch
# and runs the model with bench.lm_logits (the data and the model, not what is graded) and scores
# them itself; tests/test_grading_07.py checks that with the whole window it equals
# bench.evaluate_quality on the same sequences. Its models: small float64 models of build_model
# with random weights (sdpa, naive, infini, rmt; LSH draws random rotations and is left out), and
# _OracleLM, a test double that is handed the next token and errs where the needle is out of its
# window and by a hash of its input's first token, its length and the position, so that the window
# boundary, the shift by one, the answer mask and "every answer token" all change the result.
# The project is decided by the grader alone: the peak memory of reading `window or length` tokens
# forward (bench.speed_step in a fresh process, measure.peak_memory, the CPU) and the accuracy of
# the shipped model on the scenario's sequences, both computed here, never read from the kernel.
# The shipped models are read once, when the cases are drawn (before any student code runs), so
# that a submission that rewrites checkpoints/bench/ changes nothing. Torch's fused SDPA, which
# check() blocks in the kernel, is handed back while a model runs (the models need it).
import functools as _functools  # noqa: E402
import json as _json  # noqa: E402
from numbers import Real as _Real  # noqa: E402

from . import bench as _bench_module  # noqa: E402
from ._checkpoints import read_checkpoint as _read_checkpoint  # noqa: E402
from ._checkpoints import same_config as _same_config  # noqa: E402
from . import measure as _measure_module  # noqa: E402
from . import tasks as _tasks_module  # noqa: E402

CAPSTONE_SCENARIO: dict[str, Any] = {
    "task": "passkey",  # one of bench.TASKS; the shipped models were trained at 128 tokens
    "length": 1024,  # the tokens of each sequence: 8 times the training length (the shipped LSH's limit)
    "budget_mib": 2.0,  # the peak memory of reading `window or length` tokens forward (CPU, fresh process)
    "n_sequences": 512,  # sequences the accuracies are measured on (the same for every choice)
    "seed": 7,  # their generator's seed (bench.task_batch, one call)
    "margin": 0.1,  # the accuracy must reach the baseline's plus this
    "baseline": {"method": "sdpa", "window": 128},  # truncation: full attention on the last 128 tokens
}
"""Assignment 7's project, owned by the grader: the notebook prints it; changing it there changes nothing."""
__all__ += ["CAPSTONE_SCENARIO"]  # noqa: PLE0605 - chapter 7's public constant

_REF_TASK_BATCH = _bench_module.task_batch
_REF_LM_LOGITS = _bench_module.lm_logits
_REF_SPEED_STEP = _bench_module.speed_step
_REF_PEAK_MEMORY = _measure_module.peak_memory
_TORCH_SDPA = F.scaled_dot_product_attention
_CAPSTONE_METHODS = tuple(_bench_module.QualityConfig().methods)  # those with shipped models
_CAPSTONE_FORBIDDEN = ("longctx_lib.grading",)
_LONGEST_FORBIDDEN = ("longctx_lib.bench.longest_fitting", "longctx_lib.measure.longest_within",
                      *_CAPSTONE_FORBIDDEN)
_EXPONENT_FORBIDDEN = ("longctx_lib.measure.fit_loglog_slope", *_CAPSTONE_FORBIDDEN)
_WINDOW_FORBIDDEN = ("longctx_lib.bench.evaluate_quality", "longctx_lib.bench.answer_logits",
                     "longctx_lib.bench.measure_quality", "longctx_lib.tasks.answer_accuracy",
                     "longctx_lib.tasks.passkey_accuracy", *_CAPSTONE_FORBIDDEN)
_MIB = 2**20


@contextlib.contextmanager
def _torch_sdpa_allowed() -> Iterator[None]:
    """Torch's fused SDPA while a course model runs (check() blocks it for the chapters that write attention)."""
    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _TORCH_SDPA
    try:
        yield
    finally:
        F.scaled_dot_product_attention = saved


def _plain_number(value: Any) -> tuple:
    """A student's number as plain data: ("value", float), or ("bad", what it was)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, _Real):
        return ("bad", f"returned a {type(value).__name__}; return a float")
    return ("value", float(value))


def _outcome_problem(got: Any, expected: tuple, *, tol: float, what: str, error_words: tuple[str, ...]) -> str | None:
    """``expected`` is ("value", x) or ("ValueError",); ``got`` what run() made of the student's call."""
    if not isinstance(got, tuple) or len(got) != 2 or got[0] not in ("value", "ValueError", "bad"):
        return "no results"
    if got[0] == "bad":
        return str(got[1])
    if expected[0] == "ValueError":
        if got[0] != "ValueError":
            return f"returned {got[1]!r}; expected a ValueError (" + ", ".join(error_words) + ")"
        message = str(got[1])
        missing = [w for w in error_words if w not in message]
        if missing:
            return f"the ValueError's message {message!r} does not name {', '.join(map(repr, missing))}"
        return None
    if got[0] == "ValueError":
        return f"raised ValueError: {got[1]}; expected {what} {expected[1]:.6g}"
    value = got[1]
    if not isinstance(value, float) or not abs(value - expected[1]) <= tol * max(1.0, abs(expected[1])):
        return f"{what} {value!r}, expected {expected[1]:.6g}"
    return None


# speed rows -----------------------------------------------------------------------------
def _speed_row(method: str, mode: str, length: int, status: str, peak: int | None) -> dict:
    """One row as bench.measure_speed writes it (the numbers None where the run failed)."""
    measured = status in ("ok", "over_budget")
    return {"method": method, "mode": mode, "length": length, "status": status,
            "seconds": round(1e-3 * length ** 0.5, 6) if measured else None,
            "peak_bytes": int(peak) if measured else None, "loss": 3.47 if measured else None}


def _random_sweep(rng: random.Random, method: str, mode: str, *, start: int, n: int, exponent: float,
                  base: float, ending: str, noise: float) -> list[dict]:
    """A pair's sweep: doubling lengths from ``start``, every row "ok" but the last when ``ending`` is
    "over_budget", "oom" or "timeout" (measure_speed stops there), peaks ~ length^exponent, noisy."""
    rows = []
    for i in range(n):
        peak = max(1, int(base * 2 ** (exponent * i) * math.exp(noise * rng.uniform(-1.0, 1.0))))
        status = ending if i == n - 1 and ending != "ok" else "ok"
        rows.append(_speed_row(method, mode, start * 2**i, status, peak))
    return rows


def _pairs(rng: random.Random, k: int) -> list[tuple[str, str]]:
    methods = rng.sample(list(_bench_module.METHODS), k)
    return [(m, mode) for m in methods for mode in rng.sample(list(_bench_module.MODES), rng.randint(1, 2))]


def _rows_describe(rows: list[dict]) -> str:
    pairs = list(dict.fromkeys((r["method"], r["mode"]) for r in rows))
    shown = "; ".join(
        f"{m} {mode}: " + ", ".join(
            f"{r['length']} {r['status']}" + (f" {r['peak_bytes']:,} B" if r["peak_bytes"] is not None else "")
            for r in rows if (r["method"], r["mode"]) == (m, mode))
        for m, mode in pairs[:3])
    more = f"; and {len(pairs) - 3} more pairs" if len(pairs) > 3 else ""
    return f"{len(rows)} rows ({shown}{more})"


# longest within a budget ------------------------------------------------------------------
def _ref_longest_within(rows: list[dict], budget: float) -> dict[tuple[str, str], int | None]:
    """For each pair, walk its lengths upwards; stop at the first length with a row that is not "ok" or
    over the budget; the longest length before it (None if the first fails)."""
    by_pair: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for r in rows:
        by_pair.setdefault((r["method"], r["mode"]), {}).setdefault(r["length"], []).append(r)
    out: dict[tuple[str, str], int | None] = {}
    for pair, by_length in by_pair.items():
        best = None
        for length in sorted(by_length):
            if not all(r["status"] == "ok" and r["peak_bytes"] is not None and r["peak_bytes"] <= budget
                       for r in by_length[length]):
                break
            best = length
        out[pair] = best
    return out


def _longest_run(fn: Callable[..., Any], c: dict) -> tuple:
    out = fn([dict(r) for r in c["rows"]], c["budget"])
    if not isinstance(out, dict):
        return ("bad", f"returned a {type(out).__name__}; return a dict {{(method, mode): length or None}}")
    items = []
    for key, value in out.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(type(k) is str for k in key)):
            return ("bad", f"the keys must be (method, mode) tuples of two strings; got the key {key!r}")
        if value is not None and type(value) is not int:
            return ("bad", f"the value of {key} must be an int (a length) or None; got {type(value).__name__} "
                           f"{value!r}")
        items.append((key[0], key[1], value))
    return ("dict", tuple(sorted(items, key=lambda t: (t[0], t[1]))))


def _longest_reference(c: dict) -> tuple:
    found = _ref_longest_within(c["rows"], c["budget"])
    return ("dict", tuple(sorted(((m, mode, v) for (m, mode), v in found.items()), key=lambda t: (t[0], t[1]))))


def _longest_compare(got: Any, expected: tuple, c: dict) -> str | None:
    if not isinstance(got, tuple) or len(got) != 2 or got[0] not in ("dict", "bad"):
        return "no results"
    if got[0] == "bad":
        return str(got[1])
    want = {(m, mode): v for m, mode, v in expected[1]}
    try:
        have = {(m, mode): v for m, mode, v in got[1]}
    except (TypeError, ValueError):
        return "no results"
    missing = [p for p in want if p not in have]
    if missing:
        return f"no entry for {missing[0]} (every (method, mode) of the rows needs one; None if nothing fits)"
    extra = [p for p in have if p not in want]
    if extra:
        return f"an entry for {extra[0]}, which has no rows"
    for pair, value in want.items():
        if have[pair] != value:
            return f"{pair}: {have[pair]!r}, expected {value!r}"
    return None


def _longest_describe(c: dict) -> str:
    budget = c["budget"]
    return (f"longest_within({_rows_describe(c['rows'])}, budget_bytes={budget!r} = {budget / _MIB:.3f} MiB)"
            + (f" ({c['note']})" if c.get("note") else ""))


def _hand_rows() -> list[dict]:
    """The table of the visible tests (MiB peaks): a growing sweep, a flat one, one over the budget from
    its first length, an out-of-memory end, and a noisy row that falls back under the budget."""
    mib = _MIB
    return [
        _speed_row("sdpa", "forward", 1024, "ok", 4 * mib), _speed_row("sdpa", "forward", 2048, "ok", 8 * mib),
        _speed_row("sdpa", "forward", 4096, "ok", 16 * mib), _speed_row("sdpa", "forward", 8192, "ok", 32 * mib),
        _speed_row("infini", "forward", 1024, "ok", mib), _speed_row("infini", "forward", 2048, "ok", mib),
        _speed_row("infini", "forward", 4096, "ok", mib), _speed_row("infini", "forward", 8192, "ok", mib),
        _speed_row("naive", "forward", 1024, "ok", 36 * mib), _speed_row("naive", "forward", 2048, "over_budget",
                                                                          137 * mib),
        _speed_row("lsh", "forward+backward", 1024, "ok", 3 * mib),
        _speed_row("lsh", "forward+backward", 2048, "oom", None),
        _speed_row("rmt", "forward+backward", 1024, "ok", 5 * mib),
        _speed_row("rmt", "forward+backward", 2048, "ok", 11 * mib),
        _speed_row("rmt", "forward+backward", 4096, "ok", 9 * mib),
        _speed_row("rmt", "forward+backward", 8192, "ok", 20 * mib),
    ]


def _longest_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: the hand table under 10 MiB, 1 GiB, exactly 8 MiB, and below everything."""
    rows = _hand_rows()
    return [{"rows": rows, "budget": b, "note": note} for b, note in
            ((10 * _MIB, "the hand table"), (2**30, "everything measured fits"),
             (8 * _MIB, "a peak exactly at the budget fits"), (1000, "nothing fits"))]


def _longest_cases(seed: int) -> list[dict]:
    """Random tables: several pairs, sweeps of 1-7 lengths from 256-2048, every ending, noisy and
    non-monotone peaks around the budget, over_budget rows below the budget, rows in any order,
    budgets at a peak exactly, a byte below one, below and above everything, int and float."""
    rng = random.Random(seed)
    cases = []
    for i in range(48):
        rows = []
        for method, mode in _pairs(rng, rng.randint(1, 4)):
            rows += _random_sweep(rng, method, mode, start=rng.choice([256, 512, 1024, 2048]), n=rng.randint(1, 7),
                                  exponent=rng.choice([0.0, 0.05, 1.0, 1.1, 2.0, rng.uniform(0, 2)]),
                                  base=rng.uniform(0.2, 40) * _MIB,
                                  ending=rng.choice(["ok", "ok", "over_budget", "oom", "timeout"]),
                                  noise=rng.choice([0.0, 0.05, 0.3]))
        peaks = [r["peak_bytes"] for r in rows if r["peak_bytes"] is not None]
        kind = i % 6
        if kind == 0 or not peaks:
            budget = rng.uniform(0.5, 60) * _MIB
        elif kind == 1:
            budget = rng.choice(peaks)  # exactly a peak: it fits
        elif kind == 2:
            budget = rng.choice(peaks) - 1
        elif kind == 3:
            budget = min(peaks) - 1  # nothing fits
        elif kind == 4:
            budget = max(peaks) + 1  # every "ok" row fits
        else:
            budget = sorted(peaks)[len(peaks) // 2]
        if i % 4 == 1:  # a noisy sweep: one length over the budget, the next one back under it
            ok = [r for r in rows if r["status"] == "ok"]
            pairs = [(a, b) for a, b in zip(ok, ok[1:]) if (a["method"], a["mode"]) == (b["method"], b["mode"])]
            if pairs:
                a, b = rng.choice(pairs)
                a["peak_bytes"], b["peak_bytes"] = int(budget) + 1 + rng.randint(0, 1000), max(1, int(budget) - 1)
        if i % 5 == 2:  # an over_budget row whose peak is below this budget: not "ok", it does not fit
            for r in rows:
                if r["status"] == "over_budget":
                    r["peak_bytes"] = max(1, int(budget) // 2)
        if i % 2:
            rng.shuffle(rows)
        if i % 3 == 0:
            budget = float(budget)
        else:
            budget = int(budget)
        cases.append({"rows": rows, "budget": budget,
                      "note": "rows in random order" if i % 2 else None})
    return cases


# memory exponent ------------------------------------------------------------------------------
def _ref_memory_exponent(rows: list[dict], method: str, mode: str) -> float:
    ok = [r for r in rows if r["method"] == method and r["mode"] == mode and r["status"] == "ok"]
    if len(ok) < 2:
        raise ValueError(f"need two 'ok' rows of {method} {mode}; got {len(ok)}")
    xs = [math.log(r["length"]) for r in ok]
    ys = [math.log(r["peak_bytes"]) for r in ok]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _exponent_run(fn: Callable[..., Any], c: dict) -> tuple:
    try:
        got = fn([dict(r) for r in c["rows"]], c["method"], c["mode"])
    except ValueError as err:
        return ("ValueError", str(err)[:2000])
    return _plain_number(got)


def _exponent_reference(c: dict) -> tuple:
    try:
        return ("value", _ref_memory_exponent(c["rows"], c["method"], c["mode"]))
    except ValueError:
        return ("ValueError",)


def _exponent_compare(got: Any, expected: tuple, c: dict) -> str | None:
    # Tolerance: the slope is O(1); float64 logs in any order agree to ~1e-14, float32 ones to ~1e-6;
    # a wrong set of rows, or two points instead of a fit through noisy ones, is off by 1e-2 or more.
    return _outcome_problem(got, expected, tol=1e-4, what="exponent",
                            error_words=(repr(c["method"]).strip("'"), repr(c["mode"]).strip("'")))


def _exponent_describe(c: dict) -> str:
    return (f"memory_exponent({_rows_describe(c['rows'])}, method={c['method']!r}, mode={c['mode']!r})"
            + (f" ({c['note']})" if c.get("note") else ""))


def _power_rows(method: str, mode: str, lengths: list[int], exponent: float, base: float) -> list[dict]:
    return [_speed_row(method, mode, n, "ok", round(base * (n / lengths[0]) ** exponent)) for n in lengths]


def _exponent_small_cases(seed: int) -> list[dict]:
    """What the visible tests use: exact powers 2, 1 and 0, the hand table, and a pair with one "ok" row."""
    lengths = [1024, 2048, 4096, 8192]
    rows = (_power_rows("naive", "forward", lengths, 2.0, 4 * _MIB) + _power_rows("sdpa", "forward", lengths, 1.0, _MIB)
            + _power_rows("rmt", "forward", lengths, 0.0, _MIB))
    hand = _hand_rows()
    return [{"rows": rows, "method": m, "mode": "forward", "note": note} for m, note in
            (("naive", "peak ~ L^2"), ("sdpa", "peak ~ L"), ("rmt", "flat"))] + [
        {"rows": hand, "method": "sdpa", "mode": "forward", "note": "the hand table"},
        {"rows": hand, "method": "rmt", "mode": "forward+backward", "note": "a noisy sweep"},
        {"rows": hand, "method": "naive", "mode": "forward", "note": "one 'ok' row: a ValueError"}]


def _exponent_cases(seed: int) -> list[dict]:
    """Random tables with noise, other pairs, over_budget (measured, excluded) and failed rows, any
    order, lengths that do not double, exactly two "ok" rows; pairs with one, none or no rows at all."""
    rng = random.Random(seed)
    cases = []
    for i in range(40):
        pairs = _pairs(rng, rng.randint(1, 4))
        rows = []
        for method, mode in pairs:
            if i % 4 == 3:  # lengths that do not double
                lengths = sorted(rng.sample(range(100, 20000), rng.randint(2, 6)))
                base, exponent = rng.uniform(0.5, 30) * _MIB, rng.uniform(0, 2)
                rows += [_speed_row(method, mode, length, "ok",
                                    max(1, int(base * (length / lengths[0]) ** exponent
                                               * math.exp(0.2 * rng.uniform(-1, 1)))))
                         for length in lengths]
            else:
                rows += _random_sweep(rng, method, mode, start=rng.choice([256, 512, 1024]), n=rng.randint(1, 7),
                                      exponent=rng.choice([0.0, 0.05, 1.0, 2.0, rng.uniform(-0.3, 2.5)]),
                                      base=rng.uniform(0.2, 40) * _MIB,
                                      ending=rng.choice(["ok", "over_budget", "oom", "timeout"]),
                                      noise=rng.choice([0.0, 0.1, 0.4]))
        if i % 2:
            rng.shuffle(rows)
        method, mode = rng.choice(pairs)
        ok = [r for r in rows if (r["method"], r["mode"]) == (method, mode) and r["status"] == "ok"]
        note = None
        if len(ok) == 2:
            note = "exactly two 'ok' rows"
        elif len(ok) < 2:
            note = "fewer than two 'ok' rows: a ValueError"
        cases.append({"rows": rows, "method": method, "mode": mode, "note": note})
    rows = _random_sweep(rng, "lsh", "forward", start=1024, n=4, exponent=1.0, base=_MIB, ending="ok", noise=0.1)
    cases += [
        {"rows": rows, "method": "lsh", "mode": "forward+backward", "note": "no rows of that pair: a ValueError"},
        {"rows": rows, "method": "rmt", "mode": "forward", "note": "no rows of that method: a ValueError"},
        {"rows": rows + [_speed_row("infini", "forward", 1024, "oom", None)], "method": "infini", "mode": "forward",
         "note": "no 'ok' row: a ValueError"},
        {"rows": _random_sweep(rng, "naive", "forward", start=512, n=2, exponent=2.0, base=_MIB, ending="ok",
                               noise=0.0), "method": "naive", "mode": "forward", "note": "exactly two 'ok' rows"},
        {"rows": [*_random_sweep(rng, "sdpa", "forward", start=512, n=3, exponent=1.0, base=_MIB, ending="ok",
                                 noise=0.2), _speed_row("sdpa", "forward", 4096, "over_budget", 400 * _MIB)],
         "method": "sdpa", "mode": "forward", "note": "an over_budget row, measured but excluded"},
    ]
    return cases


# windowed accuracy ------------------------------------------------------------------------------
class _OracleLM(_bench_module.FullAttentionLM):
    """A course model (a ``FullAttentionLM``, so bench.lm_logits takes it) that is handed the answer.

    ``forward(tokens (B, n)) -> logits (B, n, vocab)``, one-hot: position ``t`` predicts token ``t + 1``
    of what it is given, but only if that token occurred in the input up to ``t`` (a recall: the
    passkey's digits need the key inside the window) and a hash of the input's first token, its
    length, the position's distance to the end and the token there is below ``keep`` (of 1000).
    Otherwise it predicts another token. Not causal: a test double, not a language model.
    """

    def __init__(self, keep: int, salt: int) -> None:
        with torch.random.fork_rng(devices=[]):
            super().__init__(_tasks_module.TASK_VOCAB, 4, 1, 4, 1, impl="naive")
        self.keep, self.salt = int(keep), int(salt)
        self.to(torch.float64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n = tokens.shape
        v = self.embed.num_embeddings
        nxt = torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1)  # (B, n): what each position predicts
        seen = F.one_hot(tokens, v).cumsum(dim=1) > 0  # (B, n, V): the tokens read up to t
        recalled = seen.gather(2, nxt.unsqueeze(2)).squeeze(2)  # (B, n)
        dist = n - torch.arange(n, device=tokens.device)
        h = (tokens[:, :1] * 7919 + tokens * 104729 + dist * 1299709 + n * 15485863 + self.salt) % 1000
        right = recalled & (h < self.keep)
        pred = torch.where(right, nxt, (nxt + 1 + h % (v - 1)) % v)
        return F.one_hot(pred, v).to(self.head.weight.dtype) * self.head.weight.new_ones(())  # (B, n, V)


def _case_lm(spec: dict) -> nn.Module:
    """The model a case describes: an _OracleLM, or a float64 model of bench.build_model with given weights."""
    if spec["kind"] == "oracle":
        return _OracleLM(spec["keep"], spec["salt"]).eval()
    with torch.random.fork_rng(devices=[]):
        model = _bench_module.build_model(spec["method"], _bench_module.ModelSizes(**spec["sizes"]))
    model.to(torch.float64).load_state_dict(spec["state"])
    return model.eval()


def _random_lm_spec(rng: random.Random, method: str) -> dict:
    """Sizes and float64 weights of a small model of build_model (its own initialisation, a drawn seed)."""
    heads = rng.choice([1, 2])
    sizes = {"vocab_size": _tasks_module.TASK_VOCAB, "d_model": heads * rng.choice([2, 4, 6]), "n_heads": heads,
             "n_layers": rng.randint(1, 2), "d_ff": rng.randint(4, 24), "segment_length": rng.randint(3, 16),
             "n_memory": rng.randint(1, 3), "chunk_size": 8, "n_hashes": 1, "max_length": 512}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.randint(0, 2**31))
        model = _bench_module.build_model(method, _bench_module.ModelSizes(**sizes))
        state = {k: 3 * v.double() if k.endswith("weight") and v.dim() == 2 else v.double()
                 for k, v in model.state_dict().items()}  # larger weights: inputs matter more
    return {"kind": "bench", "method": method, "sizes": sizes, "state": state}


def _answer_start(task: str, length: int) -> int:
    """The first position of an answer token in ``task``'s sequences of ``length`` (the same in all)."""
    _, mask = _REF_TASK_BATCH(task, 1, length, generator=torch.Generator().manual_seed(0))
    return int(mask[0].nonzero()[0])


def _score_answers(model: nn.Module, x: torch.Tensor, m: torch.Tensor, batch: int | None = None) -> int:
    """How many rows of ``x`` (B, n) have every answer token (``m``) predicted greedily by the logits at
    the position before it."""
    device = next(model.parameters()).device
    right = 0
    step = batch or x.shape[0]
    for a in range(0, x.shape[0], step):
        xs, ms = x[a:a + step], m[a:a + step]
        logits = _REF_LM_LOGITS(model, xs.to(device))  # (b, n, V)
        hit = (logits[:, :-1].argmax(dim=-1).cpu() == xs[:, 1:]) | ~ms[:, 1:]  # (b, n - 1)
        right += int(hit.all(dim=1).sum())
    return right


def _ref_windowed_accuracy(model: nn.Module, task: str, length: int, window: Any, n_sequences: int, seed: int, *,
                           batch: int | None = None) -> float:
    """The truncation baseline, written from the prompt: ValueError unless needed <= window <= length."""
    tokens, mask = _REF_TASK_BATCH(task, n_sequences, length, generator=torch.Generator().manual_seed(seed))
    first = int(mask.int().argmax(dim=1).min())  # the first answer position
    if isinstance(window, bool) or not isinstance(window, int) or not length - first + 1 <= window <= length:
        raise ValueError(f"window must be an int from {length - first + 1} to {length} (the answers and the token "
                         f"before them inside it); got {window!r}")
    with torch.no_grad():
        return _score_answers(model, tokens[:, -window:], mask[:, -window:], batch) / n_sequences


def _window_run(fn: Callable[..., Any], c: dict) -> tuple:
    model = _case_lm(c["model"])
    with _one_thread(), _torch_sdpa_allowed():
        try:
            got = fn(model, c["task"], c["length"], c["window"], c["n_sequences"], c["seed"])
        except ValueError as err:
            return ("ValueError", str(err)[:2000])
    return _plain_number(got)


def _window_reference(c: dict) -> tuple:
    model = _case_lm(c["model"])
    with _one_thread(), _torch_sdpa_allowed():
        try:
            return ("value", _ref_windowed_accuracy(model, c["task"], c["length"], c["window"], c["n_sequences"],
                                                    c["seed"]))
        except ValueError:
            return ("ValueError",)


def _window_compare(got: Any, expected: tuple, c: dict) -> str | None:
    # Fractions of n_sequences (<= 64): the same model on the same sequences in float64; 1e-6 accepts
    # a mean taken in float32 (off by ~1e-8) and rejects one sequence more or less (>= 1/64).
    return _outcome_problem(got, expected, tol=1e-6, what="accuracy", error_words=("window",))


def _window_describe(c: dict) -> str:
    spec = c["model"]
    if spec["kind"] == "oracle":
        model = f"a test model that is handed the next token (keep {spec['keep']}/1000)"
    else:
        s = spec["sizes"]
        model = (f"a random float64 {spec['method']} model (d_model {s['d_model']}, {s['n_layers']} layer(s), "
                 f"segment_length {s['segment_length']})")
    return (f"windowed_accuracy({model}, task={c['task']!r}, length={c['length']}, window={c['window']}, "
            f"n_sequences={c['n_sequences']}, seed={c['seed']})" + (f" ({c['note']})" if c.get("note") else ""))


def _window_case(model: dict, task: str, length: int, window: Any, n: int, seed: int, note: str | None = None) -> dict:
    return {"model": model, "task": task, "length": length, "window": window, "n_sequences": n, "seed": seed,
            "note": note}


_TASK_LENGTHS = {"passkey": (16, 512), "associative": (24, 256), "copy": (12, 96)}


def _window_small_cases(seed: int) -> list[dict]:
    """What the visible tests check, on test models: the whole window, a narrower one, the narrowest
    allowed, and windows too narrow and too wide (ValueError)."""
    oracle = {"kind": "oracle", "keep": 800, "salt": 11}
    copier = {"kind": "oracle", "keep": 980, "salt": 5}
    return [_window_case(oracle, "passkey", 256, 256, 32, 3, "the whole sequence"),
            _window_case(oracle, "passkey", 256, 64, 32, 3, "the last 64 tokens"),
            _window_case(oracle, "associative", 128, 128, 32, 4),
            _window_case(copier, "copy", 41, 41, 16, 5),
            _window_case(oracle, "passkey", 64, 4, 8, 6, "the narrowest window: the question and the answer"),
            _window_case(oracle, "passkey", 64, 3, 8, 6, "too narrow: a ValueError"),
            _window_case(oracle, "passkey", 64, 65, 8, 6, "wider than the sequence: a ValueError")]


def _window_cases(seed: int) -> list[dict]:
    """Test models (keep rates 0.5-1) and random float64 models of build_model (sdpa, naive, infini,
    rmt) on every task: whole, random and narrowest windows, windows whose first token is a passkey's
    (one token more or less moves it out), 1 to 64 sequences (more than one batch of 32), and the
    windows a ValueError must refuse (one token too narrow, wider than the sequence)."""
    rng = random.Random(seed)
    cases = []
    for i in range(30):
        task = _bench_module.TASKS[i % 3]
        lo, hi = _TASK_LENGTHS[task]
        length = rng.randint(lo, hi)
        needed = length - _answer_start(task, length) + 1
        keep = rng.choice([500, 800, 950, 1000]) if task != "copy" else rng.choice([950, 990, 1000])
        oracle = {"kind": "oracle", "keep": keep, "salt": rng.randint(0, 10**6)}
        window = [length, rng.randint(needed, length), needed, rng.randint(needed, min(length, needed + 8))][i % 4]
        n = rng.choice([1, 7, 31, 33, 64])
        cases.append(_window_case(oracle, task, length, window, n, rng.randint(0, 10**6),
                                  "the whole sequence" if window == length else None))
    for _ in range(6):  # a window that starts at a passkey's KEY token, one wider and one narrower
        length, n, s = rng.randint(64, 512), rng.randint(8, 40), rng.randint(0, 10**6)
        _, start = _tasks_module.passkey_batch(n, length, n_digits=_bench_module.PASSKEY_DIGITS,
                                               generator=torch.Generator().manual_seed(s))
        edge = length - int(start[rng.randrange(n)])
        oracle = {"kind": "oracle", "keep": 1000, "salt": rng.randint(0, 10**6)}
        for w in (edge - 1, edge, edge + 1, edge - 2):
            if 4 <= w <= length:
                cases.append(_window_case(oracle, "passkey", length, w, n, s, "a window at a passkey's edge"))
    for task in _bench_module.TASKS:  # 64 sequences, a window inside: one token more or less changes the result
        for _ in range(2):
            lo, hi = _TASK_LENGTHS[task]
            length = rng.randint(max(lo, 24), hi)
            needed = length - _answer_start(task, length) + 1
            oracle = {"kind": "oracle", "keep": 990 if task == "copy" else 800, "salt": rng.randint(0, 10**6)}
            cases.append(_window_case(oracle, task, length, rng.randint(needed + 1, length - 1), 64,
                                      rng.randint(0, 10**6)))
    for method in ("sdpa", "naive", "infini", "rmt"):
        for task in _bench_module.TASKS:
            lo, hi = _TASK_LENGTHS[task]
            length = rng.randint(lo, min(hi, 160))
            needed = length - _answer_start(task, length) + 1
            window = rng.choice([length, rng.randint(needed, length)])
            cases.append(_window_case(_random_lm_spec(rng, method), task, length, window, rng.choice([3, 16, 40]),
                                      rng.randint(0, 10**6)))
    for task in _bench_module.TASKS:
        lo, hi = _TASK_LENGTHS[task]
        length = rng.randint(lo, hi)
        needed = length - _answer_start(task, length) + 1
        oracle = {"kind": "oracle", "keep": 900, "salt": rng.randint(0, 10**6)}
        cases += [_window_case(oracle, task, length, needed - 1, 4, rng.randint(0, 10**6),
                               "one token too narrow: a ValueError"),
                  _window_case(oracle, task, length, length + rng.randint(1, 50), 4, rng.randint(0, 10**6),
                               "wider than the sequence: a ValueError")]
    return cases


# the project ------------------------------------------------------------------------------------
_SHIPPED: dict[tuple[str, str], Any] = {}  # (task, method) -> weights, or what went wrong reading them
_ACCURACY: dict[tuple, float] = {}
_PEAKS: dict[tuple[str, int], Any] = {}


class _ScenarioError(Exception):
    """A choice the scenario cannot run (a model that cannot read so many tokens, a missing checkpoint)."""


def _shipped_state(task: str, method: str) -> Any:
    """The shipped weights of ``method`` on ``task`` (read once per process), or why they cannot be read."""
    key = (task, method)
    if key not in _SHIPPED:
        path = _bench_module.CHECKPOINT_DIR / f"{task}-{method}.pt"
        try:
            ckpt = _read_checkpoint(path, _bench_module.REGENERATE_COMMAND)  # the weights back in float32
            if not _same_config(ckpt.get("key"), _bench_module.QualityConfig().training_key()):
                raise ValueError("it was trained with other settings than bench.QualityConfig()'s")
            _SHIPPED[key] = ckpt["state_dict"]
        except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as err:
            _SHIPPED[key] = (f"the shipped model {path} could not be read ({type(err).__name__}: {err}); "
                             f"regenerate it with {_bench_module.REGENERATE_COMMAND}")
    return _SHIPPED[key]


def _scenario_model(task: str, method: str) -> nn.Module:
    state = _shipped_state(task, method)
    if isinstance(state, str):
        raise _ScenarioError(state)
    with torch.random.fork_rng(devices=[]):
        model = _bench_module.build_model(method, _bench_module.matched_sizes(method,
                                                                              _bench_module.QualityConfig().sizes))
    model.load_state_dict(state)
    return model.eval()


def _scenario_accuracy(method: str, window: int | None, scenario: dict) -> float:
    """Accuracy of the shipped ``method`` model reading the last ``window or length`` tokens of the
    scenario's sequences (generated once, a generator seeded with its seed), on the CPU, in batches of 32."""
    key = (_json.dumps(scenario, sort_keys=True), method, window)
    if key not in _ACCURACY:
        task, length, n = scenario["task"], scenario["length"], scenario["n_sequences"]
        model = _scenario_model(task, method)
        with _one_thread(), _torch_sdpa_allowed(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(scenario["seed"])  # LSH draws its rotations: the same ones every time
            try:
                _ACCURACY[key] = _ref_windowed_accuracy(model, task, length, window or length, n, scenario["seed"],
                                                        batch=32)
            except ValueError as err:
                raise _ScenarioError(f"{method} cannot read {window or length} tokens: {err}") from None
    return _ACCURACY[key]


def _scenario_peak(method: str, n_tokens: int) -> int:
    """Peak bytes of reading ``n_tokens`` forward with ``method``'s quality-matched model (a fresh process, CPU)."""
    key = (method, n_tokens)
    if key not in _PEAKS:
        sizes = _bench_module.matched_sizes(method, _bench_module.QualityConfig().sizes)
        if method in ("lsh", "reformer") and n_tokens > sizes.max_length:
            _PEAKS[key] = (f"{method}'s model reads at most max_length={sizes.max_length} tokens (its axial "
                           f"positions); {n_tokens} asked: use a window")
        else:
            work = _functools.partial(_REF_SPEED_STEP, method, n_tokens, mode="forward", sizes=sizes)
            try:
                with _one_thread():
                    _PEAKS[key] = int(_REF_PEAK_MEMORY(work, device="cpu", timeout=600))
            except (RuntimeError, TimeoutError) as err:
                _PEAKS[key] = f"reading {n_tokens} tokens with {method} failed: {str(err).strip()[-300:]}"
    if isinstance(_PEAKS[key], str):
        raise _ScenarioError(_PEAKS[key])
    return _PEAKS[key]


def _capstone_cases(seed: int) -> list[dict]:
    """The scenario, one case; reading every shipped model of its task now, before any student code runs."""
    scenario = _json.loads(_json.dumps(CAPSTONE_SCENARIO))
    for method in _CAPSTONE_METHODS:
        _shipped_state(scenario["task"], method)
    return [scenario]


def _choice_run(fn: Callable[..., Any], c: dict) -> tuple:
    choice = fn()
    if not isinstance(choice, dict):
        return ("bad", f"CHOICE must be a dict {{'method': ..., 'window': ...}}; got a {type(choice).__name__}")
    if set(choice) != {"method", "window"}:
        return ("bad", f"CHOICE must have exactly the keys 'method' and 'window'; got {sorted(map(str, choice))}")
    method, window = choice["method"], choice["window"]
    if type(method) is not str:
        return ("bad", f"CHOICE['method'] must be a string; got a {type(method).__name__}")
    if window is not None and type(window) is not int:
        return ("bad", f"CHOICE['window'] must be None or an int; got a {type(window).__name__} {window!r}")
    return ("choice", method, window)


def _choice_problem(got: Any, c: dict) -> str | None:
    if not isinstance(got, tuple) or not got or got[0] not in ("choice", "bad"):
        return "no results"
    if got[0] == "bad":
        return str(got[1])
    if len(got) != 3 or type(got[1]) is not str or not (got[2] is None or type(got[2]) is int):
        return "no results"
    method, window, length = got[1], got[2], c["length"]
    if method not in _CAPSTONE_METHODS:
        return f"CHOICE['method'] must be one of {_CAPSTONE_METHODS} (the methods with shipped models); got {method!r}"
    if window is not None:
        needed = length - _answer_start(c["task"], length) + 1
        if not needed <= window <= length:
            return (f"CHOICE['window'] must be None (the whole sequence) or an int from {needed} (the question and "
                    f"its answer) to {length}; got {window}")
    return None


def _choice_text(method: str, window: int | None, c: dict) -> str:
    return f"{method} reading " + (f"the last {window} tokens" if window else f"all {c['length']} tokens")


def _budget_compare(got: Any, expected: int, c: dict) -> str | None:
    problem = _choice_problem(got, c)
    if problem:
        return problem
    method, window = got[1], got[2]
    try:
        peak = _scenario_peak(method, window or c["length"])
    except _ScenarioError as err:
        return f"{_choice_text(method, window, c)}: {err}"
    if peak > expected:
        return (f"{_choice_text(method, window, c)}: peak memory {peak / _MIB:.2f} MiB > the budget "
                f"{expected / _MIB:.2f} MiB")
    return None


def _baseline_reference(c: dict) -> float | str:
    """The baseline's accuracy on the scenario, or why it could not be measured (a missing checkpoint)."""
    base = c["baseline"]
    try:
        return _scenario_accuracy(base["method"], base["window"], c)
    except _ScenarioError as err:
        return f"the baseline ({_choice_text(base['method'], base['window'], c)}) could not be measured: {err}"


def _baseline_compare(got: Any, expected: float | str, c: dict) -> str | None:
    problem = _choice_problem(got, c)
    if problem:
        return problem
    if isinstance(expected, str):
        return expected
    method, window = got[1], got[2]
    try:
        accuracy = _scenario_accuracy(method, window, c)
    except _ScenarioError as err:
        return f"{_choice_text(method, window, c)}: {err}"
    need = expected + c["margin"]
    if not accuracy >= need - 1e-12:
        base = c["baseline"]
        return (f"{_choice_text(method, window, c)}: accuracy {accuracy:.3f} on the scenario's {c['n_sequences']} "
                f"sequences < the baseline's {expected:.3f} ({_choice_text(base['method'], base['window'], c)}) "
                f"+ the margin {c['margin']} = {need:.3f}")
    return None


def _capstone_describe(c: dict) -> str:
    return (f"CHOICE on the scenario ({c['task']}, {c['length']:,} tokens, budget {c['budget_mib']} MiB, "
            f"{c['n_sequences']} sequences, seed {c['seed']})")


def _capstone_blocked(*library: Callable[..., Any]) -> tuple[Callable[..., Any], ...]:
    ours = (_ref_longest_within, _longest_reference, _ref_memory_exponent, _exponent_reference,
            _ref_windowed_accuracy, _window_reference, _score_answers, _scenario_accuracy, _scenario_peak)
    return (*library, *ours)


def _unwrapped(*functions: Callable[..., Any]) -> tuple[Callable[..., Any], ...]:
    return tuple(inspect.unwrap(f) for f in functions)


for _name, _cases_fn in (("capstone_longest_small", _longest_small_cases), ("capstone_longest", _longest_cases)):
    _register(Suite(_name, _cases_fn, _longest_run, _longest_reference, _longest_compare, _longest_describe,
                    _LONGEST_FORBIDDEN, lambda: _capstone_blocked(*_unwrapped(
                        _bench_module.longest_fitting, _measure_module.longest_within))))
for _name, _cases_fn in (("capstone_exponent_small", _exponent_small_cases), ("capstone_exponent", _exponent_cases)):
    _register(Suite(_name, _cases_fn, _exponent_run, _exponent_reference, _exponent_compare, _exponent_describe,
                    _EXPONENT_FORBIDDEN, lambda: _capstone_blocked(*_unwrapped(_measure_module.fit_loglog_slope))))
for _name, _cases_fn in (("capstone_window_small", _window_small_cases), ("capstone_window", _window_cases)):
    _register(Suite(_name, _cases_fn, _window_run, _window_reference, _window_compare, _window_describe,
                    _WINDOW_FORBIDDEN, lambda: _capstone_blocked(*_unwrapped(
                        _bench_module.evaluate_quality, _bench_module.answer_logits, _bench_module.measure_quality,
                        _tasks_module.answer_accuracy, _tasks_module.passkey_accuracy,
                        _rmt_module.RecurrentMemoryTransformer.answer_accuracy))))
_register(Suite("capstone_budget", _capstone_cases, _choice_run, lambda c: int(c["budget_mib"] * _MIB),
                _budget_compare, _capstone_describe, _CAPSTONE_FORBIDDEN))
_register(Suite("capstone_baseline", _capstone_cases, _choice_run, _baseline_reference, _baseline_compare,
                _capstone_describe, _CAPSTONE_FORBIDDEN))


# ------------------------------------------------------------------- kernel side
def _pack(value: Any) -> Any:
    """Student output -> plain data for ``torch.save`` (tensors detached, on the CPU)."""
    if isinstance(value, torch.Tensor):
        device = str(value.device)
        if value.device.type == "meta":
            return {"__error__": "the output is a meta tensor (no values)"}
        return {"__tensor__": value.detach().as_subclass(torch.Tensor).to("cpu").clone(), "__device__": device}
    if isinstance(value, (tuple, list)):
        return tuple(_pack(v) for v in value)
    if value is None or type(value) in (int, float, bool, str):
        return value
    return {"__error__": f"returned a {type(value).__name__}"}


def _unpack(value: Any) -> tuple[Any, str | None]:
    """Inverse of :func:`_pack` in the grader: (value, device of the first tensor)."""
    if isinstance(value, dict) and "__tensor__" in value:
        return value["__tensor__"], value.get("__device__")
    if isinstance(value, dict) and "__error__" in value:
        raise ValueError(value["__error__"])
    if isinstance(value, tuple):
        items = [_unpack(v) for v in value]
        return tuple(v for v, _ in items), next((d for _, d in items if d), None)
    return value, None


def _failure_report(suite: Suite, failures: list[str], n: int, who: str) -> str:
    return (f"{suite.name}: {len(failures)} of {n} cases wrong ({who}), e.g.\n" + "\n".join(failures[:3]))


def check(suite_name: str, fn: Any) -> None:
    """Run the student's ``fn`` on the cases of suite ``suite_name`` (in a test cell).

    Under the grader (``$LONGCTX_GRADER_DIR`` set) the cases come from the grader and the
    outputs go back to it for the verdict; otherwise the cases are drawn here. Either way
    the outputs are also compared with the library here, and an AssertionError lists
    the first wrong cases.
    """
    suite = _suite(suite_name)
    functions = fn if isinstance(fn, tuple) else (fn,)
    if not functions or not all(callable(f) for f in functions):
        raise TypeError(f"fn must be the function under test (or a tuple of them); got {fn!r}")
    folder = os.environ.get(GRADER_DIR_ENV)
    inputs = Path(folder) / f"{suite_name}.in.pt" if folder else None
    if inputs is not None and inputs.exists():
        cases = torch.load(inputs, weights_only=True)
    else:
        cases = suite.cases(suite.seed)
    expected = [suite.reference(c) for c in cases]  # before the library is blocked
    outputs, failures = [], []
    with graded_on_its_own(*suite.blocked()):
        for case, exp in zip(cases, expected):
            try:
                got = suite.run(fn, case)
            except Exception as err:  # noqa: BLE001 - any error is the student's to see
                outputs.append({"__error__": f"{type(err).__name__}: {err}"})
                failures.append(f"{suite.describe(case)}: raised {type(err).__name__}: {err}")
                continue
            outputs.append(_pack(got))
            device = got.device if isinstance(got, torch.Tensor) else None
            problem = suite.compare(got, exp, {**case, "_device": device})
            if problem:
                failures.append(f"{suite.describe(case)}: {problem}")
    if folder:
        torch.save(outputs, Path(folder) / f"{suite_name}.out.pt")
    assert not failures, _failure_report(suite, failures, len(cases), "checked in this notebook")


# ------------------------------------------------------------------- grader side
def draw_cases(suite_name: str, folder: Path) -> list[dict]:
    """Draw suite ``suite_name``'s cases and write them for the kernel; return them."""
    suite = _suite(suite_name)
    cases = suite.cases(suite.seed)
    torch.save(cases, Path(folder) / f"{suite_name}.in.pt")
    return cases


def verify(suite_name: str, folder: Path, cases: list[dict]) -> list[str]:
    """The grader's verdict on the outputs the kernel wrote: the problems found (empty: pass)."""
    suite = _suite(suite_name)
    path = Path(folder) / f"{suite_name}.out.pt"
    if not path.exists():
        return [f"{suite_name}: the test did not hand its results to the grader (the cell did not run to "
                "its end, was skipped, or the kernel died)"]
    if path.stat().st_size > MAX_OUTPUT_BYTES:
        return [f"{suite_name}: the results are {path.stat().st_size:,} bytes, more than the grader reads"]
    try:
        outputs = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything but plain data is refused
        return [f"{suite_name}: the results could not be read as plain data ({type(err).__name__})"]
    finally:
        path.unlink(missing_ok=True)
    if not isinstance(outputs, list) or len(outputs) != len(cases):
        return [f"{suite_name}: expected results for {len(cases)} cases"]
    failures = []
    for case, packed in zip(cases, outputs):
        try:
            got, device = _unpack(packed)
        except ValueError as err:
            failures.append(f"{suite.describe(case)}: {err}")
            continue
        problem = suite.compare(got, suite.reference(case), {**case, "_device": device})
        if problem:
            failures.append(f"{suite.describe(case)}: {problem}")
    return [_failure_report(suite, failures, len(cases), "checked by the grader")] if failures else []


# --------------------------------------------------------------- static checks
def referenced_library_names(source: str) -> set[str]:
    """Dotted names of ``longctx_lib`` (and torch's fused SDPA) that ``source`` refers to.

    ``from longctx_lib.costs import x`` -> ``longctx_lib.costs.x``; ``longctx_lib.attention.f(...)``
    -> ``longctx_lib.attention.f``; a bare ``longctx_lib`` -> ``longctx_lib``; any name, attribute
    or string ``scaled_dot_product_attention`` -> ``torch.nn.functional.scaled_dot_product_attention``.
    Code that does not parse refers to nothing (it fails on its own).
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str of Python code; got {type(source).__name__}")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found: set[str] = set()
    attribute_roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            # `import longctx_lib` alone is harmless (its uses are attribute chains, seen
            # below); an alias hides those chains, so it counts as a use of the whole module.
            found |= {a.name for a in node.names
                      if a.name.split(".")[0] == "longctx_lib" and (a.asname or "." in a.name)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "longctx_lib":
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "longctx_lib":
                attribute_roots.add(id(inner))
                found.add(".".join(["longctx_lib", *reversed(parts)]))
        if isinstance(node, ast.Attribute) and node.attr == "scaled_dot_product_attention" or (
                isinstance(node, ast.Name) and node.id == "scaled_dot_product_attention") or (
                isinstance(node, ast.Constant) and isinstance(node.value, str)
                and "scaled_dot_product_attention" in node.value):
            found.add("torch.nn.functional.scaled_dot_product_attention")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "longctx_lib" and id(node) not in attribute_roots:
            found.add("longctx_lib")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "longctx_lib" in node.value:
            found.add("longctx_lib")
    return found


def forbidden_uses(suite_name: str, student_sources: list[str]) -> list[str]:
    """The library names a suite forbids that the student's cells refer to."""
    suite = _suite(suite_name)
    refs = set().union(*(referenced_library_names(s) for s in student_sources)) if student_sources else set()
    bad = sorted(r for r in refs for f in suite.forbidden
                 if r == f or r.startswith(f + ".") or f.startswith(r + "."))
    return sorted(set(bad))


def library_fingerprint() -> dict[str, bytes]:
    """The library's source files as they are now: {path: bytes}."""
    root = Path(__file__).resolve().parent
    return {str(p): p.read_bytes() for p in sorted(root.glob("*.py"))}


def changed_library_files(before: dict[str, bytes], restore: bool = False) -> list[str]:
    """Library files that differ from ``before`` (and, if ``restore``, put them back)."""
    changed = []
    now = library_fingerprint()
    for path in sorted(before.keys() | now.keys()):
        if now.get(path) != before.get(path):
            changed.append(Path(path).name)
            if restore:
                if path in before:
                    Path(path).write_bytes(before[path])
                else:
                    Path(path).unlink(missing_ok=True)
    return changed


def _memory_limit_line(limit_bytes: int) -> str:
    return (f"__import__('resource').setrlimit(__import__('resource').RLIMIT_AS, ({int(limit_bytes)}, "
            f"{int(limit_bytes)}))")


def make_execute_preprocessor():
    """nbgrader's ``Execute`` preprocessor, extended (see the module docstring). Needs nbgrader."""
    import re
    import shutil
    import tempfile

    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbformat import NotebookNode
    from nbgrader.preprocessors import Execute
    from traitlets import Bool, Integer

    # A locked test cell's call: ``check("suite", ...)``, ``_check("suite", ...)`` or
    # ``grading.check("suite", ...)``. (``\bcheck`` alone would miss ``_check``: ``_`` is a word character.)
    suite_call = re.compile(r"""(?<![A-Za-z0-9])_*check\(\s*["'](\w+)["']""")

    class GradingExecute(Execute):
        """Execute, then let the grader decide the graded cells that call :func:`check`."""

        memory_limit_mb = Integer(
            8192, help="Address-space limit of the grading kernel (RLIMIT_AS), MiB; 0 = none").tag(config=True)
        guard_library = Bool(
            False, help="Fail a submission whose run changed longctx_lib's files on disk, and write them "
                        "back. Off by default: in a working tree that people edit while grading runs, "
                        "their edits would be blamed on the student and undone. Turn it on to grade.",
        ).tag(config=True)
        max_output_chars = Integer(
            100_000, help="Characters of output kept per cell (beyond: truncated)").tag(config=True)

        def preprocess(self, nb, resources=None, km=None):
            if self.memory_limit_mb > 0:
                line = _memory_limit_line(self.memory_limit_mb * 2**20)
                if not any("setrlimit" in a for a in self.extra_arguments):
                    self.extra_arguments = [*self.extra_arguments, f"--IPKernelApp.exec_lines={line}"]
            student_sources = [c.source for c in nb.cells if c.cell_type == "code"
                               and not c.metadata.get("nbgrader", {}).get("locked", False)]
            self._folder = Path(tempfile.mkdtemp(prefix="longctx-grader-"))
            library_before = library_fingerprint()
            self._cases, self._forbidden = {}, {}
            previous = os.environ.get(GRADER_DIR_ENV)
            os.environ[GRADER_DIR_ENV] = str(self._folder)
            try:
                for cell in nb.cells:
                    if self._graded_code(cell):
                        for name in suite_call.findall(cell.source):
                            if name in SUITES and name not in self._cases:
                                self._cases[name] = draw_cases(name, self._folder)
                                self._forbidden[name] = forbidden_uses(name, student_sources)
                return self._run_surviving_crashes(nb, resources, km)
            finally:
                if previous is None:
                    os.environ.pop(GRADER_DIR_ENV, None)
                else:
                    os.environ[GRADER_DIR_ENV] = previous
                shutil.rmtree(self._folder, ignore_errors=True)
                changed = self.guard_library and changed_library_files(library_before, restore=True)
                if changed:
                    for cell in nb.cells:
                        if self._graded_code(cell):
                            self._fail(cell, "the submission changed the course library on disk "
                                             f"({', '.join(changed)})")

        @staticmethod
        def _graded_code(cell) -> bool:
            meta = cell.metadata.get("nbgrader", {})
            return cell.cell_type == "code" and meta.get("grade", False) and not meta.get("solution", False)

        def _run_surviving_crashes(self, nb, resources, km):
            """Run; if a cell kills the kernel (or outlives a timeout that cannot interrupt it),
            record it as failed and run the notebook again in a fresh kernel without it."""
            self._killers: dict[int, str] = {}
            original = [c.source for c in nb.cells]
            for _ in range(len(nb.cells) + 1):
                self._current, self._stopped = None, None
                for stale in self._folder.glob("*.out.pt"):  # results of a run that a crash cut short
                    stale.unlink(missing_ok=True)
                for cell in nb.cells:
                    if cell.cell_type == "code":
                        cell.outputs, cell.execution_count = [], None
                try:
                    nb, resources = super().preprocess(nb, resources, km)
                    break
                except (DeadKernelError, CellTimeoutError) as err:
                    if self._current is None or self._current in self._killers:
                        raise
                    what = ("the kernel died (a crash, os._exit, or too much memory)"
                            if isinstance(err, DeadKernelError) else "it did not stop after a timeout")
                    self._killers[self._current] = what
                    self.km = None  # a fresh kernel next time
                    self.kc = None
            for index, what in self._killers.items():
                cell = nb.cells[index]
                cell.source = original[index]
                cell.outputs = []
                self._fail(cell, f"this cell was stopped: {what}. It and the cells that need it earn no points; "
                                 "the rest of the notebook ran in a fresh kernel without it", ename="KernelDiedError")
            return nb, resources

        def preprocess_cell(self, cell, resources, index):
            if index in getattr(self, "_killers", {}):  # skipped: it killed the kernel before
                self._note_stopped(cell, self._killers[index])
                return cell, resources
            self._current = index
            cell, resources = super().preprocess_cell(cell, resources, index)
            self._current = None
            self._limit_output(cell)
            if cell.cell_type == "code" and any(o.output_type == "error" and o.get("ename") == "CellTimeoutError"
                                                for o in cell.outputs):
                self._note_stopped(cell, "ran past the grader's time limit per cell and was stopped (an "
                                         "infinite loop?)")
            elif cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution", False):
                self._stopped = None  # a new exercise's answer ran to its end
            if self._graded_code(cell) and getattr(self, "_stopped", None):
                self._fail(cell, f"{self._stopped[0]} above {self._stopped[1]}: what it defines may be "
                                 "unfinished, so this exercise's tests earn nothing")
            if self._graded_code(cell):
                for output in cell.outputs:  # no partial credit from whatever the cell displays
                    if output.output_type == "execute_result":
                        output.output_type = "display_data"
                        output.pop("execution_count", None)
                for name in suite_call.findall(cell.source):
                    if name not in self._cases:
                        continue
                    problems = verify(name, self._folder, self._cases[name])
                    if self._forbidden.get(name):
                        problems.append(f"{name}: your code uses {', '.join(self._forbidden[name])}; this "
                                        "exercise must be written without the library's version")
                    for problem in problems:
                        self._fail(cell, problem)
            return cell, resources

        def _note_stopped(self, cell, what: str) -> None:
            """A cell that the grader stopped: the test cells after it, up to the next answer
            cell (the rest of its exercise), fail. A stopped test cell fails on its own."""
            if cell.cell_type != "code" or self._graded_code(cell):
                return
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            self._stopped = (f"the answer cell {grade_id!r}" if grade_id else "a code cell", what)

        def _limit_output(self, cell) -> None:
            if cell.cell_type != "code":
                return
            budget = self.max_output_chars
            for output in cell.outputs:
                if output.output_type == "stream":
                    if len(output.text) > budget:
                        output.text = output.text[:max(budget, 0)] + "\n... output truncated by the grader ...\n"
                    budget -= len(output.text)

        @staticmethod
        def _fail(cell, message: str, ename: str = "GraderCheckFailed") -> None:
            cell.outputs.insert(0, NotebookNode(output_type="error", ename=ename, evalue=message,
                                                traceback=[f"{ename}: {message}"]))

    return GradingExecute
