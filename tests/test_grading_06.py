"""Assignment 6 (the Recurrent Memory Transformer): its grader suites, and nbgrader grading it.

Two parts, as for assignment 5 (``tests/test_grading_05.py``):

* The chapter-6 suites of ``longctx_lib.grading`` without nbgrader: right answers written from
  the prompts pass; each wrong answer fails exactly the suites that can see its mistake; the
  grader's own pieces (the model a student's function gets, the mask handed to exercise 2, the
  segment handed to exercise 3, the FLOP count handed to exercise 4's second function) agree with
  ``longctx_lib.rmt`` and with the laws the prompts state (a loss on the last segment reaches the
  last ``bptt_depth + 1`` segments); the library is blocked and its use is found by the static
  scan; hand-made results fail without crashing the grader.
* The assignment graded by nbgrader, as a student's work would be:

  1. Regenerating the student notebook reproduces the committed ``notebooks/`` exactly.
  2. The solution notebook, submitted as a student's, earns every autograded point.
  3. The untouched student notebook earns none.
  4. Wrong submissions earn partial marks: exactly the points of the test cells that can
     detect their mistake. Each exercise is graded on its own (exercise 2 with a right mask,
     exercise 3 with a right segment, rmt_forward_flops with a right full_attention_flops), so
     one submission with mistakes in several exercises loses exactly the union of their cells.
  5. Tampering from inside the notebook earns nothing: patching the kernel's reference fools
     only the kernel's own comparison, and silencing the checks hands the grader no results.
  6. Grading leaves the submitted file byte for byte as it was.

One temporary course per module (generate_assignment once); each submission is autograded
once and shared by the tests that read its scores.
"""

from __future__ import annotations

import nbformat
import pytest
import torch
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

from longctx_lib import grading, rmt, tasks

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "06-recurrent-memory"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
AUTOGRADED_POINTS = 11

SUITES = {"rmt_mask_small": "mask", "rmt_mask": "mask", "rmt_segment_small": "segment", "rmt_segment": "segment",
          "rmt_segment_grads": "segment", "rmt_run_small": "run", "rmt_run": "run", "rmt_run_bptt": "run",
          "rmt_flops_small": "flops", "rmt_flops_full": "full_flops", "rmt_flops_segments": "rmt_flops"}


# ============================================================ the suites, without nbgrader
# A student's answers, written here from the assignment's prompts (not the grader's code), with the
# mistakes the tests below make. They take other routes than the notebook's solution where the
# prompts allow one (index comparisons for the mask, the position table through the module,
# torch.split for the segments, a list of segment sizes for the FLOPs).
def _mask(n_memory, n_tokens, mistake=None):
    m, n = n_memory, n_tokens
    i, j = torch.arange(2 * m + n)[:, None], torch.arange(2 * m + n)[None, :]
    read_row, token_row, write_row = i < m, (i >= m) & (i < m + n), i >= m + n
    read_col, token_col = j < m, (j >= m) & (j < m + n)
    visible = (read_row & read_col) | (token_row & (read_col | (token_col & (j <= i)))) | write_row
    if mistake == "read_sees_tokens":
        visible = visible | (read_row & token_col)
    if mistake == "tokens_see_write":
        visible = visible | (token_row & (j >= m + n))
    if mistake == "causal_everything":  # one causal mask over all 2m + n positions
        visible = j <= i
    if mistake == "inverted":
        return visible
    if mistake == "long_dtype":
        return (~visible).long()
    return ~visible


def _segment(model, tokens, memory, mask_fn=None, mistake=None):
    mask_fn = _mask if mask_fn is None else mask_fn
    m, n, s = model.n_memory, tokens.shape[1], model.segment_length
    if mistake == "in_place":
        memory += model.pos.weight[:m]
    write_start = m + n if mistake == "write_positions_after_tokens" else m + s
    pos = model.pos(torch.cat([torch.arange(m + n), torch.arange(write_start, write_start + m)]))  # (2m + n, d)
    x = torch.cat([memory, model.embed(tokens), memory], dim=1) + pos
    h = model.backbone(x) if mistake == "no_mask" else model.backbone(x, mask=mask_fn(m, n).to(x.device))
    new_memory = h[:, :m] if mistake == "memory_from_read" else h[:, m + n:]
    if mistake == "detached":
        new_memory = new_memory.detach()
    return model.head(h[:, m:m + n]), new_memory


def _run(model, tokens, bptt_depth=None, mistake=None):
    s = model.segment_length
    pieces = list(torch.split(tokens, s, dim=1))
    if mistake == "drops_short_last" and pieces[-1].shape[1] < s:
        pieces = pieces[:-1]
    n = len(pieces)
    k = None if mistake == "never_detaches" else bptt_depth
    memory, outs = model.initial_memory(tokens.shape[0]), []
    for i, piece in enumerate(pieces):
        first = 0 if mistake == "detaches_initial" else 1
        last = n - 2 - k if (mistake == "off_by_one" and k is not None) else (n - 1 - k if k is not None else -1)
        if k is not None and first <= i <= last:
            memory = memory.detach()
        if mistake == "fresh_memory":
            memory = model.initial_memory(tokens.shape[0])
        with torch.set_grad_enabled(mistake != "no_grad_early" or k is None or i >= n - 1 - k):
            logits, memory = model.segment(piece, memory)
        outs.append(logits)
    return torch.cat(outs, dim=1)


def _full_flops(length, n_layers, n_heads, d_model, d_ff, vocab_size, n_logits=None, mistake=None):
    if mistake == "n_logits_or":
        n_logits = n_logits or length
    elif n_logits is None:
        n_logits = length
    attention = 4 * length * length * d_model
    if mistake == "attention_per_head":
        attention = 4 * length * length * (d_model // n_heads)
    if mistake == "float":
        attention = 4 * length * length * d_model / n_heads * n_heads
    dense = 2 * length * (4 * d_model * d_model + 2 * d_model * d_ff)
    return n_layers * (dense + attention) + 2 * n_logits * d_model * vocab_size


def _rmt_flops(length, segment_length, n_memory, n_layers, n_heads, d_model, d_ff, vocab_size, flops=None,
               mistake=None):
    flops = _full_flops if flops is None else flops
    sizes = [segment_length] * (length // segment_length)
    if length % segment_length and mistake != "drops_rest":
        sizes.append(length % segment_length)
    memory = 2 * n_memory if mistake == "decoder_memory" else n_memory
    return sum(flops(size + memory, n_layers, n_heads, d_model, d_ff, vocab_size,
                     n_logits=size + memory if mistake == "scores_memory" else size) for size in sizes)


_ANSWERS = {"mask": _mask, "segment": _segment, "run": _run, "full_flops": _full_flops, "rmt_flops": _rmt_flops,
            "flops": (_full_flops, _rmt_flops)}


def _wrong(kind, mistake):
    if kind == "flops":  # the visible suite grades both functions: the mistake goes to the one that has it
        full = mistake if mistake in _FULL_MISTAKES else None
        return (_wrong("full_flops", full), _wrong("rmt_flops", None if full else mistake))
    answer = _ANSWERS[kind]
    return lambda *args, **kwargs: answer(*args, **kwargs, mistake=mistake)


_FULL_MISTAKES = {"n_logits_or", "attention_per_head", "float"}


@pytest.mark.parametrize("suite", list(SUITES))
def test_right_answers_pass(tmp_path, monkeypatch, suite):
    assert grade_suite(tmp_path, monkeypatch, suite, _ANSWERS[SUITES[suite]]) == []


_RUN = ("rmt_run_small", "rmt_run", "rmt_run_bptt")
_SEGMENT = ("rmt_segment_small", "rmt_segment", "rmt_segment_grads")
# (answer, mistake) -> {suite: words in the grader's report}; every other suite of that exercise passes.
WRONG_ANSWERS = {
    ("mask", "read_sees_tokens"): {s: "(read memory) and column" for s in ("rmt_mask_small", "rmt_mask")},
    ("mask", "tokens_see_write"): {s: "(token) and column" for s in ("rmt_mask_small", "rmt_mask")},
    ("mask", "causal_everything"): {s: "(read memory) and column" for s in ("rmt_mask_small", "rmt_mask")},
    ("mask", "inverted"): {s: "every entry is the opposite" for s in ("rmt_mask_small", "rmt_mask")},
    ("mask", "long_dtype"): {s: "return a bool tensor" for s in ("rmt_mask_small", "rmt_mask")},
    ("segment", "write_positions_after_tokens"): {s: "new memory: max |error|" for s in _SEGMENT},
    ("segment", "no_mask"): {s: "logits: max |error|" for s in _SEGMENT},
    ("segment", "memory_from_read"): {s: "new memory: max |error|" for s in _SEGMENT},
    ("segment", "detached"): {"rmt_segment_grads": "the gradient with respect to the incoming memory"},
    # memory += positions: the caller's memory changes, and the write positions get both positions
    ("segment", "in_place"): {"rmt_segment_small": "max |error|", "rmt_segment": "max |error|",
                              "rmt_segment_grads": "RuntimeError"},
    ("run", "off_by_one"): {"rmt_run_small": "it must reach the last", "rmt_run": "the gradient",
                            "rmt_run_bptt": "it must reach the last"},
    ("run", "never_detaches"): {"rmt_run_small": "it must reach the last", "rmt_run": "the gradient",
                                "rmt_run_bptt": "it must reach the last"},
    # the learned first memory detached too: every segment's tokens get what they should (what the visible
    # tests check), the parameter does not
    ("run", "detaches_initial"): {s: "no gradient reaches memory" for s in ("rmt_run", "rmt_run_bptt")},
    # the segments a last-segment loss cannot reach run without a graph: right for that loss, not for others
    ("run", "no_grad_early"): {"rmt_run": "the gradient"},
    ("run", "drops_short_last"): {s: "logits: shape" for s in _RUN},
    ("run", "fresh_memory"): {s: "logits: max |error|" for s in _RUN},
    ("flops", "attention_per_head"): {"rmt_flops_small": "expected", "rmt_flops_full": "expected"},
    ("flops", "n_logits_or"): {"rmt_flops_full": "expected"},
    ("flops", "float"): {"rmt_flops_small": "(float)", "rmt_flops_full": "(float)"},
    ("flops", "drops_rest"): {"rmt_flops_small": "expected", "rmt_flops_segments": "expected"},
    ("flops", "decoder_memory"): {"rmt_flops_small": "expected", "rmt_flops_segments": "expected"},
    ("flops", "scores_memory"): {"rmt_flops_small": "expected", "rmt_flops_segments": "expected"},
}


def _exercise(suite):
    kind = SUITES[suite]
    return "flops" if kind in ("full_flops", "rmt_flops") else kind


@pytest.mark.parametrize("kind, mistake", list(WRONG_ANSWERS))
def test_wrong_answers_fail_exactly_the_suites_that_can_see_them(tmp_path, monkeypatch, kind, mistake):
    expected = WRONG_ANSWERS[(kind, mistake)]
    for suite in (s for s in SUITES if _exercise(s) == kind):
        sub = SUITES[suite]
        if kind == "flops" and sub != "flops":
            fn = _wrong(sub, mistake if (mistake in _FULL_MISTAKES) == (sub == "full_flops") else None)
        else:
            fn = _wrong(kind, mistake)
        problems = grade_suite(tmp_path, monkeypatch, suite, fn)
        if suite in expected:
            assert problems and "checked by the grader" in problems[0] and expected[suite] in problems[0], (
                suite, problems)
        else:
            assert problems == [], (suite, problems)


def test_bptt_failures_name_the_segments_reached(tmp_path, monkeypatch):
    problems = grade_suite(tmp_path, monkeypatch, "rmt_run_bptt", _wrong("run", "off_by_one"))
    assert problems and "a loss on the last segment reaches segments [" in problems[0], problems


# ----------------------------------------------------------------- the grader's pieces vs the library
def _cases(*names):
    return [c for name in names for c in grading.SUITES[name].cases(grading.SUITES[name].seed)]


def test_mask_handed_to_exercise_2_is_the_librarys():
    for m in range(8):
        for n in range(1, 16):
            assert torch.equal(grading._ref_decoder_mask(m, n), rmt.segment_mask(m, n, "decoder")), (m, n)


def test_full_flops_handed_to_rmt_forward_flops_is_the_librarys():
    for c in _cases("rmt_flops_full"):
        want = rmt.transformer_flops(c["length"], n_logits=c["n_logits"],
                                     **{k: c[k] for k in ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size")})
        got = grading._ref_full_flops(c["length"], *grading._flops_args(c), n_logits=c["n_logits"])
        assert type(got) is int and got == want, c


def test_case_model_is_the_library_model_with_a_right_segment():
    """The model a student's function gets has the parameters, names and attributes of the library's
    model, and its segment (what exercise 3's hidden tests call) equals the library's."""
    for c in _cases("rmt_segment", "rmt_segment_grads"):
        case, ref = grading._case_rmt(c["model"]), grading._ref_rmt(c["model"])
        assert sorted(n for n, _ in case.named_parameters()) == sorted(n for n, _ in ref.named_parameters())
        for name in ("n_memory", "segment_length", "d_model", "vocab_size"):
            assert getattr(case, name) == getattr(ref, name), name
        assert all(p.dtype == torch.float64 for p in case.parameters())
        assert torch.equal(case.initial_memory(2), ref.initial_memory(2))
        with torch.no_grad():
            for got, want in zip(case.segment(c["tokens"], c["memory"]), ref.segment(c["tokens"], c["memory"])):
                assert (got - want).abs().max().item() < 1e-12 if got.numel() else got.shape == want.shape


def test_library_forward_reaches_the_last_k_plus_one_segments():
    """The law the bptt suite and the prompt state, for the library's model (the reference): a loss on
    the last segment reaches exactly the last k + 1 segments; the learned first memory learns from it
    when k >= n_segments - 1."""
    for c in _cases("rmt_run_bptt"):
        _, grads = grading._run_reference(c)
        n = -(-c["tokens"].shape[1] // c["model"]["sizes"]["segment_length"])
        k = c["bptt"]
        want = list(range(n)) if k is None else list(range(max(0, n - 1 - k), n))
        if not c["model"]["sizes"]["n_memory"]:  # no memory: nothing passes between segments
            want = [n - 1]
        assert grading._segments_reached(grads, c) == want, grading._rmt_describe(c)
        memory_grad = grads[sorted(c["model"]["state"]).index("memory")]
        reaches_first = k is None or k >= n - 1
        if c["model"]["sizes"]["n_memory"]:
            assert (memory_grad is not None and bool(memory_grad.any())) == reaches_first, grading._rmt_describe(c)


def test_cases_cover_what_the_prompts_promise():
    segment = _cases("rmt_segment", "rmt_segment_grads")
    sizes = [c["model"]["sizes"] for c in segment]
    assert any(s["n_memory"] == 0 for s in sizes) and any(s["n_memory"] >= 3 for s in sizes)
    assert any(c["tokens"].shape[1] < c["model"]["sizes"]["segment_length"] for c in segment)  # shorter segments
    assert any(c["tokens"].shape[1] == 1 for c in segment) and any(c["tokens"].shape[0] == 1 for c in segment)
    assert any(s["n_layers"] == 2 for s in sizes) and len({s["n_heads"] for s in sizes}) > 1
    assert all(c["up"] is not None for c in _cases("rmt_segment_grads"))
    assert any("changed" in (c["note"] or "") for c in _cases("rmt_segment_grads"))  # perturbations
    runs = _cases("rmt_run", "rmt_run_bptt")
    for c in runs:
        c["_n"] = -(-c["tokens"].shape[1] // c["model"]["sizes"]["segment_length"])  # segments
    assert {None, 0, 1, 2} <= {c["bptt"] for c in runs}
    assert any(c["tokens"].shape[1] % c["model"]["sizes"]["segment_length"] for c in runs)  # a shorter last one
    assert any(c["_n"] == 1 for c in runs) and any(c["model"]["sizes"]["segment_length"] == 1 for c in runs)
    assert any(c["bptt"] is not None and c["bptt"] >= c["_n"] for c in runs)
    assert any(c["model"]["sizes"]["n_memory"] == 0 for c in runs)
    bptt = [c for c in runs if c["last_only"]]
    assert len(bptt) == len(_cases("rmt_run_bptt"))
    assert all(len(set(c["tokens"].flatten().tolist())) == c["tokens"].numel() for c in bptt)  # ids once each
    assert any(c["bptt"] == c["_n"] - 1 for c in bptt) and any(c["bptt"] == 0 and c["_n"] > 2 for c in bptt)
    full = _cases("rmt_flops_full")
    assert any(c["n_logits"] == 0 for c in full) and any(c["n_logits"] is None for c in full)
    assert any(c["length"] > 2**20 for c in full)
    segments = _cases("rmt_flops_segments")
    assert any(c["length"] % c["segment_length"] for c in segments)
    assert any(c["length"] % c["segment_length"] == 0 for c in segments)
    assert any(c["length"] < c["segment_length"] for c in segments) and any(c["n_memory"] == 0 for c in segments)
    mask = {(c["m"], c["n"]) for c in _cases("rmt_mask")}
    assert {(m, n) for m in range(7) for n in range(1, 13)} <= mask


def test_case_parameters_are_drawn_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    grading.SUITES["rmt_segment_small"].cases(0)
    grading._case_rmt(_cases("rmt_segment_small")[0]["model"])
    assert torch.equal(torch.rand(3), before)


def test_cases_run_on_one_thread_and_restore_the_callers(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    seen = []

    def watching(model, tokens, bptt_depth=None):
        seen.append(torch.get_num_threads())
        return _run(model, tokens, bptt_depth)
    assert grade_suite(tmp_path, monkeypatch, "rmt_run_small", watching) == []
    assert set(seen) == {1} and torch.get_num_threads() == threads


def test_library_is_blocked_while_graded(tmp_path, monkeypatch):
    via_library = lambda m, n: rmt.segment_mask(m, n, "decoder")  # noqa: E731
    problems = grade_suite(tmp_path, monkeypatch, "rmt_mask_small", via_library)
    assert problems and "graded on its own" in problems[0]
    # exercise 2 through the model's own segment: the grader's right segment is blocked there
    problems = grade_suite(tmp_path, monkeypatch, "rmt_segment_small",
                           lambda model, tokens, memory, mask_fn=None: model.segment(tokens, memory))
    assert problems and "graded on its own" in problems[0]
    problems = grade_suite(tmp_path, monkeypatch, "rmt_flops_full",
                           lambda length, *sizes, n_logits=None: rmt.transformer_flops(
                               length, n_logits=n_logits, **dict(zip(("n_layers", "n_heads", "d_model", "d_ff",
                                                                      "vocab_size"), sizes))))
    assert problems and "graded on its own" in problems[0]
    # the grader's right pieces, each only where the prompts hand it over
    for suite, kind in SUITES.items():
        blocked = set(grading.SUITES[suite].blocked())
        assert set(grading._module_functions(rmt)) <= blocked, suite
        assert {grading._segment_reference, grading._run_reference, grading._ref_rmt} <= blocked, suite
        assert (grading._ref_decoder_mask in blocked) == (kind not in ("segment", "run")), suite
        assert (grading._CaseRMT.segment in blocked) == (kind != "run"), suite
        assert (grading._ref_full_flops in blocked) == (kind not in ("flops", "rmt_flops")), suite
    with grading.graded_on_its_own(*grading.SUITES["rmt_segment"].blocked()), \
            pytest.raises(AssertionError, match="graded on its own"):
        rmt.segment_mask(1, 2)
    assert rmt.segment_mask(1, 2).shape == (4, 4)  # restored afterwards


def test_the_backbone_and_tasks_stay_usable_while_graded():
    """What a student's function may use: the library's Transformer (the backbone), torch."""
    c = _cases("rmt_run_small")[0]
    with grading.graded_on_its_own(*grading.SUITES["rmt_run"].blocked()):
        model = grading._case_rmt(c["model"])
        logits = _run(model, c["tokens"], None)
    assert logits.shape == c["up"].shape
    assert tasks.fact_batch(1, 8)[0].shape == (1, 8)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.rmt import segment_mask", "rmt_mask", True),
    ("from longctx_lib import rmt", "rmt_run_bptt", True),
    ("import longctx_lib\nlongctx_lib.rmt.transformer_flops(1)", "rmt_flops_full", True),
    ("import longctx_lib.rmt as R", "rmt_segment_grads", True),
    ("from longctx_lib.grading import _ref_decoder_mask", "rmt_segment", True),
    ("from longctx_lib.rmt import segment_mask", "infini_retrieve", False),  # chapter 5 unchanged
    ("from longctx_lib.transformer import Transformer", "rmt_segment", False),
    ("from longctx_lib.costs import attention_flops", "rmt_flops_full", False),
])
def test_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


@pytest.mark.parametrize("results", [[(1, 2)], [None], [((None,), None, True)], ["nonsense"], [(None, None)],
                                     [((None, None), (None,) * 3, "yes")], [1.5]])
def test_hand_made_results_fail_without_crashing_the_grader(tmp_path, results):
    for suite in ("rmt_mask_small", "rmt_segment_small", "rmt_run_small", "rmt_flops_small"):
        cases = grading.draw_cases(suite, tmp_path)
        torch.save(results * len(cases), tmp_path / f"{suite}.out.pt")
        problems = grading.verify(suite, tmp_path, cases)
        assert problems and "checked by the grader" in problems[0], (suite, problems)


def test_right_values_from_a_changed_memory_are_refused(tmp_path, monkeypatch):
    """Right outputs, but the caller's memory changed afterwards: refused where no gradient is asked for."""
    def sneaky(model, tokens, memory, mask_fn=None):
        right = _segment(model, tokens, memory, mask_fn)
        if not memory.requires_grad:
            memory.zero_()
        return right
    problems = grade_suite(tmp_path, monkeypatch, "rmt_segment", sneaky)
    assert problems and "in place" in problems[0], problems


def test_random_specs_are_reproducible():
    a, b = _cases("rmt_run"), _cases("rmt_run")
    assert all(torch.equal(x["tokens"], y["tokens"]) and x["bptt"] == y["bptt"] for x, y in zip(a, b))
    assert all(torch.equal(x["model"]["state"][n], y["model"]["state"][n]) for x, y in zip(a, b)
               for n in x["model"]["state"])


# ============================================================ graded by nbgrader
MASK = {"test_decoder_mask_visible", "test_decoder_mask_hidden"}
SEGMENT = {"test_rmt_segment_visible", "test_rmt_segment_hidden", "test_rmt_segment_gradients"}
RUN = {"test_run_segments_visible", "test_run_segments_hidden", "test_run_segments_bptt"}
FLOPS = {"test_flops_visible", "test_flops_full_hidden", "test_flops_rmt_hidden"}
AUTOGRADED = MASK | SEGMENT | RUN | FLOPS

# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give it 0
# points; every other test cell must give full points.
_MASK_READ_SEES_TOKENS = '''
def decoder_mask(n_memory, n_tokens):
    m, n = n_memory, n_tokens
    blocked = torch.ones(2 * m + n, 2 * m + n, dtype=torch.bool)
    blocked[:m, :m + n] = False
    blocked[m:m + n, :m] = False
    blocked[m:m + n, m:m + n] = torch.ones(n, n, dtype=torch.bool).triu(1)
    blocked[m + n:] = False
    return blocked
'''
_SEGMENT = '''
def rmt_segment(model, tokens, memory, mask_fn=None):
    mask_fn = decoder_mask if mask_fn is None else mask_fn
    m, n, S = model.n_memory, tokens.shape[1], model.segment_length
    pos = model.pos.weight
    x = torch.cat([memory + pos[:m], model.embed(tokens) + pos[m:m + n], memory + pos[{write}]], dim=1)
    h = model.backbone(x, mask=mask_fn(m, n).to(x.device))
    return model.head(h[:, m:m + n]), h[:, m + n:]{detach}
'''
_SEGMENT_DETACHED = _SEGMENT.format(write="m + S:m + S + m", detach=".detach()")
_SEGMENT_WRITE_AFTER_TOKENS = _SEGMENT.format(write="m + n:m + n + m", detach="")
_RUN = '''
def run_segments(model, tokens, bptt_depth=None):
    S = model.segment_length
    n = -(-tokens.shape[1] // S)
    memory = model.initial_memory(tokens.shape[0])
    outs = []
    for i in range(n):
        if bptt_depth is not None and {cut}:
            memory = memory.detach()
        logits, memory = model.segment(tokens[:, i * S:(i + 1) * S], memory)
        outs.append(logits)
    return torch.cat(outs, dim=1)
'''
_RUN_OFF_BY_ONE = _RUN.format(cut="1 <= i < n - 1 - bptt_depth")
_RUN_DETACHES_INITIAL = _RUN.format(cut="i <= n - 1 - bptt_depth")
_FLOPS = '''
def full_attention_flops(length, n_layers, n_heads, d_model, d_ff, vocab_size, n_logits=None):
    n_logits = {n_logits}
    per_layer = 8 * length * d_model**2 + 4 * length * d_model * d_ff + 4 * length**2 * d_model
    return n_layers * per_layer + 2 * n_logits * d_model * vocab_size


def rmt_forward_flops(length, segment_length, n_memory, n_layers, n_heads, d_model, d_ff, vocab_size, flops=None):
    flops = full_attention_flops if flops is None else flops
    sizes = (n_layers, n_heads, d_model, d_ff, vocab_size)
    total = (length // segment_length) * flops(segment_length + n_memory, *sizes, n_logits=segment_length)
    rest = length % segment_length
    return total + ({rest} and flops(rest + n_memory, *sizes, n_logits=rest))
'''
_FLOPS_DROPS_REST = _FLOPS.format(n_logits="length if n_logits is None else n_logits", rest="0")
_FLOPS_N_LOGITS_OR = _FLOPS.format(n_logits="n_logits or length", rest="rest")

WRONG = {
    # Read memory that sees the tokens: a leak; ex. 2 gets a right mask, so only the mask's cells pay.
    "mask_read_sees_tokens": ({"decoder_mask": _MASK_READ_SEES_TOKENS}, MASK),
    # The next memory detached: right values (every visible test passes); only the gradient tests see it.
    "segment_detached": ({"rmt_segment": _SEGMENT_DETACHED}, {"test_rmt_segment_gradients"}),
    # The write memory placed right after the tokens: wrong in every segment shorter than segment_length.
    "segment_write_after_tokens": ({"rmt_segment": _SEGMENT_WRITE_AFTER_TOKENS}, SEGMENT),
    # One segment too few cut: a loss on the last segment reaches one segment too many.
    "run_off_by_one": ({"run_segments": _RUN_OFF_BY_ONE}, RUN),
    # The learned first memory cut too: every token's gradient is right (the visible tests pass), the
    # parameter's is not.
    "run_detaches_initial": ({"run_segments": _RUN_DETACHES_INITIAL}, {"test_run_segments_hidden",
                                                                       "test_run_segments_bptt"}),
    # The shorter last segment forgotten: the by-hand RMT count and the random lengths see it.
    "flops_drops_rest": ({"flops": _FLOPS_DROPS_REST}, {"test_flops_visible", "test_flops_rmt_hidden"}),
}
# Mistakes in three exercises at once: each exercise is graded on its own (exercise 2 with a right
# mask, exercise 3 with a right segment), so exactly the union of the three exercises' failures.
SEVERAL = ({"decoder_mask": _MASK_READ_SEES_TOKENS, "rmt_segment": _SEGMENT_DETACHED, "flops": _FLOPS_DROPS_REST},
           MASK | {"test_rmt_segment_gradients", "test_flops_visible", "test_flops_rmt_hidden"})

# Right answers, but exercise 1 through the library's segment_mask: the static scan finds
# longctx_lib.rmt in the student's code, and every exercise forbids it, so none earns points.
CALLS_LIBRARY = {"decoder_mask": (
    "from longctx_lib.rmt import segment_mask as _library_mask\n\n\n"
    "def decoder_mask(n_memory, n_tokens):\n"
    "    return _library_mask(n_memory, n_tokens, 'decoder')\n")}
# Tampering from inside the notebook, with module names the static scan cannot read:
# (1) a full_attention_flops that is right except where no position is scored (n_logits=0, which no
#     visible test tries), and the kernel's reference patched to agree with it: the kernel's own
#     comparison passes, the grader's (its own pristine library) does not;
# (2) a wrong rmt_forward_flops, and the checks silenced: the grader receives no results, and no
#     test cell of exercise 4 pays.
TAMPER_REFERENCE = {"flops": _FLOPS_N_LOGITS_OR + (
    "\n\nimport importlib as _importlib\n\n"
    "_importlib.import_module('longctx' + '_lib.grading')._REF_TRANSFORMER_FLOPS = (\n"
    "    lambda length, n_logits=None, **sizes: full_attention_flops(length, *sizes.values(), n_logits=n_logits))\n")}
SILENCE_CHECKS = {"flops": _FLOPS_DROPS_REST + (
    "\n\nimport importlib as _importlib\n\n"
    "_importlib.import_module('longctx' + '_lib.grading').check = lambda *args, **kwargs: None\n")}
ESSENTIAL_WRONG = ("several_mistakes", "tamper_reference")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course-06"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, {**WRONG, "several_mistakes": SEVERAL,
                                                   "calls_library": (CALLS_LIBRARY, AUTOGRADED),
                                                   "tamper_reference": (TAMPER_REFERENCE, {"test_flops_full_hidden"}),
                                                   "silence_checks": (SILENCE_CHECKS, FLOPS)})


def test_student_notebook_matches_generated():
    """(1) notebooks/06-recurrent-memory is what scripts/generate_student.py produces."""
    assert_student_matches_generated(ASSIGNMENT)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    assert set(grades) == AUTOGRADED | {"ex5_answer"}
    check_assignment_layout(
        nb, grades, ASSIGNMENT, total=14, autograded=AUTOGRADED_POINTS,
        parameters=['DEVICE = "auto"', "MAX_SEGMENTS = ", "CURRICULUM_STEPS = ", "PLAIN_STEPS = ", "EVAL_SEQUENCES = "],
        exercises={1: MASK, 2: SEGMENT, 3: RUN, 4: FLOPS, 5: {"ex5_answer"}},
    )
    cells = {c.get("id"): c.source for c in nb.cells}
    # Light while nbgrader grades: nothing is trained.
    assert 'GRADING = os.environ.get("NBGRADER_EXECUTION") is not None' in cells["setup"]
    assert "if GRADING:" in cells["curriculum"] and "train_curriculum(" in cells["curriculum"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"
    # The model answer quotes the run by the printed table's names, not by numbers typed in.
    answer = cells["ex5_answer"]
    for name in ("`reached`", "`final accuracy`", "`tokens read`", "`MAX_SEGMENTS`", "`PLAIN_STEPS`"):
        assert name in answer, name


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "_check(", "Rubric", "Model answer",
                 "blocked[m + n:] = False", "memory + pos[m + S:m + S + m]", "n_segments = -(-length // S)",
                 "divmod(length, segment_length)"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    answers = answer_cells(nb)
    assert set(answers) == {"decoder_mask", "rmt_segment", "run_segments", "flops", "ex5_answer"}
    for grade_id, cell in answers.items():
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source, grade_id
            assert cell.source.lstrip().startswith("def "), f"{grade_id}: keep the signature"
    # The given first lines (what the hidden tests replace) stay in the stubs.
    assert "mask_fn = decoder_mask if mask_fn is None else mask_fn" in answers["rmt_segment"].source
    assert "flops = full_attention_flops if flops is None else flops" in answers["flops"].source
    assert answers["flops"].source.count("raise NotImplementedError()") == 2


def test_solution_earns_full_marks(graded):
    """(2), the BPTT picture and the FLOPs table come from the student's functions, and nothing is trained."""
    result = graded("solution")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"
    assert result.errors == {}, result.errors
    picture = printed_output(result.autograded, "bptt_demo")
    assert "         0           . . . . . #" in picture and "      None           # # # # # #" in picture, picture
    table = printed_output(result.autograded, "flops_table")
    assert table.count("  yes") == len(rmt.OPT_MODELS) and "OPT-125M" in table, table
    assert "grading: the curriculum measurement is skipped" in printed_output(result.autograded, "curriculum")


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}
    # The given cells say what is missing instead of failing; the measurement needs no exercise.
    assert "finish exercise 3" in printed_output(result.autograded, "bptt_demo")
    assert "finish exercise 4" in printed_output(result.autograded, "flops_table")
    assert "curriculum" not in result.errors


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
    assert "m = 1, n = 2: expected" in errors["test_decoder_mask_visible"], errors
    assert "(read memory) and column" in errors["test_decoder_mask_hidden"], errors
    assert "the gradient with respect to the incoming memory" in errors["test_rmt_segment_gradients"], errors
    assert "is the shorter last segment counted" in errors["test_flops_visible"], errors


def test_patching_the_reference_in_the_kernel_does_not_fool_the_grader(graded):
    """(5) The kernel's own comparison agrees with the patched reference; the grader's does not."""
    result = graded("tamper_reference")
    assert result.failed == {"test_flops_full_hidden"}, result.scores
    error = result.errors["test_flops_full_hidden"]
    assert "checked by the grader" in error and "checked in this notebook" not in error, error


@pytest.mark.slow
def test_silencing_the_checks_earns_nothing(graded):
    """(5) check() replaced by a no-op: the hidden test cells run without error in the kernel, and hand
    the grader nothing."""
    result = graded("silence_checks")
    assert result.failed == FLOPS, result.scores
    assert "did not hand its results" in result.errors["test_flops_full_hidden"], result.errors


@pytest.mark.slow
def test_calling_the_library_costs_exercises_1_to_4(graded):
    result = graded("calls_library")
    assert result.total == 0 and result.failed == AUTOGRADED, result.scores
    errors = result.errors
    assert "longctx_lib.rmt.segment_mask" in errors["test_flops_rmt_hidden"], errors
    assert "graded on its own" in errors["test_decoder_mask_hidden"], errors


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(6)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
