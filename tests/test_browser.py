"""The built book in a real browser: headless Chromium (Debian's package) via Playwright.

The site built by the ``built_book`` fixture (profile smoke) is served on 127.0.0.1
and every page of the table of contents is opened as a reader would open it:

* no JavaScript errors (requests to other hosts are blocked, since there is no network
  in CI; the errors they cause, e.g. the widget manager from a CDN, are told apart);
* equations are typeset by MathJax, which the site serves itself (``_static/mathjax``);
* every image loads;
* search finds "locality-sensitive";
* the next / previous links walk the table of contents in order;
* every Colab and Binder link names a file that exists in this repository.

Screenshots of three pages go to ``$TEST_ARTIFACTS/book/`` (default
``_build/test-artifacts/book/``). Without Chromium these tests fail and say how to
install it (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from browser_helpers import artifacts_dir, chromium, is_local, serve_directory
from nbhelpers import REPO, load_script

build_book = load_script("build_book")

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
TOC_PAGES = [p.with_suffix(".html").as_posix() for p in build_book.toc_files(REPO)]
EXTRA_PAGES = ["genindex.html", "search.html"]
SCREENSHOTS = ["book/intro.html", "book/01-attention-bottleneck.html", "book/glossary.html"]
REPOSITORY = urlsplit(CONFIG["repository"]["url"]).path.strip("/")  # "org/repo"
BRANCH = CONFIG["repository"].get("branch", "main")
LAUNCH_LINK = re.compile(r"https://(?:colab\.research\.google\.com|mybinder\.org)/[^\s\"'<>)\]]+")
TIMEOUT_MS = 30_000
# MathJax 2 probes for its TeX fonts (e.g. MathJax_AMS) before using the STIX-Web fonts
# that jupyter-server-mathjax ships; those probes 404 and are not the site's fault.
MATHJAX_FONT_PROBE = re.compile(r"/_static/mathjax/fonts/HTML-CSS/TeX/")


@dataclass
class PageVisit:
    """What a reader's browser met on one page."""

    path: str
    title: str = ""
    js_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_local: list[str] = field(default_factory=list)  # local requests that failed or 4xx/5xx
    blocked: list[str] = field(default_factory=list)  # requests to other hosts (no network)
    math_total: int = 0
    math_typeset: int = 0
    math_errors: int = 0
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    launch_links: list[str] = field(default_factory=list)
    next_href: str | None = None
    prev_href: str | None = None


def _visit(context, base: str, path: str, screenshot: Path | None = None) -> PageVisit:
    visit = PageVisit(path)
    page = context.new_page()
    page.on("pageerror", lambda exc: visit.js_errors.append(f"{exc.name}: {exc.message}\n{exc.stack or ''}"))
    page.on("console", lambda msg: visit.console_errors.append(f"{msg.text} ({msg.location.get('url', '')})")
            if msg.type == "error" else None)
    # (MathJax 2 probes fonts with url('about:blank'): not a request for a site file)
    page.on("requestfailed", lambda req: visit.failed_local.append(f"{req.url}: {req.failure}")
            if req.url.startswith("http") and is_local(req.url) and not MATHJAX_FONT_PROBE.search(req.url)
            else None)
    page.on("response", lambda resp: visit.failed_local.append(f"{resp.url}: HTTP {resp.status}")
            if is_local(resp.url) and resp.status >= 400 and not MATHJAX_FONT_PROBE.search(resp.url) else None)
    try:
        page.goto(f"{base}/{path}", wait_until="load", timeout=TIMEOUT_MS)
        visit.title = page.title()
        if page.locator(".math").count():
            # MathJax 2 is loaded with `defer`: wait until it exists, then until its queue
            # (typesetting the page) has drained.
            page.wait_for_function("() => window.MathJax && window.MathJax.Hub && window.MathJax.isReady",
                                   timeout=TIMEOUT_MS)
            page.evaluate("() => new Promise(resolve => MathJax.Hub.Queue(() => resolve(true)))")
        math = page.evaluate("""() => {
            // Sphinx's equations (MathJax's own output also uses class "math")
            const all = [...document.querySelectorAll('span.math.notranslate, div.math.notranslate')];
            const done = all.filter(el => el.querySelector('.MathJax, .MathJax_Display, .MathJax_SVG, mjx-container'));
            return {total: all.length, typeset: done.length,
                    errors: document.querySelectorAll('.MathJax_Error, merror, [data-mjx-error]').length};
        }""")
        visit.math_total, visit.math_typeset, visit.math_errors = math["total"], math["typeset"], math["errors"]
        images = page.evaluate("""async () => {
            const imgs = [...document.images];
            await Promise.all(imgs.map(img => img.complete ? null :
                new Promise(resolve => { img.onload = img.onerror = resolve; })));
            return imgs.map(img => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0}));
        }""")
        visit.images = len(images)
        visit.broken_images = [img["src"] for img in images if not img["ok"] and is_local(img["src"])]
        visit.launch_links = page.evaluate("""() => [...document.querySelectorAll('a[href]')]
            .map(a => a.href)
            .filter(h => h.includes('colab.research.google.com') || h.includes('mybinder.org'))""")
        for attr, selector in (("next_href", "a.right-next"), ("prev_href", "a.left-prev")):
            link = page.locator(selector)
            if link.count():
                setattr(visit, attr, link.first.evaluate("a => a.href"))
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return visit


def _block_other_hosts(context, blocked: list[str]) -> None:
    def handle(route):
        if is_local(route.request.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("blockedbyclient")

    context.route("**/*", handle)


def _caused_by_blocked_host(message: str, blocked: list[str]) -> bool:
    """An error whose cause is a request this test blocked (no network), not the site."""
    if any(url in message for url in blocked):
        return True
    if "ERR_BLOCKED_BY_CLIENT" in message or "net::ERR_FAILED" in message:
        return True
    if "font at 'about:blank'" in message or MATHJAX_FONT_PROBE.search(message):
        return True  # MathJax 2's font probes, harmless
    # The ipywidgets embed manager and require.js come from CDNs; without them the
    # widget-rendering glue cannot define its modules.
    return bool(re.search(r"\b(require|define|requirejs)\b is not defined", message))


@pytest.fixture(scope="module")
def visits(built_book) -> dict[str, PageVisit]:
    """Every toc page, the index and the search page, each opened once in Chromium."""
    shots = artifacts_dir("book")
    found: dict[str, PageVisit] = {}
    with serve_directory(built_book.html_dir) as base, chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        blocked: list[str] = []
        _block_other_hosts(context, blocked)
        for path in TOC_PAGES + EXTRA_PAGES:
            shot = shots / (Path(path).stem + ".png") if path in SCREENSHOTS else None
            before = len(blocked)
            found[path] = _visit(context, base, path, shot)
            found[path].blocked = blocked[before:]
        context.close()
    return found


def test_every_page_loads_without_javascript_errors(visits):
    problems = []
    for path, visit in visits.items():
        errors = [e for e in visit.js_errors + visit.console_errors
                  if not _caused_by_blocked_host(e, visit.blocked)]
        if errors:
            problems.append(f"{path}:\n  " + "\n  ".join(errors))
        if visit.failed_local:
            problems.append(f"{path}: local requests failed:\n  " + "\n  ".join(visit.failed_local))
        if not visit.title:
            problems.append(f"{path}: no <title>")
    assert not problems, "\n".join(problems)


def test_mathjax_is_served_locally_and_typesets_every_equation(visits, built_book):
    assert (built_book.html_dir / "_static" / "mathjax" / "MathJax.js").is_file(), (
        "the site does not ship MathJax (_static/mathjax); scripts/build_book.py stages it from "
        "jupyter-server-mathjax and _config.yml's mathjax_path points at it"
    )
    with_math = {p: v for p, v in visits.items() if v.math_total}
    assert "book/01-attention-bottleneck.html" in with_math and "book/glossary.html" in with_math, (
        f"expected equations on chapter 1 and the glossary; pages with math: {sorted(with_math)}"
    )
    for path, visit in with_math.items():
        assert visit.math_typeset == visit.math_total, (
            f"{path}: MathJax typeset {visit.math_typeset} of {visit.math_total} equations "
            f"(blocked requests: {visit.blocked})"
        )
        assert visit.math_errors == 0, f"{path}: {visit.math_errors} MathJax errors (bad TeX?)"
        mathjax_from_cdn = [u for u in visit.blocked if "mathjax" in u.lower()]
        assert not mathjax_from_cdn, f"{path}: MathJax requested from the network: {mathjax_from_cdn}"


def test_every_image_loads(visits):
    assert visits["book/01-attention-bottleneck.html"].images > 0, "chapter 1 shows no image"
    broken = {p: v.broken_images for p, v in visits.items() if v.broken_images}
    assert not broken, f"images that did not load (naturalWidth 0): {broken}"


def test_search_finds_locality_sensitive(built_book):
    with serve_directory(built_book.html_dir) as base, chromium() as browser:
        context = browser.new_context()
        _block_other_hosts(context, [])
        page = context.new_page()
        page.goto(f"{base}/search.html?q=locality-sensitive", wait_until="load", timeout=TIMEOUT_MS)
        page.wait_for_selector("#search-results li a", timeout=TIMEOUT_MS)
        # searchtools.js appends results one by one; wait until it says how many it found
        page.wait_for_function(
            "() => /found/i.test(document.querySelector('#search-results p.search-summary')?.textContent || '')",
            timeout=TIMEOUT_MS,
        )
        hits = page.eval_on_selector_all("#search-results li a", "els => els.map(a => a.href)")
        context.close()
    pages = {urlsplit(h).path.lstrip("/") for h in hits}
    assert "book/glossary.html" in pages, f"search for 'locality-sensitive' found {sorted(pages)}, not the glossary"


def test_next_and_previous_links_walk_the_table_of_contents(visits):
    def rel(href: str | None) -> str | None:
        return urlsplit(href).path.lstrip("/") if href else None

    forward = [TOC_PAGES[0]]
    while (nxt := rel(visits[forward[-1]].next_href)) and nxt in visits and len(forward) <= len(TOC_PAGES):
        forward.append(nxt)
    assert forward == TOC_PAGES, f"following 'next' from {TOC_PAGES[0]} visits {forward}, not {TOC_PAGES}"
    backward = [TOC_PAGES[-1]]
    while (prev := rel(visits[backward[-1]].prev_href)) and prev in visits and len(backward) <= len(TOC_PAGES):
        backward.append(prev)
    assert backward == TOC_PAGES[::-1], f"following 'previous' from the last page visits {backward}"


def _launch_target(url: str) -> tuple[str, str, str]:
    """(org/repo, branch, path in the repo) of a Colab or Binder link."""
    parts = urlsplit(url)
    if parts.hostname == "colab.research.google.com":
        m = re.fullmatch(r"/github/([^/]+/[^/]+)/blob/([^/]+)/(.+)", unquote(parts.path))
        assert m, f"{url}: not a colab.research.google.com/github/<org>/<repo>/blob/<branch>/<path> link"
        return m.group(1), m.group(2), m.group(3)
    m = re.fullmatch(r"/v2/gh/([^/]+/[^/]+)/([^/]+)/?", unquote(parts.path))
    assert m, f"{url}: not a mybinder.org/v2/gh/<org>/<repo>/<branch> link"
    urlpath = parse_qs(parts.query).get("urlpath", [""])[0]
    path = re.sub(r"^(lab/tree|tree|notebooks)/", "", urlpath)
    assert path, f"{url}: a Binder link without a urlpath to open"
    return m.group(1), m.group(2), path


def _check_launch_links(links: dict[str, set[str]]) -> list[str]:
    problems = []
    for url, sources in sorted(links.items()):
        repo, branch, path = _launch_target(url)
        where = ", ".join(sorted(sources))
        if repo != REPOSITORY:
            problems.append(f"{url} (in {where}): repository {repo}, but _config.yml says {REPOSITORY}")
        if branch != BRANCH:
            problems.append(f"{url} (in {where}): branch {branch}, but _config.yml says {BRANCH}")
        if not (REPO / path).is_file():
            problems.append(f"{url} (in {where}): {path} does not exist in the repository")
    return problems


def test_launch_buttons_of_the_book_open_files_that_exist(visits):
    links: dict[str, set[str]] = {}
    for path, visit in visits.items():
        for url in visit.launch_links:
            links.setdefault(url, set()).add(path)
    for rel in build_book.toc_notebooks(REPO):
        page = rel.with_suffix(".html").as_posix()
        colab = [u for u in visits[page].launch_links if "colab.research.google.com" in u]
        assert colab, f"{page} has no Colab launch button (launch_buttons.colab_url in _config.yml)"
        assert any(u.endswith("/" + rel.as_posix()) for u in colab), f"{page}: Colab links {colab} miss {rel}"
    problems = _check_launch_links(links)
    assert not problems, "\n".join(problems)


def test_colab_links_in_notebooks_and_book_sources_open_files_that_exist():
    """Colab badges in notebooks/, solutions/ and book/ (and the README) name real files."""
    links: dict[str, set[str]] = {}
    sources = [REPO / "README.md", *sorted((REPO / "book").glob("*.md"))]
    for folder in ("book", "notebooks", "solutions"):
        sources += sorted(p for p in (REPO / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    for src in sources:
        text = src.read_text(encoding="utf-8")
        if src.suffix == ".ipynb":  # cell sources only (not outputs)
            text = "\n".join("".join(c.get("source", "")) for c in json.loads(text)["cells"])
        for url in LAUNCH_LINK.findall(text):
            if urlsplit(url).path.startswith("/assets/"):  # the badge's image, not a launch link
                continue
            links.setdefault(url.rstrip(".,"), set()).add(src.relative_to(REPO).as_posix())
    # every student notebook opens with a Colab badge
    for nb in sorted((REPO / "notebooks").rglob("*.ipynb")):
        rel = nb.relative_to(REPO).as_posix()
        assert any(u.endswith("/" + rel) for u in links), f"{rel} has no Colab badge pointing at itself"
    problems = _check_launch_links(links)
    assert not problems, "\n".join(problems)


def test_screenshots_are_kept(visits):
    shots = artifacts_dir("book")
    for path in SCREENSHOTS:
        shot = shots / (Path(path).stem + ".png")
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {path} at {shot}"


def test_without_chromium_the_browser_tests_fail_and_say_how_to_install_it(monkeypatch):
    import browser_helpers

    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setattr(browser_helpers.os.path, "isfile", lambda path: False)
    monkeypatch.setattr(browser_helpers.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        browser_helpers.chromium_path()
