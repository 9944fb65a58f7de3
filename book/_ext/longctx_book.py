"""Small Sphinx fixes for the course book (loaded through ``sphinx.local_extensions``).

* sphinx-thebe 0.3.1 (always loaded by Jupyter Book 1.x) registers its inline
  ``const THEBE_JS_URL = ...`` script twice under Sphinx 7, and the second copy is a
  JavaScript error on every page ("Identifier 'THEBE_JS_URL' has already been
  declared"). Drop repeated scripts from each page; tests/test_browser.py checks
  that pages load without JavaScript errors.
"""

from __future__ import annotations

__all__ = ["setup"]


def _script_key(js) -> tuple:
    attributes = getattr(js, "attributes", {}) or {}
    # the same inline script arrives once with filename None and once with ""
    return (getattr(js, "filename", js) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    if len(unique) != len(scripts):
        scripts[:] = unique


def setup(app):
    # last, after the themes have added their per-page scripts
    app.connect("html-page-context", drop_repeated_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
