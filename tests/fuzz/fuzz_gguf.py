"""atheris harness: Model.load and Tokenizer.load on mutated GGUF bytes may raise only fastllm's
own errors; any other exception, crash or hang fails.

    python tests/fuzz/fuzz_gguf.py CORPUS_DIR -max_total_time=60 -timeout=20
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

import atheris

with atheris.instrument_imports(include=["fastllm"]):
    from fastllm import FastLLMError, Model, Tokenizer

_PATH = os.path.join(tempfile.mkdtemp(prefix="fastllm-fuzz-"), "input.gguf")


def one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    for load in (lambda: Tokenizer.load(_PATH),
                 lambda: Model.load(_PATH, backend="reference", n_ctx=16)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = load()
            if isinstance(m, Model):
                m.logits([m.tokenizer.bos_id or 0])
        except FastLLMError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
