"""Shared test setup.

* The directory of the running interpreter (``.venv/bin``) goes first on PATH, so that
  tools that shell out (nbgrader -> alembic, papermill -> the ``python3`` kernel) find
  the project's environment and not the system's.
* ``built_book``: the book built once per session with the ``smoke`` profile on the
  CPU (set ``BOOK_TEST_OUT=dir`` to keep the result, e.g. to upload it from CI).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

_bin = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _bin:
    os.environ["PATH"] = os.pathsep.join([_bin, os.environ.get("PATH", "")])
# debugpy (ipykernel) warns on every kernel start about frozen modules
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


from nbhelpers import load_script  # noqa: E402


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book, built once: every toc notebook executed (profile smoke, DEVICE=cpu), HTML rendered.

    Returns a ``build_book.BookBuild`` with (also readable as ``built_book["..."]``):

    * ``html_dir``: the rendered site (``html_dir / "index.html"``);
    * ``executed_dir``: the executed book notebooks
      (``executed_dir / "01-attention-bottleneck.ipynb"``);
    * ``notebooks``: ``{"book/<name>.ipynb": executed copy}``; ``notebook("<stem>")``.
    """
    build_book = load_script("build_book")
    out = os.environ.get("BOOK_TEST_OUT")
    out = Path(out).resolve() if out else tmp_path_factory.mktemp("book")
    # A cell stuck for 15 minutes fails the build with the cell named (smoke cells take seconds).
    return build_book.build(profile="smoke", device="cpu", out=out, progress=False, cell_timeout=900)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where no CUDA device is present."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
        for item in gpu_tests:
            item.add_marker(skip)
