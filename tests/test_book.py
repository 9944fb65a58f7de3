"""The book: configuration, profiles, and the site built from executed notebooks.

The ``built_book`` fixture (conftest.py) executes every notebook in ``_toc.yml`` once
with the ``smoke`` profile on the CPU and renders the HTML with warnings as errors;
a warning or a failing cell fails the whole module.
"""

from __future__ import annotations

import html
import json
import re
from importlib.metadata import version
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from nbhelpers import REPO, cell_errors, load_script

build_book = load_script("build_book")
execute_notebooks = load_script("execute_notebooks")

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
TOC_FILES = build_book.toc_files(REPO)
TOC_NOTEBOOKS = [p for p in TOC_FILES if p.suffix == ".ipynb"]
CHAPTERS = [
    Path(ch["file"]).with_suffix("").as_posix()
    for part in TOC.get("parts", [])
    if part.get("caption") == "Chapters"
    for ch in part.get("chapters", [])
]
IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc=\"([^\"]+)\"", re.IGNORECASE)


def page(built, entry: str | Path) -> Path:
    return built.html_dir / Path(entry).with_suffix(".html")


# --- configuration (no build needed) -----------------------------------------


def test_jupyter_book_is_1x():
    major = int(version("jupyter-book").split(".")[0])
    assert major < 2, f"jupyter-book {version('jupyter-book')} installed; the book needs 1.x (<2)"


def test_config_excludes_env_build_and_hidden_folders():
    from sphinx.util.matching import Matcher

    patterns = CONFIG["exclude_patterns"]
    for required in (".venv", "_build"):
        assert required in patterns, f"_config.yml exclude_patterns lacks {required!r}"
    excluded = Matcher(patterns)
    for path in (".venv", "_build", ".git", ".github", "book/.ipynb_checkpoints", "notebooks", "solutions"):
        assert excluded(path), f"_config.yml exclude_patterns does not exclude {path!r}"
    for entry in TOC_FILES:
        assert not excluded(entry.as_posix()), f"_config.yml excludes the toc entry {entry}"


def test_config_never_executes_and_builds_only_the_toc():
    assert CONFIG["execute"]["execute_notebooks"] == "off", "papermill executes; Jupyter Book must not"
    assert CONFIG["only_build_toc_files"] is True
    assert "references.bib" in CONFIG["bibtex_bibfiles"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(CONFIG["sphinx"]["extra_extensions"])


def test_toc_lists_intro_chapters_and_api():
    assert TOC["root"] == "book/intro"
    assert CHAPTERS, "_toc.yml has no 'Chapters' part"
    assert TOC_FILES[0] == Path("book/intro.md")
    assert Path("book/api.md") in TOC_FILES


@pytest.mark.parametrize("notebook", TOC_NOTEBOOKS, ids=str)
def test_book_notebooks_are_committed_clean(notebook):
    """python3 kernel, a papermill `parameters` cell with DEVICE, and no stored outputs."""
    nb = json.loads((REPO / notebook).read_text(encoding="utf-8"))
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{notebook}: kernelspec must be python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and "parameters" in code[0].get("metadata", {}).get("tags", []), (
        f"{notebook}: the first code cell must be tagged 'parameters'"
    )
    assert re.search(r"^DEVICE\s*=", "".join(code[0]["source"]), re.MULTILINE), (
        f"{notebook}: the parameters cell must define DEVICE"
    )
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{notebook}: commit without outputs (cells {dirty} have some); outputs live only in the built book"


def test_profiles_cover_smoke_cpu_gpu_and_name_real_notebooks():
    profiles = execute_notebooks.load_profiles(REPO / "profiles.yml")
    assert {"smoke", "cpu", "gpu"} <= set(profiles)
    notebooks = execute_notebooks.default_notebooks(REPO)
    known = set()
    for nb in notebooks:
        known.update(execute_notebooks._lookup_keys(nb, REPO))
    for name, table in profiles.items():
        for key in table:
            assert key in known, f"profiles.yml: {name}.{key} matches no notebook in book/ or solutions/"


def test_profile_lookup_prefers_the_path_then_the_stem():
    profiles = {
        "p": {
            "book/01-x": {"A": 1},
            "01-x": {"A": 2},
            "solutions/02-y": {"B": 3},
        }
    }
    get = execute_notebooks.profile_parameters
    assert get(REPO / "book/01-x.ipynb", "p", profiles, REPO) == {"A": 1}
    assert get(REPO / "solutions/01-x/01-x.ipynb", "p", profiles, REPO) == {"A": 2}
    assert get(REPO / "solutions/02-y/02-y.ipynb", "p", profiles, REPO) == {"B": 3}
    assert get(REPO / "book/03-z.ipynb", "p", profiles, REPO) == {}
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        get(REPO / "book/01-x.ipynb", "nope", profiles, REPO)


# --- the built book -----------------------------------------------------------


def test_html_exists_for_every_toc_entry(built_book):
    assert (built_book.html_dir / "index.html").is_file()
    missing = [str(e) for e in TOC_FILES if not page(built_book, e).is_file()]
    assert not missing, f"no HTML page for toc entries {missing} in {built_book.html_dir}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_pages_show_images_that_exist(built_book, chapter):
    html_page = page(built_book, chapter)
    text = html_page.read_text(encoding="utf-8")
    srcs = [html.unescape(s) for s in IMG_SRC.findall(text)]
    files = [s for s in srcs if not s.startswith(("data:", "http:", "https:"))]
    figures = [s for s in files if "_images/" in s]
    assert figures, f"{html_page.name} has no figure (<img> from _images/); were the notebook's plots rendered?"
    broken = [s for s in files if not (html_page.parent / unquote(urlsplit(s).path)).is_file()]
    assert not broken, f"{html_page.name}: images without files: {broken}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_pages_carry_cell_outputs(built_book, chapter):
    """Rendered from executed notebooks: output areas with figures are present."""
    text = page(built_book, chapter).read_text(encoding="utf-8")
    outputs = re.findall(r'<div class="cell_output[^"]*">(.*?)</div>\s*</div>', text, re.DOTALL)
    assert outputs, f"{chapter}: no cell outputs in the HTML; was the notebook executed?"
    assert any("<img" in o for o in outputs), f"{chapter}: no figure among the cell outputs"


def test_no_error_text_in_any_page(built_book):
    pages = [page(built_book, e) for e in TOC_FILES] + [built_book.html_dir / "genindex.html"]
    for p in pages:
        text = p.read_text(encoding="utf-8")
        for needle in ("Traceback", "NotImplementedError"):
            assert needle not in text, f"{p.relative_to(built_book.html_dir)} contains {needle!r}"


def test_executed_notebooks_ran_cleanly_with_the_smoke_profile(built_book):
    profiles = execute_notebooks.load_profiles(REPO / "profiles.yml")
    assert set(built_book.notebooks) == {p.as_posix() for p in TOC_NOTEBOOKS}
    for rel, executed in built_book.notebooks.items():
        assert executed == built_book.executed_root / rel and executed.is_file()
        nb = json.loads(executed.read_text(encoding="utf-8"))
        assert not cell_errors(nb), f"{rel}: {cell_errors(nb)}"
        expected = {**execute_notebooks.profile_parameters(REPO / rel, "smoke", profiles, REPO), "DEVICE": "cpu"}
        assert nb["metadata"]["papermill"]["parameters"] == expected
        unrun = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
        assert not unrun, f"{rel}: cells {unrun} were not executed"


def test_api_page_documents_the_library(built_book):
    import importlib

    text = page(built_book, "book/api").read_text(encoding="utf-8")
    assert "resolve_device" in text
    for module in re.findall(r"automodule::\s+(\S+)", (REPO / "book/api.md").read_text(encoding="utf-8")):
        mod = importlib.import_module(module)
        assert f'id="module-{module}"' in text, f"api page lacks the section of {module}"
        # functions and classes; constants appear only with a `#:` doc-comment, so are not required
        public = [n for n in getattr(mod, "__all__", []) if callable(getattr(mod, n, None))]
        for name in public:
            assert f'id="{module}.{name}"' in text, (
                f"{module}.{name} is in __all__ but not on the API page: give it a docstring"
            )


def test_references_page_renders_the_bibliography(built_book):
    text = page(built_book, "book/references").read_text(encoding="utf-8")
    for title in ("Reformer: The Efficient Transformer", "Attention Is All You Need", "Recurrent Memory Transformer"):
        # pybtex's styles lower-case titles ("Reformer: the efficient transformer")
        assert title.lower() in html.unescape(text).lower(), f"bibliography lacks {title!r}"
