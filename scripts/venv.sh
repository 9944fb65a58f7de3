#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) from the
# project's own files: pyproject.toml and requirements/constraints.txt.
#
#   scripts/venv.sh            # usually called through `make venv`
#
# torch is installed FIRST and pinned, because an unpinned torch (or any range
# admitting newer releases) makes pip download gigabytes of CUDA wheels:
#   * a local wheel that pip can see (e.g. a --find-links folder) -> use it;
#   * else an NVIDIA GPU (nvidia-smi exists)                      -> PyPI (CUDA build);
#   * else                                                        -> PyTorch's CPU index.
# Everything else then comes from PyPI under requirements/constraints.txt.
#
# Environment overrides:
#   PYTHON          interpreter used to create the venv (default: python3.11, else python3)
#   VENV            venv folder (default: .venv)
#   TORCH_SPEC      torch requirement (default: torch==2.13.0)
#   TORCH_PIP_ARGS  extra pip arguments for the torch install; when set, the
#                   automatic choice above is skipped (e.g. "--index-url
#                   https://download.pytorch.org/whl/cu126")
#   EXTRAS          extras of the project to install (default: dev)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS:-dev}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

log() { printf '[venv] %s\n' "$*" >&2; }

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    log "error: need Python >= 3.11, but '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)."
    log "       Install Python 3.11 or point PYTHON at it: make venv PYTHON=/path/to/python3.11"
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# --- 1. torch, pinned -------------------------------------------------------
torch_ok() {
    # Already installed and satisfying TORCH_SPEC? (local labels such as +cpu are ignored)
    "$PY" - "$TORCH_SPEC" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
from pip._vendor.packaging.requirements import Requirement
req = Requirement(sys.argv[1])
sys.exit(0 if req.specifier.contains(version(req.name), prereleases=True) else 1)
PYEOF
}

if torch_ok; then
    log "torch already satisfies '$TORCH_SPEC'"
else
    if [[ -n "${TORCH_PIP_ARGS+x}" ]]; then
        read -r -a torch_args <<<"${TORCH_PIP_ARGS}"
        log "installing $TORCH_SPEC with TORCH_PIP_ARGS=${TORCH_PIP_ARGS}"
    elif "${PIP[@]}" install --dry-run --no-index --no-deps --quiet "$TORCH_SPEC" >/dev/null 2>&1; then
        # pip's configured find-links hold the wheel; a plain install picks it
        # (torch's own small dependencies still come from the index).
        torch_args=()
        log "installing $TORCH_SPEC from a local wheel"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        torch_args=()
        log "installing $TORCH_SPEC from PyPI (CUDA build; nvidia-smi found)"
    else
        torch_args=(--index-url "$CPU_INDEX")
        log "installing $TORCH_SPEC from the PyTorch CPU index (no GPU, no local wheel)"
    fi
    "${PIP[@]}" install "${torch_args[@]}" "$TORCH_SPEC"
fi

# --- 2. the project and everything else, under the constraints ----------------
log "installing the project with extras [$EXTRAS] under requirements/constraints.txt"
"${PIP[@]}" install -c requirements/constraints.txt -e ".[${EXTRAS}]"

"$PY" - <<'PYEOF'
from importlib.metadata import version
import torch
print(f"[venv] ready: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), "
      f"jupyter-book {version('jupyter-book')}, nbgrader {version('nbgrader')}, "
      f"papermill {version('papermill')}", flush=True)
PYEOF
