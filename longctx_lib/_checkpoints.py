"""Shipped checkpoints, shared by chapter 2 (:mod:`longctx_lib.duplication`) and chapter 4
(:mod:`longctx_lib.charlm`): where they live, how they are written and read, and the
load-else-train rule the book pages rely on.

A checkpoint is one ``torch.save`` file: ``{"state_dict": weights (as a chosen float
dtype), ...what the module needs to rebuild the model...}``. It is read with
``weights_only=True`` and its weights come back as float32.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch
from torch import nn


def _editable_root() -> Path | None:
    """The source checkout of an editable install of this package, if there is one."""
    try:
        text = importlib.metadata.distribution("longctx-lib").read_text("direct_url.json")
    except Exception:  # not installed, or no metadata
        return None
    if not text:
        return None
    try:
        url = json.loads(text).get("url", "")
    except ValueError:
        return None
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else None


def find_checkpoint_dir(subdir: Path, env_var: str) -> Path:
    """``$env_var``, else ``subdir`` (e.g. ``checkpoints/duplication``) beside the package or above
    it (a staged copy of the package sits a few folders below the repository), else in an
    editable install's checkout, else beside the package (where it would be created)."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent
    candidates = [p / subdir for p in list(here.parents)[:4]]
    root = _editable_root()
    if root is not None:
        candidates.append(root / subdir)
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def check_path(path: object, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or a pathlib.Path; got {type(path).__name__}")
    return Path(path)


def check_bool(**values: object) -> None:
    """Raise a ``TypeError`` naming each argument that is not ``True`` or ``False``."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {value!r}")


def named_run(run: object, runs: dict[str, dict], table: str) -> dict | None:
    """A deep copy of ``runs[run]`` for a run name; ``None`` for a dict (the caller checks it).

    ``table`` names the run table in the messages (``"CHARLM_RUNS"``, ``"PASSKEY_RUNS"``).
    """
    if isinstance(run, str):
        if run not in runs:
            raise ValueError(f"run must be one of {sorted(runs)} or a run dict; got {run!r}")
        return copy.deepcopy(runs[run])
    if not isinstance(run, dict):
        raise TypeError(f"run must be a name of {table} or a dict like its values; got {type(run).__name__}")
    return None


def same_config(a: dict, b: dict) -> bool:
    """Equal as JSON (tuples and lists alike, key order ignored)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def save_weights(model: nn.Module, path: str | Path, dtype: torch.dtype, **payload: Any) -> Path:
    """Write ``model``'s weights as ``dtype`` (integer buffers unchanged) and ``payload`` to ``path``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, e.g. torch.bfloat16; got {dtype!r}")
    path = check_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, **payload}, path)
    return path


def read_checkpoint(path: str | Path, regenerate: str) -> dict:
    """The saved dict, its ``"state_dict"`` weights back in float32."""
    path = check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; regenerate with: {regenerate}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return ckpt


def load_else_train(
    path: Path,
    *,
    load: Callable[[Path], tuple],
    matches: Callable[[tuple], bool],
    train: Callable[[], tuple],
    save: Callable[[tuple, Path], object],
    retrain: bool,
    regenerate: str,
) -> tuple:
    """``load(path)`` when the file exists, ``matches`` it and no ``retrain`` is asked; else
    ``train()`` (with a warning unless ``retrain``), saved when ``retrain`` was asked or the
    file is (still) missing: a stale file is never overwritten silently, nor one that another
    process wrote meanwhile."""
    if path.is_file() and not retrain:
        loaded = load(path)
        if matches(loaded):
            return loaded
        reason = f"{path} was trained with another configuration"
    elif not retrain:
        reason = f"there is no checkpoint {path}"
    if not retrain:
        warnings.warn(f"{reason}: training from scratch (minutes on a CPU). "
                      f"Regenerate the shipped checkpoints with: {regenerate}", stacklevel=3)
    trained = train()
    if retrain or not path.exists():
        save(trained, path)
    return trained
