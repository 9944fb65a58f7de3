#!/usr/bin/env python3
"""Execute the course notebooks with papermill.

Each notebook runs once, in its own folder (so relative paths in it work), with
the parameters of a named profile from ``profiles.yml`` plus ``DEVICE``. The
executed copy is written under ``out_dir`` at the notebook's repo-relative path,
e.g. ``_build/executed/book/01-attention-bottleneck.ipynb``.

Command line (normally through ``make execute``)::

    python scripts/execute_notebooks.py --profile smoke --device cpu
    python scripts/execute_notebooks.py book/01-attention-bottleneck.ipynb --out /tmp/x

From Python::

    from execute_notebooks import execute
    outputs = execute(paths, out_dir, profile="smoke", device="cpu")
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

REPO = Path(__file__).resolve().parents[1]
PROFILES_FILE = REPO / "profiles.yml"
DEFAULT_PATTERNS = ("book/*.ipynb", "solutions/*/*.ipynb")
DEFAULT_OUT = REPO / "_build" / "executed"

__all__ = [
    "NotebookExecutionError",
    "default_notebooks",
    "execute",
    "load_profiles",
    "output_path",
    "profile_parameters",
]


class NotebookExecutionError(RuntimeError):
    """A notebook failed to execute; the message names the notebook and the error."""

    def __init__(self, notebook: Path, output: Path, message: str):
        self.notebook = notebook
        self.output = output
        super().__init__(message)


def _rel(path: Path, root: Path = REPO) -> Path:
    """``path`` relative to ``root`` when it lies inside, else just its name."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root.resolve())
    except ValueError:
        return Path(path.name)


def default_notebooks(root: Path = REPO) -> list[Path]:
    """All book pages (``book/*.ipynb``) and assignment sources (``solutions/*/*.ipynb``)."""
    found: list[Path] = []
    for pattern in DEFAULT_PATTERNS:
        found += sorted(p for p in root.glob(pattern) if ".ipynb_checkpoints" not in p.parts)
    return found


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, dict[str, dict[str, Any]]]:
    """Read ``profiles.yml``: ``{profile: {notebook_key: {PARAMETER: value}}}``."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of profile names, got {type(data).__name__}")
    for name, notebooks in data.items():
        if notebooks is None:
            data[name] = {}
        elif not isinstance(notebooks, dict):
            raise ValueError(f"{path}: profile {name!r} must map notebook names to parameter dicts")
        else:
            for key, params in notebooks.items():
                if params is None:
                    notebooks[key] = {}
                elif not isinstance(params, dict):
                    raise ValueError(
                        f"{path}: profiles.{name}.{key} must be a mapping of PARAMETER: value, "
                        f"got {params!r}"
                    )
    return data


def _lookup_keys(notebook: Path, root: Path = REPO) -> list[str]:
    """Keys tried in a profile, most specific first.

    ``solutions/01-x/01-x.ipynb`` -> ``solutions/01-x/01-x``, ``solutions/01-x``, ``01-x``.
    """
    rel = _rel(notebook, root).with_suffix("")
    keys = [rel.as_posix()]
    if len(rel.parts) >= 2 and rel.parent.name == rel.name:
        keys.append(rel.parent.as_posix())
    keys.append(rel.name)
    return list(dict.fromkeys(keys))


def profile_parameters(
    notebook: Path,
    profile: str,
    profiles: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    root: Path = REPO,
) -> dict[str, Any]:
    """Parameters that ``profile`` sets for ``notebook`` (without DEVICE)."""
    profiles = load_profiles() if profiles is None else profiles
    if profile not in profiles:
        raise ValueError(
            f"unknown profile {profile!r}; profiles.yml defines {sorted(profiles)}. "
            f"Pass one of those, e.g. PROFILE=smoke."
        )
    table = profiles[profile] or {}
    for key in _lookup_keys(notebook, root):
        if key in table:
            return dict(table[key] or {})
    return {}


def output_path(notebook: Path, out_dir: Path, root: Path = REPO) -> Path:
    """Where the executed copy of ``notebook`` goes: ``out_dir/<repo-relative path>``."""
    return Path(out_dir) / _rel(notebook, root)


@contextlib.contextmanager
def _kernel_environment():
    """Environment for the kernels papermill starts.

    ipykernel installs matplotlib's inline backend only when MPLBACKEND is unset; a
    MPLBACKEND=Agg inherited from a shell or CI would make every figure vanish from
    the executed notebooks (and so from the book). Drop it while kernels start.

    ``LONGCTX_NO_WIDGETS=1`` tells the notebooks' explorer cells not to start
    ipywidgets: a static page cannot use them, and nbclient can deadlock on
    ``ipywidgets.interact`` (jupyter/nbconvert#2029: the cell never finishes; seen in
    CI, where it hung a build for 30 minutes).
    """
    saved = os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    no_widgets = os.environ.get("LONGCTX_NO_WIDGETS")
    os.environ["LONGCTX_NO_WIDGETS"] = "1"
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved
        if no_widgets is None:
            os.environ.pop("LONGCTX_NO_WIDGETS", None)
        else:
            os.environ["LONGCTX_NO_WIDGETS"] = no_widgets


def _failing_source(executed: Path) -> str:
    """First line of the first cell with an error output in an executed notebook."""
    import json

    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    for cell in nb.get("cells", []):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            src = "".join(cell.get("source", "")).strip().splitlines()
            return src[0] if src else ""
    return "?"


def _last_started_source(executed: Path) -> str:
    """First line of the last cell papermill marked as started in a partly executed notebook."""
    import json

    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    started = [
        c for c in nb.get("cells", [])
        if c.get("cell_type") == "code" and (c.get("metadata", {}).get("papermill") or {}).get("start_time")
    ]
    if not started:
        return "?"
    src = "".join(started[-1].get("source", "")).strip().splitlines()
    return src[0] if src else ""


def execute(
    paths: Iterable[Path | str] | None = None,
    out_dir: Path | str = DEFAULT_OUT,
    profile: str = "cpu",
    device: str = "auto",
    kernel: str = "python3",
    progress: bool = True,
    root: Path = REPO,
    cell_timeout: int | None = None,
) -> list[Path]:
    """Run each notebook once with papermill; return the paths of the executed copies.

    Parameters come from ``profiles.yml[profile]`` (by repo-relative path, then by
    stem) plus ``DEVICE=device``. Each notebook runs with its own folder as the
    working directory. Raises :class:`NotebookExecutionError` naming the first
    notebook that fails (its partially executed copy, with the traceback, is kept).
    ``cell_timeout`` (seconds, ``None``: no limit) stops a cell that runs too long, so
    a stuck notebook fails with the cell named instead of hanging a CI run.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    paths = [Path(p) for p in (default_notebooks(root) if paths is None else paths)]
    profiles = load_profiles(root / "profiles.yml")
    out_dir = Path(out_dir)
    outputs: list[Path] = []
    for i, nb in enumerate(paths, 1):
        src = (nb if nb.is_absolute() else Path.cwd() / nb).resolve()
        if not src.is_file():
            raise FileNotFoundError(f"notebook not found: {nb}")
        params = profile_parameters(src, profile, profiles, root)
        params["DEVICE"] = device
        dst = output_path(src, out_dir, root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        rel = _rel(src, root).as_posix()
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        print(f"[{i}/{len(paths)}] executing {rel} (profile {profile}: {shown})", flush=True)
        start = time.perf_counter()
        try:
            with _kernel_environment():
                pm.execute_notebook(
                    str(src),
                    str(dst),
                    parameters=params,
                    kernel_name=kernel,
                    cwd=str(src.parent),
                    progress_bar=progress,
                    execution_timeout=cell_timeout,
                )
        except PapermillExecutionError as e:
            raise NotebookExecutionError(
                src,
                dst,
                f"notebook {rel} failed (profile {profile}, DEVICE={device}) in the cell "
                f"[{e.exec_count}] {_failing_source(dst)!r}: {e.ename}: {e.evalue}\n"
                f"  executed copy with the full traceback: {dst}",
            ) from e
        except Exception as e:  # kernel died, missing kernel, bad parameters, ...
            raise NotebookExecutionError(
                src,
                dst,
                f"notebook {rel} could not be executed (profile {profile}, DEVICE={device}): "
                f"{type(e).__name__}: {e}\n  last cell that ran or was running: "
                f"{_last_started_source(dst)!r} (partially executed copy: {dst})",
            ) from e
        print(f"[{i}/{len(paths)}] {rel} done in {time.perf_counter() - start:.1f} s -> {dst}", flush=True)
        outputs.append(dst)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help=f"notebooks to run (default: {' and '.join(DEFAULT_PATTERNS)})",
    )
    parser.add_argument("--profile", default="cpu", help="profile in profiles.yml (default: cpu)")
    parser.add_argument("--device", default="auto", help="DEVICE parameter: auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: _build/executed)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's progress bars")
    parser.add_argument(
        "--cell-timeout", type=int, default=None, help="fail a cell that runs longer than this many seconds"
    )
    args = parser.parse_args(argv)
    try:
        outputs = execute(
            args.paths or None,
            out_dir=args.out,
            profile=args.profile,
            device=args.device,
            kernel=args.kernel,
            progress=not args.no_progress,
            cell_timeout=args.cell_timeout,
        )
    except (NotebookExecutionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Executed {len(outputs)} notebook(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
