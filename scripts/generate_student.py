#!/usr/bin/env python
"""Generate the student notebooks (notebooks/) from the nbgrader sources (solutions/).

    python scripts/generate_student.py                # rewrite notebooks/<assignment>/
    python scripts/generate_student.py --check        # exit 1 if notebooks/ is out of date
    python scripts/generate_student.py 01-attention-bottleneck   # only these assignments

nbgrader's ``generate_assignment`` runs through its Python API in a temporary course
directory, with the repository's ``nbgrader_config.py`` and a throw-away gradebook, so no
database or other nbgrader files land in the repository. The generated notebooks are
written without outputs or execution counts, in nbformat's layout (indent 1, sorted keys,
trailing newline): the same sources always give byte-identical files.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIR, RELEASE_DIR = "solutions", "notebooks"
_IGNORED = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc", ".DS_Store")


def list_assignments(repo: Path = REPO) -> list[str]:
    """The assignments: the folders of ``solutions/`` that hold a notebook."""
    root = repo / SOURCE_DIR
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def nbgrader_config(course_root: Path, repo: Path = REPO):
    """The repository's nbgrader config, pointed at ``course_root`` and a gradebook inside it."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    db = course_root / "gradebook.db"
    config = PyFileConfigLoader("nbgrader_config.py", path=str(repo)).load_config()
    override = Config()
    override.CourseDirectory.root = str(course_root)
    override.CourseDirectory.db_url = f"sqlite:///{db}"
    override.Exchange.root = str(course_root / "exchange")  # never the system-wide exchange
    config.merge(override)
    return config


def ensure_alembic_on_path() -> None:
    """nbgrader runs ``alembic`` in a subprocess: find the one of this interpreter first."""
    bindir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def notebook_text(nb: nbformat.NotebookNode, source: nbformat.NotebookNode | None = None) -> str:
    """``nb`` as committed: no outputs or execution counts, tags kept, nbformat's layout."""
    source_tags = {}
    if source is not None:
        source_tags = {c.get("id"): c.metadata["tags"] for c in source.cells if c.metadata.get("tags")}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        # papermill finds its `parameters` cell by tag: keep every tag the source had.
        if cell.get("id") in source_tags and cell.metadata.get("tags") != source_tags[cell.get("id")]:
            cell.metadata["tags"] = list(source_tags[cell.get("id")])
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def generate(assignments: list[str] | None = None, repo: Path = REPO) -> dict[str, bytes]:
    """Generate the student version of ``assignments`` (default: all).

    Returns ``{path relative to the repository: file contents}`` for every released file.
    """
    from nbgrader.apps import NbGraderAPI

    ensure_alembic_on_path()
    assignments = assignments or list_assignments(repo)
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="longctx-nbgrader-") as tmp:
        course = Path(tmp)
        for name in assignments:
            src = repo / SOURCE_DIR / name
            if not src.is_dir():
                raise SystemExit(f"no assignment {name!r}: {src} does not exist")
            shutil.copytree(src, course / SOURCE_DIR / name, ignore=_IGNORED)
        api = NbGraderAPI(config=nbgrader_config(course, repo))
        for name in assignments:
            result = api.generate_assignment(name, force=True, create=True)
            if not result["success"]:
                raise SystemExit(
                    f"nbgrader generate_assignment {name} failed:\n{result.get('log', '')}\n{result.get('error', '')}"
                )
            released = course / RELEASE_DIR / name
            for path in sorted(p for p in released.rglob("*") if p.is_file()):
                rel = path.relative_to(course).as_posix()
                if path.suffix == ".ipynb":
                    source = nbformat.read(course / SOURCE_DIR / path.relative_to(course / RELEASE_DIR), as_version=4)
                    nb = nbformat.read(path, as_version=4)
                    files[rel] = notebook_text(nb, source).encode("utf-8")
                else:
                    files[rel] = path.read_bytes()
    return files


def committed(assignments: list[str], repo: Path = REPO) -> dict[str, bytes]:
    """The files now in ``notebooks/<assignment>/`` for ``assignments``."""
    files = {}
    for name in assignments:
        folder = repo / RELEASE_DIR / name
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
                files[path.relative_to(repo).as_posix()] = path.read_bytes()
    return files


def differences(expected: dict[str, bytes], actual: dict[str, bytes], context_lines: int = 20) -> list[str]:
    """Human-readable differences between generated (``expected``) and committed files."""
    report = []
    for rel in sorted(expected.keys() - actual.keys()):
        report.append(f"missing: {rel} (generated but not in the working tree)")
    for rel in sorted(actual.keys() - expected.keys()):
        report.append(f"extra: {rel} (in the working tree but not generated)")
    for rel in sorted(expected.keys() & actual.keys()):
        if expected[rel] != actual[rel]:
            diff = list(difflib.unified_diff(
                actual[rel].decode("utf-8", "replace").splitlines(),
                expected[rel].decode("utf-8", "replace").splitlines(),
                f"{rel} (committed)", f"{rel} (generated)", lineterm="",
            ))
            shown = "\n".join(diff[:context_lines]) + (f"\n... ({len(diff) - context_lines} more diff lines)"
                                                       if len(diff) > context_lines else "")
            report.append(f"differs: {rel}\n{shown}")
    return report


def write(files: dict[str, bytes], assignments: list[str], repo: Path = REPO) -> None:
    """Replace ``notebooks/<assignment>/`` with ``files``."""
    for rel in committed(assignments, repo).keys() - files.keys():
        (repo / rel).unlink()
    for rel, data in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignments", nargs="*", help="assignment folders of solutions/ (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the committed notebooks differ from freshly generated ones")
    args = parser.parse_args(argv)
    assignments = args.assignments or list_assignments()
    files = generate(assignments)
    if args.check:
        report = differences(files, committed(assignments))
        if report:
            print("notebooks/ is out of date with solutions/; run `python scripts/generate_student.py`:\n")
            print("\n\n".join(report))
            return 1
        print(f"notebooks/ is up to date ({len(files)} file(s) of {len(assignments)} assignment(s))")
        return 0
    write(files, assignments)
    for rel in sorted(files):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
