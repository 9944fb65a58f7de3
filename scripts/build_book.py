#!/usr/bin/env python3
"""Build the course book: execute each book notebook once, then render HTML.

Steps
  1. Execute every notebook listed in ``_toc.yml`` exactly once with papermill
     (profile from ``profiles.yml`` plus ``DEVICE``), or reuse copies from
     ``--executed DIR`` that were run with the same parameters.
  2. Stage a source tree in ``<out>/staging/``: ``_config.yml``, ``_toc.yml``,
     ``references.bib``, ``book/`` (with the *executed* notebooks in place of the
     committed, output-free ones), and copies of ``longctx_lib/`` (and
     ``benchmarks/``) so that ``literalinclude`` with source-root paths such as
     ``/longctx_lib/attention.py`` resolves; MathJax 2.7 from the
     ``jupyter-server-mathjax`` package goes to ``_local_static/mathjax/`` (published
     as ``_static/mathjax/``, see ``mathjax_path`` in ``_config.yml``), so equations
     typeset without a network connection.
  3. ``jupyter-book build <staging> -W --keep-going --all``: every warning fails the
     build. ``_config.yml`` sets ``execute_notebooks: "off"``, so Jupyter Book
     never runs a notebook a second time.
  4. Move the HTML to ``<out>/html/`` and print ``Book built: <out>/html/index.html``.

Usage (normally through ``make book``)::

    python scripts/build_book.py --profile cpu --device auto --out _build
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute_notebooks import (  # noqa: E402
    NotebookExecutionError,
    execute,
    load_profiles,
    output_path,
    profile_parameters,
)

REPO = Path(__file__).resolve().parents[1]
SOURCE_SUFFIXES = (".ipynb", ".md", ".rst")
# Copied into the staging tree (besides book/) so literalinclude can reach them.
CODE_DIRS = ("longctx_lib", "benchmarks")
ROOT_FILES = ("_config.yml", "_toc.yml", "references.bib")
IGNORE_NAMES = ("__pycache__", "*.pyc", ".ipynb_checkpoints", ".*")
IGNORE = shutil.ignore_patterns(*IGNORE_NAMES)
# Extra static files, published under _static/ (html_static_path in _config.yml). Not
# named _static: Jupyter Book would add every .js file in a _static/ folder to each page.
LOCAL_STATIC = "_local_static"

__all__ = ["BookBuild", "BookBuildError", "build", "toc_files", "toc_notebooks"]


class BookBuildError(RuntimeError):
    """The book could not be built; the message says which step failed."""


@dataclass
class BookBuild:
    """Where a build put things."""

    out_dir: Path
    html_dir: Path
    index: Path
    staging_dir: Path
    executed_root: Path  # executed notebooks at their repo-relative paths
    executed_dir: Path  # executed_root / "book": the executed book notebooks
    notebooks: dict[str, Path] = field(default_factory=dict)  # "book/x.ipynb" -> executed copy
    seconds: float = 0.0

    def __getitem__(self, key: str):
        return getattr(self, key)

    def notebook(self, name: str) -> Path:
        """Executed copy of a book notebook, by stem or repo-relative path."""
        name = name.removesuffix(".ipynb")
        for rel, path in self.notebooks.items():
            stem = rel.removesuffix(".ipynb")
            if name in (stem, Path(stem).name):
                return path
        raise KeyError(f"no executed book notebook {name!r}; have {sorted(self.notebooks)}")


def _toc_entries(node) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                found.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                found += _toc_entries(child)
    elif isinstance(node, list):
        for child in node:
            found += _toc_entries(child)
    return found


def toc_files(root: Path = REPO) -> list[Path]:
    """Source files of every ``_toc.yml`` entry (root first), as repo-relative paths."""
    import yaml

    with open(root / "_toc.yml", encoding="utf-8") as f:
        toc = yaml.safe_load(f)
    files: list[Path] = []
    for entry in _toc_entries(toc):
        entry_path = Path(entry)
        candidates = (
            [entry_path]
            if entry_path.suffix in SOURCE_SUFFIXES
            else [entry_path.with_name(entry_path.name + s) for s in SOURCE_SUFFIXES]
        )
        for cand in candidates:
            if (root / cand).is_file():
                files.append(cand)
                break
        else:
            raise BookBuildError(f"_toc.yml lists {entry!r}, but none of {[str(c) for c in candidates]} exists")
    return files


def toc_notebooks(root: Path = REPO) -> list[Path]:
    """The notebooks among the ``_toc.yml`` entries, as repo-relative paths."""
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


def _reusable(executed: Path, expected: dict) -> str | None:
    """None if ``executed`` ran cleanly with ``expected`` parameters, else why not."""
    if not executed.is_file():
        return "no executed copy"
    meta = json.loads(executed.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    if meta.get("exception"):
        return "its run raised an exception"
    if meta.get("parameters") != expected:
        return f"it ran with {meta.get('parameters')}, not {expected}"
    return None


def _stage(root: Path, staging: Path, executed: dict[str, Path]) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in ROOT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, staging / name)
    # book/: markdown, images, ... but not the committed (output-free) notebooks
    shutil.copytree(
        root / "book", staging / "book", ignore=shutil.ignore_patterns("*.ipynb", *IGNORE_NAMES)
    )
    for rel, src in executed.items():
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        nb = json.loads(src.read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            tags = cell.get("metadata", {}).get("tags", [])
            # papermill's injected cell: collapsed, but one click shows the sizes used
            if "injected-parameters" in tags and "hide-cell" not in tags:
                tags.append("hide-cell")
        dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in CODE_DIRS:
        if (root / name).is_dir():
            shutil.copytree(root / name, staging / name, ignore=IGNORE)
    shutil.copytree(mathjax_dir(), staging / LOCAL_STATIC / "mathjax", ignore=IGNORE)


def mathjax_dir() -> Path:
    """MathJax 2.7's static files (``MathJax.js``, ``jax/``, ``fonts/``...), from jupyter-server-mathjax."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise BookBuildError(
            "jupyter-server-mathjax is not installed (it provides MathJax for offline equations); "
            "run `make venv`"
        ) from e
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise BookBuildError(f"no MathJax.js in {static}; reinstall jupyter-server-mathjax")
    return static


def build(
    profile: str = "cpu",
    device: str = "auto",
    out: Path | str = REPO / "_build",
    executed: Path | str | None = None,
    kernel: str = "python3",
    progress: bool = True,
    root: Path = REPO,
    cell_timeout: int | None = None,
) -> BookBuild:
    """Execute the book's notebooks once and render the HTML; see the module docstring."""
    start = time.perf_counter()
    out = Path(out).resolve()
    executed_root = out / "executed"
    staging = out / "staging"
    html_dir = out / "html"

    config_text = (root / "_config.yml").read_text(encoding="utf-8")
    import yaml

    config = yaml.safe_load(config_text) or {}
    if (config.get("execute") or {}).get("execute_notebooks") != "off":
        raise BookBuildError(
            '_config.yml must set execute: {execute_notebooks: "off"}; notebooks are run by papermill only'
        )

    # 1. execute (or reuse) every notebook in the table of contents, once
    profiles = load_profiles(root / "profiles.yml")
    notebooks = toc_notebooks(root)
    done: dict[str, Path] = {}
    to_run: list[Path] = []
    for rel in notebooks:
        key = rel.as_posix()
        if executed is not None:
            candidate = output_path(root / rel, Path(executed), root)
            expected = {**profile_parameters(root / rel, profile, profiles, root), "DEVICE": device}
            why_not = _reusable(candidate, expected)
            if why_not is None:
                print(f"reusing {candidate} (already executed with {expected})", flush=True)
                done[key] = candidate
                continue
            print(f"executing {key} again: {why_not}", flush=True)
        to_run.append(rel)
    if to_run:
        outputs = execute(
            [root / rel for rel in to_run],
            out_dir=executed_root,
            profile=profile,
            device=device,
            kernel=kernel,
            progress=progress,
            root=root,
            cell_timeout=cell_timeout,
        )
        done.update({rel.as_posix(): path for rel, path in zip(to_run, outputs)})

    # 2. stage a source tree with the executed notebooks
    _stage(root, staging, {k: done[k] for k in (r.as_posix() for r in notebooks)})

    # 3. render; every warning is an error, and nothing is executed again
    cmd = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; sys.exit(main())",
        "build",
        str(staging),
        "--builder",
        "html",
        "--warningiserror",
        "--keep-going",
        "--all",
    ]
    env = dict(os.environ)
    # autodoc imports longctx_lib: take the staged copy (identical to the repo's)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(staging), env.get("PYTHONPATH", "")]))
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    print(f"rendering with jupyter-book ({staging})", flush=True)
    proc = subprocess.run(cmd, cwd=staging, env=env)
    if proc.returncode != 0:
        raise BookBuildError(
            f"jupyter-book build failed (exit {proc.returncode}); warnings count as errors. "
            f"See the WARNING/ERROR lines above; their paths under {staging} mirror the repository "
            f"(staging/book/x.ipynb is book/x.ipynb, with outputs)"
        )
    built = staging / "_build" / "html"
    if not (built / "index.html").is_file():
        raise BookBuildError(f"jupyter-book reported success but wrote no {built / 'index.html'}")

    # 4. publish the HTML at <out>/html
    if html_dir.exists():
        shutil.rmtree(html_dir)
    shutil.move(str(built), str(html_dir))
    result = BookBuild(
        out_dir=out,
        html_dir=html_dir,
        index=html_dir / "index.html",
        staging_dir=staging,
        executed_root=executed_root,
        executed_dir=executed_root / "book",
        notebooks=done,
        seconds=time.perf_counter() - start,
    )
    return result


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", help="profile in profiles.yml (default: cpu)")
    parser.add_argument("--device", default="auto", help="DEVICE parameter for the notebooks (default: auto)")
    parser.add_argument("--out", type=Path, default=REPO / "_build", help="output folder (default: _build)")
    parser.add_argument(
        "--executed",
        type=Path,
        default=None,
        help="reuse executed notebooks from this folder (e.g. _build/executed from `make execute`) "
        "when they ran with the same profile and device",
    )
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's progress bars")
    parser.add_argument(
        "--cell-timeout", type=int, default=None, help="fail a cell that runs longer than this many seconds"
    )
    args = parser.parse_args(argv)
    try:
        result = build(
            profile=args.profile,
            device=args.device,
            out=args.out,
            executed=args.executed,
            kernel=args.kernel,
            progress=not args.no_progress,
            cell_timeout=args.cell_timeout,
        )
    except (BookBuildError, NotebookExecutionError, ValueError, FileNotFoundError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print(f"\nBook built in {result.seconds:.0f} s (profile {args.profile}, DEVICE={args.device}).")
    print(f"Book built: {_display(result.index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
