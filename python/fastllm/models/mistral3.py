"""`mistral3`: the text model of Mistral Small 3.1/3.2 and Ministral 3 as llama.cpp's
src/models/mistral3.cpp reads it: the llama block (normal rope, optional `rope_freqs`, biases
and per-tensor scales on Q/K/V/O and the FFN, Q/K/V separate or fused, long/short rope factors
when `rope.scaling.type` is "longrope").

The query scale is always 1/sqrt(head size) (llama.cpp's mistral3 never reads
`attention.scale`). Llama 4's attention temperature (`attention.temperature_scale` non-zero:
queries scaled by a factor that grows with the position) and YaRN scaling are not implemented:
such files are refused naming the key.
"""

from __future__ import annotations

from ..errors import UnsupportedError
from .base import Config, KeyReader
from .layout import FusedQKV, LongRope
from .llama import Llama


class Mistral3(FusedQKV, LongRope, Llama):
    arch = "mistral3"

    @classmethod
    def config(cls, md, path: str = "") -> Config:
        cfg = super().config(md, path)
        temp = KeyReader(md, cls.arch, path)("attention.temperature_scale", 0.0, float)
        if temp != 0.0:
            raise UnsupportedError(f"{path}: {cls.arch}.attention.temperature_scale {temp}: "
                                   f"position-dependent query scaling is not supported")
        return cfg
