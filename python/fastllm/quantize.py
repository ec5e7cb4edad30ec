"""Requantize a GGUF model: the per-tensor type choices of llama.cpp's llama-quantize (its
src/llama-quant.cpp, without an importance matrix), with the NumPy quantizers of fastllm.quants.

`quantize_file(src, dst, "Q4_K_M")` writes a new GGUF with every metadata key of the source
(general.file_type and general.quantization_version set anew, split.* keys dropped) and every
tensor converted to the type `plan_types` picks for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import UnsupportedError
from .gguf import open_gguf
from .quants import GGMLType, check_supported, dequantize, quantize, row_bytes, type_size

T = GGMLType

# name -> (default tensor type, general.file_type value, recipe). File type values are llama.h's
# enum llama_ftype. "llama" recipes follow llama_tensor_get_type; "pure" ones give every
# quantizable tensor the one type (llama-quantize --pure). The bare K-type names are not
# llama.cpp ftypes (its Q2_K/Q3_K_* recipes mix types): they are pure, labelled with the file type
# of the closest llama.cpp mix.
FTYPES: dict[str, tuple[GGMLType, int, str]] = {
    "F32": (T.F32, 0, "llama"),
    "F16": (T.F16, 1, "llama"),
    "BF16": (T.BF16, 32, "llama"),
    "Q8_0": (T.Q8_0, 7, "llama"),
    "Q4_0": (T.Q4_0, 2, "llama"),
    "Q4_1": (T.Q4_1, 3, "llama"),
    "Q5_0": (T.Q5_0, 8, "llama"),
    "Q5_1": (T.Q5_1, 9, "llama"),
    "Q6_K": (T.Q6_K, 18, "llama"),
    "Q4_K_S": (T.Q4_K, 14, "llama"),
    "Q4_K_M": (T.Q4_K, 15, "llama"),
    "Q5_K_S": (T.Q5_K, 16, "llama"),
    "Q5_K_M": (T.Q5_K, 17, "llama"),
    "Q2_K": (T.Q2_K, 10, "pure"),
    "Q3_K": (T.Q3_K, 11, "pure"),
    "Q4_K": (T.Q4_K, 14, "pure"),
    "Q5_K": (T.Q5_K, 16, "pure"),
    # expert tensors (3-D, more than one expert) in MXFP4, the other quantizable ones in Q8_0
    "MXFP4_MOE": (T.MXFP4, 38, "mxfp4_moe"),
}

GGML_QNT_VERSION = 2  # ggml.h; written as general.quantization_version

# Name fragments of 2-D weights llama.cpp never quantizes (tensor_allows_quantization).
_KEEP_FRAGMENTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
)
_KEEP_NAMES = ("position_embd.weight", "token_types.weight")

# llama.cpp's tensor_type_fallback: the type used when a row is not a whole number of blocks
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
_FLOAT_TYPES = (T.F32, T.F16, T.BF16)
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def _category(name: str) -> str:
    """llama.cpp's tensor_get_category, by name."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for frag, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                      ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                      ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if frag in name:
            return cat
    return "other"


_ATTN_V_LIKE = ("attn_v", "attn_qkv", "attn_kv_b")


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 (ggml order) do not count."""
    ne = list(reversed(shape))
    return max([i + 1 for i, n in enumerate(ne) if n > 1], default=1)


def _allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    if _n_dims(shape) < 2 or not name.endswith("weight") or name in _KEEP_NAMES:
        return False
    return not any(f in name for f in _KEEP_FRAGMENTS)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # the first and last eighth of the layers, and every third layer in between
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def _layer_order(name: str) -> tuple[int, str]:
    """llama.cpp visits tensors sorted by layer number, then name (weight_name_comparer), and
    its attn_v/ffn_down counters count in that order."""
    m = _LAYER_RE.match(name)
    return (int(m.group(1)) if m else -1, name)


def plan_types(src: Any, ftype: str, *, pure: bool = False) -> dict[str, GGMLType]:
    """The type each tensor of an open GGUFFile gets under ftype, in the file's tensor order.
    `pure` skips the mix rules (as llama-quantize --pure); row-length fallbacks still apply."""
    key = ftype.upper()
    if key not in FTYPES:
        raise UnsupportedError(f"unknown quantization type {ftype!r} (fastllm writes "
                               f"{', '.join(FTYPES)})")
    default, _, recipe = FTYPES[key]
    pure = pure or recipe == "pure"
    meta = src.metadata
    arch = str(meta.get("general.architecture", ""))
    n_layer = int(meta.get(f"{arch}.block_count", 0) or 0)
    n_expert = int(meta.get(f"{arch}.expert_count", 0) or 0)
    names = list(src.tensors)
    tied = "output.weight" not in src.tensors
    n_attn_v = sum(_category(n) in _ATTN_V_LIKE for n in names)
    i_attn_v = i_ffn_down = 0
    blk = type_size(default)[0]

    def mix(name: str, cat: str, shape: tuple[int, ...]) -> GGMLType:
        nonlocal i_attn_v, i_ffn_down
        new = default
        ne0 = shape[-1]
        if recipe == "mxfp4_moe":
            # llama_tensor_get_type_impl: the output (or the embedding it shares) in Q8_0, then
            # tensors with ne[2] > 1 (the experts' stacked matrices) MXFP4, the rest Q8_0
            if cat == "output" or (tied and cat == "token_embd"):
                return T.Q8_0
            return T.MXFP4 if len(shape) >= 3 and shape[-3] > 1 else T.Q8_0
        if cat == "output" or (tied and cat == "token_embd"):
            # the output projection (or the embedding it shares) gets more bits
            if arch == "falcon" or ne0 % blk:
                new = T.Q8_0
            elif new != T.Q8_0:
                new = T.Q6_K
        elif cat == "token_embd":
            pass  # only the IQ/TQ mixes, which fastllm does not write, change it
        elif cat in _ATTN_V_LIKE:
            if key in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attn_v, n_attn_v):
                new = T.Q6_K
            elif key == "Q4_K_S" and i_attn_v < 4:
                new = T.Q5_K
            if n_expert == 8:
                new = T.Q8_0
            i_attn_v += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = T.Q8_0
        elif cat == "ffn_down":
            i_layer = i_ffn_down
            if n_expert > 1:
                # expert tensors are not one per layer: llama.cpp reads the layer from the name
                m = _LAYER_RE.match(name)
                i_layer = int(m.group(1)) if m else i_layer
            if key == "Q4_K_M":
                if arch == "falcon":
                    new = (T.Q6_K if i_layer < n_layer // 16
                           else T.Q5_K if _use_more_bits(i_layer, n_layer) else T.Q4_K)
                elif _use_more_bits(i_layer, n_layer):
                    new = T.Q6_K
            elif key == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
                new = T.Q6_K
            elif key == "Q4_K_S" and arch != "falcon" and i_layer < n_layer // 8:
                new = T.Q5_K
            i_ffn_down += 1
        elif (cat == "attn_output" and arch != "falcon" and n_expert == 8
              and key in ("Q4_K_S", "Q4_K_M")):
            new = T.Q5_K
        return new

    plan: dict[str, GGMLType] = {}
    for name in sorted(names, key=_layer_order):
        info = src.tensors[name]
        if not _allows_quantization(name, info.shape):
            plan[name] = info.type
            continue
        if default in _FLOAT_TYPES:
            plan[name] = default
            continue
        ne0 = info.shape[-1]
        new = default if pure else mix(name, _category(name), tuple(info.shape))
        if ne0 % type_size(new)[0]:
            new = _FALLBACK.get(new, new)
            if ne0 % type_size(new)[0]:
                new = T.F16  # llama.cpp's last resort for rows not a multiple of 32
        plan[name] = new
    return {name: plan[name] for name in names}


# GGUF value type ids (gguf spec)
_STRING, _ARRAY = 8, 9


def _copy_metadata(writer: Any, src: Any, file_type: int) -> None:
    """Copy every key/value of the source (an open GGUFFile) with its exact GGUF value type."""
    from gguf import GGUFValueType

    done = set()
    for key, val in src.metadata.items():
        vtype, sub = src.value_types[key]
        if isinstance(val, np.ndarray):
            val = val.tolist()
        if key.startswith("split.") or key == "general.architecture":
            continue  # one output file; the writer sets the architecture itself
        if key == "general.file_type":
            vtype, val = GGUFValueType.UINT32, file_type
        elif key == "general.quantization_version":
            vtype, val = GGUFValueType.UINT32, GGML_QNT_VERSION
        elif vtype == _ARRAY and (not val or sub == _ARRAY):
            continue  # GGUFWriter cannot write empty or nested arrays (no known model has any)
        elif key == "general.alignment":
            writer.data_alignment = int(val)
        writer.add_key_value(key, val, GGUFValueType(vtype),
                             sub_type=None if sub is None else GGUFValueType(sub))
        done.add(key)
    if "general.file_type" not in done:
        writer.add_key_value("general.file_type", file_type, GGUFValueType.UINT32)
    if "general.quantization_version" not in done:
        writer.add_key_value("general.quantization_version", GGML_QNT_VERSION,
                             GGUFValueType.UINT32)


# rows converted at a time: bounds the float32 copy of a large tensor (an embedding table)
_CHUNK_ELEMS = 1 << 24


def _converted(info: Any, target: GGMLType, path: str):
    """Yield the bytes of a tensor converted to target, a block of rows at a time."""
    if target == info.type:
        yield np.asarray(info.data).reshape(-1)
        return
    check_supported(info.type, info.name, path)
    ne0 = info.shape[-1]
    n_rows = info.n_elements // ne0
    src_rb = row_bytes(info.type, ne0)
    raw = np.asarray(info.data).reshape(n_rows, src_rb)
    step = max(1, _CHUNK_ELEMS // ne0)
    for r in range(0, n_rows, step):
        chunk = raw[r:r + step]
        x = dequantize(chunk, info.type, (chunk.shape[0], ne0), name=info.name)
        yield quantize(x, target, name=info.name).reshape(-1)


def quantize_file(src_path: str | os.PathLike, dst_path: str | os.PathLike, ftype: str, *,
                  pure: bool = False,
                  progress: Callable[[str, GGMLType, int, int], None] | None = None,
                  ) -> dict[str, GGMLType]:
    """Write src's model to dst_path with its tensors requantized for ftype (see FTYPES; e.g.
    "Q4_K_M", "Q8_0", "F16"). Returns the type chosen for each tensor. `progress`, if given, is
    called as progress(tensor_name, type, index, count) before each tensor is written. The
    output appears at dst_path only once it is complete."""
    from gguf import GGMLQuantizationType, GGUFWriter

    src = open_gguf(src_path, check_types=False)
    plan = plan_types(src, ftype, pure=pure)
    _, file_type, _ = FTYPES[ftype.upper()]
    for name, target in plan.items():
        info = src.tensors[name]
        if target != info.type:
            check_supported(info.type, name, src.path)  # fail before writing anything

    dst = os.fspath(dst_path)
    tmp = dst + ".part"
    arch = str(src.metadata.get("general.architecture", "llama"))
    writer = GGUFWriter(tmp, arch)
    try:
        _copy_metadata(writer, src, file_type)
        for name, target in plan.items():
            info = src.tensors[name]
            rb = row_bytes(target, info.shape[-1])
            n_rows = info.n_elements // info.shape[-1]
            writer.add_tensor_info(name, (*info.shape[:-1], rb), np.dtype(np.uint8),
                                   n_rows * rb, raw_dtype=GGMLQuantizationType(int(target)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        align = writer.data_alignment
        # data section layout as GGUFWriter writes it: each tensor starts on an aligned offset
        fout.write(b"\0" * (-fout.tell() % align))
        for i, (name, target) in enumerate(plan.items()):
            if progress is not None:
                progress(name, target, i, len(plan))
            n = 0
            for part in _converted(src.tensors[name], target, src.path):
                part.tofile(fout)
                n += part.size
            fout.write(b"\0" * (-n % align))
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return plan
