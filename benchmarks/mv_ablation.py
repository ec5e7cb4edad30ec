"""Where a mat-vec's time goes: the production kernel (mul_mv.wgsl) timed with one part of its
work taken out at a time, on the GPU's own clock (timestamp queries), with weight copies rotated
past the L2 cache as in a model.

    python benchmarks/mv_ablation.py [--types q8_0,q4_K] [--shapes 4096x14336,14336x4096]

Ablations (text edits of the assembled WGSL; the results are wrong on purpose, only timed):
  base       the kernel as shipped
  no_x       x values made up from the unit index (no x loads)
  no_alu     each weight unit's words summed as floats (all bytes loaded, almost no arithmetic)
  no_reduce  the per-thread sums written by lane 0 without the workgroup reduction
  stream     a separate kernel that only reads the weight arrays (the bandwidth ceiling)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import bench_webgpu_ops as bo

from fastllm.backends.webgpu import WebGPUBackend
from fastllm.backends.webgpu import shaders as ws
from fastllm.backends.webgpu.repack import array_sizes, type_name
from fastllm.gguf import TensorInfo
from fastllm.quants import SUPPORTED_TYPES, GGMLType

# each weight unit's words summed as floats: every byte loaded, almost no arithmetic
_CHEAP = {
    "q8_0": """
fn cheap_unit(i: u32) -> f32 {
    let s = bitcast<vec4<f32>>(w0[2u * i] & vec4<u32>(0x3F7FFFFFu))
        + bitcast<vec4<f32>>(w0[2u * i + 1u] & vec4<u32>(0x3F7FFFFFu));
    return dot(s, vec4<f32>(1.0)) + bitcast<f32>(w1[i >> 1u] & 0x3F7FFFFFu);
}
""",
    "f16": """
fn cheap_unit(i: u32) -> f32 {
    let s = bitcast<vec4<f32>>(w0[4u * i] & vec4<u32>(0x3F7FFFFFu))
        + bitcast<vec4<f32>>(w0[4u * i + 1u] & vec4<u32>(0x3F7FFFFFu))
        + bitcast<vec4<f32>>(w0[4u * i + 2u] & vec4<u32>(0x3F7FFFFFu))
        + bitcast<vec4<f32>>(w0[4u * i + 3u] & vec4<u32>(0x3F7FFFFFu));
    return dot(s, vec4<f32>(1.0));
}
""",
    "q4_K": """
fn cheap_unit(i: u32) -> f32 {
    let s = bitcast<vec4<f32>>(w0[i] & vec4<u32>(0x3F7FFFFFu))
        + bitcast<vec4<f32>>(w1[i >> 3u] & vec4<u32>(0x3F7FFFFFu));
    return dot(s, vec4<f32>(1.0));
}
""",
}


def ablate(src: str, kind: str, tname: str) -> str:
    if kind == "no_x":
        src, n = re.subn(r"xv\[j\] = x_at\(m0, u, j\) \* live;",
                         "xv[j] = vec4<f32>(f32((u + j) & 7u) * 0.001) * live;", src)
        assert n == 1
    elif kind == "no_alu":
        src, n = re.subn(r"dot_unit\(row \* U \+ u, &xv, xs\)", "cheap_unit(row * U + u) + xs.x",
                         src)
        assert n == 1
        src += _CHEAP[tname]
    elif kind == "no_reduce":
        src, n = re.subn(r"group_sum4\(acc\[c \* RV \+ v\], TPR, ids\)", "acc[c * RV + v]", src)
        assert n == 1
    return src


STREAM = """
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&w);
    let stride = nwg.x * 256u;
    var acc = vec4<u32>(0u);
    for (var i = gid.x; i < n; i += stride) {
        acc ^= w[i];
    }
    out[gid.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="q8_0,q4_K")
    ap.add_argument("--shapes", default="4096x14336,14336x4096")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=6)
    a = ap.parse_args()
    be = WebGPUBackend()
    print(be.describe())
    timer = bo.Timer(be)
    rng = np.random.default_rng(0)
    names = {type_name(t): t for t in SUPPORTED_TYPES}
    orig = ws.module_source
    kinds = ("base", "no_x", "no_alu", "no_reduce")
    print(f"{'type':>5} {'shape':>11} " + " ".join(f"{k:>16}" for k in kinds + ("stream",)))
    for s in a.types.split(","):
        for shape in a.shapes.split(","):
            n, k = (int(v) for v in shape.split("x"))
            w = [be.load_weight(bo._tensor("w", names[s], n, k, rng)) for _ in range(a.copies)]
            x = be.load_weight(TensorInfo("x", GGMLType.F32, (1, k), rng.standard_normal(k)
                                          .astype(np.float32).view(np.uint8), ""))
            nbytes = sum(array_sizes(names[s], n, k))
            row = []
            for kind in kinds:
                if kind == "no_alu" and s not in _CHEAP:
                    row.append("-")
                    continue
                be._pipelines.clear()
                ws.module_source = (lambda *args, _k=kind, _t=s, **kw:
                                    ablate(orig(*args, **kw), _k, _t)
                                    if args and args[0] == "mul_mv.wgsl" else orig(*args, **kw))
                progs = [bo.matmul_program(be, c, x, 1) for c in w]
                disp = [d for p in progs for d in p.dispatches[-1:]]
                sec = timer.time(disp, a.repeat) / len(w)
                row.append(f"{sec * 1e6:7.1f}us {nbytes / sec / 1e9:5.0f}")
                for p in progs:
                    p.release()
            ws.module_source = orig
            mod = be.device.create_shader_module(code=STREAM)
            pipe = be.device.create_compute_pipeline(layout="auto",
                                                     compute={"module": mod, "entry_point": "main"})
            out = be.device.create_buffer(size=132 * 8 * 256 * 4, usage="STORAGE")
            disp = []
            for c in w:
                bg = be.device.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
                    {"binding": 0, "resource": {"buffer": c.handle.parts[0].buffers[0]}},
                    {"binding": 1, "resource": {"buffer": out}}])
                disp.append((pipe, bg, (132 * 8, 1, 1)))
            sec = timer.time(disp, a.repeat) / len(w)
            w0 = array_sizes(names[s], n, k)[0]
            row.append(f"{sec * 1e6:7.1f}us {w0 / sec / 1e9:5.0f}")
            print(f"{s:>5} {shape:>11} " + " ".join(f"{c:>16}" for c in row), flush=True)
    be.close()


if __name__ == "__main__":
    main()
