"""longctx_lib.grading without nbgrader: the grader's verdict, the kernel side, the static scan."""

from __future__ import annotations

import pickle

import pytest
import torch
from grading_helpers import grade_suite

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


def test_right_answer_passes_and_wrong_fails(tmp_path, monkeypatch):
    assert grade_suite(tmp_path, monkeypatch, "attention_values", _reference_attention) == []
    wrong = lambda q, k, v, causal=False, key_padding_mask=None: _reference_attention(q * 2, k, v, causal, key_padding_mask)
    problems = grade_suite(tmp_path, monkeypatch, "attention_values", wrong)
    assert problems and "checked by the grader" in problems[0]


def test_calling_the_library_is_blocked(tmp_path, monkeypatch):
    lib = lambda q, k, v, causal=False, key_padding_mask=None: scaled_dot_product_attention(
        q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    problems = grade_suite(tmp_path, monkeypatch, "attention_small", lib)
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
    problems = grade_suite(tmp_path, monkeypatch, "attention_values", fn)
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
    assert grade_suite(tmp_path, monkeypatch, suite, fn) == []


@pytest.mark.parametrize("suite, fn, words", [
    ("lsh_chunk", lambda *a, causal=False: _chunk(*a, causal=causal, scale=False), "max |error|"),
    ("lsh_chunk_gradients", lambda *a, causal=False: _chunk(*a, causal=causal, scale=False), "d/dqk"),
    ("lsh_sort_edges", lambda b, m: _sort(b, m, always_look_back=True), "shape"),
    ("lsh_combine", lambda *a: _combine(*a, stable=False), "NaN"),
    ("lsh_hash", lambda x, r: _hash(x, r).flip(-1), "max |error|"),
    ("lsh_sort", lambda b, m: tuple(t.flip(-1) for t in _sort(b, m)), "query_pos"),
])
def test_lsh_wrong_answers_fail(tmp_path, monkeypatch, suite, fn, words):
    problems = grade_suite(tmp_path, monkeypatch, suite, fn)
    assert problems and "checked by the grader" in problems[0] and words in problems[0], problems


def test_lsh_wrong_answers_pass_the_suites_that_cannot_see_them(tmp_path, monkeypatch):
    """The mistakes above stay invisible to the small suites (which mirror the visible tests)."""
    assert grade_suite(tmp_path, monkeypatch, "lsh_chunk_small",
                  lambda *a, causal=False: _chunk(*a, causal=causal, scale=False)) == []
    assert grade_suite(tmp_path, monkeypatch, "lsh_sort", lambda b, m: _sort(b, m, always_look_back=True)) == []
    assert grade_suite(tmp_path, monkeypatch, "lsh_combine_small", lambda *a: _combine(*a, stable=False)) == []


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
    problems = grade_suite(tmp_path, monkeypatch, "lsh_hash_small", via_library)
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


# ------------------------------------------------- chapter 3: reversible residual layers
import contextlib  # noqa: E402

from longctx_lib import reversible  # noqa: E402

REV_SUITES = {"rev_forward_small": "forward", "rev_forward": "forward", "rev_inverse_small": "inverse",
              "rev_inverse": "inverse", "rev_block_small": "block", "rev_block": "block",
              "rev_block_in_backward": "block", "rev_stack_small": "stack", "rev_stack": "stack"}


# A student's answers, written here from the assignment's prompts (not the grader's code).
def _rev_forward(f, g, x1, x2, g_sees_x1=False):
    y1 = x1 + f(x2)
    return y1, x2 + g(x1 if g_sees_x1 else y1)


def _rev_inverse(f, g, y1, y2, f_first=False):
    if f_first:  # the wrong order: f(y2) in place of f(x2)
        x1 = y1 - f(y2)
        return x1, y2 - g(x1)
    x2 = y2 - g(y1)
    return y1 - f(x2), x2


def _block_backward(f, g, y1, y2, dy1, dy2, mistake=None):
    """With torch.autograd.grad and explicit accumulation (the notebook's solution uses backward)."""
    def through(module, out, x, grad_out):
        params = [p for p in module.parameters() if p.requires_grad]
        found = torch.autograd.grad(out, [x, *params], grad_out, retain_graph=mistake == "keeps_graph")
        for p, grad in zip(params, found[1:]):
            p.grad = grad if p.grad is None or mistake == "overwrites" else p.grad + grad
        return found[0]

    grad_mode = contextlib.nullcontext() if mistake == "no_enable_grad" else torch.enable_grad()
    with grad_mode:
        y1 = y1.detach().requires_grad_(True)
        gy = g(y1)
        total = dy1 + (0 if mistake == "forgets_g_path" else through(g, gy, y1, dy2))
        if mistake == "forgets_g_path":
            through(g, gy, y1, dy2)
        x2 = (y2 - gy).detach().requires_grad_(True)
        fx = f(x2)
        dx2 = dy2 + through(f, fx, x2, total)
        if mistake == "keeps_graph":  # the rebuilt x1 still hangs on f's graph
            return y1 - fx, x2.detach(), total, dx2
    return (y1 - fx).detach(), x2.detach(), total, dx2


def _reversible_backward(blocks, y1, y2, dy1, dy2, step=None, bottom_up=False):
    step = _block_backward if step is None else step
    for f, g in (blocks if bottom_up else reversed(blocks)):
        y1, y2, dy1, dy2 = step(f, g, y1, y2, dy1, dy2)
    return dy1, dy2


_REV_ANSWERS = {"forward": _rev_forward, "inverse": _rev_inverse, "block": _block_backward,
                "stack": _reversible_backward}


@pytest.mark.parametrize("suite", list(REV_SUITES))
def test_rev_right_answers_pass(tmp_path, monkeypatch, suite):
    assert grade_suite(tmp_path, monkeypatch, suite, _REV_ANSWERS[REV_SUITES[suite]]) == []


_OVERWRITES = lambda *a: _block_backward(*a, mistake="overwrites")  # noqa: E731
_FORGETS_G = lambda *a: _block_backward(*a, mistake="forgets_g_path")  # noqa: E731
_NO_ENABLE_GRAD = lambda *a: _block_backward(*a, mistake="no_enable_grad")  # noqa: E731
_KEEPS_GRAPH = lambda *a: _block_backward(*a, mistake="keeps_graph")  # noqa: E731


@pytest.mark.parametrize("suite, fn, words", [
    ("rev_forward_small", lambda *a: _rev_forward(*a, g_sees_x1=True), "y2: max |error|"),
    ("rev_forward", lambda *a: _rev_forward(*a, g_sees_x1=True), "y2: max |error|"),
    ("rev_inverse_small", lambda *a: _rev_inverse(*a, f_first=True), "x1: max |error|"),
    ("rev_inverse", lambda *a: _rev_inverse(*a, f_first=True), "x1: max |error|"),
    ("rev_block_small", _OVERWRITES, "do not replace it"),
    ("rev_block", _OVERWRITES, "do not replace it"),
    ("rev_block_in_backward", _OVERWRITES, "do not replace it"),
    ("rev_block_small", _FORGETS_G, "dx1: max |error|"),
    ("rev_block", _FORGETS_G, "dx1: max |error|"),
    ("rev_block_in_backward", _FORGETS_G, "dx1: max |error|"),
    ("rev_block_in_backward", _NO_ENABLE_GRAD, "does not require grad"),
    ("rev_block_in_backward", _KEEPS_GRAPH, "x1 still attached to an autograd graph"),
    ("rev_stack_small", lambda *a, step: _reversible_backward(*a, step=step, bottom_up=True), "max |error|"),
    ("rev_stack", lambda *a, step: _reversible_backward(*a, step=step, bottom_up=True), "max |error|"),
])
def test_rev_wrong_answers_fail(tmp_path, monkeypatch, suite, fn, words):
    problems = grade_suite(tmp_path, monkeypatch, suite, fn)
    assert problems and "checked by the grader" in problems[0] and words in problems[0], problems


def test_rev_wrong_answers_pass_the_suites_that_cannot_see_them(tmp_path, monkeypatch):
    """Forgetting torch.enable_grad(), or returning a tensor that holds a graph, shows only when
    block_backward is called as a backward pass calls it; exercise 4 is graded with a right step."""
    for fn in (_NO_ENABLE_GRAD, _KEEPS_GRAPH):
        for suite in ("rev_block_small", "rev_block"):
            assert grade_suite(tmp_path, monkeypatch, suite, fn) == [], suite
    broken_step = lambda *a, step: _reversible_backward(*a, step=_FORGETS_G)  # noqa: E731
    assert grade_suite(tmp_path, monkeypatch, "rev_stack", broken_step)  # ignoring `step` costs the points
    assert grade_suite(tmp_path, monkeypatch, "rev_stack", lambda *a, step: _reversible_backward(*a)) == []


def _rev_cases():
    return [c for name in ("rev_block", "rev_stack", "rev_block_in_backward", "rev_block_small")
            for c in grading.SUITES[name].cases(0)]


def test_rev_reference_is_the_library_reversible_backward():
    """The grader's autograd reference equals longctx_lib.reversible.ReversibleSequence's reversible
    backward (modules shared between blocks, starting .grad, float32 included); the step the grader
    gives exercise 4 equals the library's too."""
    checked = 0
    for c in _rev_cases():
        (x1, x2, dx1, dx2), grads = grading._ref_backward(c)
        modules = grading._case_modules(c)
        seq = reversible.ReversibleSequence([reversible.ReversibleBlock(modules[fi], modules[gi])
                                             for fi, gi in c["blocks"]])
        a1, a2 = (c[k].clone().requires_grad_(True) for k in ("x1", "x2"))
        y1, y2 = seq(a1, a2)
        torch.autograd.backward((y1, y2), (c["dy1"], c["dy2"]))
        tol = c["tol"]
        assert (y1.detach() - c["y1"]).abs().max() <= tol and (y2.detach() - c["y2"]).abs().max() <= tol
        rel = lambda got, want: ((got - want).abs() / (1 + want.abs())).max().item()  # noqa: E731
        assert rel(a1.grad, dx1) <= tol and rel(a2.grad, dx2) <= tol, _describe(c)
        library_grads = grading._param_grads(modules)
        assert all(rel(g, e) <= tol for g, e in zip(library_grads, grads)), grading._rev_describe(c)
        # the step given to exercise 4, walked down the stack
        modules = grading._case_modules(c)
        steps = _reversible_backward([(modules[fi], modules[gi]) for fi, gi in c["blocks"]], c["y1"], c["y2"],
                                     c["dy1"], c["dy2"], step=grading._rev_step)
        assert rel(steps[0], dx1) <= tol and rel(steps[1], dx2) <= tol
        assert all(rel(g, e) <= tol for g, e in zip(grading._param_grads(modules), grads))
        checked += 1
    assert checked > 60


def _describe(c):
    return grading._rev_describe(c)


def test_rev_cases_cover_what_the_prompts_promise():
    cases = {name: grading.SUITES[name].cases(0) for name in REV_SUITES}
    kinds = {s["kind"] for c in cases["rev_stack"] for s in c["modules"]}
    assert kinds == {"mlp", "attention", "affine"}
    shared = lambda c: len({i for pair in c["blocks"] for i in pair}) < 2 * len(c["blocks"])  # noqa: E731
    for name in ("rev_forward", "rev_inverse", "rev_block", "rev_block_in_backward", "rev_stack"):
        assert any(shared(c) for c in cases[name]), name
        assert any(c["x1"].dtype == torch.float32 for c in cases[name]), name
    assert any(any(s["grads"] for s in c["modules"]) for c in cases["rev_block"])
    assert all(c["no_grad"] for c in cases["rev_block_in_backward"])
    assert not any(c["no_grad"] for c in cases["rev_block"])
    assert {len(c["blocks"]) for c in cases["rev_stack"]} >= {1, 6}
    assert any(float(c["dy1"].abs().max()) == 0 for c in cases["rev_block_in_backward"])


def test_rev_library_is_blocked_while_graded(tmp_path, monkeypatch):
    via_library = lambda f, g, y1, y2: reversible.ReversibleBlock(f, g).inverse(y1, y2)  # noqa: E731
    problems = grade_suite(tmp_path, monkeypatch, "rev_inverse_small", via_library)
    assert problems and "graded on its own" in problems[0]
    for suite in REV_SUITES:
        blocked = set(grading.SUITES[suite].blocked())
        assert set(grading._module_functions(reversible)) <= blocked, suite
        assert {reversible.ReversibleBlock.forward, reversible.ReversibleBlock.inverse, reversible._block_backward,
                grading._ref_backward, grading._ref_stack_forward} <= blocked, suite
        # exercise 4's hidden tests hand the student's loop a right step: only there is it callable
        assert (grading._rev_step in blocked) == (REV_SUITES[suite] != "stack"), suite
    with grading.graded_on_its_own(*grading.SUITES["rev_block"].blocked()):
        with pytest.raises(AssertionError, match="graded on its own"):
            grading._rev_step(None, None, None, None, None, None)
    f = g = torch.nn.Linear(2, 2)
    assert reversible.ReversibleBlock(f, g)(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2))[0].shape == (1, 1, 2)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.reversible import ReversibleBlock", "rev_forward", True),
    ("from longctx_lib.reversible import ReversibleBlock", "rev_stack", True),  # its inverse does half the work
    ("from longctx_lib import ReversibleSequence", "rev_stack_small", True),
    ("import longctx_lib\nlongctx_lib.reversible._block_backward", "rev_block", True),
    ("from longctx_lib import reversible", "rev_inverse", True),
    ("from longctx_lib.reversible import NormAttention", "rev_block_in_backward", True),  # the whole module
    ("import longctx_lib\ngetattr(longctx_lib, 'reversible')", "rev_forward_small", True),
    ("from longctx_lib.grading import _rev_step", "rev_stack", True),
    ("from longctx_lib.lsh import hash_vectors", "rev_block", False),
    ("import torch\ntorch.autograd.backward", "rev_block", False),
    ("from longctx_lib.reversible import ReversibleBlock", "lsh_hash", False),  # chapter 2 unchanged
])
def test_rev_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


@pytest.mark.parametrize("results", [[(1, 2)], [None], [((None,) * 4, (), ())], ["nonsense"]])
def test_rev_hand_made_results_fail_without_crashing_the_grader(tmp_path, results):
    for suite in ("rev_block_small", "rev_stack_small", "rev_inverse_small"):
        cases = grading.draw_cases(suite, tmp_path)
        torch.save(results * len(cases), tmp_path / f"{suite}.out.pt")
        problems = grading.verify(suite, tmp_path, cases)
        assert problems and "checked by the grader" in problems[0], (suite, problems)
