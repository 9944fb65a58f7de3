"""nbgrader configuration of the course's assignments.

Layout (nbgrader's "source" and "release" steps, renamed to fit the repository):

    solutions/<assignment>/<assignment>.ipynb   source: solutions and hidden tests
    notebooks/<assignment>/<assignment>.ipynb   student version, generated, committed

Regenerate the student notebooks with ``python scripts/generate_student.py`` (it loads
this file and runs nbgrader in a temporary course directory); ``--check`` verifies them.
Run from the repository root, ``nbgrader generate_assignment``, ``autograde`` etc. use
these settings directly.
"""

import os

c = get_config()  # noqa: F821 -- traitlets provides get_config when it loads this file

c.CourseDirectory.course_id = "longctx-from-scratch"
_ROOT = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.root = _ROOT
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"

# The gradebook (students' scores) sits at the course root as gradebook.db, which
# .gitignore keeps out of git (as it does submitted/, autograded/, feedback/).
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_ROOT, "gradebook.db")

# Executing a notebook (autograde, validate): torch notebooks need more than nbgrader's
# default of 30 seconds per cell. nbgrader sets NBGRADER_EXECUTION while it executes, and
# the notebooks' heavy cells check it and stay light.
c.Execute.timeout = 600

# The student version: solutions replaced by stubs, hidden tests removed, no outputs.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.ClearOutput.enabled = True
c.ClearHiddenTests.enabled = True

# ---------------------------------------------------------------- grading integrity
# Autograde executes with longctx_lib.grading's GradingExecute instead of nbgrader's Execute:
# the locked test cells hand their results to the grader, which recomputes the expected
# values outside the student's kernel and decides (tampering from inside the notebook
# cannot earn points); the kernel's address space is limited (a memory bomb fails
# its cell, not the machine); a cell that kills the kernel (os._exit, a segfault) is
# recorded as failed and the rest of the notebook runs again in a fresh kernel.
# Importing longctx_lib here, before any student code runs, is what keeps the grader's
# reference pristine. See longctx_lib/grading.py.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput, SaveAutoGrades,
)

from longctx_lib.grading import make_execute_preprocessor  # noqa: E402

GradingExecute = make_execute_preprocessor()
c.Autograde.autograde_preprocessors = [
    GradingExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata,
]
# An infinite loop: the cell is interrupted after c.Execute.timeout seconds and earns 0;
# grading goes on with the next cell.
c.Execute.interrupt_on_timeout = True
_TIMEOUT_MESSAGE = ("this cell ran longer than the grader's time limit per cell (c.Execute.timeout) and was "
                    "stopped: an infinite loop? It earns nothing, nor do the tests that need what it defines")
c.Execute.error_on_timeout = {
    "ename": "CellTimeoutError",
    "evalue": _TIMEOUT_MESSAGE,
    "traceback": [f"CellTimeoutError: {_TIMEOUT_MESSAGE}"],
}
c.GradingExecute.memory_limit_mb = 8192  # address space of the grading kernel (RLIMIT_AS)
c.GradingExecute.max_output_chars = 100_000  # characters of printed output kept per cell
c.LimitOutput.max_lines = 1000  # lines of printed output kept per cell
c.LimitOutput.max_traceback = 100
# A deleted test cell comes back (with its points, and a note saying it was missing).
c.OverwriteCells.add_missing_cells = True
