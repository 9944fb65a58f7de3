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
