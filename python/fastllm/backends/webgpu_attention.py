"""Attention on WebGPU: the lowering of the attention ops, as a mixin of WebGPUProgram
(`_op_<name>` per graph op), and the shape constants that benchmarks sweep.

One token (decode): attn_decode.wgsl splits each KV head's visible positions over up to
ATTN_SPLITS workgroups and a second dispatch reduces the splits (into the output projection's
quantized x where the program planned one). Several tokens (prefill): attention.wgsl, register
tiled mat-mats over BQ query rows x BK keys per step with online softmax.
"""

from __future__ import annotations

from ..errors import UnsupportedError
from .base import Node

# Most workgroups per KV head of decode attention (attn_decode.wgsl's NSPLIT; a cache of N rows
# gets min(ATTN_SPLITS, N / 8)). H100, 8B Q4_K_M step at positions 64 / 1,000 / 4,000:
# 16 splits 3.12 / 3.45 / 4.55 ms, 32 splits 3.15 / 3.34 / 3.97, 64 splits 3.23 / 3.33 / 3.81
# (benchmarks/NOTES.md, section 7).
ATTN_SPLITS = 32
# Prefill attention tiles (attention.wgsl): BQ query rows x BK keys per step, the first that
# fits the device's workgroup memory; PREFILL_ATTN_F16 stores the Q, K and V tiles in f16 where
# the device has shader-f16 (the products stay f32).
PREFILL_ATTN_TILES = ((64, 32), (32, 32), (64, 16), (32, 16), (16, 16), (16, 8), (8, 8), (4, 4))
PREFILL_ATTN_F16 = 1


def prefill_attn_shape(d: int, f16: bool, smem: int, max_wg: int) -> tuple[int, int, bool]:
    """(BQ, BK, f16 tiles) of prefill attention at head_dim d."""
    tile = bool(PREFILL_ATTN_F16 and f16)
    for bq, bk in PREFILL_ATTN_TILES:
        size = (d * bq + d * bk) * (2 if tile else 4) + (bk * bq + 3 * bq) * 4
        if size <= smem and bq * bk // 16 <= max_wg:
            return bq, bk, tile
    raise UnsupportedError(f"webgpu: head_dim {d} needs more workgroup memory than the device "
                           f"has ({smem} bytes)")


class AttentionOps:
    """_op_attention and _op_attn_decode_rope for WebGPUProgram."""

    def _op_attention(self, node: Node) -> None:
        q = node.args[0]  # attn_decode_rope: (q, k, v, rope factors)
        at = node.attrs
        ring, dim, (kc, vc) = self._kv(at["layer"])
        nh, nkv, d = at["n_head"], at["n_kv_head"], at["head_dim"]
        if d % 4 or nh % nkv or nkv * d != dim:
            raise UnsupportedError(f"webgpu: attention with head_dim {d}, {nh} heads, {nkv} KV "
                                   f"heads over a cache of {dim} values")
        g = nh // nkv
        n = q.shape[0]
        args = self._arg(("kargs_attention", {
            "n_rows": n, "n_head": nh, "n_kv_head": nkv, "head_dim": d, "scale": at["scale"],
            "softcap": at["softcap"], "window": at["window"], "ring": ring}))
        b = {0: args, 1: self.step, 2: self.buf(q), 3: kc, 4: vc, 5: self.buf(node.out)}
        if n == 1:
            rope = node.attrs.get("rope")
            if rope is not None:  # attn_decode_rope: q, k, v unrotated, k and v not yet stored
                _, k, v, ff = node.args
                b.update({7: self.buf(k), 8: self.buf(v),
                          9: self._rope_table(rope["n_rot"], rope["base"], rope["freq_scale"],
                                              ff)})
            visible = min(at["window"], ring) if at["window"] else ring
            # splits share the visible positions evenly at run time (attn_decode.wgsl), so a
            # short context too runs on n_kv_head * nsplit workgroups
            nsplit = max(1, min(ATTN_SPLITS, visible // 8))
            consts = {"G": g, "D": d, "NSPLIT": nsplit}
            part = self._buf(nh * nsplit * (d + 2) * 4, "STORAGE", "attention partials")
            dec = {i: r for i, r in b.items() if i != 5}  # partials, not the output
            self._dispatch("attn_decode.wgsl", "kernel_attn_decode_f32", {**dec, 6: part},
                           (nsplit, nkv),
                           consts={**consts, "NEOX": bool(rope["neox"])} if rope else consts,
                           variant="rope" if rope else None)
            rargs = self._arg(("kargs_attn_reduce", {"n_rows": 1, "n_head": nh, "head_dim": d,
                                                         "n_splits": nsplit}))
            if node.out.id in self.prequantized:  # written as the output projection's x
                self._dispatch("attn_decode.wgsl", "kernel_attn_reduce_q8",
                               {0: rargs, 10: self.buf(node.out), 6: part}, (nh,),
                               consts=consts)
            else:
                self._dispatch("attn_decode.wgsl", "kernel_attn_reduce_f32",
                               {0: rargs, 5: self.buf(node.out), 6: part}, (nh,), consts=consts)
            return
        bq, bk, tile = prefill_attn_shape(d, self.be.f16,
                                          self.be.limits["max-compute-workgroup-storage-size"],
                                          self.be.limits["max-compute-invocations-per-workgroup"])
        self._dispatch("attention.wgsl", "kernel_attn_prefill_f32", b, (-(-n * g // bq), nkv),
                       consts={"G": g, "D": d, "BQ": bq, "BK": bk, "WG": bq * bk // 16},
                       f16_tile=tile)

    def _op_attn_decode_rope(self, node: Node) -> None:
        self._op_attention(node)  # the decode path with the `rope` variant (args q, k, v, ff)
