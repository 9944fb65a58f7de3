"""Released notebooks leak no solution code and no hidden test (issue 10).

Every notebook under ``notebooks/`` is compared with its nbgrader source under
``solutions/``: none of nbgrader's markers may remain, and no line of any solution region
(``### BEGIN SOLUTION`` ... ``### END SOLUTION``) or hidden-test region
(``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``) may appear anywhere in it: in
a cell's source, its outputs or its metadata. Lines too generic to give anything away
(``else:``, ``return out``, a closing bracket) are ignored: those of at most
``MIN_CHARS`` characters, and those that also occur in the source outside any region.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from nbhelpers import REPO

MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
MIN_CHARS = 12
_REGION = re.compile(r"^[ \t]*#*[ \t]*BEGIN (SOLUTION|HIDDEN TESTS)[^\n]*\n(.*?)^[ \t]*#*[ \t]*END \1",
                     re.MULTILINE | re.DOTALL)

RELEASED = sorted((REPO / "notebooks").glob("*/*.ipynb"))


def secret_lines(source_nb: nbformat.NotebookNode) -> dict[str, str]:
    """{line: where} for every telling line of a solution or hidden-test region of the source."""
    inside, outside = {}, set()
    for cell in source_nb.cells:
        where = cell.metadata.get("nbgrader", {}).get("grade_id", cell.get("id"))
        regions = list(_REGION.finditer(cell.source))
        for match in regions:
            for line in match.group(2).splitlines():
                inside.setdefault(line.strip(), f"{where} ({match.group(1).lower()})")
        rest = _REGION.sub("", cell.source)
        outside |= {line.strip() for line in rest.splitlines()}
    return {line: where for line, where in inside.items() if len(line) > MIN_CHARS and line not in outside}


def _source_of(released: Path) -> Path:
    return REPO / "solutions" / released.relative_to(REPO / "notebooks")


def test_every_assignment_is_released():
    sources = sorted((REPO / "solutions").glob("*/*.ipynb"))
    assert sources, "no assignment sources found"
    assert [_source_of(p) for p in RELEASED] == sources


def test_the_scan_finds_a_planted_leak():
    """The check itself works: a solution line pasted into the released notebook is found."""
    released = RELEASED[0]
    source = nbformat.read(_source_of(released), as_version=4)
    secrets = secret_lines(source)
    assert secrets, "the source has no solution or hidden-test regions"
    line = next(iter(secrets))
    planted = nbformat.read(released, as_version=4)
    planted.cells[-1].source += "\n" + line
    assert line in {l.strip() for c in planted.cells for l in c.source.splitlines()}


@pytest.mark.parametrize("released", RELEASED, ids=lambda p: p.parent.name)
def test_released_notebook_leaks_nothing(released):
    source = nbformat.read(_source_of(released), as_version=4)
    nb = nbformat.read(released, as_version=4)
    text = released.read_text(encoding="utf-8")
    for marker in MARKERS:
        assert marker not in text, f"{released.name} contains the nbgrader marker {marker!r}"
    # Every string in the released notebook, decoded (JSON escapes would hide a match).
    strings = []
    for cell in nb.cells:
        strings.append(cell.source)
        strings.append(json.dumps(cell.get("outputs", []), ensure_ascii=False))
        strings.append(json.dumps(cell.metadata, ensure_ascii=False))
    strings.append(json.dumps(nb.metadata, ensure_ascii=False))
    lines = {line.strip() for s in strings for line in s.splitlines()}
    blob = "\n".join(strings)
    leaks = {line: where for line, where in secret_lines(source).items() if line in lines or line in blob}
    assert not leaks, f"{released.name} leaks {len(leaks)} line(s) of its source, e.g.\n" + "\n".join(
        f"  from {where}: {line}" for line, where in list(leaks.items())[:5])
    # No outputs at all: a run of the solution could print what it computed.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the student notebook without outputs"
