"""The fixtures every op-test module of this folder shares: `gpu`, a WebGPU backend per feature
variant of test_ops.VARIANTS (skipped without an adapter), and `rng`, fresh random data whose
seed a failing check prints."""

from __future__ import annotations

import pytest

from .pairs import VARIANTS, SeededRng, _backend


@pytest.fixture(scope="module", params=list(VARIANTS))
def gpu(request):
    be = _backend(*VARIANTS[request.param])
    yield be
    be.close()


@pytest.fixture
def rng():
    return SeededRng()
