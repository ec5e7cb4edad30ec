"""The attention-side ops of the Metal lowering, as a mixin of MetalLowering: rope
(metal/rope.metal), the KV cache store alone or with rope (rope.metal's kernel_rope_kv_store) and
attention itself (metal/attention.metal: prefill tiles of query rows; decode and rows mode split
over the visible cache positions, then reduced). In rows mode (Graph.rows) each row has its own
slot and position (metal/rows.metal)."""

from __future__ import annotations

from ...errors import BackendError, UnsupportedError
from .plan import KV_TYPES, Ref, _threads

ATTN_MAX_D = 256  # attention: largest head_dim
AP_Q = 8  # attention prefill: query rows per threadgroup
ATTN_SPLIT = 256  # decode attention: cache positions per split at full context
ATTN_MAX_SPLITS = 32


class AttentionLowering:
    """`_rope`, `_kv_store`, `_rope_kv_store`, `_attention` for MetalLowering (its _emit, _ref,
    _step, _vec, _scratch, _free, kv, kv_type and rows)."""

    def _rope(self, node) -> None:
        x, ff = node.args
        at = node.attrs
        hd = at["head_dim"]
        tp = _threads(hd // 2, 64)
        # rows mode: each row at its own position (rows.metal)
        self._emit("kernel_rope_rows_f32" if self.rows else "kernel_rope_f32",
                   [self.rows or self._step(), self._ref(x),
                    self._ref(ff if ff is not None else x), self._ref(node.out)],
                   (-(-(hd // 2) // tp), at["n_head"], x.shape[0]), tp, (3,),
                   "kargs_rope", n_rows=x.shape[0], n_head=at["n_head"], head_dim=hd,
                   n_rot=at["n_rot"], base=at["base"], freq_scale=at["freq_scale"],
                   neox=int(at["neox"]), has_freq_factors=int(ff is not None))

    def _cache(self, layer: int) -> tuple[Ref, Ref, int, int]:
        if self.kv is None:
            raise BackendError("metal: the KV cache is not initialised (call init_kv first)")
        ring, dim = self.kv.sizes[layer], self.kv.kv_dim[layer]
        # every slot's rows: the kernels add the slot's base (step.slot, or the row's slot)
        nb = self.kv.n_seq * ring * dim * KV_TYPES[self.kv_type]
        return Ref("k", 0, nb, layer), Ref("v", 0, nb, layer), ring, dim

    def _kv_store(self, node) -> None:
        k, v = node.args
        kc, vc, ring, dim = self._cache(node.attrs["layer"])
        rows = k.shape[0]
        tp = _threads(dim)
        # rows mode: each row into its own slot, at its own position (rows.metal)
        self._emit(f"kernel_kv_store_rows_{self.kv_type}" if self.rows
                   else f"kernel_kv_store_{self.kv_type}",
                   [self.rows or self._step(), self._ref(k), self._ref(v), kc, vc],
                   (-(-dim // tp), rows), tp, (),
                   "kargs_kv_store", n_rows=rows, kv_dim=dim, ring=ring)

    def _rope_kv_store(self, node) -> None:
        q, k, v, ff = node.args
        at = node.attrs
        kc, vc, ring, dim = self._cache(at["layer"])
        hd = at["head_dim"]
        if k.cols != dim or v.cols != dim or at["k_n_head"] * hd != dim:
            raise UnsupportedError(f"metal: kv_store of {k.cols} values into a cache of {dim}")
        tp = _threads(hd // 2, 64)
        rows = q.shape[0]
        self._emit(f"kernel_rope_kv_store_{self.kv_type}",
                   [self._step(), self._ref(q), self._ref(k), self._ref(v),
                    self._ref(ff if ff is not None else q), self._ref(node.out), kc, vc],
                   (-(-(hd // 2) // tp), at["n_head"] + at["k_n_head"], rows), tp, (5,),
                   "kargs_rope_kv_store", n_rows=rows, n_head=at["n_head"],
                   k_n_head=at["k_n_head"], head_dim=hd, n_rot=at["n_rot"], base=at["base"],
                   freq_scale=at["freq_scale"], neox=int(at["neox"]),
                   has_freq_factors=int(ff is not None), kv_dim=dim, ring=ring)

    def _attention(self, node) -> None:
        (q,) = node.args
        at = node.attrs
        d, nh = at["head_dim"], at["n_head"]
        if d % 8 or d > ATTN_MAX_D or nh % at["n_kv_head"]:
            raise UnsupportedError(f"metal: attention with head_dim {d} (needs a multiple of 8 "
                                   f"up to {ATTN_MAX_D}) and {nh}/{at['n_kv_head']} heads")
        kc, vc, ring, _ = self._cache(at["layer"])
        rows = q.shape[0]
        sinks = at.get("sinks")
        sk = self._vec(sinks, q)  # gpt-oss's sink logits (q's buffer, never read, without)
        f = {"n_rows": rows, "n_head": nh, "n_kv_head": at["n_kv_head"], "head_dim": d,
             "scale": at["scale"], "softcap": at["softcap"], "window": at["window"], "ring": ring,
             "has_sinks": int(sinks is not None)}
        if rows >= AP_Q and not self.rows:
            self._emit(f"kernel_attn_prefill_{self.kv_type}",
                       [self._step(), self._ref(q), kc, vc, self._ref(node.out), sk],
                       (-(-rows // AP_Q), nh), 32, (4,), "kargs_attention", **f)
            return
        # split the visible positions so that a long context still fills the GPU; in rows
        # mode (rows.metal) each row over its own slot's cache, at its own position
        visible = min(self.kv.n_ctx, at["window"] or self.kv.n_ctx)
        ns = max(1, min(ATTN_MAX_SPLITS, -(-visible // ATTN_SPLIT)))
        nb = rows * nh * ns * (d + 2) * 4
        part = self._scratch(nb)
        kind = "rows" if self.rows else "decode"
        self._emit(f"kernel_attn_{kind}_{self.kv_type}",
                   [self.rows or self._step(), self._ref(q), kc, vc, part],
                   (ns, nh, rows), 32, (4,), "kargs_attention", **f)
        self._emit("kernel_attn_reduce_f32", [part, self._ref(node.out), sk], (nh, rows), 32,
                   (1,), "kargs_attn_reduce", n_rows=rows, n_head=nh, head_dim=d, n_splits=ns,
                   has_sinks=f["has_sinks"])
        self._free(part)

