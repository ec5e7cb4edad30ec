"""fastllm._metal on a real device (macOS arm64; skipped elsewhere): the kernel library, the
extension's kargs layout, buffers and the checks a recording makes.

Two tiers. Pipeline creation for every function of fastllm.metallib, the layout, buffers and the
recording checks run on any device: link and specialization errors show there, and a device's
GPU family does not gate them. Numeric results are checked only on a device that passes the
capability probe (native_probe.py: simd_sum and simdgroup_multiply_accumulate against NumPy,
one operand read through a no-copy buffer over a mapped file); the other tests/metal files take
the same gate through metal_env.make_runtime. On Linux the probe itself runs through the fake
extension (the kernels in the emulator), as does the naming check of the library."""

from __future__ import annotations

import mmap
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from metal_env import emulator_available, native_available
from native_probe import cached, probe

from fastllm import kargs

ROOT = Path(__file__).resolve().parents[2]
native = pytest.mark.skipif(not native_available(), reason="fastllm._metal is built only on "
                            "macOS arm64")


def kernel_names_in_sources() -> set[str]:
    """Every entry point of metal/*.metal: [[host_name]] instantiations and plain kernels."""
    names = set()
    for p in (ROOT / "metal").glob("*.metal"):
        src = p.read_text()
        names |= set(re.findall(r'host_name\(\s*"(\w+)"\s*\)', src))
        # plain kernels; a template's definition (after `template <...>`) is no entry point
        for m in re.finditer(r"^(.*)\nkernel void (\w+)\(", src, re.MULTILINE):
            if not m.group(1).startswith("template"):
                names.add(m.group(2))
    return names


@pytest.mark.skipif(not emulator_available(), reason="needs the MSL emulator")
def test_source_kernel_names_match_the_emulated_library():
    from mslemu_runtime import libraries

    assert kernel_names_in_sources() == set(libraries())


@pytest.fixture(scope="module")
def rt():
    from fastllm.backends.metal.runtime import _NativeRuntime

    return _NativeRuntime()


@pytest.fixture
def capable(rt):
    reason = cached(rt.dev)
    if reason is not None:
        pytest.skip(f"{rt.name} fails the capability probe: {reason}")


@native
def test_every_kernel_has_a_pipeline(rt):
    """Unconditional: a function that fails to link or specialize fails here on any device."""
    failed = {}
    for name in sorted(kernel_names_in_sources()):
        try:
            p = rt.dev.pipeline(name)
        except RuntimeError as e:
            failed[name] = str(e)
            continue
        # the lowering dispatches at most 256 threads per threadgroup (plan._threads)
        assert p.name == name and p.max_threads >= 256 and p.execution_width == 32, name
    assert not failed, failed


@native
def test_capability_probe(rt):
    """Reported, not asserted: the paravirtual GPU of hosted runners may fail it, which skips
    the numeric checks; the reason is in the test log."""
    reason = cached(rt.dev)
    print(f"{rt.name}: supports_simdgroup_matrix={rt.dev.supports_simdgroup_matrix}, "
          f"capability probe: {reason or 'passed'}")


@native
def test_kargs_layout_of_the_extension():
    from fastllm import _metal

    got = _metal.kargs_layout()
    for name, dt in kargs.structs().items():
        size, fields = got[name]
        assert size == dt.itemsize, name
        assert fields == {f: dt.fields[f][1] for f in dt.names}, name


@native
def test_buffers(rt, tmp_path):
    from fastllm._metal import MetalError

    b = rt.buffer(100)
    h = rt.host(b)
    assert h.nbytes >= 100 and not h.any()  # zero-filled
    h[:4] = [1, 2, 3, 4]
    assert bytes(rt.host(b)[:4]) == b"\x01\x02\x03\x04"
    f = tmp_path / "w.bin"
    f.write_bytes(bytes(range(256)) * 40)
    mm = np.memmap(f, dtype=np.uint8, mode="r")
    buf, off = rt.weight(mm[1000:1100])
    assert buf.nocopy and off == 1000
    assert bytes(rt.host(buf)[off:off + 100]) == bytes(mm[1000:1100])
    copy, off = rt.weight(np.arange(10, dtype=np.uint8))
    assert not copy.nocopy and off == 0
    # in place or not at all: memory off a page is refused, never copied
    with pytest.raises(MetalError, match="page"):
        rt.dev.wrap(mm[1:mmap.PAGESIZE], True)


@native
def test_recording_checks(rt):
    from fastllm._metal import MetalError

    with pytest.raises(MetalError, match="not in"):
        rt.dev.pipeline("kernel_no_such_thing")
    p = rt.dev.pipeline("kernel_add_f32")
    b = rt.buffer(64)
    with pytest.raises(MetalError, match="threads per threadgroup"):
        rt.dev.record([(p, b"\0" * 16, [(b, 0)] * 3, (1,), (4096,))])
    with pytest.raises(MetalError, match="offset"):
        rt.dev.record([(p, b"\0" * 16, [(b, 0), (b, 0), (b, 4096)], (1,), (32,))])
    with pytest.raises(MetalError, match="setBytes"):
        rt.dev.record([(p, b"\0" * 4096, [(b, 0)] * 3, (1,), (32,))])


@native
def test_a_recording_runs(rt, capable):
    p = rt.dev.pipeline("kernel_add_f32")
    b = rt.buffer(64)
    args = kargs.pack("kargs_binary", n=16, b_period=16)
    h = rt.host(b).view(np.float32)
    h[:] = 1.5
    rec = rt.dev.record([(p, args, [(b, 0), (b, 0), (b, 0)], (1,), (32,))])
    rt.dev.run(rec)
    assert (h == 3.0).all()


# -- the probe itself, on Linux through the fake extension -------------------------------------
@pytest.fixture
def fake_device(monkeypatch):
    if not emulator_available():
        pytest.skip("needs the MSL emulator")
    import fake_metal

    monkeypatch.setitem(sys.modules, "fastllm._metal", fake_metal.module())
    return fake_metal.Device("fastllm.metallib")


def test_probe_passes_where_the_kernels_compute_right(fake_device):
    assert probe(fake_device) is None


def test_probe_names_what_a_device_gets_wrong(fake_device, monkeypatch):
    """A device whose matrix unit drops the accumulator (the kind of fault a paravirtual GPU
    shows) fails the probe, which then names the operation."""
    run = fake_device.run

    def faulty(rec):
        run(rec)
        for _, _, views, _, _ in rec:
            views[-1].view(np.float32)[:64] -= 1.0

    monkeypatch.setattr(fake_device, "run", faulty)
    assert "simdgroup_multiply_accumulate" in probe(fake_device)
