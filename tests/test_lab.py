"""JupyterLab as a student and an instructor use it, in headless Chromium (Debian's package).

``jupyter lab`` (this environment's, with the nbgrader extension) runs on a free
port of 127.0.0.1 in a temporary copy of the course (``nbgrader_config.py``,
``notebooks/``, ``solutions/``), with its own HOME and Jupyter folders:

* student: open ``notebooks/01-attention-bottleneck/01-attention-bottleneck.ipynb``,
  run every cell (the setup cells run; the first answer stub raises
  ``NotImplementedError``, as it should before the student writes code), find the
  nbgrader **Validate** button in the notebook's toolbar, press it and get nbgrader's
  verdict;
* instructor: the formgrader (``/formgrader``) lists the course's assignments.

Screenshots go to ``$TEST_ARTIFACTS/lab/`` (default ``_build/test-artifacts/lab/``).
Without Chromium these tests fail and say how to install it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_helpers import artifacts_dir, chromium, free_port, is_local
from nbhelpers import REPO

ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if any(p.glob("*.ipynb")))
ASSIGNMENT = "01-attention-bottleneck"
NOTEBOOK = f"notebooks/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
START_TIMEOUT_S = 120
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running JupyterLab in a temporary copy of the course: yields (base URL, token, root)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "course"
    root.mkdir()
    shutil.copy2(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    for folder in ("notebooks", "solutions"):
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    home = tmp / "home"
    (home / ".jupyter").mkdir(parents=True)
    token = secrets.token_hex(16)
    port = free_port()
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]),
    }
    cmd = [
        str(bindir / "jupyter"), "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands as the menus do
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = tmp / "jupyter-lab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base, token, root, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _context(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.route("**/*", lambda route: route.continue_() if is_local(route.request.url)
                  else route.abort("blockedbyclient"))
    return context


def _cell_prompts(page) -> list[str]:
    return page.eval_on_selector_all(
        ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent.trim())")


def test_student_runs_the_notebook_and_validates_it(lab, browser):
    base, token, root, log_path = lab
    shots = artifacts_dir("lab")
    context = _context(browser)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"{exc.name}: {exc.message}"))
    try:
        page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded", timeout=TIMEOUT_MS)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=TIMEOUT_MS)
        validate = page.locator(".jp-NotebookPanel-toolbar .validate-button")
        validate.first.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert "Validate" in validate.first.inner_text(), "the nbgrader Validate button has no 'Validate' label"

        # Run all cells, as Run > Run All Cells does, once the kernel is up.
        page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')",
                               timeout=TIMEOUT_MS)
        page.wait_for_function(
            """() => { const w = window.jupyterapp.shell.currentWidget;
                       return w && w.sessionContext && w.sessionContext.session &&
                              w.sessionContext.session.kernel &&
                              w.sessionContext.session.kernel.connectionStatus === 'connected'; }""",
            timeout=TIMEOUT_MS,
        )
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # the run stops at the first answer stub, which raises NotImplementedError
        page.wait_for_function(
            """() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
                     .some(o => o.textContent.includes('NotImplementedError'))""",
            timeout=TIMEOUT_MS,
        )
        prompts = _cell_prompts(page)
        assert prompts[:2] == ["[1]:", "[2]:"], (
            f"the parameters and setup cells did not both run (cell prompts: {prompts[:6]})"
        )
        outputs_before_stub = page.evaluate(
            """() => { const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].slice(0, 2);
                       return cells.map(c => c.querySelector('.jp-OutputArea')?.textContent || ''); }""")
        assert not any("Error" in o for o in outputs_before_stub), (
            f"the setup cells failed in JupyterLab: {outputs_before_stub}"
        )
        page.screenshot(path=str(shots / "student-notebook.png"))

        # Validate: nbgrader runs the saved notebook and reports the failing cells.
        validate.first.click()
        dialog = page.locator(".jp-Dialog")
        dialog.first.wait_for(state="visible", timeout=TIMEOUT_MS)
        page.wait_for_function(
            "() => /NotImplementedError|failed|error/i.test(document.querySelector('.jp-Dialog')?.textContent || '')",
            timeout=TIMEOUT_MS,
        )
        verdict = dialog.first.inner_text()
        page.screenshot(path=str(shots / "student-validate.png"))
        assert "NotImplementedError" in verdict or "failed" in verdict.lower(), (
            f"Validate on the untouched notebook should report failing tests; it said:\n{verdict[:2000]}"
        )
        js = [e for e in errors if "blockedbyclient" not in e.lower()]
        assert not js, f"JavaScript errors in JupyterLab: {js}"
    except Exception:
        page.screenshot(path=str(shots / "student-failure.png"))
        print(log_path.read_text()[-4000:])
        raise
    finally:
        context.close()


def test_formgrader_lists_the_assignments(lab, browser):
    base, token, root, log_path = lab
    with urllib.request.urlopen(f"{base}/formgrader/api/assignments?token={token}", timeout=60) as r:
        listed = sorted(a["name"] for a in json.load(r))
    assert listed == ASSIGNMENTS, f"formgrader's API lists {listed}, solutions/ has {ASSIGNMENTS}"
    context = _context(browser)
    page = context.new_page()
    try:
        page.goto(f"{base}/formgrader?token={token}", wait_until="load", timeout=TIMEOUT_MS)
        for name in ASSIGNMENTS:
            page.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=TIMEOUT_MS)
        page.screenshot(path=str(artifacts_dir("lab") / "formgrader.png"))
    except Exception:
        page.screenshot(path=str(artifacts_dir("lab") / "formgrader-failure.png"))
        print(log_path.read_text()[-4000:])
        raise
    finally:
        context.close()
