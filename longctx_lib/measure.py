"""Measuring time, peak memory and the bytes autograd saves for backward.

Chapter 1 introduces these tools; every later chapter's measurements use them.

- :func:`time_fn`: warm-up, then the median of repeats; CUDA is synchronised around
  each call so the clock measures the kernels, not their launch.
- :func:`peak_memory`: on CUDA the caching allocator's peak; on the CPU the call runs
  in a fresh child process whose peak resident set size (Linux ``VmHWM``, reset just
  before the call) is read, because the CPU allocator keeps no statistics.
- :func:`saved_tensor_bytes`: what autograd keeps for backward, counted through
  ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
import queue as queue_module
import re
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .device import resolve_device, synchronize


def _check_fn(fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable (the function to measure); got {type(fn).__name__}")

__all__ = ["Timing", "time_fn", "peak_memory", "saved_tensor_bytes", "fit_loglog_slope", "longest_within"]


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_fn`: the median and every repeat, in seconds."""

    median: float
    times: tuple[float, ...]

    def __post_init__(self) -> None:
        if isinstance(self.median, bool) or not isinstance(self.median, (int, float)) or not self.median >= 0:
            raise ValueError(f"median must be a number >= 0 seconds; got {self.median!r}")
        if not isinstance(self.times, tuple) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in self.times):
            raise ValueError(f"times must be a tuple of numbers >= 0 seconds; got {self.times!r}")


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 1,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then the median of ``repeats``.

    ``device`` says which device to synchronise before and after each call; it is this
    function's own argument and is not passed to ``fn`` (bind a workload's own device
    with ``functools.partial(fn, device=...)``).
    """
    _check_fn(fn)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    dev = resolve_device(device)
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        synchronize(dev)
        start = time.perf_counter()
        fn(*args, **kwargs)
        synchronize(dev)
        times.append(time.perf_counter() - start)
    return Timing(median=statistics.median(times), times=tuple(times))


# --------------------------------------------------------------------------- peak memory
def _proc_kib(field: str, path: str = "/proc/self/status") -> int | None:
    """A ``<field>: <n> kB`` line of a Linux /proc file, in KiB (None where there is none)."""
    try:
        with open(path) as fh:
            match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so it is not reused unseen."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 128 * 1024


def _fix_mmap_threshold() -> None:
    """Serve every allocation above 128 KiB with its own ``mmap`` (glibc), returned on free.

    By default glibc raises this threshold each time a large block is freed, after
    which large tensors come from the heap, where freed space is reused only by
    allocations that fit it: the resident set then grows with the number of
    differently sized tensors a workload has freed, not with what it holds at once
    (measured: a 12-layer reversible stack looked 2x its 2-layer peak instead of 1.07x).
    Fixing the threshold makes the peak resident set follow the bytes actually live.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def _child(fn: Callable[..., Any], args: tuple, kwargs: dict, queue: Any) -> None:
    try:
        _fix_mmap_threshold()
        torch.set_num_threads(kwargs.pop("_threads"))
        if kwargs.pop("_warmup"):
            fn(*args, **kwargs)  # thread pools, autograd engine, lazy buffers: not the workload
        _release_free_memory()
        exact = _reset_peak_rss()
        before = _proc_kib("VmRSS") if exact else 0
        value = fn(*args, **kwargs)
        if exact:
            peak = _proc_kib("VmHWM")
        else:  # ru_maxrss: KiB on Linux, bytes on macOS; includes the interpreter itself
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale // 1024
        queue.put(("ok", ((peak - before) * 1024, value)))
    except BaseException:  # report any failure to the parent, with its traceback
        queue.put(("error", traceback.format_exc()))


def peak_memory(
    fn: Callable[..., Any],
    *args: Any,
    device: str | torch.device = "cpu",
    warmup: bool = True,
    timeout: float | None = None,
    return_value: bool = False,
    **kwargs: Any,
) -> int | tuple[int, Any]:
    """Peak bytes allocated while ``fn(*args, **kwargs)`` runs, above what was in use before.

    ``device`` says where to measure; it is this function's own argument and is not
    passed to ``fn`` (bind a workload's own device with ``functools.partial``).

    On CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``).
    On the CPU: ``fn`` runs in a fresh ``spawn``-ed process, so ``fn`` and its arguments
    must be picklable (a function defined in a module, not in a notebook); build large
    inputs inside ``fn``. The child serves large allocations with their own ``mmap``
    (glibc), so that freed tensors leave the resident set at once and the peak follows
    the bytes live at one time rather than heap fragmentation. The result is the rise of the process's peak resident memory
    over its resident memory just before the call (exact on Linux; elsewhere the peak
    includes the interpreter, and the figure is an upper bound).

    With ``warmup`` (the default) ``fn`` runs once before the measured call, so one-off
    costs (thread pools, the autograd engine, lazily allocated buffers) are not
    counted; freed memory is handed back to the OS before measuring.

    With ``return_value=True`` the result is ``(peak, value)``, ``value`` being what the
    measured call of ``fn`` returned (on the CPU it must be picklable).

    On the CPU the parent never waits forever: if the child dies (for example killed
    by the operating system for want of memory) a ``RuntimeError`` gives its exit code,
    and after ``timeout`` seconds (``None``: no limit) a ``TimeoutError`` is raised.
    """
    _check_fn(fn)
    dev = resolve_device(device)
    if dev.type == "cuda":
        if warmup:
            fn(*args, **kwargs)
        synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        value = fn(*args, **kwargs)
        synchronize(dev)
        peak = int(torch.cuda.max_memory_allocated(dev) - base)
        return (peak, value) if return_value else peak
    if dev.type != "cpu":
        raise ValueError(
            f"peak_memory supports device='cpu' or 'cuda'; got {dev.type!r}. "
            "PyTorch exposes no peak statistic for MPS: measure on 'cpu' instead."
        )
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None; got {timeout!r}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    kwargs = {**kwargs, "_threads": torch.get_num_threads(), "_warmup": warmup}
    proc = ctx.Process(target=_child, args=(fn, args, kwargs, queue), daemon=True)
    proc.start()
    try:
        status, value = _wait_for_child(proc, queue, timeout, _name_of(fn))
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
    if status != "ok":
        raise RuntimeError(f"the measured function failed in the child process:\n{value}")
    peak, result = int(value[0]), value[1]
    return (peak, result) if return_value else peak


def _name_of(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial: name the function it wraps
    return getattr(inner, "__qualname__", type(inner).__name__)


def _wait_for_child(proc: Any, queue: Any, timeout: float | None, what: str) -> tuple[str, Any]:
    """The child's ``(status, value)``; never waits forever on a child that died or hangs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_module.Empty:
            pass
        if not proc.is_alive():
            try:  # it may have reported just before exiting
                return queue.get(timeout=1.0)
            except queue_module.Empty:
                code = proc.exitcode
                hint = ""
                if code is not None and code < 0:
                    hint = f" (killed by signal {-code}"
                    hint += ": most likely the operating system ran out of memory)" if -code == 9 else ")"
                free = _proc_kib("MemAvailable", "/proc/meminfo")
                free_text = f"; {free / 2**20:.1f} GiB available now" if free is not None else ""
                raise RuntimeError(
                    f"peak_memory: the child process measuring {what} exited with "
                    f"code {code}{hint} before reporting a result{free_text}; try a smaller workload"
                ) from None
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"peak_memory: {what} did not finish within timeout={timeout} s; "
                "pass a larger timeout (or None) or a smaller workload"
            )


# --------------------------------------------------------------------- saved for backward
def saved_tensor_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn(*args, **kwargs)`` runs.

    Each storage is counted once (views share storage). Leaf tensors that require
    grad (parameters, and inputs created with ``requires_grad=True``) and views of them
    (such as a transposed weight) are not counted:
    they exist whether or not backward is planned. Everything else (activations, masks,
    intermediate results) is.
    """
    _check_fn(fn)
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base  # a view (e.g. weight.T) counts as its base
        if not (base.is_leaf and base.requires_grad):
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(seen.values())


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the exponent ``p`` in ``y ~ x^p``."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two sequences of equal length >= 2; got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("x and y must be positive to fit on a log-log scale")
    lx = torch.tensor([float(v) for v in x], dtype=torch.float64).log()
    ly = torch.tensor([float(v) for v in y], dtype=torch.float64).log()
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def longest_within(measure: Callable[[int], float], budget: float, *, start: int,
                   stop: int) -> tuple[int | None, dict[int, float]]:
    """The longest of ``start, 2 start, 4 start, ... <= stop`` whose ``measure`` stays within ``budget``.

    ``measure(length)`` is a cost (peak bytes, seconds) that grows with the length; the
    search doubles the length until the cost exceeds ``budget`` or the length would pass
    ``stop``, and stops there (longer lengths are not tried). Returns the longest length
    that fitted (``None`` if ``start`` did not) and every measurement, by length.
    """
    if not callable(measure):
        raise TypeError(f"measure must be callable as measure(length); got {type(measure).__name__}")
    for name, value in (("start", start), ("stop", stop)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a length); got {value!r}")
    if stop < start:
        raise ValueError(f"stop must be >= start; got start={start}, stop={stop}")
    if not budget > 0:
        raise ValueError(f"budget must be a positive number; got {budget!r}")
    costs: dict[int, float] = {}
    best = None
    length = start
    while length <= stop:
        costs[length] = measure(length)
        if costs[length] > budget:
            break
        best = length
        length *= 2
    return best, costs

