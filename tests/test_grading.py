"""The assignments, graded by nbgrader as a student's work would be (through its Python API).

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

import re

import nbformat
import pytest
from grading_helpers import (
    Course,
    answer_cells,
    cached_grader,
    well_formed_grades,
)
from nbhelpers import REPO, load_script

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "01-attention-bottleneck"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# ------------------------------------------------------------------ wrong submissions
# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give
# it 0 points; every other test cell must give full points.
_ATTENTION = '''
def masked_attention(q, k, v, causal=False, key_padding_mask=None):
    q_len, k_len = q.shape[-2], k.shape[-2]
    scores = {scores}
    blocked = torch.zeros(q_len, k_len, dtype=torch.bool, device=q.device)
    if causal:
        blocked = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu({diagonal})
    if key_padding_mask is not None:
        blocked = blocked | key_padding_mask[:, None, None, :]
    dead = blocked.all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(blocked & ~dead, float("-inf")), dim=-1)
    return weights.masked_fill(dead, 0.0) @ v
'''
_SCALED = "q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])"
ATTENTION_TESTS = {"test_masked_attention_visible", "test_masked_attention_values",
                   "test_masked_attention_masks", "test_masked_attention_gradients"}

WRONG = {
    # The scores are not divided by sqrt(dim). The hand-worked visible case has dim = 1 and
    # the other visible checks (shapes, weights summing to 1, masks) do not depend on the
    # scale; causality and padding by perturbation do not either.
    "no_scale": (
        {"masked_attention": _ATTENTION.format(scores="q @ k.transpose(-2, -1)", diagonal=1)},
        {"test_masked_attention_values", "test_masked_attention_gradients"},
    ),
    # Right values, but through the library (bound with from-import, before grading): the
    # grader finds the library named in the student's code, and while the tests run the
    # library raises; no test of exercise 1 pays. Exercises 2 and 3 are untouched.
    "calls_library": (
        {"masked_attention": (
            "from longctx_lib.attention import scaled_dot_product_attention as _reference\n\n\n"
            "def masked_attention(q, k, v, causal=False, key_padding_mask=None):\n"
            "    return _reference(q, k, v, causal=causal, key_padding_mask=key_padding_mask)\n")},
        ATTENTION_TESTS,
    ),
    # Masks by adding a -inf bias, then turns the NaN rows (queries that see no key) into
    # zeros after the softmax: the forward pass is right, the gradients of q and k are NaN.
    "nan_gradients": (
        {"masked_attention": (
            "def masked_attention(q, k, v, causal=False, key_padding_mask=None):\n"
            "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
            "    blocked = torch.zeros(q.shape[-2], k.shape[-2], dtype=torch.bool)\n"
            "    if causal:\n"
            "        blocked = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)\n"
            "    if key_padding_mask is not None:\n"
            "        blocked = blocked | key_padding_mask[:, None, None, :]\n"
            "    bias = torch.zeros(blocked.shape, dtype=q.dtype).masked_fill(blocked, float('-inf'))\n"
            "    weights = torch.nan_to_num(torch.softmax(scores + bias, dim=-1), nan=0.0)\n"
            "    return weights @ v\n")},
        {"test_masked_attention_gradients"},
    ),
    # Causal mask off by one (query i sees only j < i): the visible tests catch it (the
    # first query sees nothing), and so does every hidden test of exercise 1.
    "causal_off_by_one": (
        {"masked_attention": _ATTENTION.format(scores=_SCALED, diagonal=0)},
        ATTENTION_TESTS,
    ),
    # Counts one sequence and one head: right for the paper's batch 1, 1 head.
    "ignores_batch_and_heads": (
        {"costs": (
            "def score_matrix_bytes(batch, heads, length, bytes_per_element=4):\n"
            "    return length * length * bytes_per_element\n\n\n"
            "def attention_flops(batch, heads, length, head_dim):\n"
            "    return 4 * length * length * head_dim\n")},
        {"test_costs_hidden"},
    ),
    # A floating-point square root: right for small budgets, off by one beyond 2**53.
    "float_sqrt": (
        {"max_length": (
            "def max_length_for_budget(budget_bytes, batch=1, heads=1, bytes_per_element=4):\n"
            "    return int(math.sqrt(budget_bytes / (batch * heads * bytes_per_element)))\n")},
        {"test_max_length_hidden"},
    ),
}
ESSENTIAL_WRONG = ("no_scale", "calls_library")


# -------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, WRONG)


# ----------------------------------------------------------------------------- tests
def test_student_notebooks_match_generated():
    """(1) notebooks/ is what scripts/generate_student.py produces from solutions/."""
    gen = load_script("generate_student")
    assignments = gen.list_assignments()
    assert ASSIGNMENT in assignments
    report = gen.differences(gen.generate(assignments), gen.committed(assignments))
    assert not report, "run `python scripts/generate_student.py`:\n" + "\n\n".join(report)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    # The total stated at the top is the sum of the points.
    total = sum(c.metadata["nbgrader"]["points"] for c in grades.values())
    auto = sum(c.metadata["nbgrader"]["points"] for c in grades.values() if c.cell_type == "code")
    stated = re.search(r"\*\*Total: (\d+) points\*\*: (\d+) autograded", nb.cells[0].source)
    assert stated and (int(stated[1]), int(stated[2])) == (total, auto), (stated and stated.groups(), total, auto)
    # Prompts are read-only; every test cell is locked; answers are not tests.
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta and not meta["solution"]:
            assert meta["locked"], f"{meta['grade_id']} must be locked"
        if meta and meta["solution"] and cell.cell_type == "code":
            assert not meta["grade"], f"{meta['grade_id']}: answer cells are graded by the test cells"
    # First code cell: the papermill parameters.
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    for name in ("DEVICE = \"auto\"", "LENGTHS = [256, 512, 1024, 2048]", "REPEATS = 3"):
        assert name in first.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "math.isqrt(budget", "_graded_on_its_own",
                 "Rubric"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for grade_id, cell in answer_cells(nb).items():
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source, grade_id
            assert cell.source.lstrip().startswith(("def ", "import", "from")), f"{grade_id}: keep the signature"


def test_solution_earns_full_marks(graded):
    """(2)"""
    result = graded("solution")
    assert result.max_total == 15
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == 15
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in ESSENTIAL_WRONG else pytest.mark.slow) for name in WRONG
])
def test_wrong_submission_earns_partial_marks(graded, name):
    """(4) partial marks: exactly the test cells that cannot see the mistake pay."""
    result = graded(name)
    expected_failures = WRONG[name][1]
    assert 0 < result.total < result.max_total, (result.total, result.max_total)
    assert result.failed == expected_failures, (
        f"{name}: failed {sorted(result.failed)}, expected {sorted(expected_failures)}")
    assert all(result.scores[c] == result.max_scores[c] for c in result.scores if c not in expected_failures)


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(5)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
