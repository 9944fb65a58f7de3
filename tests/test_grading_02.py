"""Assignment 2 (LSH attention), graded by nbgrader as a student's work would be.

The same five checks as ``tests/test_grading.py`` for assignment 1:

1. Regenerating the student notebooks reproduces the committed ``notebooks/`` exactly.
2. The solution notebook, submitted as a student's, earns every autograded point.
3. The untouched student notebook earns none.
4. Submissions that are wrong in ways the visible tests cannot see earn partial marks:
   exactly the points of the test cells that cannot detect their mistake.
5. Grading leaves the submitted file byte for byte as it was.

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

ASSIGNMENT = "02-lsh-attention"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
AUTOGRADED_POINTS = 16

HASH = {"test_lsh_hash_visible", "test_lsh_hash_hidden"}
SORT = {"test_sort_and_chunk_visible", "test_sort_and_chunk_hidden", "test_sort_and_chunk_edges"}
CHUNK = {"test_chunk_attention_visible", "test_chunk_attention_values", "test_chunk_attention_gradients"}
COMBINE = {"test_combine_rounds_visible", "test_combine_rounds_hidden"}

# ------------------------------------------------------------------ wrong submissions
# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give
# it 0 points; every other test cell must give full points.
_CHUNK_ATTENTION = '''
def chunk_attention(qk, v, query_pos, key_pos, causal=False):
    batch, heads, _, dim = qk.shape
    bi = torch.arange(batch).view(-1, 1, 1, 1, 1)
    hi = torch.arange(heads).view(1, -1, 1, 1, 1)
    queries = qk[bi, hi, query_pos]{scale}
    keys = torch.nn.functional.normalize(qk, dim=-1)[bi, hi, key_pos]
    logits = queries @ keys.transpose(-1, -2)
    if causal:
        logits = logits.masked_fill(key_pos[..., None, :] > query_pos[..., :, None], float("-inf"))
    logits = logits.masked_fill(key_pos[..., None, :] == query_pos[..., :, None], SELF_MASK_VALUE)
    return torch.softmax(logits, dim=-1) @ v[bi, hi, key_pos], torch.logsumexp(logits, dim=-1)
'''

WRONG = {
    # The queries are not divided by sqrt(dim). Every visible case of exercise 3 that checks
    # values has dim 1 (and the grader's matching small cases too), where the scale is 1.
    "no_scale": (
        {"chunk_attention": _CHUNK_ATTENTION.format(scale="")},
        {"test_chunk_attention_values", "test_chunk_attention_gradients"},
    ),
    # Right bucket ids, but from the library (bound with from-import, before grading): the
    # grader finds the library named in the student's code, and while the tests run the
    # library raises. Only exercise 1 pays for it.
    "calls_library": (
        {"lsh_hash": (
            "from longctx_lib.lsh import hash_vectors as _reference\n\n\n"
            "def lsh_hash(x, rotations):\n"
            "    return _reference(x, 2 * rotations.shape[-1], rotations.shape[1], rotations=rotations)\n")},
        HASH,
    ),
    # Always looks back, even with a single chunk per round (which then sees itself twice):
    # the visible and random cases have several chunks; the edge cases do not.
    "look_back_with_one_chunk": (
        {"sort_and_chunk": (
            "def sort_and_chunk(buckets, chunk_size):\n"
            "    b, h, r, length = buckets.shape\n"
            "    qp = torch.argsort(buckets * length + torch.arange(length), dim=-1)\n"
            "    qp = qp.view(b, h, r, length // chunk_size, chunk_size)\n"
            "    return qp, torch.cat([qp, torch.roll(qp, 1, dims=-2)], dim=-1)\n")},
        {"test_sort_and_chunk_edges"},
    ),
    # Weights exp(lse) / sum exp(lse) without subtracting the maximum: right for the visible
    # log-sum-exps, NaN where every round's lse is -1e5 (0 / 0) and inf / inf near 800.
    "unstable_combination": (
        {"combine_rounds": (
            "def combine_rounds(out, lse, query_pos):\n"
            "    b, h, r, c, m, dv = out.shape\n"
            "    pos = query_pos.reshape(b, h, r, c * m)\n"
            "    o = torch.zeros(b, h, r, c * m, dv, dtype=out.dtype).scatter(\n"
            "        3, pos[..., None].expand(-1, -1, -1, -1, dv), out.reshape(b, h, r, c * m, dv))\n"
            "    e = torch.zeros(b, h, r, c * m, dtype=lse.dtype).scatter(3, pos, lse.reshape(b, h, r, c * m)).exp()\n"
            "    return (o * (e / e.sum(dim=2, keepdim=True))[..., None]).sum(dim=2)\n")},
        {"test_combine_rounds_hidden"},
    ),
}
ESSENTIAL_WRONG = ("no_scale", "calls_library")


# -------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course-02"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, WRONG)


# ----------------------------------------------------------------------------- tests
def test_student_notebook_matches_generated():
    """(1) notebooks/02-lsh-attention is what scripts/generate_student.py produces."""
    assert_student_matches_generated(ASSIGNMENT)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    assert set(grades) >= HASH | SORT | CHUNK | COMBINE | {"ex5_answer"}
    check_assignment_layout(
        nb, grades, ASSIGNMENT, total=19, autograded=AUTOGRADED_POINTS,
        parameters=['DEVICE = "auto"', "LENGTH = ", "CHUNK_SIZE = ", "ROUNDS = ", "DUP_SEQUENCES = "],
    )
    # The demonstrations stay light while nbgrader grades; the optional toy table is skipped.
    cells = {c.get("id"): c.source for c in nb.cells}
    assert 'GRADING = os.environ.get("NBGRADER_EXECUTION") is not None' in cells["assemble"]
    assert "256 if GRADING else LENGTH" in cells["assemble"] and "256 if GRADING else LENGTH" in cells["rounds"]
    assert 'if os.environ.get("NBGRADER_EXECUTION") is not None:' in cells["toy_table"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "stable=True).indices", "_graded_on_its_own",
                 "Rubric", "torch.softmax(z, dim=2)"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    answers = answer_cells(nb)
    assert set(answers) == {"lsh_hash", "sort_and_chunk", "chunk_attention", "combine_rounds", "ex5_answer"}
    for grade_id, cell in answers.items():
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source, grade_id
            assert cell.source.lstrip().startswith("def "), f"{grade_id}: keep the signature"


def test_solution_earns_full_marks(graded):
    """(2) and the assembled LSH attention equals the library's."""
    result = graded("solution")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"
    assert result.errors == {}, result.errors
    assembled = printed_output(result.autograded, "assemble")
    assert assembled.count("(they agree)") == 2, assembled
    assert "grading: the toy table is skipped" in printed_output(result.autograded, "toy_table")


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}
    # The assembly cell says what is missing instead of failing.
    assert "finish exercises 1-4" in printed_output(result.autograded, "assemble")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in ESSENTIAL_WRONG else pytest.mark.slow) for name in WRONG
])
def test_wrong_submission_earns_partial_marks(graded, name):
    """(4) partial marks: exactly the test cells that cannot see the mistake pay."""
    result = graded(name)
    expected_failures = WRONG[name][1]
    assert 0 < result.total < result.max_total, (result.total, result.max_total)
    assert result.failed == expected_failures, (
        f"{name}: failed {sorted(result.failed)}, expected {sorted(expected_failures)}\n{result.errors}")
    assert all(result.scores[c] == result.max_scores[c] for c in result.scores if c not in expected_failures)


def test_calling_the_library_is_named_in_the_feedback(graded):
    errors = graded("calls_library").errors
    assert "longctx_lib.lsh.hash_vectors" in errors["test_lsh_hash_hidden"], errors
    assert "graded on its own" in errors["test_lsh_hash_hidden"], errors


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(5)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
