"""A throw-away nbgrader course for the grading tests, driven through nbgrader's Python API.

nbgrader's command line is not used on purpose: ``nbgrader validate`` exits 0 even when
tests fail, and every command prints rather than returns. Here each step returns what
it did, and scores are read from the gradebook.

    course = Course(tmp_path, "01-attention-bottleneck")      # copy source, generate
    nb = course.submission(answers={"masked_attention": code})  # student version, filled in
    graded = course.autograde("alice", nb)                      # submit, autograde, read scores
    graded.total, graded.max_total, graded.scores["test_..."]
    graded.errors["test_..."]       # what the autograded notebook says went wrong in that cell
    course.feedback("alice")        # nbgrader generate_feedback: the HTML a student gets

``Course(..., config={"Execute": {"timeout": 30}})`` overrides the repository's nbgrader
settings for this course only (e.g. a short per-cell timeout for a test).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbhelpers import REPO, load_script

__all__ = [
    "Course",
    "GradedSubmission",
    "answer_cells",
    "assert_student_matches_generated",
    "cached_grader",
    "check_assignment_layout",
    "grade_suite",
    "graded_cells",
    "printed_output",
    "well_formed_grades",
]


def printed_output(nb: nbformat.NotebookNode, cell_id: str) -> str:
    """The stream output (print) of the cell whose id or nbgrader grade_id is ``cell_id``."""
    cell = next(c for c in nb.cells if c.get("id") == cell_id or
                c.metadata.get("nbgrader", {}).get("grade_id") == cell_id)
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def assert_student_matches_generated(assignment: str) -> None:
    """notebooks/<assignment> is exactly what scripts/generate_student.py produces from solutions/."""
    gen = load_script("generate_student")
    assert assignment in gen.list_assignments()
    report = gen.differences(gen.generate([assignment]), gen.committed([assignment]))
    assert not report, "run `python scripts/generate_student.py`:\n" + "\n\n".join(report)


def well_formed_grades(path: Path) -> tuple[nbformat.NotebookNode, dict[str, nbformat.NotebookNode]]:
    """Read a source notebook, check what every assignment needs (valid nbformat, the
    ``python3`` kernel, unique grade_ids, points on every graded cell); return it and its graded cells."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    grades = graded_cells(nb)
    assert all(c.metadata["nbgrader"].get("points", 0) > 0 for c in grades.values()), "every test cell needs points"
    return nb, grades


def check_assignment_layout(nb: nbformat.NotebookNode, grades: dict, assignment: str, *, total: int,
                            autograded: int, parameters: list[str], exercises: dict | None = None) -> None:
    """What every assignment's source notebook promises: the total stated at the top is
    the sum of the points, the Colab badge opens the student notebook, non-answer cells
    are locked, answer cells are not graded, hidden tests hand their cases to the
    grader, the first code cell is the tagged ``parameters`` cell with ``parameters``, and
    each heading of ``exercises`` (``{number: grade_ids}``) states its test cells' points."""
    points = sum(c.metadata["nbgrader"]["points"] for c in grades.values())
    auto = sum(c.metadata["nbgrader"]["points"] for c in grades.values() if c.cell_type == "code")
    stated = re.search(r"\*\*Total: (\d+) points\*\*: (\d+) autograded", nb.cells[0].source)
    assert stated and (int(stated[1]), int(stated[2])) == (points, auto) == (total, autograded), (
        stated and stated.groups(), points, auto)
    for number, cells in (exercises or {}).items():
        points = sum(grades[c].metadata["nbgrader"]["points"] for c in cells)
        assert any(c.source.startswith(f"## Exercise {number} ({points} points") for c in nb.cells), number
    assert f"blob/main/notebooks/{assignment}/{assignment}.ipynb" in nb.cells[0].source
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta and not meta["solution"]:
            assert meta["locked"], f"{meta['grade_id']} must be locked"
        if meta and meta["solution"] and cell.cell_type == "code":
            assert not meta["grade"], f"{meta['grade_id']}: answer cells are graded by the test cells"
        # Hidden tests hand their cases to the grader; prompts never sit in answer cells.
        if meta and meta["grade"] and cell.cell_type == "code":
            assert "### BEGIN HIDDEN TESTS" in cell.source and "_check(" in cell.source, meta["grade_id"]
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    for name in parameters:
        assert name in first.source, name


def grade_suite(tmp_path: Path, monkeypatch, suite: str, fn) -> list:
    """Run a grading suite's kernel side and grader side as the grader would, in one process:
    the grader's findings (``[]`` when ``fn`` passes)."""
    from longctx_lib import grading

    monkeypatch.setenv(grading.GRADER_DIR_ENV, str(tmp_path))
    cases = grading.draw_cases(suite, tmp_path)
    try:
        grading.check(suite, fn)
    except AssertionError:
        pass  # the local verdict is advice; the grader's is the one that counts
    return grading.verify(suite, tmp_path, cases)


def answer_cells(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """The cells a student writes in (nbgrader ``solution: true``), by grade_id."""
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def graded_cells(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """The cells that carry points (nbgrader ``grade: true``), by grade_id."""
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


@dataclass
class GradedSubmission:
    """What autograde made of one submission."""

    student: str
    scores: dict[str, float]  # autograded (code) test cells: grade_id -> points earned
    max_scores: dict[str, float]  # the same cells: grade_id -> points available
    sha256_before: str  # the submitted file, before and after grading
    sha256_after: str
    log: str = field(repr=False, default="")
    autograded: nbformat.NotebookNode | None = field(repr=False, default=None)  # with its outputs

    @property
    def errors(self) -> dict[str, str]:
        """Every code cell's error outputs as text, by grade_id (or cell id): 'ename: evalue' lines."""
        found = {}
        for cell in (self.autograded.cells if self.autograded is not None else []):
            if cell.cell_type != "code":
                continue
            text = "\n".join(f"{o.get('ename')}: {o.get('evalue')}" for o in cell.get("outputs", [])
                             if o.get("output_type") == "error")
            if text:
                found[cell.metadata.get("nbgrader", {}).get("grade_id", cell.get("id"))] = text
        return found

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    @property
    def max_total(self) -> float:
        return sum(self.max_scores.values())

    @property
    def failed(self) -> set[str]:
        """Test cells that earned nothing."""
        return {name for name, score in self.scores.items() if score == 0}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Course:
    """An nbgrader course in ``root`` holding one assignment copied from ``solutions/``.

    Uses the repository's ``nbgrader_config.py`` (through ``scripts/generate_student.py``),
    pointed at ``root`` and a gradebook inside it, so nothing is written to the repository.
    """

    def __init__(self, root: Path, assignment: str, repo: Path = REPO, config: Mapping | None = None):
        from nbgrader.apps import NbGraderAPI
        from traitlets.config import Config

        gen = load_script("generate_student")
        gen.ensure_alembic_on_path()
        self.root, self.assignment = Path(root), assignment
        shutil.copytree(repo / gen.SOURCE_DIR / assignment, self.root / gen.SOURCE_DIR / assignment,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        self.config = gen.nbgrader_config(self.root, repo)
        if config:
            self.config.merge(Config({section: dict(values) for section, values in config.items()}))
        self.db_url = self.config.CourseDirectory.db_url
        self.api = NbGraderAPI(config=self.config)
        result = self.api.generate_assignment(assignment, force=True, create=True)
        assert result["success"], f"generate_assignment failed:\n{result.get('log')}\n{result.get('error')}"
        self.source_path = self.root / gen.SOURCE_DIR / assignment / f"{assignment}.ipynb"
        self.student_path = self.root / gen.RELEASE_DIR / assignment / f"{assignment}.ipynb"

    @property
    def notebook_name(self) -> str:
        return self.source_path.stem

    def source(self) -> nbformat.NotebookNode:
        return nbformat.read(self.source_path, as_version=4)

    def student(self) -> nbformat.NotebookNode:
        return nbformat.read(self.student_path, as_version=4)

    def submission(self, answers: Mapping[str, str] | None = None) -> nbformat.NotebookNode:
        """The student version with every answer cell filled in with the solution's code,
        except those in ``answers`` ({grade_id: source}), which get that source instead."""
        nb = self.student()
        solutions = answer_cells(self.source())
        answers = dict(answers or {})
        unknown = answers.keys() - solutions.keys()
        assert not unknown, f"no answer cells named {sorted(unknown)}; answer cells: {sorted(solutions)}"
        for grade_id, cell in answer_cells(nb).items():
            cell.source = answers.get(grade_id, solutions[grade_id].source)
        return nb

    def autograde(self, student: str, nb: nbformat.NotebookNode | Path) -> GradedSubmission:
        """Submit ``nb`` as ``student``'s work, autograde it, read the scores from the gradebook."""
        from nbgrader.api import Gradebook

        path = self.root / "submitted" / student / self.assignment / f"{self.notebook_name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(nb, Path):
            shutil.copyfile(nb, path)
        else:
            nbformat.write(nb, path)
        before = _sha256(path)
        result = self.api.autograde(self.assignment, student, force=True, create=True)
        log = f"{result.get('log', '')}\n{result.get('error', '')}"
        assert result["success"], f"autograde of {student} failed:\n{log}"
        with Gradebook(self.db_url) as gb:
            grades = [g.to_dict() for g in
                      gb.find_submission_notebook(self.notebook_name, self.assignment, student).grades]
        code = [g for g in grades if g["cell_type"] == "code"]  # markdown answers are graded by hand
        return GradedSubmission(
            student=student,
            scores={g["name"]: g["auto_score"] or 0.0 for g in code},
            max_scores={g["name"]: g["max_score"] for g in code},
            sha256_before=before,
            sha256_after=_sha256(path),
            log=log,
            autograded=nbformat.read(self.root / "autograded" / student / self.assignment
                                     / f"{self.notebook_name}.ipynb", as_version=4),
        )

    def feedback(self, student: str) -> str:
        """nbgrader ``generate_feedback`` for ``student`` (already autograded): the HTML, as text."""
        result = self.api.generate_feedback(self.assignment, student, force=True)
        assert result["success"], f"generate_feedback of {student} failed:\n{result.get('log')}\n{result.get('error')}"
        return (self.root / "feedback" / student / self.assignment / f"{self.notebook_name}.html").read_text(
            encoding="utf-8")

    def scores_in_gradebook(self, student: str) -> dict[str, float]:
        """``student``'s autograded code-cell scores as the gradebook holds them now."""
        from nbgrader.api import Gradebook

        with Gradebook(self.db_url) as gb:
            grades = [g.to_dict() for g in
                      gb.find_submission_notebook(self.notebook_name, self.assignment, student).grades]
        return {g["name"]: g["auto_score"] or 0.0 for g in grades if g["cell_type"] == "code"}


def cached_grader(course: Course, source: Path, student: Path, wrong: Mapping[str, tuple]):
    """``grade(name)``: the autograded submission ``name``, graded once.

    ``"solution"`` is the committed source notebook itself, ``"untouched"`` the committed
    student notebook, any other name a student notebook filled in with ``wrong[name][0]``
    (answers by grade_id).
    """
    cache: dict[str, GradedSubmission] = {}

    def grade(name: str) -> GradedSubmission:
        if name not in cache:
            if name == "solution":
                nb = source  # the source notebook itself, exactly as committed
            elif name == "untouched":
                nb = student  # the committed student notebook, nothing filled in
            else:
                nb = course.submission(wrong[name][0])
            cache[name] = course.autograde(name.replace("_", "-"), nb)
        return cache[name]

    return grade
