"""Tokenizer speed: encode about 1 MB of text with each vocabulary and print characters/second.

The text is Python's own standard library source (code, comments, docstrings) plus llama.cpp's
multilingual tokenizer test texts, cut to --size characters; --text FILE uses a file instead.
"cold" is the first encode with a freshly loaded tokenizer (empty word caches), "warm" the same
text again. Decoding speed is printed as well.

    PYTHONPATH=python python3 benchmarks/bench_tokenizer.py [--data ../shared] [--size 1000000]
        [--text FILE] [--model extra.gguf ...]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

VOCABS = ["llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2", "deepseek-llm", "falcon",
          "starcoder"]


def corpus(data: Path, size: int) -> str:
    parts: list[str] = []
    for inp in sorted((data / "vocab").glob("*.inp"))[:1]:
        parts.append(inp.read_text(encoding="utf-8").replace("\n__ggml_vocab_test__\n", "\n"))
    total = sum(map(len, parts))
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        if total >= size:
            break
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
    return "".join(parts)[:size]


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from fastllm.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("FASTLLM_TEST_DATA", "../shared"))
    ap.add_argument("--size", type=int, default=1_000_000, help="characters of text")
    ap.add_argument("--text", help="file to tokenize instead of the built-in corpus")
    ap.add_argument("--model", nargs="*", default=[], help="more GGUF files to measure")
    a = ap.parse_args()
    data = Path(a.data)
    text = Path(a.text).read_text(encoding="utf-8")[:a.size] if a.text else corpus(data, a.size)

    files = [(name, data / "vocab" / f"ggml-vocab-{name}.gguf") for name in VOCABS]
    files += [(Path(m).stem, Path(m)) for m in a.model]
    print(f"text: {len(text):,} characters, {len(text.encode()):,} bytes")
    print(f"{'vocab':<26} {'load s':>7} {'tokens':>9} {'cold chars/s':>13} "
          f"{'warm chars/s':>13} {'decode chars/s':>15}")
    for name, path in files:
        if not path.exists():
            print(f"{name:<26} missing: {path}")
            continue
        t0 = time.perf_counter()
        tok = Tokenizer.load(path)
        t1 = time.perf_counter()
        ids = tok.encode(text, add_bos=False)
        t2 = time.perf_counter()
        tok.encode(text, add_bos=False)
        t3 = time.perf_counter()
        tok.decode(ids)
        t4 = time.perf_counter()
        n = len(text)
        print(f"{name:<26} {t1 - t0:7.2f} {len(ids):9,} {n / (t2 - t1):13,.0f} "
              f"{n / (t3 - t2):13,.0f} {n / (t4 - t3):15,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
