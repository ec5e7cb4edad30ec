"""gated_delta's chunked form on WebGPU (delta.wgsl's kernel_gated_delta_prep_f32 and
kernel_gated_delta_chunks_f32, taken by runs of GD_CHUNK_MIN rows or more) against the NumPy
reference's row-by-row recurrence: fresh random inputs and states, activation and scratch buffers
poisoned with NaN before each run, an unused slot whose NaN state must stay untouched.

Runs cross several chunk boundaries and end in a partial chunk, and a second run carries the
state the first left; Qwen3.5's heads of 128 (1 key head read by 2 value heads) at the chunk of
32 the backend uses, and heads of 32 (2 key heads read by 6 value heads, a partial workgroup) at
chunks of 8 and 1 (the prep's triangular solve over many chunks, and a chunk of a single row).

Bound: 2e-5 relative to the largest value, as the per-row kernel's ops test (2 * F32_TOL). The
chunked form sums in another order (over the rows of a chunk in the solve, P U0 and u k^T, and
through U0 - W S0 instead of the recurrence), all terms bounded by the decays' exponents <= 0;
errors measured over these shapes, chunks of 8 to 64 and runs of up to 200 rows stay below
1e-6, and a decay off by a factor e^1e-4 at the chunk's end already fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from delta_cases import TABLE, chunked_case
from fastllm.backends.webgpu import delta
from rows_checks import Twin, check, rel_err

from .pairs import VARIANTS, _backend
from .pairs import SeededRng as _SeededRng

TOL = 2e-5


@pytest.fixture(scope="module")
def gpu():
    be = _backend(*VARIANTS["features"])
    yield be
    be.close()


@pytest.fixture
def rng():
    return _SeededRng()


@pytest.mark.parametrize("s,hk,hv,chunk,runs", [
    (128, 1, 2, 32, [75, 64]),  # chunks of 32, 32, 11, then two whole ones from that state
    (32, 2, 6, 8, [21, 1, 16]),  # 8, 8, 5; one row; 8, 8
    (32, 2, 6, 1, [5]),
])
def test_gated_delta_chunked(gpu, rng, monkeypatch, s, hk, hv, chunk, runs):
    monkeypatch.setattr(delta, "GD_CHUNK", chunk)
    monkeypatch.setattr(delta, "GD_CHUNK_MIN", 1)
    infos, spec, states, build = chunked_case(rng, s, hk, hv)
    twin = Twin(gpu, infos, spec, prepare=lambda p: p.poison())
    twin.set_states(states)
    try:
        for slot in (1, 0):
            for n in runs:
                got, want = twin.run(build, rng.integers(0, TABLE, n), 0, slot)
                check(got, want, TOL, f"slot {slot}, {n} rows")
                for sl in (0, 1, 2):
                    g, w = gpu.get_state(sl)["ssm"], twin.ref.get_state(sl)["ssm"]
                    if sl == 2:
                        assert np.isnan(g).all(), "unused slot 2's state written"
                    else:
                        e = rel_err(g, w)
                        assert e <= TOL, f"slot {slot}, {n} rows: state of slot {sl}: {e:.2e}"
    except AssertionError as e:
        raise AssertionError(f"{e} (seed {rng.seed_value})") from None
    progs = [p for (b, _, _, _), p in twin.progs.items() if b == id(gpu)]
    assert progs and all(any(p._chunked(nd) for nd in p.nodes) for p in progs)


def test_gated_delta_chunked_choice(gpu, rng):
    """The backend's own threshold: a short run and rows mode take the per-row kernel, a long
    run the chunked one, with the same results within the bound."""
    infos, spec, states, build = chunked_case(rng, 32, 2, 6)
    twin = Twin(gpu, infos, spec, prepare=lambda p: p.poison())
    twin.set_states(states)
    for n in (delta.GD_CHUNK_MIN - 1, delta.GD_CHUNK_MIN + 5):
        got, want = twin.run(build, rng.integers(0, TABLE, n), 0, 1)
        check(got, want, TOL, f"{n} rows")
    got, want = twin.run_rows(build, rng.integers(0, TABLE, 2), [1, 0], [5, 5])
    check(got, want, TOL, "rows")
    chunked = {(n, rows): any(p._chunked(nd) for nd in p.nodes)
               for (b, _, n, rows), p in twin.progs.items() if b == id(gpu)}
    assert chunked == {(delta.GD_CHUNK_MIN - 1, False): False,
                       (delta.GD_CHUNK_MIN + 5, False): True, (2, True): False}
