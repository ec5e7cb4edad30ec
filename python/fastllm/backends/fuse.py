"""The fusion pass of the GPU backends: neighbouring graph nodes merged into one dispatch, since a
decode step on a GPU is bound by per-dispatch cost (benchmarks/NOTES.md). A pure function of the
node list, shared by WebGPU and Metal so that both run the same fused ops (`mul_mv_fused`,
`mul_mv_multi`, `mul_mm_glu`, `rope_kv_store`, and on WebGPU `attn_decode_rope`), lowered in
webgpu/program.py / webgpu/matmul.py and metal/lowering.py."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Node, Value


def reader_counts(nodes: list[Node], outputs: Iterable[Value]) -> dict[int, int]:
    """Value id -> how many nodes read it, a graph output counting as one more reader."""
    readers: dict[int, int] = {v.id: 1 for v in outputs}
    for node in nodes:
        for a in node.args:
            if isinstance(a, Value):
                readers[a.id] = readers.get(a.id, 0) + 1
    return readers


def _head_norms(out: list[Node], inner, d: int) -> None:
    """attn_decode_rope at out[-1] whose q and k come from per-head rms_norms (weights of head_dim
    values, the same eps) at out[-3] and out[-2], read by nothing else: those norms folded in."""
    at, nq, nk = out[-1], out[-3], out[-2]
    q, k = at.args[0], at.args[1]
    if (nq.op == nk.op == "rms_norm" and nq.out is q and nk.out is k and inner(q) and inner(k)
            and nq.args[1] is not None and nk.args[1] is not None
            and nq.attrs["group"] == nk.attrs["group"] == d
            and nq.attrs["eps"] == nk.attrs["eps"]):
        out[-3:] = [Node("attn_decode_rope", (nq.args[0], nk.args[0], *at.args[2:],
                                              nq.args[1], nk.args[1]),
                         {**at.attrs, "head_norm_eps": nq.attrs["eps"]}, at.out)]


def fuse(nodes: list[Node], outputs: Iterable[Value], mv_max_m: int,
         attn_rope: bool = True, rows: bool = False, rows_rope_kv: bool = False,
         moe_res: bool = False, head_norm: bool = False) -> list[Node]:
    """Neighbouring ops merged into one dispatch (a decode step is bound by per-dispatch
    cost, DESIGN.md principle 5). Only runs of consecutive nodes whose inner values nothing
    else reads, so the list stays in order and _plan sees the fused reads:
      swiglu(g, u) -> mul_mat            => mul_mv_fused (silu(g) * u computed on load)
      mul_mat (u) -> swiglu / geglu(g, u) => mul_mm_glu (act(g) * u on store; mat-mats only)
      mul_mat / mul_mv_fused -> add(x, .) => mul_mv_fused (+ x on store; mat-mats too)
      rope(q), rope(k), kv_store(k', v)  => rope_kv_store
      rope_kv_store -> attention, one row => attn_decode_rope (rotations and the store inside
        (or rows mode, rows_rope_kv)        decode attention)
      rms_norm(q), rms_norm(k) per head -> attn_decode_rope, head_norm
                                         => attn_decode_rope (q, k, v, ff, q's and k's
                                            norm weights): the norms in its prologue
      moe_sum -> add(x, .), moe_res      => moe_sum (y, weights, x): + x on store
      rms_norm(x, nw) -> mul_mat, ...     => mul_mv_fused (norm: each workgroup reduces x;
                                            one token row, every reader a mul_mat), or for
                                            2-3 readers (q, k, v; gate, up) one mul_mv_multi
    Other mat-mul fusions only where mul_mat would use the mat-vec kernel (M <= mv_max_m);
    attn_decode_rope only where the backend has it (attn_rope). A rows-mode graph (Graph.rows,
    each row its own sequence) keeps rope, kv_store and attention apart: the fused kernels
    assume one sequence's consecutive positions (rows_rope_kv: the backend's rope_kv_store and
    attn_decode_rope read each row's own slot and position, so those are made); nor does it
    fold an activation into a mat-mat's epilogue (a batched step's products are integer
    mat-vecs over several rows where the weights allow, which have no such epilogue)."""
    outputs = list(outputs)
    readers = reader_counts(nodes, outputs)

    def inner(v: Value | None) -> bool:  # read once, and not a graph output
        return v is not None and readers.get(v.id, 0) == 1

    mm_of: dict[int, int] = {}  # value id -> how many mul_mat nodes read it as x
    for node in nodes:
        if node.op == "mul_mat":
            mm_of[node.args[0].id] = mm_of.get(node.args[0].id, 0) + 1
    folded: dict[int, Node] = {}  # rms_norm outputs computed inside their readers
    for node in nodes:
        if (node.op == "rms_norm" and node.args[1] is not None and node.out.shape[0] == 1
                and node.attrs["group"] == node.out.cols and node.out.cols % 4 == 0
                and node.out.id not in {v.id for v in outputs}
                and mm_of.get(node.out.id, 0) == readers.get(node.out.id, 0) > 0):
            folded[node.out.id] = node

    # the readers of each folded norm, in order, in runs of up to three: one mul_mv_multi each
    runs: dict[int, list[Node]] = {}
    for node in nodes:
        if node.op == "mul_mat" and node.args[0].id in folded:
            runs.setdefault(node.args[0].id, []).append(node)
    chunk_of: dict[int, list[Node]] = {}
    for group in runs.values():
        for i in range(0, len(group), 3):
            for n in group[i:i + 3]:
                chunk_of[id(n)] = group[i:i + 3]

    out: list[Node] = []
    for node in nodes:
        if node.op == "rms_norm" and node.out.id in folded:
            continue
        if node.op == "mul_mat" and node.args[0].id in folded:
            nrm = folded[node.args[0].id]
            chunk = chunk_of[id(node)]
            if len(chunk) > 1:
                # emitted where its first mul_mat was: the others' inputs (the norm's input and
                # weight) exist there already
                if node is chunk[0]:
                    out.append(Node("mul_mv_multi",
                                    (nrm.args[0], nrm.args[1], *(n.args[1] for n in chunk)),
                                    {"eps": nrm.attrs["eps"],
                                     "also_out": [n.out for n in chunk[1:]]}, node.out))
                continue
            out.append(Node("mul_mv_fused", (nrm.args[0], node.args[1], None, None,
                                             nrm.args[1]),
                            {"glu": False, "eps": nrm.attrs["eps"]}, node.out))
            continue
        prev = out[-1] if out else None
        if (not rows and node.op in ("swiglu", "geglu") and prev is not None
                and prev.op == "mul_mat"
                and node.args[1] is prev.out and node.args[0] is not prev.out
                and inner(prev.out) and prev.args[0].shape[0] > mv_max_m):
            out[-1] = Node("mul_mm_glu", (*prev.args, node.args[0]), {"act": node.op},
                           node.out)
            continue
        if (node.op == "mul_mat" and prev is not None and prev.op == "swiglu"
                and node.args[0] is prev.out and inner(prev.out)
                and node.args[0].shape[0] <= mv_max_m and node.args[0].cols % 4 == 0):
            g, u = prev.args
            out[-1] = Node("mul_mv_fused", (g, node.args[1], u, None, None), {"glu": True},
                           node.out)
            continue
        # (a mat-mat of more rows adds the residual as its results leave too)
        if (node.op == "add" and prev is not None and prev.op in ("mul_mat", "mul_mv_fused")
                and inner(prev.out)
                and (prev.op == "mul_mat" or (prev.args[4] is None
                                               and prev.args[0].shape[0] <= mv_max_m))):
            a, b = node.args
            res = a if b is prev.out else b if a is prev.out else None
            if (isinstance(res, Value) and res is not prev.out and res.shape == node.out.shape
                    and prev.out.shape == node.out.shape):
                x, w = prev.args[0], prev.args[1]
                up = prev.args[2] if prev.op == "mul_mv_fused" else None
                out[-1] = Node("mul_mv_fused", (x, w, up, res, None),
                               {"glu": prev.attrs.get("glu", False)}, node.out)
                continue
        if (moe_res and node.op == "add" and prev is not None and prev.op == "moe_sum"
                and len(prev.args) == 2 and inner(prev.out)):
            a, b = node.args
            res = a if b is prev.out else b if a is prev.out else None
            if (isinstance(res, Value) and res is not prev.out
                    and res.shape == node.out.shape == prev.out.shape):
                out[-1] = Node("moe_sum", (*prev.args, res), prev.attrs, node.out)
                continue
        if ((not rows or rows_rope_kv) and node.op == "kv_store" and len(out) >= 2
                and out[-1].op == "rope" and out[-2].op == "rope" and node.args[0] is out[-1].out
                and inner(out[-1].out) and node.args[1] not in (out[-2].out, out[-1].out)):
            rq, rk = out[-2], out[-1]
            same = ("head_dim", "n_rot", "base", "freq_scale", "neox")
            if (rq.args[1] is rk.args[1] and rk.args[0] is not rq.out
                    and all(rq.attrs[a] == rk.attrs[a] for a in same)):
                out[-2:] = [Node("rope_kv_store", (rq.args[0], rk.args[0], node.args[1],
                                                   rq.args[1]),
                                 {**rq.attrs, "k_n_head": rk.attrs["n_head"],
                                  "layer": node.attrs["layer"]}, rq.out)]
                continue
        if (attn_rope and (not rows or rows_rope_kv) and node.op == "attention" and out
                and out[-1].op == "rope_kv_store" and node.args[0] is out[-1].out
                and inner(out[-1].out) and (node.out.shape[0] == 1 or rows)
                and out[-1].attrs["layer"] == node.attrs["layer"]):
            rk = out[-1]
            d = node.attrs["head_dim"]
            if (rk.attrs["n_rot"] == d == rk.attrs["head_dim"] and d % 8 == 0
                    and rk.attrs["n_head"] == node.attrs["n_head"]
                    and rk.attrs["k_n_head"] == node.attrs["n_kv_head"]):
                out[-1] = Node("attn_decode_rope", rk.args, {**node.attrs, "rope": rk.attrs},
                               node.out)
                if head_norm and len(out) >= 3:
                    _head_norms(out, inner, d)
                continue
        out.append(node)
    return out
