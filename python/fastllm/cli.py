"""The `fastllm` command: run | chat | info | bench | pull | quantize.

Generated text goes to stdout; progress, timings and errors go to stderr, so
`fastllm run -p "..." > out.txt` captures only the continuation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import FastLLMError
from .pull import DEFAULT_MODEL, KNOWN


def _add_model_args(p: argparse.ArgumentParser, default_model: str | None = DEFAULT_MODEL) -> None:
    p.add_argument("-m", "--model", default=default_model,
                   help=f"GGUF path or a pull name ({', '.join(sorted(KNOWN))}); "
                        f"default {default_model}")
    p.add_argument("--backend", choices=("reference", "webgpu", "metal"), default=None,
                   help="default: the best available (Metal, WebGPU on a GPU, else reference)")
    p.add_argument("-c", "--ctx", type=int, default=None, help="context length (n_ctx)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", type=int, default=256, help="tokens to generate")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def _sampling(a: argparse.Namespace) -> dict:
    return {"max_tokens": a.n_predict, "temperature": a.temp, "top_k": a.top_k, "top_p": a.top_p,
            "min_p": a.min_p, "repeat_penalty": a.repeat_penalty, "seed": a.seed}


def _load(a: argparse.Namespace):
    from .model import Model
    from .pull import resolve

    path = resolve(a.model)
    m = Model.load(path, backend=a.backend, n_ctx=a.ctx)
    print(f"fastllm: loaded {os.path.basename(m.path)} ({m.config.arch}) on "
          f"{m.backend.describe()} in {m.load_seconds:.2f} s", file=sys.stderr)
    return m


def cmd_run(a: argparse.Namespace) -> int:
    m = _load(a)
    ids = m.prompt_ids(a.prompt)
    t0 = time.perf_counter()
    first = None
    text_iter = m.generate(ids, stream=True, stop=a.stop or None, **_sampling(a))
    sys.stdout.write(a.prompt if a.echo else "")
    for piece in text_iter:
        if first is None:
            first = time.perf_counter()
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    t1 = time.perf_counter()
    gen = len(m._cached) - len(ids)
    if first is not None and gen > 1:
        print(f"fastllm: prompt {len(ids)} tokens in {first - t0:.2f} s; generated {gen} tokens, "
              f"{(gen - 1) / max(t1 - first, 1e-9):.1f} tok/s", file=sys.stderr)
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    m = _load(a)
    messages: list[dict] = []
    if a.system:
        messages.append({"role": "system", "content": a.system})
    print("fastllm chat: empty line or Ctrl-D to quit, /reset to start over", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            messages = messages[:1] if a.system else []
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in m.chat(messages, stream=True, **_sampling(a)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from collections import Counter

    from .gguf import open_gguf
    from .pull import resolve
    from .tokenizer import Tokenizer

    f = open_gguf(resolve(a.model), check_types=False)
    md = f.metadata
    arch = md.get("general.architecture", "?")
    size = sum(t.data.nbytes for t in f.tensors.values())
    n_params = sum(t.n_elements for t in f.tensors.values())
    types = Counter(t.type.name for t in f.tensors.values())
    print(f"file:          {f.path}")
    print(f"name:          {md.get('general.name', '?')}")
    print(f"architecture:  {arch}")
    print(f"parameters:    {n_params / 1e6:.1f} M ({size / 2**20:.1f} MiB of tensor data)")
    print(f"tensor types:  {', '.join(f'{k} x{v}' for k, v in types.most_common())}")
    for k in ("context_length", "embedding_length", "block_count", "feed_forward_length",
              "attention.head_count", "attention.head_count_kv", "rope.freq_base",
              "attention.sliding_window"):
        if f"{arch}.{k}" in md:
            print(f"{k + ':':<15}{md[f'{arch}.{k}']}")
    try:
        tok = Tokenizer.from_metadata(md, f.path)
        print(f"tokenizer:     {md.get('tokenizer.ggml.model')} "
              f"(pre {md.get('tokenizer.ggml.pre', '-')}), {tok.n_vocab} tokens, "
              f"bos {tok.bos_id}, eos {tok.eos_id}, add_bos {tok.add_bos}")
    except FastLLMError as e:
        print(f"tokenizer:     unusable ({e})")
    tmpl = md.get("tokenizer.chat_template")
    print(f"chat template: {'yes (' + str(len(tmpl)) + ' chars)' if tmpl else 'none (ChatML fallback)'}")
    if a.verbose:
        for name, t in f.tensors.items():
            print(f"  {name:40s} {t.type.name:6s} {t.shape}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(a)


def cmd_pull(a: argparse.Namespace) -> int:
    from .pull import pull

    print(pull(a.name))
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from .quantize import quantize_file

    quantize_file(a.input, a.output, a.type)
    print(f"fastllm: wrote {a.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastllm", description="Local LLM inference on GGUF files.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="generate a continuation of a prompt, streamed to stdout")
    _add_model_args(p)
    p.add_argument("-p", "--prompt", default="Once upon a time")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="chat with the model in the terminal")
    _add_model_args(p)
    p.add_argument("--system", default=None, help="system message")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model", help="GGUF path or pull name")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="prefill and decode speed, llama-bench style")
    _add_model_args(p)
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--sampled", action="store_true",
                   help="also time decoding with generate()'s default sampling chain")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("pull", help="fetch a known model into the cache")
    p.add_argument("name", choices=sorted(KNOWN))
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("quantize", help="requantize a GGUF file")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("type", help="F16, Q8_0, Q4_0, Q4_K, Q6_K or Q4_K_M")
    p.set_defaults(func=cmd_quantize)

    # listed for --help; main() hands `convert ...` to convert_rwkv.main before parsing
    sub.add_parser("convert", help="convert an rwkv.cpp model file to GGUF "
                                   "(IN.bin OUT.gguf [--vocab FILE])")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert"]:  # its own parser (convert_rwkv.main) owns every option, --help too
        from .convert_rwkv import main as convert_main

        return convert_main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except FastLLMError as e:
        print(f"fastllm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
