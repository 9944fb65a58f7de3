"""Assignment 4 (chunking and the assembled Reformer): its grader suites, and nbgrader grading it.

Two parts, as for assignment 3 (``tests/test_grading_module.py`` and ``tests/test_grading_03.py``):

* The chapter-4 suites of ``longctx_lib.grading`` without nbgrader: right answers written from
  the prompts pass; each wrong answer fails exactly the suites that can see its mistake; the
  grader's references (plain autograd on the whole sequence, ``F.cross_entropy`` on the full
  logits) agree with ``longctx_lib.chunking`` and ``longctx_lib.reversible``; the library is
  blocked and its use is found by the static scan; hand-made results fail without crashing the
  grader; the largest-tensor probe sees what it should.
* The assignment graded by nbgrader, as a student's work would be:

  1. Regenerating the student notebook reproduces the committed ``notebooks/`` exactly.
  2. The solution notebook, submitted as a student's, earns every autograded point.
  3. The untouched student notebook earns none.
  4. Wrong submissions earn partial marks: exactly the points of the test cells that can
     detect their mistake. Each exercise is graded on its own, so one submission with a
     mistake in every exercise loses exactly the union of their cells.
  5. Grading leaves the submitted file byte for byte as it was.

One temporary course per module (generate_assignment once); each submission is autograded
once and shared by the tests that read its scores.
"""

from __future__ import annotations

import contextlib

import nbformat
import pytest
import torch
import torch.nn.functional as F
from grading_helpers import (
    Course,
    answer_cells,
    assert_student_matches_generated,
    cached_grader,
    check_assignment_layout,
    grade_suite,
    printed_output,
    well_formed_grades,
)
from nbhelpers import REPO

from longctx_lib import chunking, grading, reformer, reversible

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "04-chunking"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
AUTOGRADED_POINTS = 13

SUITES = {"chunk_forward_small": "forward", "chunk_forward": "forward", "chunk_backward_small": "backward",
          "chunk_backward": "backward", "chunk_backward_in_backward": "backward", "ce_forward_small": "ce_forward",
          "ce_forward": "ce_forward", "ce_forward_memory": "ce_forward", "ce_backward_small": "ce_backward",
          "ce_backward": "ce_backward", "ce_backward_memory": "ce_backward", "reformer_block_small": "block",
          "reformer_block": "block"}


# ============================================================ the suites, without nbgrader
# A student's answers, written here from the assignment's prompts (not the grader's code), with
# the mistakes the tests below make. They take other routes than the notebook's solution where
# the prompts allow one (autograd.grad with explicit accumulation; the loss's backward by autograd).
def _chunked_forward(fn, x, chunk_size, mistake=None):
    spans = [(s, s + chunk_size) for s in range(0, x.shape[1], chunk_size)]
    if mistake == "unchunked":
        spans = [(0, x.shape[1])]
    with torch.enable_grad() if mistake == "keeps_graph" else torch.no_grad():
        return torch.cat([fn(x[:, a:b]) for a, b in spans], dim=1)


def _chunked_backward(fn, x, grad_out, chunk_size, mistake=None):
    params = [p for p in fn.parameters() if p.requires_grad]
    spans = [slice(s, s + chunk_size) for s in range(0, x.shape[1], chunk_size)]
    if mistake == "unchunked":
        spans = [slice(0, x.shape[1])]
    if mistake == "all_at_once":  # every chunk's graph alive, then one backward: right values
        with torch.enable_grad():
            leaves = [x[:, s].detach().requires_grad_(True) for s in spans]
            torch.autograd.backward(torch.cat([fn(leaf) for leaf in leaves], dim=1), grad_out)
        return torch.cat([leaf.grad for leaf in leaves], dim=1)
    dx = torch.zeros_like(x)
    for span in spans:
        with contextlib.nullcontext() if mistake == "no_enable_grad" else torch.enable_grad():
            leaf = x[:, span].detach().requires_grad_(True)
            found = torch.autograd.grad(fn(leaf), [leaf, *params], grad_out[:, span])
        for p, g in zip(params, found[1:]):
            p.grad = g if p.grad is None or mistake == "overwrites" else p.grad + g
        dx[:, span] = found[0]
    if mistake == "keeps_graph":  # right values, but attached to a graph
        with torch.enable_grad():
            return dx + torch.zeros_like(dx, requires_grad=True)
    return dx


def _ce_forward(hidden, weight, bias, targets, chunk_size, mistake=None):
    n = hidden.shape[0]
    if mistake == "full_logits":
        logits = F.linear(hidden, weight, bias)
        return F.cross_entropy(logits, targets), torch.logsumexp(logits, dim=-1)
    losses, lses = [], []
    for s in range(0, n, chunk_size):
        logits = F.linear(hidden[s:s + chunk_size], weight, None if mistake == "no_bias" else bias)
        lse = logits.exp().sum(-1).log() if mistake == "naive_lse" else torch.logsumexp(logits, dim=-1)
        lses.append(lse)
        losses.append((lse - logits.gather(1, targets[s:s + chunk_size, None])[:, 0]).sum())
    return torch.stack(losses).sum() / n, torch.cat(lses)


def _ce_backward(hidden, weight, bias, targets, lse, chunk_size, mistake=None):
    """By autograd, a chunk at a time (the prompt allows it); lse unused."""
    n = hidden.shape[0]
    size = n if mistake == "full_logits" else chunk_size
    d_hidden, d_weight, d_bias = [], torch.zeros_like(weight), torch.zeros_like(bias)
    for s in range(0, n, size):
        with torch.enable_grad():
            h, w, b = (t.detach().requires_grad_(True) for t in (hidden[s:s + size], weight, bias))
            loss = F.cross_entropy(F.linear(h, w, b), targets[s:s + size], reduction="sum")
            loss = loss if mistake == "no_mean" else loss / n
            found = torch.autograd.grad(loss, (h, w, b))
        d_hidden.append(found[0])
        d_weight += found[1]
        d_bias += found[2]
    return torch.cat(d_hidden), d_weight, d_bias


def _block(f, g, x1, x2, chunk_size, apply=None, mistake=None):
    y1 = x1 + (apply(f, x2, chunk_size) if mistake == "chunks_f" else f(x2))
    if mistake == "unchunked":
        return y1, x2 + g(y1)
    if mistake == "forward_only":  # a chunked forward pass that records nothing
        return y1, x2 + _chunked_forward(g, y1, chunk_size)
    return y1, x2 + apply(g, x1 if mistake == "g_sees_x1" else y1, chunk_size)


_ANSWERS = {"forward": _chunked_forward, "backward": _chunked_backward, "ce_forward": _ce_forward,
            "ce_backward": _ce_backward, "block": _block}


def _wrong(kind, mistake):
    answer = _ANSWERS[kind]
    return lambda *args, **kwargs: answer(*args, **kwargs, mistake=mistake)


# The solution notebook's autograde runs every suite; here other routes than the solution's
# (autograd.grad with explicit accumulation; the loss's backward by autograd) run the small suites
# and the memory suites by default, and the large ones when slow tests are asked for.
@pytest.mark.parametrize("suite", [
    pytest.param(s, marks=() if s.endswith(("_small", "_memory")) else pytest.mark.slow) for s in SUITES
])
def test_right_answers_pass(tmp_path, monkeypatch, suite):
    assert grade_suite(tmp_path, monkeypatch, suite, _ANSWERS[SUITES[suite]]) == []


# (answer, mistake) -> {suite: words in the grader's report}; every other suite of that exercise passes.
WRONG_ANSWERS = {
    ("forward", "keeps_graph"): {"chunk_forward_small": "attached to an autograd graph",
                                 "chunk_forward": "attached to an autograd graph"},
    ("forward", "unchunked"): {"chunk_forward_small": "positions at once", "chunk_forward": "positions at once"},
    ("backward", "overwrites"): {s: "do not replace it" for s in
                                 ("chunk_backward_small", "chunk_backward", "chunk_backward_in_backward")},
    ("backward", "no_enable_grad"): {"chunk_backward_in_backward": "does not require grad"},
    ("backward", "all_at_once"): {"chunk_backward_in_backward": "graphs were alive at once"},
    ("backward", "unchunked"): {"chunk_backward_in_backward": "positions at once"},
    ("backward", "keeps_graph"): {"chunk_backward_in_backward": "still attached to an autograd graph"},
    ("ce_forward", "full_logits"): {"ce_forward_memory": "at least half the full logits"},
    ("ce_forward", "no_bias"): {s: "loss: max |error|" for s in ("ce_forward_small", "ce_forward", "ce_forward_memory")},
    ("ce_forward", "naive_lse"): {"ce_forward": "NaN or inf"},
    ("ce_backward", "full_logits"): {"ce_backward_memory": "at least half the full logits"},
    ("ce_backward", "no_mean"): {s: "d hidden: max |error|" for s in
                                 ("ce_backward_small", "ce_backward", "ce_backward_memory")},
    ("block", "unchunked"): {"reformer_block_small": "g was called on", "reformer_block": "g was called on"},
    ("block", "forward_only"): {"reformer_block_small": "g's parameters got no gradient",
                                "reformer_block": "g's parameters got no gradient"},
    ("block", "g_sees_x1"): {"reformer_block_small": "y2: max |error|", "reformer_block": "y2: max |error|"},
    ("block", "chunks_f"): {"reformer_block_small": "y1: max |error|", "reformer_block": "y1: max |error|"},
}


# Run by default: mistakes that only the chunking-specific checks can see (the nbgrader tests below
# cover one mistake per exercise); the others are marked slow.
ESSENTIAL_WRONG_ANSWERS = {("backward", "all_at_once"), ("backward", "keeps_graph"), ("ce_backward", "full_logits"),
                           ("block", "forward_only")}


@pytest.mark.parametrize("kind, mistake", [
    pytest.param(*key, marks=() if key in ESSENTIAL_WRONG_ANSWERS else pytest.mark.slow) for key in WRONG_ANSWERS
])
def test_wrong_answers_fail_exactly_the_suites_that_can_see_them(tmp_path, monkeypatch, kind, mistake):
    expected = WRONG_ANSWERS[(kind, mistake)]
    for suite in (s for s, k in SUITES.items() if k == kind):
        problems = grade_suite(tmp_path, monkeypatch, suite, _wrong(kind, mistake))
        if suite in expected:
            assert problems and "checked by the grader" in problems[0] and expected[suite] in problems[0], (
                suite, problems)
        else:
            assert problems == [], (suite, problems)


def test_naive_softmax_fails_only_on_large_logits(tmp_path, monkeypatch):
    """exp(z) / sum(exp(z)) without the log-sum-exp: right until the logits near 1000."""
    def naive(hidden, weight, bias, targets, lse, chunk_size):
        n = hidden.shape[0]
        d_hidden, d_weight, d_bias = torch.empty_like(hidden), torch.zeros_like(weight), torch.zeros_like(bias)
        for s in range(0, n, chunk_size):
            h = hidden[s:s + chunk_size]
            e = torch.exp(F.linear(h, weight, bias))
            grad = e / e.sum(-1, keepdim=True)
            grad[torch.arange(h.shape[0]), targets[s:s + chunk_size]] -= 1
            grad /= n
            d_hidden[s:s + chunk_size], d_weight, d_bias = grad @ weight, d_weight + grad.T @ h, d_bias + grad.sum(0)
        return d_hidden, d_weight, d_bias

    problems = grade_suite(tmp_path, monkeypatch, "ce_backward", naive)
    assert problems and "logits near 1000" in problems[0] and "1 of" in problems[0], problems
    for suite in ("ce_backward_small", "ce_backward_memory"):
        assert grade_suite(tmp_path, monkeypatch, suite, naive) == [], suite


# ----------------------------------------------------------------- references vs the library
def _rel(got, want):
    return ((got - want).abs() / (1 + want.abs())).max().item()


def _cases(*names, every=1):
    """The cases of suites ``names`` as the grader draws them (``every``: one case in that many)."""
    return [c for name in names for c in grading.SUITES[name].cases(grading.SUITES[name].seed)][::every]


def test_chunk_references_agree_with_apply_chunked():
    """The grader's references for exercises 1-2 (plain autograd on the whole sequence), and the
    ``apply`` it gives exercise 5, equal longctx_lib.chunking.apply_chunked: values, the input's
    gradient and the parameters' (from the .grad they start with)."""
    checked = 0
    for c in _cases("chunk_forward_small", "chunk_forward", "chunk_backward_small", "chunk_backward",
                    "chunk_backward_in_backward", every=2):  # half of them: one reference serves every suite
        tol, size = c["tol"], c["chunk_size"]
        want_y = grading._ref_cf_forward(c)[0]
        want_dx, want_grads = grading._ref_cf_backward(c)[:2]
        for apply in (lambda fn, x: chunking.apply_chunked(fn, x, chunk_size=size),
                      lambda fn, x: grading._ref_chunked_apply(fn, x, size)):
            module = grading._CaseModule(c["fn"])
            x = c["x"].clone().requires_grad_(True)
            y = apply(module, x)
            assert _rel(y.detach(), want_y) <= tol, grading._cf_describe(c)
            torch.autograd.backward(y, c["grad_out"])
            assert _rel(x.grad, want_dx) <= tol, grading._cf_describe(c)
            got = grading._param_grads([module])
            assert all(_rel(g, e) <= tol for g, e in zip(got, want_grads)), grading._cf_describe(c)
        checked += 1
    assert checked > 25


def test_loss_references_agree_with_chunked_cross_entropy():
    """The grader's references for exercises 3-4 (F.cross_entropy on the full logits) equal
    longctx_lib.chunking.chunked_cross_entropy, loss and gradients; the lse handed to exercise 4
    is the log-sum-exp of the full logits."""
    checked = 0
    for c in _cases("ce_forward_small", "ce_forward", "ce_forward_memory"):
        (want_loss, want_lse), _ = grading._ref_ce_forward(c)
        (want_dh, want_dw, want_db), _ = grading._ref_ce_backward(c)
        h, w, b = (c[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias"))
        loss = chunking.chunked_cross_entropy(h, w, c["targets"], bias=b, chunk_size=c["chunk_size"])
        loss.backward()
        tol = c["tol"]
        assert _rel(loss.detach(), want_loss) <= tol, grading._ce_describe(c)
        assert _rel(c["lse"], want_lse) <= tol, grading._ce_describe(c)
        assert _rel(h.grad, want_dh) <= tol and _rel(w.grad, want_dw) <= tol and _rel(b.grad, want_db) <= tol, (
            grading._ce_describe(c))
        checked += 1
    assert checked > 20


def test_block_reference_agrees_with_the_library_block():
    """The grader's reference for exercise 5 (plain autograd through the unchunked block) equals
    longctx_lib.reversible.ReversibleBlock with g wrapped in longctx_lib.chunking.ChunkedFeedForward."""
    checked = 0
    for c in _cases("reformer_block_small", "reformer_block"):
        (want_y1, want_y2), (want_dx1, want_dx2), want_grads, _ = grading._ref_block(c)
        f, g = grading._case_modules(c)
        block = reversible.ReversibleBlock(f, chunking.ChunkedFeedForward(g, chunk_size=c["chunk_size"]))
        x1, x2 = (c[k].clone().requires_grad_(True) for k in ("x1", "x2"))
        y1, y2 = block(x1, x2)
        torch.autograd.backward((y1, y2), (c["dy1"], c["dy2"]))
        tol = c["tol"]
        assert _rel(y1.detach(), want_y1) <= tol and _rel(y2.detach(), want_y2) <= tol, grading._block_describe(c)
        assert _rel(x1.grad, want_dx1) <= tol and _rel(x2.grad, want_dx2) <= tol, grading._block_describe(c)
        assert all(_rel(g, e) <= tol for g, e in zip(grading._param_grads([f, g]), want_grads))
        checked += 1
    assert checked > 15


def test_cases_cover_what_the_prompts_promise():
    cases = {name: grading.SUITES[name].cases(0) for name in SUITES}
    for name in ("chunk_forward", "chunk_backward", "chunk_backward_in_backward"):
        found = cases[name]
        length = lambda c: c["x"].shape[1]  # noqa: E731
        assert any(length(c) % c["chunk_size"] and c["chunk_size"] < length(c) for c in found), name  # uneven last
        assert any(c["chunk_size"] == 1 and length(c) > 1 for c in found), name
        assert any(c["chunk_size"] == length(c) for c in found), name
        assert any(c["chunk_size"] > length(c) for c in found), name
        assert any(c["x"].dtype == torch.float32 for c in found), name
        assert any(c["grad_out"].shape[-1] != c["x"].shape[-1] for c in found), name  # d_out != d_in
        assert {c["fn"]["kind"] for c in found} == {"mlp", "affine"}, name
    assert any(length(c) == 1 for c in cases["chunk_forward"])
    assert any(c["fn"]["grads"] for c in cases["chunk_backward"])
    assert not any(c["no_grad"] or c["strict"] for c in cases["chunk_backward"])
    assert all(c["no_grad"] and c["strict"] for c in cases["chunk_backward_in_backward"])
    ce = cases["ce_forward"]
    assert any(c["weight"].shape[0] == 1 for c in ce) and any(c["hidden"].shape[0] == 1 for c in ce)
    assert any(c["chunk_size"] == 1 for c in ce) and any(c["chunk_size"] > c["hidden"].shape[0] for c in ce)
    assert any(c["hidden"].dtype == torch.float32 for c in ce)
    assert max(float(c["lse"].abs().max()) for c in ce) > 750  # exp(750) overflows float64
    for c in cases["ce_forward_memory"]:  # what a chunked loss needs is at most a quarter of the full logits
        (n, d), vocab, size = c["hidden"].shape, c["weight"].shape[0], c["chunk_size"]
        assert 4 * max(size * vocab, n * d, vocab * d) <= n * vocab, grading._ce_describe(c)
    assert [grading._ce_describe(c) for c in cases["ce_backward_memory"]] == [
        grading._ce_describe(c) for c in cases["ce_forward_memory"]]
    blocks = cases["reformer_block"]
    assert {c["modules"][0]["kind"] for c in blocks} >= {"attention", "mlp"}
    assert {c["modules"][1]["kind"] for c in blocks} <= {"mlp", "affine"}  # g is position-wise
    assert sum("changed" in (c["note"] or "") for c in blocks) >= 3  # causality by perturbation
    assert any(c["x1"].dtype == torch.float32 for c in blocks)
    assert any(c["chunk_size"] < c["x1"].shape[1] and c["x1"].shape[1] % c["chunk_size"] for c in blocks)


def test_library_is_blocked_while_graded(tmp_path, monkeypatch):
    via_library = lambda fn, x, chunk_size: chunking.apply_chunked(fn, x, chunk_size=chunk_size)  # noqa: E731
    problems = grade_suite(tmp_path, monkeypatch, "chunk_forward_small", via_library)
    assert problems and "graded on its own" in problems[0]

    def loss_via_library(hidden, weight, bias, targets, chunk_size):
        return chunking.chunked_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk_size), hidden[:, 0]
    problems = grade_suite(tmp_path, monkeypatch, "ce_forward_small", loss_via_library)
    assert problems and "graded on its own" in problems[0]

    def block_via_library(f, g, x1, x2, chunk_size, apply=None):
        return reversible.ReversibleBlock(f, chunking.ChunkedFeedForward(g, chunk_size=chunk_size))(x1, x2)
    problems = grade_suite(tmp_path, monkeypatch, "reformer_block_small", block_via_library)
    assert problems and "graded on its own" in problems[0]

    references = {grading._ref_cf_forward, grading._ref_cf_backward, grading._ref_ce_forward,
                  grading._ref_ce_backward, grading._ref_block, grading._ref_stack_forward}
    apply = {grading._ref_chunked_apply, grading._RefChunked.forward, grading._RefChunked.backward}
    for suite, kind in SUITES.items():
        blocked = set(grading.SUITES[suite].blocked())
        assert set(grading._module_functions(chunking)) <= blocked, suite
        assert set(grading._module_functions(reformer)) <= blocked, suite
        assert references <= blocked, suite
        # exercise 5's hidden tests hand the student's block a right apply: only there is it callable,
        # and only there is longctx_lib.reversible (its ReversibleBlock) blocked
        assert apply.isdisjoint(blocked) == (kind == "block"), suite
        assert set(grading._module_functions(reversible)) <= blocked or kind != "block", suite
    with grading.graded_on_its_own(*grading.SUITES["chunk_forward"].blocked()):
        with pytest.raises(AssertionError, match="graded on its own"):
            grading._ref_chunked_apply(None, None, 1)
    assert chunking.apply_chunked(torch.nn.Linear(2, 2), torch.zeros(1, 3, 2), chunk_size=2).shape == (1, 3, 2)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.chunking import apply_chunked", "chunk_forward", True),
    ("from longctx_lib.chunking import chunked_cross_entropy", "ce_backward_memory", True),
    ("from longctx_lib import chunking", "reformer_block", True),
    ("import longctx_lib\nlongctx_lib.chunking._ChunkedApply", "chunk_backward_in_backward", True),
    ("from longctx_lib.reformer import ReformerLM", "ce_forward", True),
    ("from longctx_lib.grading import _ref_chunked_apply", "reformer_block", True),
    ("from longctx_lib.reversible import ReversibleBlock", "reformer_block_small", True),
    ("from longctx_lib.reversible import ReversibleBlock", "chunk_forward", False),  # no help for exercises 1-4
    ("from longctx_lib.measure import saved_tensor_bytes", "ce_forward", False),
    ("import torch.nn.functional as F\nF.cross_entropy", "ce_forward", False),
    ("from longctx_lib.chunking import apply_chunked", "rev_forward", False),  # chapter 3 unchanged
])
def test_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


@pytest.mark.parametrize("results", [[(1, 2)], [None], [((None,) * 5, (), ())], ["nonsense"], [(None, None)]])
def test_hand_made_results_fail_without_crashing_the_grader(tmp_path, results):
    for suite in ("chunk_forward_small", "chunk_backward_small", "ce_forward_small", "ce_backward_small",
                  "reformer_block_small"):
        cases = grading.draw_cases(suite, tmp_path)
        torch.save(results * len(cases), tmp_path / f"{suite}.out.pt")
        problems = grading.verify(suite, tmp_path, cases)
        assert problems and "checked by the grader" in problems[0], (suite, problems)


def test_largest_tensor_probe():
    """It sees the full logits built by a matmul or inside autograd's backward, and not a view."""
    h, w = torch.randn(64, 4, requires_grad=True), torch.randn(50, 4, requires_grad=True)
    with grading._largest_tensor() as seen:
        loss = F.cross_entropy(h[:8] @ w.T, torch.zeros(8, dtype=torch.long))
    assert seen.largest == 8 * 50
    with grading._largest_tensor() as seen:
        loss.backward()  # autograd's own tensors: the chunk's logits' gradient, w's gradient
    assert 8 * 50 <= seen.largest < 64 * 50
    with grading._largest_tensor() as seen:
        torch.zeros(1, 50).expand(64, 50).sum()  # a view allocates nothing
    assert seen.largest < 64 * 50
    with grading._largest_tensor() as seen:
        (h @ w.T).sum()
    assert seen.largest == 64 * 50


# ============================================================ graded by nbgrader
FORWARD = {"test_chunked_forward_visible", "test_chunked_forward_hidden"}
BACKWARD = {"test_chunked_backward_visible", "test_chunked_backward_hidden", "test_chunked_backward_in_backward"}
CE_FORWARD = {"test_chunked_ce_forward_visible", "test_chunked_ce_forward_hidden", "test_chunked_ce_forward_memory"}
CE_BACKWARD = {"test_chunked_ce_backward_visible", "test_chunked_ce_backward_hidden",
               "test_chunked_ce_backward_memory"}
BLOCK = {"test_reformer_block_visible", "test_reformer_block_hidden"}

# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give it 0
# points; every other test cell must give full points.
_FORWARD_KEEPS_GRAPH = '''
def chunked_forward(fn, x, chunk_size):
    return torch.cat([fn(x[:, s:s + chunk_size]) for s in range(0, x.shape[1], chunk_size)], dim=1)
'''
_BACKWARD = '''
def chunked_backward(fn, x, grad_out, chunk_size):
    params = [p for p in fn.parameters() if p.requires_grad]
    dx = torch.empty_like(x)
    for start in range(0, x.shape[1], chunk_size):
        span = slice(start, start + chunk_size)
        {enable}
            chunk = x[:, span].detach().requires_grad_(True)
            found = torch.autograd.grad(fn(chunk), [chunk, *params], grad_out[:, span])
        for p, grad in zip(params, found[1:]):
            {accumulate}
        dx[:, span] = found[0]
    return dx
'''
_ADD = "p.grad = grad if p.grad is None else p.grad + grad"
_ENABLE = "with torch.enable_grad():"


def _backward(enable=_ENABLE, accumulate=_ADD):
    return _BACKWARD.format(enable=enable, accumulate=accumulate)


_BACKWARD_ALL_AT_ONCE = '''
def chunked_backward(fn, x, grad_out, chunk_size):
    with torch.enable_grad():
        chunks = [x[:, s:s + chunk_size].detach().requires_grad_(True) for s in range(0, x.shape[1], chunk_size)]
        torch.autograd.backward(torch.cat([fn(c) for c in chunks], dim=1), grad_out)
    return torch.cat([c.grad for c in chunks], dim=1)
'''
_CE_FORWARD_FULL_LOGITS = '''
def chunked_ce_forward(hidden, weight, bias, targets, chunk_size):
    logits = hidden @ weight.T + bias
    return F.cross_entropy(logits, targets), torch.logsumexp(logits, dim=-1)
'''
_CE_FORWARD_NAIVE = '''
def chunked_ce_forward(hidden, weight, bias, targets, chunk_size):
    total, lse = 0, []
    for s in range(0, hidden.shape[0], chunk_size):
        logits = hidden[s:s + chunk_size] @ weight.T + bias
        lse.append(logits.exp().sum(dim=-1).log())
        total = total + (lse[-1] - logits.gather(1, targets[s:s + chunk_size, None])[:, 0]).sum()
    return total / hidden.shape[0], torch.cat(lse)
'''
_CE_BACKWARD = '''
def chunked_ce_backward(hidden, weight, bias, targets, lse, chunk_size):
    n = hidden.shape[0]
    size = {size}
    d_hidden, d_weight, d_bias = torch.empty_like(hidden), torch.zeros_like(weight), torch.zeros_like(bias)
    for start in range(0, n, size):
        h = hidden[start:start + size]
        grad = torch.exp(h @ weight.T + bias - lse[start:start + size, None])
        grad[torch.arange(h.shape[0]), targets[start:start + size]] -= 1
        grad = grad {mean}
        d_hidden[start:start + size] = grad @ weight
        d_weight += grad.T @ h
        d_bias += grad.sum(dim=0)
    return d_hidden, d_weight, d_bias
'''
_BLOCK = '''
def reformer_block(f, g, x1, x2, chunk_size, apply=None):
    apply = chunked_apply if apply is None else apply
    y1 = x1 + f(x2)
    return y1, x2 + {g_of_y1}
'''

WRONG = {
    # No torch.no_grad(): the values are right, but the result holds a graph (and every chunk's
    # intermediates): the visible test checks it, and so does every hidden case (x requires grad).
    "forward_keeps_graph": ({"chunked_forward": _FORWARD_KEEPS_GRAPH}, FORWARD),
    # .grad replaced rather than added to: with several chunks even the first call is wrong (only the
    # last chunk's share is left), so every test of exercise 2 sees it.
    "backward_overwrites_grads": ({"chunked_backward": _backward(accumulate="p.grad = grad")}, BACKWARD),
    # Recomputes without torch.enable_grad(): right wherever autograd records (the visible tests,
    # the hidden values), fails when called as a backward pass calls it, under torch.no_grad().
    "backward_no_enable_grad": ({"chunked_backward": _backward(enable="if True:  # no torch.enable_grad()")},
                                {"test_chunked_backward_in_backward"}),
    # Every chunk's graph alive at once, then one backward call: right values, the memory of the
    # unchunked layer. Only the test that watches the graphs sees it.
    "backward_all_chunks_at_once": ({"chunked_backward": _BACKWARD_ALL_AT_ONCE}, {"test_chunked_backward_in_backward"}),
    # The full logits: right values, seen only by the largest-tensor test.
    "ce_forward_full_logits": ({"chunked_ce_forward": _CE_FORWARD_FULL_LOGITS}, {"test_chunked_ce_forward_memory"}),
    # log(sum(exp(z))) without the maximum: right until the logits near 1000 (a hidden case).
    "ce_forward_naive_lse": ({"chunked_ce_forward": _CE_FORWARD_NAIVE}, {"test_chunked_ce_forward_hidden"}),
    # The sum, not the mean: wrong everywhere (the memory test checks values too).
    "ce_backward_forgets_mean": ({"chunked_ce_backward": _CE_BACKWARD.format(size="chunk_size", mean="* 1")},
                                 CE_BACKWARD),
    # One chunk of every position: right values, the full logits.
    "ce_backward_full_logits": ({"chunked_ce_backward": _CE_BACKWARD.format(size="n", mean="/ n")},
                                {"test_chunked_ce_backward_memory"}),
    # g on the whole sequence, not through apply: right values and gradients, but g sees every
    # position at once (the visible test watches g's calls and apply's).
    "block_unchunked_g": ({"reformer_block": _BLOCK.format(g_of_y1="g(y1)")}, BLOCK),
    # g through the chunked forward pass alone: right values, no gradient for g's parameters.
    "block_forward_only": ({"reformer_block": _BLOCK.format(g_of_y1="chunked_forward(g, y1, chunk_size)")}, BLOCK),
}
# A mistake in every exercise at once: each exercise is graded on its own, so exactly the union
# of their failures (exercise 5's tests use their own apply, not the broken exercises 1-2).
SEVERAL = ({"chunked_forward": _FORWARD_KEEPS_GRAPH,
            "chunked_backward": _backward(enable="if True:  # no torch.enable_grad()"),
            "chunked_ce_forward": _CE_FORWARD_FULL_LOGITS,
            "chunked_ce_backward": _CE_BACKWARD.format(size="chunk_size", mean="* 1"),
            "reformer_block": _BLOCK.format(g_of_y1="g(y1)")},
           FORWARD | {"test_chunked_backward_in_backward", "test_chunked_ce_forward_memory"} | CE_BACKWARD | BLOCK)
ESSENTIAL_WRONG = ("several_mistakes",)

# Right answers, but exercise 1 through the library's apply_chunked: the static scan finds
# longctx_lib.chunking in the student's code, and every exercise could use that module, so none
# earns points. And exercise 5 through the library's ReversibleBlock: only exercise 5 pays.
CALLS_LIBRARY = {"chunked_forward": (
    "from longctx_lib.chunking import apply_chunked as _apply\n\n\n"
    "def chunked_forward(fn, x, chunk_size):\n"
    "    with torch.no_grad():\n"
    "        return _apply(fn, x, chunk_size=chunk_size)\n")}
CALLS_REVERSIBLE = {"reformer_block": (
    "from longctx_lib.reversible import ReversibleBlock as _Block\n\n\n"
    "class _Chunked(torch.nn.Module):\n"
    "    def __init__(self, g, apply, chunk_size):\n"
    "        super().__init__()\n"
    "        self.g, self.apply, self.chunk_size = g, apply, chunk_size\n\n"
    "    def forward(self, y):\n"
    "        return self.apply(self.g, y, self.chunk_size)\n\n\n"
    "def reformer_block(f, g, x1, x2, chunk_size, apply=None):\n"
    "    apply = chunked_apply if apply is None else apply\n"
    "    return _Block(f, _Chunked(g, apply, chunk_size))(x1, x2)\n")}


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course-04"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, {**WRONG, "several_mistakes": SEVERAL,
                                                   "calls_library": (CALLS_LIBRARY, set()),
                                                   "calls_reversible": (CALLS_REVERSIBLE, set())})


def test_student_notebook_matches_generated():
    """(1) notebooks/04-chunking is what scripts/generate_student.py produces."""
    assert_student_matches_generated(ASSIGNMENT)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    assert set(grades) == FORWARD | BACKWARD | CE_FORWARD | CE_BACKWARD | BLOCK | {"ex6_answer"}
    check_assignment_layout(
        nb, grades, ASSIGNMENT, total=16, autograded=AUTOGRADED_POINTS,
        parameters=['DEVICE = "auto"', "LENGTH = ", "D_MODEL = ", "N_LAYERS = ", "CHUNK = ", "REPEATS = ", "PEAK_MEMORY = "],
        exercises={1: FORWARD, 2: BACKWARD, 3: CE_FORWARD, 4: CE_BACKWARD, 5: BLOCK, 6: {"ex6_answer"}},
    )
    # The measurements stay light while nbgrader grades, and skip the peak memory (child processes).
    cells = {c.get("id"): c.source for c in nb.cells}
    assert 'GRADING = os.environ.get("NBGRADER_EXECUTION") is not None' in cells["setup"]
    assert "(128, 2, 32, 32, 1) if GRADING else (LENGTH, N_LAYERS, D_MODEL, CHUNK, REPEATS)" in cells["measure"]
    assert "PEAK_MEMORY and not GRADING" in cells["measure"]
    assert "64 if GRADING else 1024" in cells["assemble_ff"] and "64 if GRADING else 4096" in cells["assemble_loss"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "_check(", "Rubric", "Model answer",
                 "torch.autograd.backward(out, grad_out[:, span])", "torch.logsumexp(logits, dim=-1)  # stable",
                 "apply(g, y1, chunk_size)  # the feed-forward"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    answers = answer_cells(nb)
    assert set(answers) == {"chunked_forward", "chunked_backward", "chunked_ce_forward", "chunked_ce_backward",
                            "reformer_block", "ex6_answer"}
    for grade_id, cell in answers.items():
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source, grade_id
            assert cell.source.lstrip().startswith("def "), f"{grade_id}: keep the signature"
    # The given first line of exercise 5 (the apply the hidden tests replace) stays in the stub.
    assert "apply = chunked_apply if apply is None else apply" in answers["reformer_block"].source


def test_solution_earns_full_marks(graded):
    """(2), the assembled layer and loss match autograd, and the light measurements run."""
    result = graded("solution")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"
    assert result.errors == {}, result.errors
    for cell in ("assemble_ff", "assemble_loss"):
        assert "(they agree)" in printed_output(result.autograded, cell), printed_output(result.autograded, cell)
    measured = printed_output(result.autograded, "measure")
    assert "128 tokens" in measured and "peak memory: skipped (while grading)" in measured, measured
    assert all(stage in measured for stage in reformer.ABLATION_STAGES), measured


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}
    # The assembly cells say what is missing instead of failing; the measurements need no exercise.
    assert "finish exercises 1 and 2" in printed_output(result.autograded, "assemble_ff")
    assert "finish exercises 3 and 4" in printed_output(result.autograded, "assemble_loss")
    assert "measure" not in result.errors


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in ESSENTIAL_WRONG else pytest.mark.slow)
    for name in ("several_mistakes", *WRONG)
])
def test_wrong_submission_earns_partial_marks(graded, name):
    """(4) partial marks: exactly the test cells that can see the mistake pay."""
    result = graded(name)
    expected_failures = SEVERAL[1] if name == "several_mistakes" else WRONG[name][1]
    assert 0 < result.total < result.max_total, (result.total, result.max_total)
    assert result.failed == expected_failures, (
        f"{name}: failed {sorted(result.failed)}, expected {sorted(expected_failures)}\n{result.errors}")
    assert all(result.scores[c] == result.max_scores[c] for c in result.scores if c not in expected_failures)


def test_mistakes_are_explained_in_the_feedback(graded):
    errors = graded("several_mistakes").errors
    assert "called under torch.no_grad()" in errors["test_chunked_backward_in_backward"], errors
    assert "at least half the full logits" in errors["test_chunked_ce_forward_memory"], errors
    assert "g was called on" in errors["test_reformer_block_hidden"], errors
    assert "autograd graph" in errors["test_chunked_forward_hidden"], errors


@pytest.mark.slow
def test_calling_the_library_costs_exercises_1_to_5(graded):
    result = graded("calls_library")
    assert result.total == 0 and result.failed == FORWARD | BACKWARD | CE_FORWARD | CE_BACKWARD | BLOCK, result.scores
    errors = result.errors
    assert "longctx_lib.chunking.apply_chunked" in errors["test_chunked_ce_forward_hidden"], errors
    assert "graded on its own" in errors["test_chunked_forward_hidden"], errors


@pytest.mark.slow
def test_calling_the_reversible_block_costs_exercise_5(graded):
    result = graded("calls_reversible")
    assert result.failed == BLOCK, result.scores
    assert "longctx_lib.reversible.ReversibleBlock" in result.errors["test_reformer_block_hidden"], result.errors


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(5)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
