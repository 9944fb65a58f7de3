"""Helpers for tests that read executed notebooks.

``myst_nb.glue(name, value, display=False)`` writes a ``display_data`` output whose
metadata is ``{"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}}``
and whose data has the key ``"application/papermill.record/text/plain"`` holding
``repr(value)``. With ``display=True`` the prefix is ``""`` and the key is plain
``"text/plain"``. Either way, :func:`read_glued` returns ``{name: text}``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Mapping

__all__ = ["REPO", "cell_errors", "glued_value", "load_notebook", "load_script", "read_glued"]

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts/ is not a package).

    E.g. ``load_script("execute_notebooks").execute([...], out_dir, profile="smoke")``.
    """
    if name in sys.modules and getattr(sys.modules[name], "__file__", "") == str(REPO / "scripts" / f"{name}.py"):
        return sys.modules[name]
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)  # build_book imports execute_notebooks
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_notebook(notebook: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """A notebook as a dict, from a path or an already-loaded notebook."""
    if isinstance(notebook, Mapping):
        return notebook
    with open(notebook, encoding="utf-8") as f:
        return json.load(f)


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def read_glued(notebook: str | Path | Mapping[str, Any]) -> dict[str, str]:
    """The ``text/plain`` of every value glued with ``myst_nb.glue`` in an executed notebook.

    Later glues of the same name win, as in the rendered book.
    """
    nb = load_notebook(notebook)
    glued: dict[str, str] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") not in ("display_data", "execute_result"):
                continue
            scrap = out.get("metadata", {}).get("scrapbook")
            if not scrap or "name" not in scrap:
                continue
            data = out.get("data", {})
            key = f"{scrap.get('mime_prefix', '')}text/plain"
            if key in data:
                glued[scrap["name"]] = _text(data[key])
            elif "text/plain" in data:
                glued[scrap["name"]] = _text(data["text/plain"])
    return glued


def glued_value(glued: Mapping[str, str], name: str) -> Any:
    """A glued value parsed back into Python (numbers, strings, lists...).

    Falls back to the raw text where it is not a Python literal (e.g. a tensor's repr).
    Raises ``KeyError`` listing the glued names when ``name`` is missing.
    """
    if name not in glued:
        raise KeyError(f"nothing glued as {name!r}; glued names: {sorted(glued)}")
    text = glued[name]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cell_errors(notebook: str | Path | Mapping[str, Any]) -> list[str]:
    """One line per error output in the notebook: ``cell N: EName: message``.

    Also reports papermill's record of an exception (``metadata.papermill.exception``).
    An empty list means the notebook ran cleanly.
    """
    nb = load_notebook(notebook)
    errors: list[str] = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    if nb.get("metadata", {}).get("papermill", {}).get("exception") and not errors:
        errors.append("papermill recorded an exception during execution")
    return errors
