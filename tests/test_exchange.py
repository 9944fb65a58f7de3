"""The whole nbgrader cycle on one machine, through nbgrader's exchange (book/instructors.md).

An instructor and two students, each with their own "home" folder and nbgrader
configuration, share an exchange folder in a temporary directory:

1. instructor: generate the student version of assignment 1 and release it;
2. students: fetch it; alice fills every answer cell with the reference solution, bob
   changes nothing; both submit;
3. instructor: collect, autograde, generate and release feedback, export a CSV;
4. students: fetch their feedback.

The CSV must give alice every autograded point and bob none, and the feedback must
show the hidden tests (their code and their results). Everything goes through
nbgrader's Python API (the classes behind ``nbgrader release_assignment``,
``fetch_assignment``, ``submit``, ``collect``, ``autograde``, ``generate_feedback``,
``release_feedback``, ``fetch_feedback`` and ``export``); nothing is written to the
repository or to the real home folder.
"""

from __future__ import annotations

import csv
import html
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from grading_helpers import answer_cells, graded_cells
from nbhelpers import REPO, load_script

pytestmark = [
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning"),
    # nbgrader 0.9.6 misspells `authenticator` when it creates ReleaseFeedback / FetchFeedback
    pytest.mark.filterwarnings("ignore:Passing unrecognized arguments:DeprecationWarning"),
]

ASSIGNMENT = "01-attention-bottleneck"
NOTEBOOK = f"{ASSIGNMENT}.ipynb"
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.DOTALL)

generate_student = load_script("generate_student")


def _ok(result: dict, what: str) -> dict:
    assert result.get("success"), f"{what} failed:\n{result.get('log', '')}\n{result.get('error', '')}"
    return result


@dataclass
class Student:
    """A student account: a home folder with its own nbgrader configuration."""

    name: str
    home: Path
    exchange_root: Path
    course_id: str

    def config(self):
        from traitlets.config import Config

        c = Config()
        c.CourseDirectory.course_id = self.course_id
        c.CourseDirectory.student_id = self.name
        c.CourseDirectory.root = str(self.home)
        c.Exchange.root = str(self.exchange_root)
        c.Exchange.assignment_dir = str(self.home)  # where fetch puts the assignment
        c.Exchange.cache = str(self.home / ".local/share/jupyter/nbgrader_cache")
        return c

    def run(self, kind: str, monkeypatch) -> None:
        """Run the exchange step ``kind`` (FetchAssignment, Submit, FetchFeedback) as this student."""
        from nbgrader.auth import Authenticator
        from nbgrader.coursedir import CourseDirectory
        from nbgrader.exchange import ExchangeFactory

        config = self.config()
        with monkeypatch.context() as m:
            m.setenv("HOME", str(self.home))
            m.chdir(self.home)
            coursedir = CourseDirectory(config=config)
            coursedir.assignment_id = ASSIGNMENT
            factory = ExchangeFactory(config=config)
            app = getattr(factory, kind)(coursedir=coursedir, authenticator=Authenticator(config=config),
                                         config=config)
            app.start()

    @property
    def notebook(self) -> Path:
        return self.home / ASSIGNMENT / NOTEBOOK


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    """Run the whole cycle once; return the paths and results the tests read."""
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.plugins import CsvExportPlugin

    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("exchange")
    exchange = tmp / "exchange"
    exchange.mkdir()
    exchange.chmod(0o777)  # nbgrader's exchange must be writable by everyone
    instructor_home = tmp / "instructor"
    course = instructor_home / "course"
    shutil.copytree(REPO / "solutions" / ASSIGNMENT, course / "solutions" / ASSIGNMENT,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    generate_student.ensure_alembic_on_path()
    config = generate_student.nbgrader_config(course, REPO)  # the repo's nbgrader_config.py
    config.Exchange.root = str(exchange)
    config.Exchange.cache = str(instructor_home / ".local/share/jupyter/nbgrader_cache")
    course_id = config.CourseDirectory.course_id
    assert course_id, "nbgrader_config.py must set c.CourseDirectory.course_id (the exchange needs it)"
    students = {name: Student(name, tmp / name, exchange, course_id) for name in ("alice", "bob")}
    for s in students.values():
        s.home.mkdir()

    try:
        mp.setenv("HOME", str(instructor_home))
        mp.chdir(course)
        api = NbGraderAPI(config=config)
        assert api.exchange_is_functional, f"nbgrader sees no usable exchange at {exchange}"
        # 1. instructor: generate and release
        _ok(api.generate_assignment(ASSIGNMENT, force=True, create=True), "generate_assignment")
        _ok(api.release_assignment(ASSIGNMENT), "release_assignment")
        released = sorted(api.get_released_assignments())
        assert ASSIGNMENT in released, f"release_assignment did not publish it; released: {released}"

        # 2. students: fetch, edit, submit
        source = nbformat.read(course / "solutions" / ASSIGNMENT / NOTEBOOK, as_version=4)
        solutions = answer_cells(source)
        for s in students.values():
            s.run("FetchAssignment", mp)
            assert s.notebook.is_file(), f"fetch_assignment put nothing at {s.notebook}"
        alice = students["alice"]
        nb = nbformat.read(alice.notebook, as_version=4)
        for grade_id, cell in answer_cells(nb).items():
            cell.source = solutions[grade_id].source
        nbformat.write(nb, alice.notebook)
        for s in students.values():
            s.run("Submit", mp)

        # 3. instructor: collect, autograde, feedback, export
        mp.setenv("HOME", str(instructor_home))
        mp.chdir(course)
        _ok(api.collect(ASSIGNMENT), "collect")
        collected = sorted(p.name for p in (course / "submitted").iterdir())
        assert collected == sorted(students), f"collect brought {collected}, expected {sorted(students)}"
        for name in students:
            _ok(api.autograde(ASSIGNMENT, name, force=True, create=True), f"autograde of {name}")
        _ok(api.generate_feedback(ASSIGNMENT), "generate_feedback")
        _ok(api.release_feedback(ASSIGNMENT), "release_feedback")
        grades_csv = course / "grades.csv"
        exporter = CsvExportPlugin(config=config)
        exporter.to = str(grades_csv)
        with Gradebook(config.CourseDirectory.db_url) as gb:
            exporter.export(gb)

        # 4. students: fetch feedback
        for s in students.values():
            s.run("FetchFeedback", mp)
    finally:
        mp.undo()
    with open(grades_csv, newline="", encoding="utf-8") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    return {
        "course": course,
        "students": students,
        "source": source,
        "rows": rows,
        "feedback": {name: course / "feedback" / name / ASSIGNMENT / f"{ASSIGNMENT}.html" for name in students},
    }


def _points(source: nbformat.NotebookNode) -> tuple[float, float]:
    """(autograded points, all points) of the source notebook."""
    cells = graded_cells(source).values()
    auto = sum(float(c.metadata["nbgrader"]["points"]) for c in cells if c.cell_type == "code")
    total = sum(float(c.metadata["nbgrader"]["points"]) for c in cells)
    return auto, total


def test_released_assignment_hides_solutions_and_hidden_tests(cycle):
    text = cycle["students"]["bob"].notebook.read_text(encoding="utf-8")
    assert "### BEGIN SOLUTION" not in text and "### BEGIN HIDDEN TESTS" not in text
    assert "raise NotImplementedError()" in text, "the fetched notebook has no answer stubs"


def test_exported_csv_gives_the_solution_full_marks_and_the_untouched_notebook_zero(cycle):
    auto, total = _points(cycle["source"])
    rows = cycle["rows"]
    assert set(rows) == {"alice", "bob"}, f"grades.csv has students {sorted(rows)}"
    for name, expected in (("alice", auto), ("bob", 0.0)):
        row = rows[name]
        assert row["assignment"] == ASSIGNMENT
        assert float(row["max_score"]) == pytest.approx(total), f"{name}: max_score {row['max_score']}, expected {total}"
        # the hand-graded question is not graded yet: the score is the autograded points
        assert float(row["raw_score"]) == pytest.approx(expected), (
            f"{name}: raw_score {row['raw_score']}, expected {expected} of {auto} autograded points"
        )
        assert float(row["score"]) == pytest.approx(expected)
        assert row["timestamp"], f"{name}: no submission timestamp in the CSV"


def test_feedback_shows_the_hidden_tests_and_their_results(cycle):
    hidden = [m.group(1) for c in cycle["source"].cells for m in HIDDEN.finditer(c.source)]
    assert hidden, "the source notebook has no hidden tests"
    # a distinctive line of each hidden test (its longest) must appear in every feedback
    lines = [max(block.strip().splitlines(), key=len).strip() for block in hidden]
    for name, path in cycle["feedback"].items():
        assert path.is_file(), f"no feedback for {name} at {path}"
        text = html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))
        missing = [line for line in lines if line not in text]
        assert not missing, f"{name}'s feedback does not show these hidden-test lines: {missing}"
    bob = html.unescape(re.sub(r"<[^>]+>", "", cycle["feedback"]["bob"].read_text(encoding="utf-8")))
    assert "NotImplementedError" in bob, "bob's feedback does not show why his tests failed"
    _, total = _points(cycle["source"])
    auto, _ = _points(cycle["source"])
    alice = html.unescape(re.sub(r"<[^>]+>", "", cycle["feedback"]["alice"].read_text(encoding="utf-8")))
    assert re.search(rf"Score:\s*{auto:g}(\.0+)?\s*/\s*{total:g}", alice), "alice's feedback does not show her score"


def test_students_fetch_their_feedback(cycle):
    for name, s in cycle["students"].items():
        fetched = list((s.home / ASSIGNMENT / "feedback").rglob("*.html"))
        assert fetched, f"{name}: fetch_feedback brought nothing into {s.home / ASSIGNMENT / 'feedback'}"
        assert os.path.getsize(fetched[0]) > 1000
