"""WGSL sources: modules assembled from shaders/*.wgsl and specialized per pipeline.

A kernel module is kargs.wgsl + one section of common.wgsl (subgroup or shared reductions) +
optionally one type section of quants.wgsl + the op family's file. WGSL has no preprocessor, so
the files stay valid WGSL and specialization is done on the text: `const NAME: T = ...;` lines
take the values a pipeline needs, `alias TILE = f32;` may become f16, and `TYPE` in entry point
names becomes the weight type (kernel_mul_mv_TYPE_f32 -> kernel_mul_mv_q4_K_f32). Sections
(`//! section NAME`) hold the variants of a file; a line `//! use FILE SECTION` includes a
section of another file (the forms in which mat-vecs read x are written once, in x_forms.wgsl).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SHADER_DIR = Path(__file__).resolve().parent / "shaders"
_SECTION = re.compile(r"^//! section (\w+)\s*$", re.MULTILINE)
_USE = re.compile(r"^//! use (\S+) (\w+)\s*$", re.MULTILINE)


@cache
def read(name: str) -> str:
    return (SHADER_DIR / name).read_text()


@cache
def sections(name: str) -> tuple[str, dict[str, str]]:
    """(text before the first section marker, {section name: text}); a line
    `//! use FILE SECTION` in either becomes that section of FILE (x_forms.wgsl's forms of x)."""
    parts = [_USE.sub(lambda m: sections(m.group(1))[1][m.group(2)], p)
             for p in _SECTION.split(read(name))]
    return parts[0], {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def specialize(src: str, consts: dict[str, int | bool | float]) -> str:
    for name, value in consts.items():
        if isinstance(value, bool):
            lit = "true" if value else "false"
        elif isinstance(value, float):  # an f32 constant, to nine digits (round-trips f32)
            lit = f"{value:.9e}"
        else:
            lit = f"{int(value)}u"
        pat = re.compile(rf"^const {name}: (\w+) = [^;]+;", re.MULTILINE)
        src, n = pat.subn(lambda m, lit=lit, name=name: f"const {name}: {m.group(1)} = {lit};",
                          src)
        if n != 1:
            raise KeyError(f"shader constant {name} is declared {n} times")
    return src


def module_source(file: str, *, subgroups: bool, wtype: str | None = None,
                  consts: dict[str, int | bool] | None = None, f16_tile: bool = False,
                  variant: str | None = None) -> str:
    """The full WGSL text of a kernel module. A kernel file with sections (mul_mv.wgsl) gets the
    one named `variant` ("plain" when None) after its head; a variant's entry point is named
    kernel_<op>_<variant>_... (kernel_mul_mv_res_q4_K_f32)."""
    head, common = sections("common.wgsl")
    parts = [read("kargs.wgsl"), head, common["subgroup" if subgroups else "shared"]]
    bhead, bsec = sections(file)
    body = bhead + bsec[variant or "plain"] if bsec else bhead
    if variant is not None and variant != "plain":
        body = re.sub(r"\bfn kernel_(\w+?)_TYPE", rf"fn kernel_\1_{variant}_TYPE", body)
    if wtype is not None:
        qhead, qsec = sections("quants.wgsl")
        parts += [qhead, qsec[wtype]]
        if file in ("mul_mvq.wgsl", "mul_mvq_id.wgsl"):  # the type's integer form: it reads
            # the x accessors (xq16, xmeta) of these files
            parts.append(qsec[wtype + "_int"])
        if file == "mul_mvq_id.wgsl" and variant == "glu":  # a second weight, up, of the type
            parts.append(slot_section(wtype, 1, q8=True))
        body = body.replace("_TYPE", "_" + wtype)
    parts.append(body)
    src = "\n".join(parts)
    if consts:
        src = specialize(src, consts)
    if f16_tile:
        src = "enable f16;\n" + src.replace("alias TILE = f32;", "alias TILE = f16;")
    return src


_SLOT_NAMES = (re.compile(r"^fn (\w+)", re.MULTILINE), re.compile(r"^const (\w+)", re.MULTILINE),
               re.compile(r"^struct (\w+)", re.MULTILINE), re.compile(r"var<storage, read> (\w+)"))
MULTI_OUT = 10  # slot s writes its output at binding MULTI_OUT + s
MULTI_W = 13  # and binds weight array i at MULTI_W + 4 s + i
MULTI_BIAS = 25  # and its bias (a placeholder without) at MULTI_BIAS + s


def slot_section(wtype: str, s: int, q8: bool = False) -> str:
    """quants.wgsl's section for `wtype` (and with `q8` its integer form) with every name it
    declares suffixed by _s and its weight arrays bound at MULTI_W + 4 s + i (several slots of
    one module may share a type)."""
    qsec = sections("quants.wgsl")[1]
    text = qsec[wtype] + (qsec[wtype + "_int"] if q8 else "")
    names = {n for pat in _SLOT_NAMES for n in pat.findall(text)}
    text = re.sub(r"@binding\((\d+)\)",
                  lambda m: f"@binding({MULTI_W + 4 * s + int(m.group(1)) - 3})", text)
    return re.sub(r"\b(" + "|".join(sorted(names)) + r")\b", rf"\1_{s}", text)


def multi_source(wtypes: tuple[str, ...], *, subgroups: bool,
                 consts: dict[str, int | bool], q8: bool = False, glu: bool = False) -> str:
    """The module of kernel_mul_mv_multi_f32 (mul_mv_multi.wgsl) for slots of these types;
    `q8`: its integer form, over x quantized by quantize_x.wgsl (entry kernel_mul_mv_multi_q8);
    `glu`: kernel_mul_mv_glu_q8 instead, for gate and up (two slots, the integer form)."""
    head, common = sections("common.wgsl")
    qhead, _ = sections("quants.wgsl")
    mhead, msec = sections("mul_mv_multi.wgsl")
    parts = [read("kargs.wgsl"), head, common["subgroup" if subgroups else "shared"], qhead,
             mhead, msec["q8" if q8 or glu else "norm"]]
    if glu:
        parts += [slot_section(t, s, True) for s, t in enumerate(wtypes)] + [msec["glu"]]
        return specialize("\n".join(parts), consts)
    branches = []
    for s, t in enumerate(wtypes):
        parts.append(slot_section(t, s, q8))
        for sec in ("slotq" if q8 else "slot", "store"):
            text = msec[sec]
            if sec == "store" and not consts.get(f"BIAS_{s}"):  # no bias: no binding for it
                text = re.sub(r"^@group\(0\) @binding\(BIASB_SLOT\).*\n", "", text,
                              flags=re.MULTILINE)
                text = text.replace("return b_SLOT[r];", "return 0.0;")
            parts.append(text.replace("OUT_SLOT", str(MULTI_OUT + s))
                         .replace("BIASB_SLOT", str(MULTI_BIAS + s)).replace("_SLOT", f"_{s}"))
        first = f"g - args.slots.wg_end{s - 1}" if s else "g"
        branches.append(f"if (g < args.slots.wg_end{s}) {{\n"
                        f"        mv_{s}({first}, args.slots.n_rows{s}, ids);\n    }}")
    entry = "kernel_mul_mv_multi_q8" if q8 else "kernel_mul_mv_multi_f32"
    parts.append(f"@compute @workgroup_size(WG)\nfn {entry}(ids: Ids) {{\n"
                 "    prepare_x(ids);\n    let g = ids.wg.z * ids.nwg.x + ids.wg.x;\n    "
                 + " else ".join(branches) + "\n}\n")
    return specialize("\n".join(parts), consts)
