"""Device selection: CPU by default, any device when asked.

Chapter 1 introduces it; every later chapter and notebook calls
:func:`resolve_device` with the ``DEVICE`` parameter of its papermill cell.
"""

from __future__ import annotations

import platform

import torch

__all__ = ["resolve_device", "describe_device", "synchronize"]

_KNOWN = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    ``"auto"`` (or ``None``) picks CUDA if available, then Apple's MPS, then the CPU.
    Anything else (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``)
    is checked for availability, so a notebook asked to run on a GPU that is not
    there fails at once with a message instead of deep inside a kernel.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be a string such as 'auto', 'cpu' or 'cuda', or a torch.device; "
            f"got {type(device).__name__}"
        )
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except RuntimeError as err:
        raise ValueError(
            f"device={device!r} is not a device name; use one of {', '.join(_KNOWN)} "
            f"(optionally with an index, e.g. 'cuda:0')"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this machine; "
                f"use device='auto' or 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) exist; "
                f"use an index below {torch.cuda.device_count()}"
            )
    elif dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"device={device!r} was requested but MPS is not available; use device='auto' or 'cpu'"
        )
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not supported; use one of {', '.join(_KNOWN)}")
    return dev


def describe_device(device: str | torch.device | None = "auto") -> str:
    """A one-line human description of ``device`` (for figure titles and results files)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA, torch {torch.__version__})"
    if dev.type == "mps":
        return f"Apple MPS on {platform.machine()} (torch {torch.__version__})"
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {threads} thread(s) (torch {torch.__version__})"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels on ``device`` to finish (a no-op on the CPU)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()
