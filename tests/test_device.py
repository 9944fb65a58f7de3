"""Tests for longctx_lib.device."""

import pytest
import torch

from longctx_lib.device import describe_device, resolve_device, synchronize


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("longctx_lib.device._mps_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr("longctx_lib.device._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")


def test_explicit_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "tpu:0", "cuda:x"])
def test_unknown_device_names_the_parameter(bad):
    with pytest.raises(ValueError, match="device="):
        resolve_device(bad)


def test_wrong_type():
    with pytest.raises(TypeError, match="device must be"):
        resolve_device(3)


def test_describe_and_synchronize_on_cpu():
    assert "CPU" in describe_device("cpu")
    synchronize("cpu")  # a no-op that must not fail
