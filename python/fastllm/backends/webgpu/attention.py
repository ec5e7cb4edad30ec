"""Attention on WebGPU: the lowering of the attention ops, as a mixin of WebGPUProgram
(`_op_<name>` per graph op), and the shape constants that benchmarks sweep.

One token (decode): attn_decode.wgsl splits each KV head's visible positions over up to
ATTN_SPLITS workgroups and a second dispatch reduces the splits (into the output projection's
quantized x where the program planned one); while at most ATTN_DIRECT_MAX positions are
visible, one workgroup per KV head does it all in one dispatch instead (the program keeps both
dispatch lists and picks one per step: WebGPUProgram._kind). Several tokens (prefill):
attention.wgsl, register tiled mat-mats over BQ query rows x BK keys per step with online
softmax.
"""

from __future__ import annotations

from ...errors import UnsupportedError
from ..base import Node
from . import matmul_shapes as shapes

# Most workgroups per KV head of decode attention (attn_decode.wgsl's NSPLIT; a cache of N rows
# gets min(ATTN_SPLITS, N / 8)). H100, 8B Q4_K_M step at positions 64 / 1,000 / 4,000:
# 16 splits 3.12 / 3.45 / 4.55 ms, 32 splits 3.15 / 3.34 / 3.97, 64 splits 3.23 / 3.33 / 3.81
# (benchmarks/NOTES.md, section 7).
ATTN_SPLITS = 32
# ... and where the split kernels serve only the steps past ATTN_DIRECT_MAX positions (the "long"
# list), the split count at which those steps measured fastest: 64 (4,000 positions: 3.81 ms
# against 3.97; 1,000: 3.33 against 3.34), the short contexts that 64 slowed being the direct
# kernel's
ATTN_SPLITS_LONG = 64
# Visible positions up to which decode attention is one dispatch (kernel_attn_decode_direct_*,
# one workgroup per KV head) instead of the split kernel and its reduce: a dispatch boundary in
# the stream costs more than a workgroup walking this many keys alone. H100, GPU step at
# positions 64 / 128 / 192 / 256, split vs one dispatch: 1B Q8_0 916 / 923 / 926 / 929 vs
# 853 / 877 / 904 / 946 us, 8B Q4_K_M 3,040 / 3,038 / 3,057 / 3,060 vs 2,884 / 2,965 / 3,054 /
# 3,215 (benchmarks/NOTES.md, section 11).
ATTN_DIRECT_MAX = 192
ATTN_DIRECT_WG = (512, 256, 128, 64)  # its workgroup: the first the device's limits allow
# keys per pass of its V loop (attn_decode.wgsl's VU): 2 / 4 / 8 gave the 8B Q4_K_M step at
# position 128 3,003 / 2,965 / 3,127 us
ATTN_DIRECT_VU = 4
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


def direct_attn_wg(g: int, d: int, smem: int, max_wg: int) -> int | None:
    """Workgroup size of the one-dispatch decode attention for G query heads per KV head at
    head_dim d, or None where the device's workgroup memory or size allows none."""
    d4 = d // 4
    for wg in ATTN_DIRECT_WG:
        ks = max(1, wg // d4)
        # qd, od, dsum (vec4s); pd, dl (floats); hd (vec2s); the reduction's red4 (vec4s)
        size = 16 * (2 * g * d4 + ks * g * d4 + wg) + 4 * (g * wg + ks * g) + 8 * g
        if wg >= d4 and wg <= max_wg and size <= smem:
            return wg
    return None


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
        sinks = at.get("sinks")
        # the sink logits (binding 12 of the kernels that read them; a placeholder without)
        sk = {12: self.buf(sinks) if sinks is not None else self.be.dummy}
        has = {"SINKS": sinks is not None}
        args = self._arg(("kargs_attention", {
            "n_rows": n, "n_head": nh, "n_kv_head": nkv, "head_dim": d, "scale": at["scale"],
            "softcap": at["softcap"], "window": at["window"], "ring": ring,
            "has_sinks": int(sinks is not None)}))
        rows = bool(self.g.rows)  # each row a query of its own slot (rows.wgsl's layout)
        if n == 1 or rows:
            self._attn_decode(node, args, ring, kc, vc, g, d, nkv, n if rows else 1, sk, has)
            return
        b = {0: args, 1: self.step, 2: self.buf(q), 3: kc, 4: vc, 5: self.buf(node.out)}
        bq, bk, tile = prefill_attn_shape(d, self.be.f16,
                                          self.be.limits["max-compute-workgroup-storage-size"],
                                          self.be.limits["max-compute-invocations-per-workgroup"])
        self._dispatch("attention.wgsl", "kernel_attn_prefill_f32", {**b, **sk},
                       (-(-n * g // bq), nkv),
                       consts={"G": g, "D": d, "BQ": bq, "BK": bk, "WG": bq * bk // 16, **has},
                       f16_tile=tile)

    def _attn_decode(self, node: Node, args, ring: int, kc, vc, g: int, d: int, nkv: int,
                     z: int, sk: dict, has: dict) -> None:
        """Decode attention of one query row, or in rows mode of z rows each over its own
        slot's cache (ROWS: grid z). While at most ATTN_DIRECT_MAX positions are visible, the
        one-dispatch kernel; past that (or always, where the step may see more: the "long"
        list) the split kernel and its reduce. The sinks, where the node has them: sk, has."""
        at = node.attrs
        q = node.args[0]
        nh = at["n_head"]
        rows = bool(self.g.rows)
        b = {0: args, 1: self.step, 2: self.buf(q), 3: kc, 4: vc,
             11: self.rows if rows else self.be.dummy}
        rope = at.get("rope")
        hn = {}
        if rope is not None:  # attn_decode_rope: q, k, v unrotated, k and v not yet stored
            k, v, ff = node.args[1:4]
            b.update({7: self.buf(k), 8: self.buf(v),
                      9: self._rope_table(rope["n_rot"], rope["base"], rope["freq_scale"], ff),
                      13: self.be.dummy, 14: self.be.dummy})
            if "head_norm_eps" in at:  # q's and k's per-head norms first (fuse.py)
                b.update({13: self.buf(node.args[4]), 14: self.buf(node.args[5])})
                hn = {"HEAD_NORM": True, "HN_EPS": at["head_norm_eps"]}
        visible = min(at["window"], ring) if at["window"] else ring
        q8 = node.out.id in self.prequantized  # written as the output projection's x
        variant = "rope" if rope else None
        consts = {"NEOX": bool(rope["neox"]), **hn} if rope else {}
        if rows:
            consts["ROWS"] = True
        lim = self.be.limits
        wg = direct_attn_wg(g, d, lim["max-compute-workgroup-storage-size"],
                            lim["max-compute-invocations-per-workgroup"])
        direct = wg is not None and ATTN_DIRECT_MAX > 0 and (not rows or shapes.ROWS_FUSE)
        # steps that may see more positions take the split kernels (the "long" list)
        when = "long" if direct and visible > ATTN_DIRECT_MAX else None
        if direct:
            self._dispatch("attn_decode.wgsl", "kernel_attn_decode_direct_"
                           + ("q8" if q8 else "f32"),
                           {**b, (10 if q8 else 5): self.buf(node.out), **sk}, (1, nkv, z),
                           consts={"G": g, "D": d, "WG": wg, "VU": ATTN_DIRECT_VU,
                                   **consts, **has}, variant=variant,
                           when="short" if when else None)
            if when is None:  # never more than ATTN_DIRECT_MAX positions visible
                return
            self.attn_direct_max = ATTN_DIRECT_MAX
        # splits share the visible positions evenly at run time (attn_decode.wgsl), so a
        # short context too runs on n_kv_head * nsplit workgroups
        nsplit = max(1, min(ATTN_SPLITS_LONG if when else ATTN_SPLITS, visible // 8))
        split = {"G": g, "D": d, "NSPLIT": nsplit}
        part = self._buf(z * nh * nsplit * (d + 2) * 4, "STORAGE", "attention partials")
        self._dispatch("attn_decode.wgsl", "kernel_attn_decode_f32", {**b, 6: part},
                       (nsplit, nkv, z), consts={**split, **consts}, variant=variant, when=when)
        rargs = self._arg(("kargs_attn_reduce", {"n_rows": z, "n_head": nh, "head_dim": d,
                                                     "n_splits": nsplit}))
        if q8:
            self._dispatch("attn_decode.wgsl", "kernel_attn_reduce_q8",
                           {0: rargs, 10: self.buf(node.out), 6: part, **sk}, (nh, z),
                           consts={**split, **has}, when=when)
        else:
            self._dispatch("attn_decode.wgsl", "kernel_attn_reduce_f32",
                           {0: rargs, 5: self.buf(node.out), 6: part, **sk}, (nh, z),
                           consts={**split, **has}, when=when)

    def _op_attn_decode_rope(self, node: Node) -> None:
        self._op_attention(node)  # the decode path with the `rope` variant (args q, k, v, ff)
