"""Tests for longctx_lib.measure. No assertion here depends on how fast the machine is."""

import math

import pytest
import torch

from longctx_lib.attention import attention_step
from longctx_lib.measure import fit_loglog_slope, peak_memory, saved_tensor_bytes, time_fn


def allocate_and_touch(n_bytes: int) -> None:
    """Workload for peak_memory: a buffer of n_bytes, every page written."""
    torch.ones(n_bytes // 4, dtype=torch.float32)


def test_time_fn_counts_calls_and_returns_median():
    calls = []
    result = time_fn(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
    assert len(result.times) == 5
    assert result.median == sorted(result.times)[2]
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux only")
def test_peak_memory_cpu_sees_a_known_allocation():
    small = peak_memory(allocate_and_touch, 1 * 2**20)
    large = peak_memory(allocate_and_touch, 256 * 2**20)
    # The 256 MiB buffer must show, within the few MiB of bookkeeping a process adds.
    assert 250 * 2**20 <= large - small <= 270 * 2**20


def test_peak_memory_sees_transient_memory_freed_before_return():
    # The naive score matrix is freed when attention_step returns: only a peak sees it.
    n = 1024
    naive = peak_memory(attention_step, n, heads=4, impl="naive")
    assert naive >= 4 * n * n * 4  # at least one float32 (4, n, n) score matrix


def test_peak_memory_reports_child_errors():
    with pytest.raises(RuntimeError, match="length"):
        peak_memory(attention_step, -1)


def die_abruptly() -> None:
    """Workload for peak_memory: the process ends as if killed (no Python cleanup)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def sleep_for(seconds: float) -> None:
    """Workload for peak_memory: a call that does not finish in time."""
    import time

    time.sleep(seconds)


def test_peak_memory_never_waits_forever_on_a_dead_child():
    # A child killed by the OS (out of memory, say) must not leave the parent waiting.
    with pytest.raises(RuntimeError, match=r"signal 9.*out of memory"):
        peak_memory(die_abruptly, warmup=False)


def test_peak_memory_times_out_on_a_hanging_child():
    with pytest.raises(TimeoutError, match=r"timeout=3"):
        peak_memory(sleep_for, 60, warmup=False, timeout=3)


def test_peak_memory_rejects_unsupported_devices():
    with pytest.raises(ValueError):
        peak_memory(allocate_and_touch, 10, device="tpu")


def test_saved_tensor_bytes_counts_activations_not_parameters():
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(10, 100)
    # Linear saves its input (a leaf without grad: an activation, counted) and its weight
    # (a parameter, not counted).
    assert saved_tensor_bytes(lin, x) == x.numel() * 4
    # exp saves its output; tanh saves its output: two new tensors of 10x100 float32.
    y = torch.randn(10, 100, requires_grad=True)
    assert saved_tensor_bytes(lambda t: t.exp().tanh(), y) == 2 * 10 * 100 * 4
    # On a 3-D input Linear saves a transposed view of its weight: still a parameter.
    x3 = torch.randn(2, 10, 100)
    assert saved_tensor_bytes(lin, x3) == x3.numel() * 4
    # No grad needed: nothing saved.
    with torch.no_grad():
        assert saved_tensor_bytes(lin, x) == 0


def test_fit_loglog_slope_recovers_exponents():
    xs = [2**i for i in range(5, 12)]
    assert fit_loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0, abs=1e-12)
    assert fit_loglog_slope(xs, [x * math.log(x) for x in xs]) == pytest.approx(1.15, abs=0.05)
    with pytest.raises(ValueError):
        fit_loglog_slope([1, 2], [1])
    with pytest.raises(ValueError):
        fit_loglog_slope([1, 2], [0, 1])


def test_longest_within_doubles_until_the_budget():
    from longctx_lib.measure import longest_within

    calls = []

    def cost(n):
        calls.append(n)
        return n * n

    best, costs = longest_within(cost, 1000, start=4, stop=1024)
    assert best == 16 and calls == [4, 8, 16, 32]  # 32**2 > 1000: stops, tries nothing longer
    assert costs == {4: 16, 8: 64, 16: 256, 32: 1024}
    assert longest_within(cost, 10, start=4, stop=64) == (None, {4: 16})  # even the start is too costly
    assert longest_within(cost, 1e9, start=4, stop=40)[0] == 32  # capped by stop
