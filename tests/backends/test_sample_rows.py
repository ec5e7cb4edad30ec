"""The WebGPU backend's sampling of a batched step's rows (backends/webgpu/sample_rows.py,
shaders/sample_rows.wgsl) against fastllm.sampling.sample_row and float64 NumPy, on fresh random
rows with the outputs poisoned before each call; with the adapter's features and with
subgroups and shader-f16 off (naga's run-time checks on), as tests/backends/test_ops.py."""

from __future__ import annotations

import numpy as np
import pytest

from fastllm.backends import sample_rows as layout
from fastllm.sampling import RowSampling, device_ok
from row_sampling_cases import ROWS, check_rows


@pytest.fixture(scope="module")
def samplers(gpu):
    from fastllm.backends.webgpu.sample_rows import RowSampler

    made = {}

    def get(n_vocab: int, max_rows: int):
        if (n_vocab, max_rows) not in made:
            made[n_vocab, max_rows] = RowSampler(gpu, n_vocab, max_rows)
        return made[n_vocab, max_rows]

    yield get
    for s in made.values():
        s.close()


def poisoned(s):
    def sample(x, params, u, windows):
        s.poison()
        return s.sample(x, params, u, windows)
    return sample


# 300: one part shorter than a chunk; 4999: three parts (2048, 2048, 903); 20011: ten
@pytest.mark.parametrize("n_vocab", [300, 4999, 20011])
def test_rows_as_sample_row(samplers, rng, n_vocab):
    """A batch of every chain of row_sampling_cases.ROWS (greedy, drawn, penalties that decide,
    a bias that flips the argmax, log-probabilities, rows left to the host) in one call."""
    s = samplers(n_vocab, len(ROWS) + 3)
    rounds = 3 if n_vocab > 5000 else 6
    differ = check_rows(poisoned(s), rng, n_vocab, rounds, seed=rng.seed_value)
    assert differ <= 2


def test_fewer_rows_than_prepared_for(samplers, rng):
    """Batches of 1 and 2 rows on a sampler for 40, shuffled: each row's result is its own."""
    s = samplers(4999, 40)
    for k in (1, 2, 5):
        for _ in range(3):
            rows = [ROWS[int(i)] for i in rng.choice(len(ROWS), k, replace=False)]
            check_rows(poisoned(s), rng, 4999, 1, rows=rows, seed=rng.seed_value)


def test_device_output_layout(samplers, rng):
    """What a caller reads in the same command buffer: -1 for a row the host samples, the ids
    of the others, and only as many bytes as the batch needs."""
    s = samplers(300, 8)
    params = [RowSampling(temperature=0), RowSampling(top_k=0), RowSampling(temperature=0)]
    x = rng.standard_normal((3, 300)).astype(np.float32)
    s.poison()
    got = s.sample(x, params, [0.5] * 3, [[], [], []])
    assert s.read_nbytes() == 12
    data = np.frombuffer(_read(s, 12), np.int32)
    assert data.tolist() == [int(np.argmax(x[0])), -1, int(np.argmax(x[2]))]
    assert [g.id for g in got[::2]] == [data[0], data[2]]
    assert not device_ok(params[1]) and 0 <= got[1].id < 300
    s.prepare(params + [RowSampling(logprobs=2)], [0.5] * 4, [[]] * 4)
    assert s.read_nbytes() == 4 * (8 + 4 * layout.LPW)


def _read(s, n):
    be = s.be
    st = be.buffer(n, "MAP_READ|COPY_DST", "test read", binding=False)
    enc = be.device.create_command_encoder()
    enc.copy_buffer_to_buffer(s.out, 0, st, 0, max(n, 16) // 16 * 16)
    be.queue.submit([enc.finish()])
    st.map_sync("READ", 0, n)
    data = st.read_mapped(0, n, copy=True)
    st.unmap()
    be.free(st)
    return data


def test_encode_at_an_offset(gpu, samplers, rng):
    """encode() reads the rows from a byte offset of a larger buffer (a step's logits among
    other outputs) and its ids are copied out in the same command buffer."""
    s = samplers(4999, 4)
    align = gpu.limits.get("min-storage-buffer-offset-alignment", 256)
    x = rng.standard_normal((3, 4999)).astype(np.float32)
    buf = gpu.buffer(align + x.nbytes, "STORAGE|COPY_DST", "test logits")
    gpu.queue.write_buffer(buf, 0, np.full(align // 4, 1e30, np.float32))  # not the rows
    gpu.queue.write_buffer(buf, align, x)
    params = [RowSampling(temperature=0, logprobs=1)] * 3
    s.poison()
    s.prepare(params, [0.0] * 3, [[]] * 3)
    st = gpu.buffer(s.out.size, "MAP_READ|COPY_DST", "test read", binding=False)
    enc = gpu.device.create_command_encoder()
    s.encode(enc, buf, 3, offset=align)
    enc.copy_buffer_to_buffer(s.out, 0, st, 0, s.out.size)
    gpu.queue.submit([enc.finish()])
    st.map_sync("READ", 0, s.out.size)
    got = s.unpack(st.read_mapped(0, s.read_nbytes(), copy=True))
    st.unmap()
    gpu.free(st)
    gpu.free(buf)
    assert [g.id for g in got] == [int(i) for i in np.argmax(x, axis=1)]
    assert [g.top[0][0] for g in got] == [g.id for g in got]


def test_bad_batches(samplers):
    s = samplers(300, 2)
    with pytest.raises(ValueError, match="at most 2"):
        s.prepare([RowSampling()] * 3, [0.5] * 3, [[]] * 3)
    with pytest.raises(ValueError, match="uniform"):
        s.prepare([RowSampling()] * 2, [0.5], [[]] * 2)
