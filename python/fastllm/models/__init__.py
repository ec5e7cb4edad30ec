"""Model architectures by GGUF `general.architecture`. Each module describes its network with the
op set of backends/base.py and never imports a backend."""

from __future__ import annotations

from ..errors import UnsupportedError
from .base import Architecture
from .gemma3 import Gemma3
from .gpt_oss import GptOss
from .granite import Granite
from .llama import Llama
from .mistral3 import Mistral3
from .phi3 import Phi3
from .qwen2 import Qwen2
from .qwen3 import Qwen3
from .qwen3moe import Qwen3Moe
from .qwen35 import Qwen35
from .qwen35moe import Qwen35Moe
from .rwkv6 import Rwkv6
from .rwkv7 import Rwkv7
from .smollm3 import SmolLM3

ARCHITECTURES: dict[str, type[Architecture]] = {
    cls.arch: cls for cls in (Llama, Qwen2, Qwen3, Qwen3Moe, Gemma3, Rwkv6, Rwkv7, Qwen35,
                              Qwen35Moe)
}
ARCHITECTURES.update({cls.arch: cls for cls in (Phi3, SmolLM3, Granite, Mistral3)})
ARCHITECTURES[GptOss.arch] = GptOss


def architecture_for(arch: str, path: str = "") -> type[Architecture]:
    """The class for a GGUF general.architecture, or a clear error listing the supported ones."""
    if arch not in ARCHITECTURES:
        where = f"{path}: " if path else ""
        raise UnsupportedError(f"{where}unsupported architecture {arch!r}; fastllm runs "
                               f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]
