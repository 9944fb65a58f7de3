"""Headless Chromium for the browser tests (test_browser.py, test_lab.py).

The browser is Debian's ``chromium`` package, driven by Playwright for Python with
``executable_path``: Playwright's own browser downloads (``playwright install``) are
never used. Where Chromium or Playwright is missing the tests FAIL, saying how to
install it; they never skip.

    with chromium() as browser:
        page = browser.new_page()
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from nbhelpers import REPO

__all__ = [
    "CHROMIUM_ARGS",
    "artifacts_dir",
    "chromium",
    "chromium_path",
    "free_port",
    "is_local",
    "serve_directory",
]

# No sandbox (CI runs as root), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

INSTALL_HINT = (
    "The browser tests need Debian's Chromium: `apt-get update && apt-get install -y chromium` "
    "(as root; .ci/run does this), or set CHROMIUM=/path/to/chromium. "
    "Do not run `playwright install`: the tests use the system browser."
)


def chromium_path() -> str:
    """The Chromium executable: $CHROMIUM, else /usr/bin/chromium, else `chromium` on PATH.

    Fails the calling test (never skips) when there is none.
    """
    candidates = [os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser")]
    for cand in candidates:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    pytest.fail(f"no Chromium found (looked at $CHROMIUM, /usr/bin/chromium, PATH). {INSTALL_HINT}",
                pytrace=False)


@contextlib.contextmanager
def chromium() -> Iterator:
    """A headless Chromium browser (Playwright ``Browser``), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: run `make venv` (it is in the dev extra). "
                    + INSTALL_HINT, pytrace=False)
    executable = chromium_path()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 -- report what failed, with the fix
            pytest.fail(f"could not start {executable}: {e}\n{INSTALL_HINT}", pytrace=False)
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir(*parts: str) -> Path:
    """Where tests keep screenshots: $TEST_ARTIFACTS (default ``_build/test-artifacts``)."""
    root = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "_build" / "test-artifacts")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_local(url: str) -> bool:
    """True for URLs this machine serves (loopback) or that need no network (data:, about:...)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return True
    return parts.hostname in ("127.0.0.1", "localhost", "::1")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 -- the base class's name
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a thread); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
