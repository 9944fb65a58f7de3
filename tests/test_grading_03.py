"""Assignment 3 (reversible residual layers), graded by nbgrader as a student's work would be.

The same five checks as ``tests/test_grading.py`` for assignment 1:

1. Regenerating the student notebooks reproduces the committed ``notebooks/`` exactly.
2. The solution notebook, submitted as a student's, earns every autograded point.
3. The untouched student notebook earns none.
4. Wrong submissions earn partial marks: exactly the points of the test cells that can
   detect their mistake (some visible tests included; some mistakes only hidden tests see).
5. Grading leaves the submitted file byte for byte as it was.

And one more: code that uses ``longctx_lib.reversible`` earns nothing for exercises 1-4
(any of them could be written with its ``ReversibleBlock``), and the feedback says why.

One temporary course per module (generate_assignment once); each submission is
autograded once and shared by the tests that read its scores.
"""

from __future__ import annotations

import nbformat
import pytest
from grading_helpers import (
    Course,
    answer_cells,
    assert_student_matches_generated,
    cached_grader,
    check_assignment_layout,
    printed_output,
    well_formed_grades,
)
from nbhelpers import REPO

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "03-reversible-layers"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
AUTOGRADED_POINTS = 13

FORWARD = {"test_reversible_forward_visible", "test_reversible_forward_hidden"}
INVERSE = {"test_reversible_inverse_visible", "test_reversible_inverse_hidden"}
BLOCK = {"test_block_backward_visible", "test_block_backward_hidden", "test_block_backward_in_backward"}
STACK = {"test_reversible_backward_visible", "test_reversible_backward_hidden"}

# ------------------------------------------------------------------ wrong submissions
# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give
# it 0 points; every other test cell must give full points.
_BLOCK_BACKWARD = '''
def block_backward(f, g, y1, y2, dy1, dy2):
    {enable}
        y1 = y1.detach().requires_grad_(True)
        gy = g(y1)
        g_params = list(g.parameters())
        found = torch.autograd.grad(gy, [y1, *g_params], dy2)
        for p, grad in zip(g_params, found[1:]):
            {accumulate}
        total = {total}
        x2 = (y2 - gy).detach().requires_grad_(True)
        fx = f(x2)
        f_params = list(f.parameters())
        found = torch.autograd.grad(fx, [x2, *f_params], total)
        for p, grad in zip(f_params, found[1:]):
            {accumulate}
        dx2 = dy2 + found[0]
    return (y1 - fx).detach(), x2.detach(), total, dx2
'''
_ADD = "p.grad = grad if p.grad is None else p.grad + grad"
_ENABLE = "with torch.enable_grad():"


def _block(enable=_ENABLE, accumulate=_ADD, total="dy1 + found[0]"):
    return {"block_backward": _BLOCK_BACKWARD.format(enable=enable, accumulate=accumulate, total=total)}


WRONG = {
    # .grad replaced rather than added to: right from .grad = None with every module used once
    # (the visible test's first call), wrong on the second call, with parameters that already
    # hold a gradient, and when f and g are the same module.
    "overwrites_grads": (_block(accumulate="p.grad = grad"), BLOCK),
    # The inverse in the wrong order: x1 = y1 - f(y2) first. Seen by every test of exercise 2;
    # exercise 3 rebuilds the inputs itself and is not affected.
    "inverse_wrong_order": (
        {"reversible_inverse": (
            "def reversible_inverse(f, g, y1, y2):\n"
            "    x1 = y1 - f(y2)\n"
            "    return x1, y2 - g(x1)\n")},
        INVERSE,
    ),
    # Recomputes without torch.enable_grad(): right wherever autograd records (the visible tests,
    # the hidden values), fails when called as a backward pass calls it, under torch.no_grad().
    "no_enable_grad": (_block(enable="if True:  # no torch.enable_grad()"), {"test_block_backward_in_backward"}),
    # The gradient that reaches y1 through g is not added to dy1: dx1, dx2 and f's gradients
    # are wrong everywhere. Exercise 4 is graded with a right step and keeps its points.
    "forgets_g_path": (_block(total="dy1"), BLOCK),
    # Walks the stack from the bottom: the fake step of the visible test sees it, and so do the
    # hidden stacks (a single block would not).
    "walks_up": (
        {"reversible_backward": (
            "def reversible_backward(blocks, y1, y2, dy1, dy2, step=None):\n"
            "    step = block_backward if step is None else step\n"
            "    for f, g in blocks:\n"
            "        y1, y2, dy1, dy2 = step(f, g, y1, y2, dy1, dy2)\n"
            "    return dy1, dy2\n")},
        STACK,
    ),
    # g applied to x1 instead of y1: every test of exercise 1 (the hand-worked case included).
    "g_sees_x1": (
        {"reversible_forward": "def reversible_forward(f, g, x1, x2):\n    return x1 + f(x2), x2 + g(x1)\n"},
        FORWARD,
    ),
}
ESSENTIAL_WRONG = ("overwrites_grads", "inverse_wrong_order", "no_enable_grad")

# Right answers, but exercise 2 through the library's ReversibleBlock (bound before grading):
# the static scan finds longctx_lib.reversible in the student's code, and while the tests run
# its functions raise. Every exercise could be done with ReversibleBlock, so none earns points.
CALLS_LIBRARY = {"reversible_inverse": (
    "from longctx_lib.reversible import ReversibleBlock as _Block\n\n\n"
    "def reversible_inverse(f, g, y1, y2):\n"
    "    return _Block(f, g).inverse(y1, y2)\n")}


# -------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course-03"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, {**WRONG, "calls_library": (CALLS_LIBRARY, set())})


# ----------------------------------------------------------------------------- tests
def test_student_notebook_matches_generated():
    """(1) notebooks/03-reversible-layers is what scripts/generate_student.py produces."""
    assert_student_matches_generated(ASSIGNMENT)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    assert set(grades) == FORWARD | INVERSE | BLOCK | STACK | {"ex5_answer"}
    check_assignment_layout(
        nb, grades, ASSIGNMENT, total=16, autograded=AUTOGRADED_POINTS,
        parameters=['DEVICE = "auto"', "LENGTH = ", "DEPTHS = ", "D_MODEL = ", "REPEATS = ", "PEAK_MEMORY = "],
        exercises={1: FORWARD, 2: INVERSE, 3: BLOCK, 4: STACK, 5: {"ex5_answer"}},
    )
    # The measurements stay light while nbgrader grades, and skip the peak memory (child processes).
    cells = {c.get("id"): c.source for c in nb.cells}
    assert 'GRADING = os.environ.get("NBGRADER_EXECUTION") is not None' in cells["setup"]
    assert "(256, [1, 2], 1) if GRADING else (LENGTH, DEPTHS, REPEATS)" in cells["measure"]
    assert "PEAK_MEMORY and not GRADING" in cells["measure"]
    assert "32 if GRADING else 256" in cells["assemble"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "total_dy1 = dy1 + y1.grad",
                 "_check(", "Rubric", "reversed(blocks)"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    answers = answer_cells(nb)
    assert set(answers) == {"reversible_forward", "reversible_inverse", "block_backward", "reversible_backward",
                            "ex5_answer"}
    for grade_id, cell in answers.items():
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source, grade_id
            assert cell.source.lstrip().startswith("def "), f"{grade_id}: keep the signature"
    # The given first line of exercise 4 (the step the hidden tests replace) stays in the stub.
    assert "step = block_backward if step is None else step" in answers["reversible_backward"].source


def test_solution_earns_full_marks(graded):
    """(2), the assembled reversible stack matches autograd, and the light measurements run."""
    result = graded("solution")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"
    assert result.errors == {}, result.errors
    assembled = printed_output(result.autograded, "assemble")
    assert "(they agree)" in assembled, assembled
    measured = printed_output(result.autograded, "measure")
    assert "256 tokens" in measured and "peak memory: skipped while grading" in measured, measured


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}
    # The assembly cell says what is missing instead of failing; the measurements need no exercise.
    assert "finish exercises 1-4" in printed_output(result.autograded, "assemble")
    assert "measure" not in result.errors


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in ESSENTIAL_WRONG else pytest.mark.slow) for name in WRONG
])
def test_wrong_submission_earns_partial_marks(graded, name):
    """(4) partial marks: exactly the test cells that can see the mistake pay."""
    result = graded(name)
    expected_failures = WRONG[name][1]
    assert 0 < result.total < result.max_total, (result.total, result.max_total)
    assert result.failed == expected_failures, (
        f"{name}: failed {sorted(result.failed)}, expected {sorted(expected_failures)}\n{result.errors}")
    assert all(result.scores[c] == result.max_scores[c] for c in result.scores if c not in expected_failures)


def test_no_enable_grad_is_explained_in_the_feedback(graded):
    errors = graded("no_enable_grad").errors
    assert "called under torch.no_grad()" in errors["test_block_backward_in_backward"], errors


def test_calling_the_library_costs_exercises_1_to_4(graded):
    result = graded("calls_library")
    assert result.total == 0 and result.failed == FORWARD | INVERSE | BLOCK | STACK, result.scores
    errors = result.errors
    assert "longctx_lib.reversible.ReversibleBlock" in errors["test_reversible_forward_hidden"], errors
    assert "graded on its own" in errors["test_reversible_inverse_hidden"], errors


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(5)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
