"""The `fastllm` command: run | chat | info | bench | serve | pull | list | rm | quantize | convert.

Generated text goes to stdout; the rest goes to stderr, so `fastllm run -p "..." > out.txt`
captures only the continuation. On stderr a run prints one line when the model is loaded and one
summary line at the end (-q: neither), and nothing else unless something is wrong. The command
line speaks in flags (-c, --backend webgpu) where the library speaks in arguments (n_ctx=,
backend='webgpu'): library messages are translated by _flags().
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings

from .errors import FastLLMError
from .pull import DEFAULT_MODEL, KNOWN


class _Help(argparse.HelpFormatter):
    """Each option's default in --help, where it has one to show (a None default's meaning is
    in the option's own help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with each default in --help and a bad argument reported in one line (argparse
    prints the whole usage first), exit status 2 as argparse's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ranged(kind: type, ok, valid: str):
    """An argparse type: a number of `kind` for which ok(value) holds; the error names the valid
    range (argparse prefixes the flag)."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {valid}, got {s!r}") from None
        if (kind is float and not math.isfinite(v)) or not ok(v):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {s}")
        return v

    parse.__name__ = kind.__name__
    return parse


# The ranges of generate.check_sampling (llama.cpp's), in the words of the command line
N_PREDICT = _ranged(int, lambda v: v >= -1, "an integer >= 0, or -1 for no limit (until the "
                                            "end of generation or a full context)")
TEMP = _ranged(float, lambda v: v >= 0, "a number >= 0 (0 is greedy)")
TOP_K = _ranged(int, lambda v: v >= 0, "an integer >= 0 (0 is off)")
UNIT = _ranged(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
PENALTY = _ranged(float, lambda v: v > 0, "a number > 0 (1 is off)")
SEED = _ranged(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE = _ranged(int, lambda v: v >= 1, "an integer >= 1")
COUNT = _ranged(int, lambda v: v >= 0, "an integer >= 0")

# library argument -> flag, for messages that reach the command line
_FLAG_FOR = [
    (re.compile(r"backend='(\w+)' or '(\w+)'"), r"--backend \1 or --backend \2"),
    (re.compile(r"backend='(\w+)'"), r"--backend \1"),
    (re.compile(r"\bn_ctx=(\d+)"), r"-c \1"),
    (re.compile(r"\bn_ctx=?(?=[\s,;:)]|$)"), "-c"),
    (re.compile(r"\bmax_tokens="), "-n "),
    (re.compile(r"\btemperature="), "--temp "),
    (re.compile(r"\btop_k="), "--top-k "),
    (re.compile(r"\btop_p="), "--top-p "),
    (re.compile(r"\bmin_p="), "--min-p "),
    (re.compile(r"\brepeat_penalty="), "--repeat-penalty "),
]


def _flags(msg: str) -> str:
    """A library message in the command line's words."""
    for pat, sub in _FLAG_FOR:
        msg = pat.sub(sub, msg)
    return msg


def _say(a: argparse.Namespace, msg: str) -> None:
    if not getattr(a, "quiet", False):
        print(f"fastllm: {msg}", file=sys.stderr)


def _add_model_args(p: argparse.ArgumentParser, default_model: str | None = DEFAULT_MODEL) -> None:
    p.add_argument("-m", "--model", default=default_model,
                   help=f"GGUF path, a known name ({', '.join(sorted(KNOWN))}, pulled on first "
                        f"use) or a file name in the cache (fastllm list)")
    p.add_argument("--backend", choices=("reference", "webgpu", "metal"), default=None,
                   help="default: the best available (Metal on Apple Silicon, WebGPU on a GPU, "
                        "else the NumPy reference backend)")
    p.add_argument("-c", "--ctx", type=POSITIVE, default=None,
                   help="context length in tokens (default: the model's, at most 4096)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="nothing on stderr but errors: no load line, progress bars or summary")


def _add_sampling_args(p: argparse.ArgumentParser, n_predict: int = 256) -> None:
    p.add_argument("-n", "--n-predict", type=N_PREDICT, default=n_predict,
                   help="tokens to generate at most; -1: until the end of generation or a full "
                        "context")
    p.add_argument("--temp", type=TEMP, default=0.8, help="temperature; 0 is greedy")
    p.add_argument("--top-k", type=TOP_K, default=40, help="keep the k most likely; 0 is off")
    p.add_argument("--top-p", type=UNIT, default=0.95,
                   help="keep the most likely up to this probability; 1 is off")
    p.add_argument("--min-p", type=UNIT, default=0.05,
                   help="drop tokens less likely than this times the most likely; 0 is off")
    p.add_argument("--repeat-penalty", type=PENALTY, default=1.0,
                   help="divide the recent tokens' logits by this; 1 is off")
    p.add_argument("--seed", type=SEED, default=None,
                   help="random seed (default: a fresh one each run)")


def _sampling(a: argparse.Namespace) -> dict:
    return {"max_tokens": None if a.n_predict == -1 else a.n_predict, "temperature": a.temp,
            "top_k": a.top_k, "top_p": a.top_p, "min_p": a.min_p,
            "repeat_penalty": a.repeat_penalty, "seed": a.seed}


def _load(a: argparse.Namespace, **kw):
    from .backends import FallbackWarning
    from .model import Model
    from .pull import resolve

    path = resolve(a.model, quiet=a.quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = Model.load(path, backend=a.backend, n_ctx=a.ctx, quiet=a.quiet, **kw)
    why = ""
    for w in caught:
        if isinstance(w.message, FallbackWarning):  # said with the load line
            why = f"; no GPU backend: {_flags('; '.join(w.message.reasons))}"
        else:
            text = _flags(str(w.message)).removeprefix("fastllm: ")
            print(f"fastllm: warning: {text}", file=sys.stderr)
    _say(a, f"loaded {os.path.basename(m.path)} ({m.config.arch}) on {m.backend.describe()} in "
            f"{m.load_seconds:.2f} s{why}")
    return m


def _why(gen, a: argparse.Namespace) -> str:
    """Why a generation ended, in words."""
    r = gen.finish_reason
    if r == "stop":
        return f"stop string {gen.stop_string!r}" if gen.stop_string else "end of generation"
    if r == "length":
        return f"max tokens (-n {a.n_predict})"
    if r == "context":
        return "context full (-c to enlarge)"
    return "interrupted" if r == "cancelled" else str(r)


def _summary(gen, a: argparse.Namespace) -> str:
    def tokens(k: int) -> str:
        return f"{k} token{'s' if k != 1 else ''}"

    prompt = f"prompt {tokens(gen.n_prompt)}"
    if gen.prompt_seconds is not None:
        prompt += f" in {gen.prompt_seconds:.2f} s"
    n = gen.n_tokens
    out = f"generated {tokens(n)}"
    if n > 1 and gen.gen_seconds:
        # the first token came with the prompt: the rate is over the n - 1 after it
        out += f", {(n - 1) / gen.gen_seconds:.1f} tok/s"
    return f"{prompt}; {out}; stopped: {_why(gen, a)}"


def cmd_run(a: argparse.Namespace) -> int:
    m = _load(a)
    gen = m.generate(m.prompt_ids(a.prompt), stream=True, stop=a.stop or None, **_sampling(a))
    wrote = bool(a.echo and a.prompt)
    sys.stdout.write(a.prompt if a.echo else "")
    status = 0
    try:
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
            wrote = True
    except KeyboardInterrupt:
        gen.close()
        status = 130
    if wrote:
        sys.stdout.write("\n")
        sys.stdout.flush()
    _say(a, _summary(gen, a))
    return status


def cmd_chat(a: argparse.Namespace) -> int:
    from .chat_cli import chat_loop

    return chat_loop(_load(a), a, _sampling(a), _say, flags=_flags)


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
    print(f"chat template: {f'yes ({len(tmpl)} chars)' if tmpl else 'none (ChatML fallback)'}")
    if a.verbose:
        for name, t in f.tensors.items():
            print(f"  {name:40s} {t.type.name:6s} {t.shape}")
    return 0


def _parallel_arg(text: str) -> str:
    from .bench import parse_parallel

    try:
        parse_parallel(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--parallel ")) from None
    return text


def _check_bench(a: argparse.Namespace) -> str | None:
    """What argparse cannot see in one flag: a bench with nothing to measure."""
    if a.parallel is None and a.n_prompt == 0 and a.n_gen == 0:
        return "nothing to measure: -p/--n-prompt and -n/--n-gen are both 0"
    return None


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import parse_parallel, run_bench, run_parallel

    if a.parallel is not None:
        parse_parallel(a.parallel)  # (checked by argparse already: _parallel_arg)
        if a.n_prompt is None:
            a.n_prompt = 128
        return run_parallel(a)
    if a.n_prompt is None:
        a.n_prompt = 512

    return run_bench(a)


def _check_serve(a: argparse.Namespace) -> str | None:
    """Scaling flags need --ray; autoscaling bounds must hold --replicas."""
    scaling = {"--replicas": a.replicas != 1, "--min-replicas": a.min_replicas is not None,
               "--max-replicas": a.max_replicas is not None,
               "--target-ongoing": a.target_ongoing is not None,
               "--replica-cpus": a.replica_cpus != 1.0, "--replica-gpus": a.replica_gpus is not None,
               "--replica-resource": bool(a.replica_resource)}
    given = [flag for flag, on in scaling.items() if on]
    if given and not a.ray:
        return f"{given[0]} needs --ray (replicas are run by Ray Serve)"
    if (a.min_replicas is not None or a.target_ongoing is not None) and a.max_replicas is None:
        return "--min-replicas and --target-ongoing are autoscaling settings: give --max-replicas"
    if a.max_replicas is not None:
        lo = 1 if a.min_replicas is None else a.min_replicas
        if not lo <= a.replicas <= a.max_replicas:
            return (f"autoscaling needs --min-replicas <= --replicas <= --max-replicas, got "
                    f"{lo} <= {a.replicas} <= {a.max_replicas}")
    for item in a.replica_resource or ():
        name, eq, amount = item.partition("=")
        try:
            ok = bool(name) and eq and float(amount) >= 0
        except ValueError:
            ok = False
        if not ok:
            return f"--replica-resource {item!r}: expected NAME=AMOUNT, e.g. apple_gpu=1"
    return None


def cmd_serve(a: argparse.Namespace) -> int:
    from .serve import require

    require()  # without the serve extra: one line naming the install command
    if a.ray:
        from .serve.ray import require as require_ray

        require_ray()
        from .serve.ray import run_cli

        return run_cli(a, _say)
    from .serve.main import run

    return run(a, _load, _say)


def cmd_pull(a: argparse.Namespace) -> int:
    from .pull import pull

    print(pull(a.name, quiet=a.quiet))
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from .pull import cache_dir, cached

    rows = cached()
    if not rows:
        print(f"no models cached in {cache_dir()} (fastllm pull NAME fetches one: "
              f"{', '.join(sorted(KNOWN))})", file=sys.stderr)
        return 0
    width = max(len(name or "-") for name, _, _ in rows)
    for name, path, size in rows:
        print(f"{name or '-':<{width}}  {size / 2**20:9.1f} MiB  {path}")
    return 0


def cmd_rm(a: argparse.Namespace) -> int:
    from .pull import remove

    for name in a.names:
        print(f"removed {remove(name)}", file=sys.stderr)
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from .quantize import quantize_file

    quantize_file(a.input, a.output, a.type)
    print(f"fastllm: wrote {a.output}", file=sys.stderr)
    return 0


def _version() -> str:
    """The distribution's name and version, and the backends usable on this machine."""
    from importlib import metadata

    from . import __version__

    try:
        dist = f"fastllm-gpu {metadata.version('fastllm-gpu')}"
    except metadata.PackageNotFoundError:  # run from a source tree
        dist = f"fastllm {__version__} (not installed)"
    from .backends import usable

    lines = [dist, "backends here:"]
    lines += [f"  {name:<10} {what}" for name, what in usable()]
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """--version, probing the backends only when asked (the probe loads wgpu)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and the backends usable here, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="fastllm", description="Local LLM inference on GGUF files.")
    ap.add_argument("--version", action=_VersionAction)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="generate a continuation of a prompt, streamed to stdout",
                       description="Generate a continuation of a prompt, streamed to stdout.")
    _add_model_args(p)
    p.add_argument("-p", "--prompt", default="Once upon a time", help="the prompt")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="chat with the model in the terminal",
                       description="Chat with the model in the terminal. /help lists the "
                                   "commands; Ctrl-C stops a reply, Ctrl-D or /bye leaves.")
    _add_model_args(p)
    p.add_argument("--system", default=None, help="system message")
    _add_sampling_args(p, n_predict=-1)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model", help="GGUF path, known name or file name in the cache")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="prefill and decode speed, llama-bench style")
    _add_model_args(p)
    p.add_argument("-p", "--n-prompt", type=COUNT, default=None,
                   help="prompt tokens of the pp test; 0 skips it (default 512; with "
                        "--parallel each sequence's prompt, default 128)")
    p.add_argument("-n", "--n-gen", type=COUNT, default=128,
                   help="tokens of the tg test; 0 skips it (with --parallel: each "
                        "sequence's generated tokens)")
    p.add_argument("--parallel", metavar="B,B,...", default=None, type=_parallel_arg,
                   help="llama-batched-bench's table for these numbers of sequences decoded "
                        "at once (e.g. 1,4,8,16,32)")
    p.add_argument("--rows-alone", action="store_true",
                   help="with --parallel: B = 1 through the batched step too, not the "
                        "one-sequence loop the engine uses for a request running alone")
    p.add_argument("-r", "--repetitions", type=POSITIVE, default=3, help="timed runs of each test")
    p.add_argument("--sampled", action="store_true",
                   help="also time decoding with generate()'s default sampling chain")
    p.set_defaults(func=cmd_bench, check=_check_bench, parser=p)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with a chat page",
                       description="Serve the model over OpenAI's API (/v1/chat/completions, "
                                   "/v1/completions, /v1/models), /health, /metrics and a chat "
                                   "page at /. -c is each slot's context.")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_ranged(int, lambda v: 0 <= v <= 65535, "in 0..65535"),
                   default=8080, help="port to listen on (0: any free port)")
    p.add_argument("-np", "--parallel", type=POSITIVE, default=4,
                   help="slots: requests generated at once (each holds -c tokens of cache)")
    p.add_argument("--api-key", default=None,
                   help="clients must send 'Authorization: Bearer KEY' (default: "
                        "$FASTLLM_API_KEY, else no key)")
    p.add_argument("--alias", default=None,
                   help="the model's id in the API (default: the file's name without .gguf)")
    p.add_argument("--max-queue", type=COUNT, default=None,
                   help="requests allowed to wait for a slot; more get 429 (default: no limit)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="a web origin allowed to call the API from a browser (repeatable)")
    g = p.add_argument_group("scaling out (Ray Serve: pip install 'fastllm-gpu[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: replicas, each with its own model and "
                        "slots, behind Ray's HTTP proxy on --host/--port (a local Ray, or "
                        "the cluster at $RAY_ADDRESS)")
    g.add_argument("--replicas", type=POSITIVE, metavar="N", default=1,
                   help="replicas to run (with --max-replicas: to start with)")
    g.add_argument("--min-replicas", type=COUNT, metavar="N", default=None,
                   help="autoscaling: fewest replicas (default 1; needs --max-replicas)")
    g.add_argument("--max-replicas", type=POSITIVE, metavar="N", default=None,
                   help="autoscaling: most replicas; Ray adds and removes replicas between "
                        "the bounds to follow the load")
    g.add_argument("--target-ongoing", type=_ranged(float, lambda v: v > 0, "a number > 0"),
                   default=None, metavar="R",
                   help="autoscaling: requests per replica to aim at (default: -np)")
    g.add_argument("--replica-cpus", type=_ranged(float, lambda v: v >= 0, "a number >= 0"),
                   default=1.0, metavar="C", help="CPUs Ray reserves for each replica")
    g.add_argument("--replica-gpus", type=_ranged(float, lambda v: v >= 0, "a number >= 0"),
                   default=None, metavar="G",
                   help="GPUs per replica (default: 1 when the cluster has GPUs and the backend "
                        "may be WebGPU, else 0); each replica opens the GPU Ray gave it")
    g.add_argument("--replica-resource", action="append", default=None, metavar="NAME=AMOUNT",
                   help="a custom Ray resource each replica needs (repeatable), e.g. "
                        "apple_gpu=1 on Macs started with ray start --resources "
                        "'{\"apple_gpu\": 1}'")
    p.set_defaults(func=cmd_serve, check=_check_serve, parser=p)

    p = sub.add_parser("pull", help="fetch a known model into the cache")
    p.add_argument("name", choices=sorted(KNOWN), help="the model's name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="the cached models, with sizes and paths")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("rm", help="remove cached models")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="a known name or a file name in the cache (fastllm list)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("quantize", help="requantize a GGUF file")
    p.add_argument("input", help="GGUF file to read")
    p.add_argument("output", help="GGUF file to write")
    p.add_argument("type", help="F16, Q8_0, Q4_0, Q4_K, Q6_K, Q4_K_M or MXFP4_MOE")
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
    problem = a.check(a) if getattr(a, "check", None) else None
    if problem:
        a.parser.error(problem)
    try:
        return a.func(a)
    except FastLLMError as e:
        print(f"fastllm: error: {_flags(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
