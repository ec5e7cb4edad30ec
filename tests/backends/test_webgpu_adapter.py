"""Choosing the WebGPU adapter by index (FASTLLM_WEBGPU_ADAPTER, Model.load(adapter=)), and
mapping a scheduler's GPU number onto wgpu's adapter list. The adapters present are wgpu's own
enumeration (lavapipe here: one CPU device, listed once per API)."""

from __future__ import annotations

import pytest

from fastllm import ArgumentError, Model
from fastllm.backends.webgpu.adapters import ADAPTER_ENV, gpu_adapter_index
from fastllm.errors import BackendError


@pytest.fixture(scope="module")
def adapters():
    try:
        from fastllm.backends.webgpu.backend import _wgpu

        found = [dict(a.info) for a in _wgpu().gpu.enumerate_adapters_sync()]
    except (ImportError, BackendError) as e:
        pytest.skip(f"no WebGPU: {e}")
    if not any(a.get("backend_type") == "Vulkan" for a in found):
        pytest.skip("no Vulkan adapter")
    return found


def test_adapter_by_index_opens_that_adapter(adapters, monkeypatch):
    from fastllm.backends.webgpu import WebGPUBackend

    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    i = next(k for k, a in enumerate(adapters) if a.get("backend_type") == "Vulkan")
    be = WebGPUBackend(adapter=i)
    try:
        assert be.info == adapters[i]
    finally:
        be.close()
    monkeypatch.setenv(ADAPTER_ENV, str(i))
    be = WebGPUBackend()
    try:
        assert be.info == adapters[i]
    finally:
        be.close()


def test_bad_index_names_the_variable_or_argument(adapters, stories260k, monkeypatch):
    from fastllm.backends.webgpu import WebGPUBackend

    n = len(adapters)
    monkeypatch.setenv(ADAPTER_ENV, str(n))
    with pytest.raises(ArgumentError) as e:
        WebGPUBackend()
    msg = str(e.value)
    assert f"{ADAPTER_ENV}={n}" in msg and f"this machine has {n}" in msg
    assert adapters[0]["device"] in msg  # the adapters there are, to choose from
    # the automatic choice honours the variable too, and does not fall back quietly
    with pytest.raises(ArgumentError, match=f"{ADAPTER_ENV}={n}"):
        Model.load(stories260k)
    monkeypatch.setenv(ADAPTER_ENV, "first")
    with pytest.raises(ArgumentError, match=f"{ADAPTER_ENV}='first'"):
        WebGPUBackend()
    monkeypatch.delenv(ADAPTER_ENV)
    with pytest.raises(ArgumentError, match=f"adapter={n + 5}: there is no WebGPU adapter"):
        Model.load(stories260k, backend="webgpu", adapter=n + 5)
    with pytest.raises(ArgumentError, match="adapter must be an adapter index"):
        Model.load(stories260k, backend="webgpu", adapter="0")


def test_adapter_needs_webgpu(stories260k, monkeypatch):
    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    with pytest.raises(ArgumentError, match="backend='reference' has none"):
        Model.load(stories260k, backend="reference", adapter=0)
    # the variable is for WebGPU only: the reference backend runs whatever it says
    monkeypatch.setenv(ADAPTER_ENV, "99")
    m = Model.load(stories260k, backend="reference")
    assert m.backend.name == "reference"
    m.close()


def _info(device: str, api: str, kind: str = "DiscreteGPU") -> dict:
    return {"device": device, "backend_type": api, "adapter_type": kind}


def test_gpu_number_to_adapter_index():
    """A GPU listed once per API, and a CPU rasterizer, count once: GPU n is the n-th hardware
    adapter of the first API (by Vulkan, Metal, D3D12, OpenGL) that has any."""
    infos = [_info("llvmpipe", "Vulkan", "CPU"), _info("H100 a", "Vulkan"),
             _info("H100 a", "OpenGL"), _info("H100 b", "Vulkan"), _info("H100 b", "OpenGL")]
    assert [gpu_adapter_index(infos, g) for g in (0, 1)] == [1, 3]
    with pytest.raises(BackendError, match=f"GPU 2 was assigned.*2 GPU adapters.*{ADAPTER_ENV}"):
        gpu_adapter_index(infos, 2)
    gl_only = [_info("llvmpipe", "OpenGL", "CPU"), _info("GPU", "OpenGL", "IntegratedGPU")]
    assert gpu_adapter_index(gl_only, 0) == 1
    with pytest.raises(BackendError, match="0 GPU adapters \\(none\\)"):
        gpu_adapter_index([_info("llvmpipe", "Vulkan", "CPU")], 0)
