"""The capability probe that gates the numeric tests on a real device.

Hosted macOS runners expose a paravirtual GPU that reports a low GPU family and has returned
wrong data through no-copy buffers over file maps, so a reported family says little about whether
the kernels' results can be checked. The probe runs metal/probe.metal's kernel_probe_simd (a
simd_sum and an 8 x 8 simdgroup_multiply_accumulate), with one operand read through a no-copy
buffer over a mapped file as the model's weights are, and holds the output against NumPy.
Pipeline creation is not gated: every function gets its pipeline regardless (test_native.py).

Works on anything with fastllm._metal's Device API (the extension, or tests/metal/fake_metal.py).
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np

from fastllm import kargs

_verdict: list = []  # [probe's result] once it ran: every Device is the system's default GPU


def probe(dev) -> str | None:
    """None when dev computes the probe kernel right, else what went wrong."""
    rng = np.random.default_rng(7)
    a, b, c = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(3))
    x = rng.standard_normal(32).astype(np.float32)
    want = np.concatenate([(a.astype(np.float64) @ b + c).reshape(-1),
                           np.full(32, x.astype(np.float64).sum())])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.bin")
        with open(path, "wb") as f:  # a whole page, so that the mapping can be wrapped
            f.write(a.tobytes().ljust(mmap.PAGESIZE, b"\0"))
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        try:
            buf_a = dev.wrap(mapped, True)
            bufs = [buf_a]
            for arr in (b, c, x):
                buf = dev.buffer(arr.nbytes)
                np.frombuffer(buf, np.uint8)[:arr.nbytes] = arr.view(np.uint8).reshape(-1)
                bufs.append(buf)
            out = dev.buffer(4 * 96)
            rec = dev.record([(dev.pipeline("kernel_probe_simd"),
                               kargs.pack("kargs_unary", n=32),
                               [(buf, 0) for buf in [*bufs, out]], (1,), (32,))])
            dev.run(rec)
            got = np.frombuffer(out, np.float32)[:96].astype(np.float64)
        except RuntimeError as e:  # fastllm._metal.MetalError
            return f"kernel_probe_simd failed: {e}"
        finally:
            del mapped
    err = np.abs(got - want) / (np.abs(want) + 1.0)
    if not np.isfinite(got).all() or err.max() > 1e-5:
        i = int(np.argmax(np.where(np.isfinite(got), err, np.inf)))
        what = "simdgroup_multiply_accumulate" if i < 64 else "simd_sum"
        return (f"kernel_probe_simd: {what} gave {got[i]!r} at output {i}, NumPy "
                f"{want[i]!r}")
    return None


def cached(dev) -> str | None:
    """probe(dev), run once per test session."""
    if not _verdict:
        _verdict.append(probe(dev))
    return _verdict[0]
