"""Convert an rwkv.cpp model file (RWKV-6 or RWKV-7) to GGUF.

rwkv.cpp's format (its docs/FILE_FORMAT.md): a header of six int32 (magic 0x67676d66 "ggmf",
version 100 or 101, n_vocab, n_embed, n_layer, data type), then tensors until the end of the
file, each int32 dim_count, key_length, data_type, dim_count sizes (ggml order, contiguous
dimension first), the UTF-8 name and the data. Quantized blocks are ggml's, the same bytes GGUF
holds, so every tensor is copied as it is; only vector shapes are flattened and RWKV-6's five
token-mix vectors stacked.

The GGUF gets the metadata keys, tensor names and layouts of llama.cpp's converter
(convert_hf_to_gguf.py, conversion/rwkv.py: Rwkv6Model and Rwkv7Model), so llama.cpp reads it
too. The vocabulary: rwkv.cpp files carry none; a 256-token model (rwkv.cpp's tiny test models)
gets the byte-level vocabulary (token i = byte i), a world model needs `vocab=` the
rwkv_vocab_v20230424.txt that comes with it.

    python -m fastllm.convert_rwkv IN.bin OUT.gguf [--vocab rwkv_vocab_v20230424.txt]
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import GGUFError, UnsupportedError
from .quants import GGMLType, row_bytes, type_size
from .tokenizer.rwkv import escape_token

MAGIC = 0x67676D66
# rwkv.cpp data type ids (rwkv_file_format.inc, enum rwkv_type) -> ggml types; 4-6 are removed
# formats, 10 (Q8_1) and 16 (Q8_K) are not weight types
RWKV_TYPES = {0: GGMLType.F32, 1: GGMLType.F16, 2: GGMLType.Q4_0, 3: GGMLType.Q4_1,
              7: GGMLType.Q5_0, 8: GGMLType.Q5_1, 9: GGMLType.Q8_0, 11: GGMLType.Q2_K,
              12: GGMLType.Q3_K, 13: GGMLType.Q4_K, 14: GGMLType.Q5_K, 15: GGMLType.Q6_K}
# general.file_type (llama.h enum llama_ftype) for the header's data type
FILE_TYPES = {0: 0, 1: 1, 2: 2, 3: 3, 7: 8, 8: 9, 9: 7, 11: 10, 12: 12, 13: 15, 14: 17, 15: 18}


@dataclass(frozen=True)
class RawTensor:
    """One tensor of an rwkv.cpp file: ggml type, shape in ggml order (ne0 first), raw bytes."""

    name: str
    type: GGMLType
    ne: tuple[int, ...]
    data: np.ndarray  # uint8 view of the mapped file

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    def array(self) -> np.ndarray:
        """The data as a GGUFWriter-ready array in numpy order: float32/float16 values, or for a
        quantized type uint8 rows of ne0's blocks."""
        shape = tuple(reversed(self.ne))
        if self.type == GGMLType.F32:
            return self.data.view(np.float32).reshape(shape)
        if self.type == GGMLType.F16:
            return self.data.view(np.float16).reshape(shape)
        return self.data.reshape(*shape[:-1], row_bytes(self.type, self.ne[0]))

    def vector(self) -> np.ndarray:
        """A float tensor's values as a 1-D float32/float16 array."""
        if self.type not in (GGMLType.F32, GGMLType.F16):
            raise UnsupportedError(f"tensor {self.name!r} is {self.type.name}; vectors must be "
                                   f"F32 or F16")
        return self.array().reshape(-1)


@dataclass
class RwkvCppFile:
    path: str
    version: int
    n_vocab: int
    n_embd: int
    n_layer: int
    data_type: int
    tensors: dict[str, RawTensor]

    @property
    def arch_version(self) -> int:
        """7 or 6 (rwkv.cpp's own detection, rwkv_model_loading.inc); older ones are refused."""
        if "blocks.0.att.r_k" in self.tensors:
            return 7
        if "blocks.0.att.time_maa_x" in self.tensors:
            return 6
        v = "5" if "blocks.0.att.ln_x.weight" in self.tensors else "4"
        raise UnsupportedError(f"{self.path}: an RWKV v{v} model; fastllm (like llama.cpp) runs "
                               f"RWKV-6 and RWKV-7")

    def get(self, name: str) -> RawTensor:
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: missing tensor {name!r}")
        return self.tensors[name]


def read_rwkv_cpp(path: str | os.PathLike) -> RwkvCppFile:
    """Parse an rwkv.cpp model file; tensor data stays in a read-only memory map."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 24:
        raise GGUFError(f"{path}: {size} bytes, too short for an rwkv.cpp header")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    magic, version, n_vocab, n_embd, n_layer, data_type = (
        int(x) for x in np.frombuffer(mm, "<i4", 6, 0))
    if magic != MAGIC:
        raise GGUFError(f"{path}: not an rwkv.cpp model (magic 0x{magic & 0xFFFFFFFF:08x}, "
                        f"expected 0x{MAGIC:08x} 'ggmf')")
    if version not in (100, 101):
        raise UnsupportedError(f"{path}: rwkv.cpp file version {version} (fastllm reads 100 "
                               f"and 101)")
    if data_type not in RWKV_TYPES:
        raise UnsupportedError(f"{path}: rwkv.cpp data type {data_type} is not supported")
    if min(n_vocab, n_embd, n_layer) <= 0:
        raise GGUFError(f"{path}: bad header (n_vocab {n_vocab}, n_embed {n_embd}, "
                        f"n_layer {n_layer})")
    tensors: dict[str, RawTensor] = {}
    pos = 24
    while pos < size:
        if pos + 12 > size:
            raise GGUFError(f"{path}: truncated tensor header at offset {pos}")
        n_dims, key_len, ttype = (int(x) for x in np.frombuffer(mm, "<i4", 3, pos))
        pos += 12
        if not 1 <= n_dims <= 3 or not 0 < key_len <= 1024 or pos + 4 * n_dims > size:
            raise GGUFError(f"{path}: bad tensor header at offset {pos - 12} (dims {n_dims}, "
                            f"name length {key_len})")
        ne = tuple(int(x) for x in np.frombuffer(mm, "<i4", n_dims, pos))
        pos += 4 * n_dims
        if pos + key_len > size:
            raise GGUFError(f"{path}: truncated tensor name at offset {pos}")
        try:
            name = bytes(mm[pos:pos + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{path}: tensor name at offset {pos} is not UTF-8") from None
        pos += key_len
        if ttype not in RWKV_TYPES:
            raise UnsupportedError(f"{path}: tensor {name!r} has rwkv.cpp data type {ttype}, "
                                   f"which fastllm does not read")
        gtype = RWKV_TYPES[ttype]
        if gtype not in (GGMLType.F32, GGMLType.F16) and version != 101:
            raise UnsupportedError(f"{path}: quantized tensors of file version {version} use "
                                   f"ggml's old block layouts; requantize with a current "
                                   f"rwkv.cpp")
        blk, bsz = type_size(gtype)
        if any(d <= 0 for d in ne) or ne[0] % blk:
            raise GGUFError(f"{path}: tensor {name!r} has a bad shape {ne} for {gtype.name}")
        nbytes = int(np.prod(ne, dtype=np.int64)) // blk * bsz
        if pos + nbytes > size:
            raise GGUFError(f"{path}: tensor {name!r} data ends at byte {pos + nbytes}, past the "
                            f"end of the file ({size} bytes): truncated file?")
        if name in tensors:
            raise GGUFError(f"{path}: duplicate tensor {name!r}")
        tensors[name] = RawTensor(name, gtype, ne, mm[pos:pos + nbytes])
        pos += nbytes
    f = RwkvCppFile(path, version, n_vocab, n_embd, n_layer, data_type, tensors)
    emb = f.get("emb.weight")
    if emb.ne != (n_embd, n_vocab):
        raise GGUFError(f"{path}: emb.weight has shape {emb.ne}, the header says "
                        f"({n_embd}, {n_vocab})")
    if f"blocks.{n_layer - 1}.ln1.weight" not in tensors or f"blocks.{n_layer}.ln1.weight" in \
            tensors:
        raise GGUFError(f"{path}: the header's n_layer {n_layer} does not match the tensors")
    return f


# -- tensor mapping: GGUF name -> a tensor copied as it is, or a float array built from vectors,
# in llama.cpp's names and layouts ----------------------------------------------------------

def _common_tensors(f: RwkvCppFile) -> dict[str, RawTensor | np.ndarray]:
    out: dict[str, RawTensor | np.ndarray] = {
        "token_embd.weight": f.get("emb.weight"),
        "token_embd_norm.weight": f.get("blocks.0.ln0.weight").vector(),  # rwkv.cpp's ln0
        "token_embd_norm.bias": f.get("blocks.0.ln0.bias").vector(),
        "output_norm.weight": f.get("ln_out.weight").vector(),
        "output_norm.bias": f.get("ln_out.bias").vector(),
        "output.weight": f.get("head.weight")}
    for i in range(f.n_layer):
        for src, dst in (("ln1", "attn_norm"), ("ln2", "attn_norm_2")):
            for part in ("weight", "bias"):
                out[f"blk.{i}.{dst}.{part}"] = f.get(f"blocks.{i}.{src}.{part}").vector()
    return out


def _rwkv7_tensors(f: RwkvCppFile) -> dict[str, RawTensor | np.ndarray]:
    out = _common_tensors(f)
    for i in range(f.n_layer):
        b, p = f"blocks.{i}.", f"blk.{i}."

        def t(name: str, b: str = b) -> RawTensor:
            return f.get(b + name)

        # rwkv.cpp already transposed the LoRA matrices as llama.cpp's converter does
        for x in ("w", "a", "v", "g"):
            if x == "v" and i == 0:
                continue
            if x == "g" and b + "att.g1" not in f.tensors:
                continue  # a model without the output gate
            out[f"{p}time_mix_{x}1.weight"] = t(f"att.{x}1")
            out[f"{p}time_mix_{x}2.weight"] = t(f"att.{x}2")
            if x != "g":
                out[f"{p}time_mix_{x}0.weight"] = t(f"att.{x}0").vector()
        if i == 0:
            # llama.cpp requires v0/v1/v2 in layer 0 but never reads them; its converter
            # writes the a-LoRA there ("easiest way to make llama happy")
            for j in range(3):
                out[f"{p}time_mix_v{j}.weight"] = out[f"{p}time_mix_a{j}.weight"]
        # att.x_rwkvag: the six mix vectors r, w, k, v, a, g, as llama.cpp's (6, 1, 1, C)
        out[p + "time_mix_lerp_fused.weight"] = t("att.x_rwkvag").vector().reshape(
            -1, 1, 1, f.n_embd)
        for src in ("k_k", "k_a", "r_k"):  # r_k: rwkv.cpp (S, H) -> llama.cpp flat {H * S}
            out[f"{p}time_mix_{src}.weight"] = t("att." + src).vector()
        for src in ("key", "value", "receptance", "output"):
            out[f"{p}time_mix_{src}.weight"] = t(f"att.{src}.weight")
        out[p + "time_mix_ln.weight"] = t("att.ln_x.weight").vector()
        out[p + "time_mix_ln.bias"] = t("att.ln_x.bias").vector()
        out[p + "channel_mix_lerp_k.weight"] = t("ffn.x_k").vector()
        out[p + "channel_mix_key.weight"] = t("ffn.key.weight")
        out[p + "channel_mix_value.weight"] = t("ffn.value.weight")
    return out


def _rwkv6_tensors(f: RwkvCppFile) -> dict[str, RawTensor | np.ndarray]:
    out = _common_tensors(f)
    for i in range(f.n_layer):
        b, p = f"blocks.{i}.", f"blk.{i}."

        def t(name: str, b: str = b) -> RawTensor:
            return f.get(b + name)

        out[p + "time_mix_lerp_x.weight"] = t("att.time_maa_x").vector()
        # llama.cpp fuses the five data-dependent mixes in the order w, k, v, r, g: (5, 1, 1, C)
        out[p + "time_mix_lerp_fused.weight"] = np.stack(
            [t(f"att.time_maa_{m}").vector() for m in "wkvrg"]).reshape(5, 1, 1, f.n_embd)
        # time_maa_w1 (C, 5D) and time_maa_w2 (D, C, 5) in ggml order: llama.cpp's layouts
        out[p + "time_mix_w1.weight"] = t("att.time_maa_w1")
        out[p + "time_mix_w2.weight"] = t("att.time_maa_w2")
        faaaa = t("att.time_faaaa")  # rwkv.cpp (1, S, H) -> llama.cpp {S, H}
        out[p + "time_mix_first.weight"] = faaaa.vector().reshape(faaaa.ne[-1], -1)
        out[p + "time_mix_decay.weight"] = t("att.time_decay").vector()
        out[p + "time_mix_decay_w1.weight"] = t("att.time_decay_w1")
        out[p + "time_mix_decay_w2.weight"] = t("att.time_decay_w2")
        for src in ("key", "value", "receptance", "gate", "output"):
            out[f"{p}time_mix_{src}.weight"] = t(f"att.{src}.weight")
        out[p + "time_mix_ln.weight"] = t("att.ln_x.weight").vector()
        out[p + "time_mix_ln.bias"] = t("att.ln_x.bias").vector()
        out[p + "channel_mix_lerp_k.weight"] = t("ffn.time_maa_k").vector()
        out[p + "channel_mix_lerp_r.weight"] = t("ffn.time_maa_r").vector()
        for src in ("key", "value", "receptance"):
            out[f"{p}channel_mix_{src}.weight"] = t(f"ffn.{src}.weight")
    return out


# -- vocabulary ---------------------------------------------------------------------------

def byte_vocab() -> list[str]:
    """The 256-token byte-level vocabulary of rwkv.cpp's tiny models, token i = byte i."""
    return [escape_token(bytes([i])) for i in range(256)]


def world_vocab(path: str | os.PathLike, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens and token types from an RWKV world vocabulary file (lines `id repr(bytes) len`),
    as llama.cpp's _set_vocab_rwkv_world builds them: token 0 is the control token "<s>", the
    file's tokens follow in order, "[PADi]" (unused) fill up to n_vocab."""
    tokens, types = ["<s>"], [3]
    with open(path, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split(" ")
            if len(parts) < 3:
                continue
            try:
                tok = ast.literal_eval(" ".join(parts[1:-1]))
                length = int(parts[-1])
            except (ValueError, SyntaxError):
                raise GGUFError(f"{path}:{ln}: not a vocabulary line: {line.strip()!r}") from None
            raw = tok.encode("utf-8") if isinstance(tok, str) else tok
            if not isinstance(raw, bytes) or len(raw) != length:
                raise GGUFError(f"{path}:{ln}: token {tok!r} does not have {length} bytes")
            tokens.append(escape_token(raw))
            types.append(1)
    if len(tokens) > n_vocab:
        raise GGUFError(f"{path}: {len(tokens)} tokens for a model of {n_vocab}")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(5)
    return tokens, types


# -- writing -------------------------------------------------------------------------------

def _add_tensor(writer, name: str, t: RawTensor | np.ndarray) -> None:
    from gguf import GGMLQuantizationType

    if isinstance(t, np.ndarray):
        writer.add_tensor(name, t)
    elif t.type in (GGMLType.F32, GGMLType.F16):
        writer.add_tensor(name, t.array())
    else:
        arr = t.array()
        writer.add_tensor(name, arr, raw_shape=arr.shape,
                          raw_dtype=GGMLQuantizationType(int(t.type)))


def convert(src: str | os.PathLike, dst: str | os.PathLike, *,
            vocab: str | os.PathLike | None = None, name: str | None = None) -> str:
    """Write the GGUF of rwkv.cpp model `src` to `dst` (complete or not at all); returns its
    general.architecture ("rwkv6" or "rwkv7")."""
    from gguf import GGUFWriter

    f = read_rwkv_cpp(src)
    version = f.arch_version
    arch = f"rwkv{version}"
    tensors = _rwkv7_tensors(f) if version == 7 else _rwkv6_tensors(f)
    tokens, token_types = _vocabulary(f, vocab)
    c = f.n_embd

    dst = os.fspath(dst)
    tmp = dst + ".part"
    w = GGUFWriter(tmp, arch)
    try:
        w.add_name(name or os.path.splitext(os.path.basename(f.path))[0])
        w.add_context_length(1 << 20)  # RWKV has no context limit; llama.cpp writes 2^20
        w.add_embedding_length(c)
        w.add_block_count(f.n_layer)
        w.add_layer_norm_eps(1e-5)  # rwkv.cpp's rwkv_layer_norm
        w.add_feed_forward_length(f.get("blocks.0.ffn.key.weight").ne[1])
        w.add_file_type(FILE_TYPES[f.data_type])
        w.add_head_count(0)  # "required by llama.cpp, unused" (its converter)
        if version == 7:
            r_k = f.get("blocks.0.att.r_k")  # rwkv.cpp (S, H): head size first
            w.add_wkv_head_size(r_k.ne[0])
            w.add_decay_lora_rank(f.get("blocks.0.att.w1").ne[1])
            w.add_iclr_lora_rank(f.get("blocks.0.att.a1").ne[1])
            v1 = f.tensors.get("blocks.1.att.v1", f.get("blocks.0.att.a1"))
            w.add_value_residual_mix_lora_rank(v1.ne[1])
            if "blocks.0.att.g1" in f.tensors:
                w.add_gate_lora_rank(f.get("blocks.0.att.g1").ne[1])
        else:
            w.add_wkv_head_size(f.get("blocks.0.att.time_faaaa").ne[1])
            w.add_rescale_every_n_layers(0)  # rwkv.cpp files hold unscaled weights
            w.add_time_mix_extra_dim(f.get("blocks.0.att.time_maa_w1").ne[1] // 5)
            w.add_time_decay_extra_dim(f.get("blocks.0.att.time_decay_w1").ne[1])
        w.add_tokenizer_model("rwkv")
        w.add_token_list(tokens)
        w.add_token_types(token_types)
        if vocab is not None:  # world vocabularies: llama.cpp's converter sets these
            w.add_bos_token_id(0)
            w.add_eos_token_id(0)
            w.add_eot_token_id(261)  # "\n\n", which ends a chat turn
        for k, t in tensors.items():
            _add_tensor(w, k, t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, dst)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return arch


def _vocabulary(f: RwkvCppFile, vocab) -> tuple[list[str], list[int]]:
    if vocab is not None:
        return world_vocab(vocab, f.n_vocab)
    if f.n_vocab != 256:
        raise GGUFError(f"{f.path}: a vocabulary of {f.n_vocab} tokens; give the model's "
                        f"vocabulary file (vocab=..., --vocab rwkv_vocab_v20230424.txt)")
    return byte_vocab(), [1] * 256


def main(argv: Sequence[str] | None = None) -> int:
    """`fastllm convert IN.bin OUT.gguf [--vocab FILE] [--name NAME]`."""
    ap = argparse.ArgumentParser(prog="fastllm convert",
                                 description="Convert an rwkv.cpp RWKV-6/RWKV-7 model to GGUF.")
    ap.add_argument("src", help="rwkv.cpp model file (.bin)")
    ap.add_argument("dst", help="GGUF file to write")
    ap.add_argument("--vocab", help="RWKV world vocabulary (rwkv_vocab_v20230424.txt); not "
                                    "needed for 256-token byte-level models")
    ap.add_argument("--name", help="general.name (default: the input's file name)")
    args = ap.parse_args(argv)
    from .errors import FastLLMError

    try:
        arch = convert(args.src, args.dst, vocab=args.vocab, name=args.name)
    except (FastLLMError, OSError) as e:
        print(f"fastllm convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({arch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
