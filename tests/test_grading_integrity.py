"""The autograder holds up against real submissions (issue 10), graded by nbgrader itself.

Every submission below is autograded in one course (several students, one gradebook),
with a short per-cell timeout and a 3 GiB memory limit for the grading kernel. For each:

* the grader finishes (``autograde`` succeeds) and scores every test cell;
* exactly the listed test cells earn 0, every other one its full points;
* the submitted file is byte-for-byte unchanged;
* the feedback (``generate_feedback``) says what went wrong;
* and, at the end, the first student's grades are still what they were.

How the grader resists tampering is explained in ``longctx_lib/grading.py``: the verdict
of each locked test cell is reached by the grader outside the student's kernel.
"""

from __future__ import annotations

import html

import nbformat
import pytest
from grading_helpers import Course, answer_cells
from nbhelpers import REPO

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "01-attention-bottleneck"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
TIMEOUT_S = 30  # per cell, for this course only (the repository's config says 600)
MEMORY_LIMIT_MB = 3072  # the grading kernel's address space (a torch kernel needs ~0.7 GiB)

EX1 = {"test_masked_attention_visible", "test_masked_attention_values", "test_masked_attention_masks",
       "test_masked_attention_gradients"}
EX1_HIDDEN = EX1 - {"test_masked_attention_visible"}
EX2 = {"test_costs_visible", "test_costs_hidden"}
EX3 = {"test_max_length_visible", "test_max_length_hidden"}
ALL = EX1 | EX2 | EX3

# A wrong answer that passes the visible tests: the scores are not divided by sqrt(dim)
# (the hand-worked visible case has dim = 1). Values and gradients catch it.
NO_SCALE = '''
def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    q_len, k_len = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1)
    blocked = torch.zeros(q_len, k_len, dtype=torch.bool, device=q.device)
    if causal:
        blocked = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(1)
    if key_padding_mask is not None:
        blocked = blocked | key_padding_mask[:, None, None, :]
    dead = blocked.all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(blocked & ~dead, float("-inf")), dim=-1)
    return weights.masked_fill(dead, 0.0) @ v
'''
NO_SCALE_FAILS = {"test_masked_attention_values", "test_masked_attention_gradients"}
# A wrong cost model that passes the visible tests (right for batch 1, 1 head).
NO_BATCH = '''
def score_matrix_bytes(batch, heads, length, bytes_per_element=4):
    return length * length * bytes_per_element


def attention_flops(batch, heads, length, head_dim):
    return 4 * length * length * head_dim
'''


def _reference_answer(grade_id: str) -> str:
    return answer_cells(nbformat.read(SOURCE, as_version=4))[grade_id].source


# name: ({answer grade_id: code}, test cells that must earn 0, words the feedback must contain)
SUBMISSIONS = {
    # --------------------------------------------------------- wrong, passes the visible tests
    "wrong_passes_visible": ({"masked_attention": NO_SCALE, "costs": NO_BATCH},
                             NO_SCALE_FAILS | {"test_costs_hidden"}, ("GraderCheckFailed", "max |error|", "expected")),
    # ---------------------------------------------------------------- right, differently
    "different_but_right": ({
        "masked_attention": '''
def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    # einsum, an explicit log-sum-exp, and torch.where instead of masked_fill
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    allowed = (j <= i) if causal else torch.ones_like(i * j, dtype=torch.bool)
    allowed = allowed.expand(q.shape[0], 1, -1, -1)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    any_key = allowed.any(dim=-1, keepdim=True)
    safe = torch.where(allowed, scores, torch.full_like(scores, -1e300 if q.dtype == torch.float64 else -1e30))
    shifted = safe - safe.amax(dim=-1, keepdim=True)
    e = torch.where(allowed, shifted.exp(), torch.zeros_like(shifted))
    weights = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    return torch.where(any_key, weights, torch.zeros_like(weights)) @ v
''',
        "costs": '''
def score_matrix_bytes(batch, heads, length, bytes_per_element=4):
    return math.prod([batch, heads, length, length, bytes_per_element])


def attention_flops(batch, heads, length, head_dim):
    return 2 * 2 * math.prod((batch, heads, length, length, head_dim))
''',
        "max_length": '''
def max_length_for_budget(budget_bytes, batch=1, heads=1, bytes_per_element=4):
    lo, hi = 0, 1
    while batch * heads * hi * hi * bytes_per_element <= budget_bytes:
        hi *= 2
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        if batch * heads * mid * mid * bytes_per_element <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo
'''}, set(), ()),
    # --------------------------------------------------------- tampering from the notebook
    "patches_comparisons": ({"masked_attention": NO_SCALE + '''
import numpy
import numpy.testing
torch.allclose = lambda *args, **kwargs: True
torch.equal = lambda *args, **kwargs: True
torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(a, dtype=torch.bool)
torch.testing.assert_close = lambda *args, **kwargs: None
numpy.testing.assert_allclose = lambda *args, **kwargs: None
numpy.testing.assert_array_equal = lambda *args, **kwargs: None
numpy.allclose = lambda *args, **kwargs: True
'''}, NO_SCALE_FAILS, ("GraderCheckFailed", "max |error|")),
    # Tensor arithmetic made to lie: every in-kernel difference is 0. The visible and the
    # perturbation tests, which compute in the kernel, then fail on their own (the hand-worked
    # value reads as 0.0); the grader, which computes outside, catches the wrong values.
    "patches_tensor_arithmetic": ({"masked_attention": NO_SCALE + '''
torch.Tensor.__sub__ = lambda self, other: torch.zeros_like(self)
torch.Tensor.abs = lambda self: torch.zeros_like(self)
torch.Tensor.max = lambda self, *args, **kwargs: torch.zeros((), dtype=self.dtype)
torch.Tensor.item = lambda self: 0.0
'''}, EX1, ("GraderCheckFailed", "max |error|")),
    # The library's reference becomes the student's function: in the kernel the hidden
    # tests would compare the student with the student.
    # The modules and the function are reached through built names (sys.modules, setattr),
    # which the grader's scan for library names does not see: the grader's own reference
    # catches it.
    "patches_library_reference": ({"masked_attention": NO_SCALE + '''
import sys
_A = sys.modules["longctx" + "_lib.attention"]
_SDPA = "scaled_dot" + "_product_attention"
_fake = lambda q, k, v, **kw: masked_attention(
    q, k, v, causal=kw.get("causal", False), key_padding_mask=kw.get("key_padding_mask"))
setattr(_A, _SDPA, _fake)
setattr(sys.modules["longctx" + "_lib"], _SDPA, _fake)
''', "costs": NO_BATCH + '''
_C = sys.modules["longctx" + "_lib.costs"]
_C.score_matrix_bytes = lambda b, h, L, dtype=4, **kw: score_matrix_bytes(b, h, L, bytes_per_element=dtype)
_C.attention_flops = lambda b, h, L, d, **kw: attention_flops(b, h, L, d)
'''}, NO_SCALE_FAILS | {"test_costs_hidden"}, ("GraderCheckFailed", "checked by the grader")),
    # The course's own checker made a no-op: nothing reaches the grader, nothing is earned.
    "patches_course_checker": ({"masked_attention": NO_SCALE + '''
import longctx_lib.grading as _G
_G.check = lambda *args, **kwargs: None
_G.graded_on_its_own = __import__("contextlib").nullcontext
'''}, ALL,
        ("did not hand its results to the grader",)),
    # builtins made to lie (type() says int, abs says 0) with a wrong cost model that returns
    # floats. A `type` that is no longer a class breaks IPython's own message handling: the
    # kernel answers no later cell, each is stopped at the time limit and earns nothing
    # (slow: one time limit per remaining cell).
    "patches_builtins": ({"costs": '''
import builtins
_real_type = builtins.type
builtins.type = lambda x, *rest: int if not rest and isinstance(x, float) else _real_type(x, *rest)
builtins.abs = lambda x: 0


def score_matrix_bytes(batch, heads, length, bytes_per_element=4):
    return float(length) * length * bytes_per_element


def attention_flops(batch, heads, length, head_dim):
    return float(4 * length * length * head_dim)
'''}, EX2 | EX3, ("GraderCheckFailed", "CellTimeoutError")),
    # The kernel itself told to skip every later cell (IPython input transformer): no test
    # runs, so no error shows; the grader hears from no test and gives nothing.
    "skips_every_later_cell": ({"masked_attention": NO_SCALE + '''
get_ipython().input_transformers_cleanup.append(lambda lines: ["pass\\n"])
'''}, ALL, ("did not hand its results to the grader",)),
    # Tracebacks silenced: failing tests would look clean in the kernel.
    "silences_tracebacks": ({"masked_attention": NO_SCALE + '''
_ip = get_ipython()
_ip.showtraceback = lambda *args, **kwargs: None
_ip._showtraceback = lambda *args, **kwargs: None
'''}, NO_SCALE_FAILS, ("GraderCheckFailed",)),
    # Calls a copy of the library's function (the copy survives the code-object swap).
    "calls_library_copy": ({"masked_attention": '''
import types
import longctx_lib.attention as _A
_copy = types.FunctionType(_A.scaled_dot_product_attention.__code__, _A.scaled_dot_product_attention.__globals__,
                           "copy", _A.scaled_dot_product_attention.__defaults__)
_copy.__kwdefaults__ = dict(_A.scaled_dot_product_attention.__kwdefaults__)


def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    return _copy(q, k, v, causal=causal, key_padding_mask=key_padding_mask)
'''}, EX1, ("must be written without the library",)),
    "calls_torch_sdpa": ({"masked_attention": '''
import torch.nn.functional as F


def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
'''}, EX1, ("must be written without the library",)),
    # --------------------------------------------------------------- robustness
    "infinite_loop": ({"max_length": _reference_answer("max_length") + "\nwhile True:\n    pass\n"},
                      EX3, ("CellTimeoutError", "time limit")),
    "exits_the_kernel": ({"costs": "import os\nos._exit(1)\n" + _reference_answer("costs")},
                         EX2, ("KernelDiedError", "the kernel died")),
    "segfaults": ({"costs": "import ctypes\nctypes.string_at(0)\n" + _reference_answer("costs")},
                  EX2, ("KernelDiedError",)),
    "segfaults_when_called": ({"max_length": '''
def max_length_for_budget(budget_bytes, batch=1, heads=1, bytes_per_element=4):
    import ctypes
    ctypes.string_at(0)
'''}, EX3, ("KernelDiedError",)),
    # ~16 GiB of address space, 256 MiB at a time (calloc: not touched, so harmless even
    # if the limit were missing); with the limit the kernel raises MemoryError.
    "memory_bomb": ({"costs": "_hog = [bytearray(2**28) for _ in range(64)]\n" + _reference_answer("costs")},
                    EX2, ("MemoryError",)),
    "nan_outputs": ({"masked_attention": '''
def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    return torch.full((*q.shape[:-1], v.shape[-1]), float("nan"), dtype=q.dtype)
'''}, EX1, ("NaN",)),
    "inf_outputs": ({"masked_attention": '''
def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    return torch.full((*q.shape[:-1], v.shape[-1]), float("inf"), dtype=q.dtype)
'''}, EX1, ("NaN or inf",)),
    "wrong_dtype": ({"masked_attention": _reference_answer("masked_attention").replace(
        "return weights @ v", "return (weights @ v).float()")}, EX1_HIDDEN, ("dtype torch.float32, expected torch.float64",)),
    "wrong_device": ({"masked_attention": _reference_answer("masked_attention").replace(
        "return weights @ v", "return (weights @ v).to('meta')")}, EX1, ("meta",)),
    "huge_output": ({"costs": "for _i in range(300_000):\n    print('spam', _i)\n" + _reference_answer("costs")},
                    set(), ("truncated",)),
}
# Every case the issue lists runs by default (CI included). Only replacing builtins, which
# breaks ipykernel itself so that every later cell waits for its time limit (~3 minutes),
# is left to `make test-all`.
SLOW = {"patches_builtins"}
SLOW_STRUCTURAL: set[str] = set()


def _structural(course: Course, name: str) -> nbformat.NotebookNode:
    """Submissions that change the notebook's cells rather than the answers."""
    nb = course.submission()
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    if name == "deletes_test_cells":  # both visible tests of exercises 1 and 2 removed
        nb.cells = [c for c, i in zip(nb.cells, ids) if i not in ("test_masked_attention_visible", "test_costs_visible")]
    elif name == "edits_test_cells":  # a wrong answer, and the visible test that catches it emptied
        for cell, grade_id in zip(nb.cells, ids):
            if grade_id == "test_max_length_visible":
                cell.source = "pass  # nothing to see here"
            if grade_id == "max_length":
                cell.source = "def max_length_for_budget(budget_bytes, batch=1, heads=1, bytes_per_element=4):\n    return 0\n"
    elif name == "reorders_test_cells":  # exercise 2's visible test moved above its answer
        i, j = ids.index("test_costs_visible"), ids.index("costs")
        cell = nb.cells.pop(i)
        nb.cells.insert(j, cell)
    return nb


STRUCTURAL = {
    # nbgrader puts deleted test cells back (OverwriteCells.add_missing_cells) and runs them.
    "deletes_test_cells": (set(), ()),
    # nbgrader restores the locked cell's source from the gradebook: the emptied test runs as written.
    "edits_test_cells": (EX3, ("GraderCheckFailed",)),
    # Moved cells run where the student put them: the test comes before the function it tests.
    "reorders_test_cells": ({"test_costs_visible"}, ("NameError",)),
}


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-integrity"), ASSIGNMENT, config={
        "Execute": {"timeout": TIMEOUT_S},
        "GradingExecute": {"memory_limit_mb": MEMORY_LIMIT_MB},
    })


@pytest.fixture(scope="module")
def graded(course):
    cache = {}

    def grade(name):
        if name not in cache:
            if name == "first_student":
                nb = SOURCE
            elif name in STRUCTURAL:
                nb = _structural(course, name)
            else:
                nb = course.submission(SUBMISSIONS[name][0])
            cache[name] = course.autograde(name.replace("_", "-"), nb)
        return cache[name]

    return grade


def test_first_student_earns_full_marks(graded):
    result = graded("first_student")
    assert result.total == result.max_total == 15, result.errors


def _check(course, result, name, expected_failures, words):
    assert result.sha256_after == result.sha256_before, "grading changed the submitted file"
    assert set(result.scores) == ALL, f"{name}: not every test cell was scored: {sorted(result.scores)}"
    assert result.failed == expected_failures, (
        f"{name}: earned 0 on {sorted(result.failed)}, expected {sorted(expected_failures)}\n"
        f"errors: {result.errors}\n{result.log[-2000:]}")
    assert all(result.scores[c] == result.max_scores[c] for c in ALL - expected_failures)
    feedback = html.unescape(course.feedback(result.student))
    for word in words:
        assert word in feedback, f"{name}: the feedback does not say {word!r}; errors: {result.errors}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SUBMISSIONS])
def test_submission(course, graded, name):
    _answers, expected_failures, words = SUBMISSIONS[name]
    _check(course, graded(name), name, expected_failures, words)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_STRUCTURAL else n
                                  for n in STRUCTURAL])
def test_changed_cells(course, graded, name):
    expected_failures, words = STRUCTURAL[name]
    result = graded(name)
    _check(course, result, name, expected_failures, words)
    if name == "deletes_test_cells":
        restored = [c.metadata["nbgrader"]["grade_id"] for c in result.autograded.cells if "nbgrader" in c.metadata]
        assert {"test_masked_attention_visible", "test_costs_visible"} <= set(restored)


def test_huge_output_is_truncated(graded):
    result = graded("huge_output")
    text = nbformat.writes(result.autograded)
    assert len(text) < 1_000_000, f"the autograded notebook holds {len(text):,} characters"


def test_first_student_is_untouched_by_the_others(course, graded):
    """Runs last: every other submission above has been graded in the same course by now."""
    first = graded("first_student")
    assert course.scores_in_gradebook(first.student) == first.scores
    assert first.total == 15
