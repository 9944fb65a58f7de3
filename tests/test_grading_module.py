"""longctx_lib.grading without nbgrader: the grader's verdict, the kernel side, the static scan."""

from __future__ import annotations

import pickle

import pytest
import torch

from longctx_lib import grading
from longctx_lib.attention import scaled_dot_product_attention


def _reference_attention(q, k, v, causal=False, key_padding_mask=None):
    # a copy of the reference through a lambda-free path the guard does not block
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    blocked = torch.zeros(q.shape[-2], k.shape[-2], dtype=torch.bool)
    if causal:
        blocked = torch.ones_like(blocked).triu(1)
    if key_padding_mask is not None:
        blocked = blocked | key_padding_mask[:, None, None, :]
    dead = blocked.all(-1, keepdim=True)
    w = torch.softmax(scores.masked_fill(blocked & ~dead, float("-inf")), -1).masked_fill(dead, 0.0)
    return w @ v


def _grade(tmp_path, monkeypatch, suite, fn):
    """Run the kernel side and the grader side as the grader would, in one process."""
    monkeypatch.setenv(grading.GRADER_DIR_ENV, str(tmp_path))
    cases = grading.draw_cases(suite, tmp_path)
    try:
        grading.check(suite, fn)
    except AssertionError:
        pass  # the local verdict is advice; the grader's is the one that counts
    return grading.verify(suite, tmp_path, cases)


def test_right_answer_passes_and_wrong_fails(tmp_path, monkeypatch):
    assert _grade(tmp_path, monkeypatch, "attention_values", _reference_attention) == []
    wrong = lambda q, k, v, causal=False, key_padding_mask=None: _reference_attention(q * 2, k, v, causal, key_padding_mask)
    problems = _grade(tmp_path, monkeypatch, "attention_values", wrong)
    assert problems and "checked by the grader" in problems[0]


def test_calling_the_library_is_blocked(tmp_path, monkeypatch):
    lib = lambda q, k, v, causal=False, key_padding_mask=None: scaled_dot_product_attention(
        q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    problems = _grade(tmp_path, monkeypatch, "attention_small", lib)
    assert problems and "graded on its own" in problems[0]


def test_no_results_is_a_failure(tmp_path):
    cases = grading.draw_cases("max_length_small", tmp_path)
    assert "did not hand its results" in grading.verify("max_length_small", tmp_path, cases)[0]


class Liar(int):
    """Equal to everything: what a pickled object could do if the grader unpickled it."""

    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


def test_results_that_are_not_plain_data_are_refused(tmp_path):
    cases = grading.draw_cases("max_length_small", tmp_path)

    (tmp_path / "max_length_small.out.pt").write_bytes(pickle.dumps([Liar(0)] * len(cases)))
    assert "plain data" in grading.verify("max_length_small", tmp_path, cases)[0]


@pytest.mark.parametrize("value, words", [
    (float("nan"), "NaN"), ("meta", "meta tensor"), ("float32", "dtype torch.float32"), ("int", "expected a torch.Tensor"),
])
def test_bad_outputs_are_named(tmp_path, monkeypatch, value, words):
    def fn(q, k, v, causal=False, key_padding_mask=None):
        out = _reference_attention(q, k, v, causal, key_padding_mask)
        if value == "meta":
            return out.to("meta")
        if value == "float32":
            return out.float()
        if value == "int":
            return 3
        return torch.full_like(out, value)
    problems = _grade(tmp_path, monkeypatch, "attention_values", fn)
    assert problems and words in problems[0], problems


def test_graded_on_its_own_restores():
    import torch.nn.functional as F

    before = F.scaled_dot_product_attention
    with grading.graded_on_its_own(scaled_dot_product_attention):
        with pytest.raises(AssertionError, match="graded on its own"):
            scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 1),) * 3)
        with pytest.raises(AssertionError):
            F.scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 1),) * 3)
    assert F.scaled_dot_product_attention is before
    assert scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 1),) * 3).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.attention import scaled_dot_product_attention as r", "attention_values", True),
    ("import longctx_lib\nx = longctx_lib.costs.score_matrix_bytes", "costs", True),
    ("import longctx_lib\nx = longctx_lib.costs.score_matrix_bytes", "attention_values", False),
    ("import longctx_lib as L", "attention_values", True),
    ("import torch.nn.functional as F\nF.scaled_dot_product_attention", "attention_small", True),
    ("getattr(F, 'scaled_dot_product_attention')", "attention_small", True),
    ("from longctx_lib.device import resolve_device", "attention_values", False),
    ("def masked_attention(q, k, v):\n    return q  # unlike longctx_lib's", "attention_values", False),
    ("this is not python (", "attention_values", False),
])
def test_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


def test_library_changes_are_detected():
    before = grading.library_fingerprint()
    assert grading.changed_library_files(before) == []
    some = next(iter(before))
    assert grading.changed_library_files({**before, some: b"# changed"}) == [some.rsplit("/", 1)[-1]]


# --------------------------------------------------------- chapter 2: LSH attention
import inspect  # noqa: E402

from longctx_lib import lsh  # noqa: E402

LSH_SUITES = ["lsh_hash_small", "lsh_hash", "lsh_sort_small", "lsh_sort", "lsh_sort_edges", "lsh_chunk_small",
              "lsh_chunk", "lsh_chunk_gradients", "lsh_combine_small", "lsh_combine"]


# A student's answers, written here from the assignment's prompts (not the grader's references).
def _hash(x, rotations):
    rotated = torch.einsum("...ld,dhr->...hlr", x, rotations)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def _sort(buckets, chunk_size, always_look_back=False):
    b, h, r, length = buckets.shape
    qp = torch.argsort(buckets * length + torch.arange(length), dim=-1)  # by (bucket, position)
    qp = qp.view(b, h, r, length // chunk_size, chunk_size)
    if qp.shape[-2] == 1 and not always_look_back:
        return qp, qp.clone()
    before = [qp.shape[-2] - 1, *range(qp.shape[-2] - 1)]
    return qp, torch.cat([qp, qp[..., before, :]], dim=-1)


def _chunk(qk, v, query_pos, key_pos, causal=False, scale=True):
    b, h, _, d = qk.shape
    bi, hi = torch.arange(b).view(-1, 1, 1, 1, 1), torch.arange(h).view(1, -1, 1, 1, 1)
    q = qk[bi, hi, query_pos] / (d ** 0.5 if scale else 1.0)
    k = (qk / qk.norm(dim=-1, keepdim=True))[bi, hi, key_pos]
    logits = q @ k.transpose(-1, -2)
    if causal:
        logits = logits.masked_fill(key_pos[..., None, :] > query_pos[..., :, None], float("-inf"))
    logits = logits.masked_fill(key_pos[..., None, :] == query_pos[..., :, None], lsh.SELF_MASK_VALUE)
    return torch.softmax(logits, -1) @ v[bi, hi, key_pos], torch.logsumexp(logits, -1)


def _combine(out, lse, query_pos, stable=True):
    b, h, r, c, m, dv = out.shape
    inverse = torch.argsort(query_pos.reshape(b, h, r, c * m), dim=-1)  # sorted place of each position
    o = out.reshape(b, h, r, c * m, dv).gather(3, inverse[..., None].expand(-1, -1, -1, -1, dv))
    z = lse.reshape(b, h, r, c * m).gather(3, inverse)
    w = torch.softmax(z, dim=2) if stable else z.exp() / z.exp().sum(dim=2, keepdim=True)
    return (o * w[..., None]).sum(dim=2)


_ANSWERS = {"lsh_hash": _hash, "lsh_sort": _sort, "lsh_chunk": _chunk, "lsh_combine": _combine}


@pytest.mark.parametrize("suite", LSH_SUITES)
def test_lsh_right_answers_pass(tmp_path, monkeypatch, suite):
    fn = next(f for prefix, f in _ANSWERS.items() if suite.startswith(prefix))
    assert _grade(tmp_path, monkeypatch, suite, fn) == []


@pytest.mark.parametrize("suite, fn, words", [
    ("lsh_chunk", lambda *a, causal=False: _chunk(*a, causal=causal, scale=False), "max |error|"),
    ("lsh_chunk_gradients", lambda *a, causal=False: _chunk(*a, causal=causal, scale=False), "d/dqk"),
    ("lsh_sort_edges", lambda b, m: _sort(b, m, always_look_back=True), "shape"),
    ("lsh_combine", lambda *a: _combine(*a, stable=False), "NaN"),
    ("lsh_hash", lambda x, r: _hash(x, r).flip(-1), "max |error|"),
    ("lsh_sort", lambda b, m: tuple(t.flip(-1) for t in _sort(b, m)), "query_pos"),
])
def test_lsh_wrong_answers_fail(tmp_path, monkeypatch, suite, fn, words):
    problems = _grade(tmp_path, monkeypatch, suite, fn)
    assert problems and "checked by the grader" in problems[0] and words in problems[0], problems


def test_lsh_wrong_answers_pass_the_suites_that_cannot_see_them(tmp_path, monkeypatch):
    """The mistakes above stay invisible to the small suites (which mirror the visible tests)."""
    assert _grade(tmp_path, monkeypatch, "lsh_chunk_small",
                  lambda *a, causal=False: _chunk(*a, causal=causal, scale=False)) == []
    assert _grade(tmp_path, monkeypatch, "lsh_sort", lambda b, m: _sort(b, m, always_look_back=True)) == []
    assert _grade(tmp_path, monkeypatch, "lsh_combine_small", lambda *a: _combine(*a, stable=False)) == []


def test_lsh_references_compose_to_the_library():
    """The grader's references, composed, are longctx_lib.lsh.lsh_attention (count_duplicates=False)."""
    gen = torch.Generator().manual_seed(0)
    for trial, (length, m, n_hashes, n_buckets, causal) in enumerate(
            [(24, 4, 3, 8, False), (24, 4, 3, 8, True), (8, 8, 2, 4, True), (7, 1, 2, 2, False), (16, 8, 4, 2, True),
             (30, 5, 1, 16, False)]):
        qk = torch.randn(2, 2, length, 5, generator=gen, dtype=torch.float64)
        v = torch.randn(2, 2, length, 3, generator=gen, dtype=torch.float64)
        rot = lsh.random_rotations(5, n_buckets, n_hashes, generator=gen, dtype=torch.float64)
        expected, buckets = lsh.lsh_attention(qk, v, n_buckets=n_buckets, n_hashes=n_hashes, chunk_size=m,
                                              causal=causal, rotations=rot, count_duplicates=False,
                                              return_buckets=True)
        assert torch.equal(grading._REF_HASH(qk, n_buckets, n_hashes, rotations=rot), buckets)
        qp, kp = grading._ref_sort_and_chunk(buckets, m)
        out, lse = grading._ref_chunk_attention(qk, v, qp, kp, causal)
        got = grading._ref_combine_rounds(out, lse, qp)
        assert (got - expected).abs().max().item() < 1e-12, trial
        # and the student-style answers above agree with the references
        assert torch.equal(_hash(qk, rot), buckets)
        assert all(torch.equal(a, b) for a, b in zip(_sort(buckets, m), (qp, kp)))
        assert (_combine(*_chunk(qk, v, qp, kp, causal), qp) - expected).abs().max().item() < 1e-12


def test_lsh_library_is_blocked_while_graded(tmp_path, monkeypatch):
    via_library = lambda x, r: lsh.hash_vectors(x, 2 * r.shape[-1], r.shape[1], rotations=r)
    problems = _grade(tmp_path, monkeypatch, "lsh_hash_small", via_library)
    assert problems and "graded on its own" in problems[0]
    blocked = grading.SUITES["lsh_chunk"].blocked()
    assert {lsh.lsh_attention, lsh.hash_vectors, lsh.random_rotations, lsh.LSHSelfAttention.forward,
            grading._ref_chunk_attention} <= set(blocked)
    # Whatever lsh.py's helpers are called now: every function, and every method of its classes
    # (an autograd.Function's static forward and backward included), except closures.
    functions = []
    for obj in vars(lsh).values():
        if getattr(obj, "__module__", None) != lsh.__name__:
            continue
        members = vars(obj).values() if isinstance(obj, type) else [obj]
        functions += [getattr(f, "__func__", f) for f in members]
    functions = [f for f in functions if inspect.isfunction(f) and f.__module__ == lsh.__name__
                 and not f.__code__.co_freevars]
    assert functions and set(functions) <= set(blocked)
    with grading.graded_on_its_own(*blocked):
        with pytest.raises(AssertionError, match="graded on its own"):
            lsh.lsh_attention(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2), n_buckets=2, n_hashes=1, chunk_size=2)
    assert lsh.hash_vectors(torch.ones(1, 2), 2, 1).shape == (1, 1)  # restored


def test_lsh_private_names_are_forbidden():
    """Every private function or class of lsh.py (an autograd.Function, a plan) is off limits."""
    private = [name for name, obj in vars(lsh).items() if name.startswith("_") and (inspect.isfunction(obj)
               or inspect.isclass(obj)) and obj.__module__ == lsh.__name__]
    assert private
    for name in private:
        for suite in LSH_SUITES:
            assert grading.forbidden_uses(suite, [f"from longctx_lib.lsh import {name}"]), (name, suite)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.lsh import hash_vectors", "lsh_hash", True),
    ("from longctx_lib import hash_vectors", "lsh_hash_small", True),
    ("from longctx_lib.lsh import hash_vectors", "lsh_sort", False),  # it cannot sort: exercise 1 pays
    ("import longctx_lib\nlongctx_lib.lsh._one_round", "lsh_chunk", True),
    ("from longctx_lib.lsh import _look_back", "lsh_sort_edges", True),
    ("from longctx_lib.lsh import lsh_attention", "lsh_combine", True),
    ("from longctx_lib import lsh", "lsh_combine", True),
    ("from longctx_lib.grading import _ref_chunk_attention", "lsh_chunk", True),
    ("from longctx_lib.lsh import SELF_MASK_VALUE", "lsh_chunk", False),
    ("torch.nn.functional.scaled_dot_product_attention", "lsh_chunk_gradients", True),
    ("from longctx_lib.grading import check", "attention_values", False),  # chapter 1 unchanged
])
def test_lsh_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged
