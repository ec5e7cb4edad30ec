"""Constrained decoding beside free decoding (issue 24's speed run): tokens/s of one request
free and under a JSON schema, a batch with one constrained row beside free ones (what the
constrained row costs the others: the batch advances one step per submission), and the
per-token cost of the mask: llguidance's computation on the host, and the upload and apply on
the device (a batched step with and without masks on the same rows).

    python3 benchmarks/bench_constrained.py -m MODEL.gguf [--backend webgpu] [-n 128] [-b 8]

Random-weight models write random text: the schemas leave most tokens open (a long string,
a list of integers), so the mask is computed over a realistic share of the vocabulary and the
request runs to max_tokens. Never run by the tests (no timing is asserted anywhere)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from fastllm import Engine, Model
from fastllm.constrain import compile_constraint, fill_masks

SCHEMAS = {
    "string": {"type": "object", "properties": {"text": {"type": "string"}},
               "required": ["text"]},
    "integers": {"type": "array", "items": {"type": "integer"}},
}


def run(eng: Engine, prompts: list, n: int, schema=None, n_constrained=0) -> tuple[float, list]:
    """(seconds, requests) of len(prompts) requests of n tokens; the first n_constrained
    follow the schema. EOS is biased away so that every request runs to n."""
    eos = sorted(eng.model.tokenizer.eog_ids)
    bias = {t: -100.0 for t in eos}
    t0 = time.perf_counter()
    reqs = [eng.submit(p, max_tokens=n, temperature=0, logit_bias=bias,
                       json_schema=schema if i < n_constrained else None)
            for i, p in enumerate(prompts)]
    for r in reqs:
        r.wait()
    return time.perf_counter() - t0, reqs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--backend", default="webgpu")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-b", type=int, default=8, help="rows of the mixed batch")
    ap.add_argument("-r", type=int, default=3)
    a = ap.parse_args()
    m = Model.load(a.model, backend=a.backend, n_seq=a.b, quiet=True)
    prompt = m.tokenize("The weather report for today:")
    print(f"model {a.model} ({m.backend.describe()}), n_vocab {m.n_vocab}, n {a.n}, B {a.b}")
    t0 = time.perf_counter()
    compile_constraint(m.tokenizer, m.n_vocab, json_schema=SCHEMAS["string"])
    print(f"llguidance tokenizer and first schema: {time.perf_counter() - t0:.2f} s (once)")

    def best(f) -> tuple[float, list]:
        got = [f() for _ in range(a.r)]
        return min(got, key=lambda x: x[0])

    with Engine(m) as eng:
        run(eng, [prompt], 8)  # compile the programs
        run(eng, [prompt], 8, SCHEMAS["string"], 1)
        s, _ = best(lambda: run(eng, [prompt], a.n))
        print(f"one request, free:                {a.n / s:9.1f} tok/s")
        for name, schema in SCHEMAS.items():
            s, rs = best(lambda schema=schema: run(eng, [prompt], a.n, schema, 1))
            ntok = rs[0].usage.completion_tokens
            print(f"one request, schema {name:9s}:   {ntok / s:9.1f} tok/s ({ntok} tokens, "
                  f"{rs[0].finish_reason})")
        ps = [prompt] * a.b
        s, rs = best(lambda: run(eng, ps, a.n))
        print(f"B={a.b} all free:                  {a.b * a.n / s:9.1f} tok/s "
              f"({a.n / s:.1f} per row)")
        s, rs = best(lambda: run(eng, ps, a.n, SCHEMAS["string"], 1))
        print(f"B={a.b} one constrained + free:    {a.b * a.n / s:9.1f} tok/s "
              f"({a.n / s:.1f} per row)")
        s, rs = best(lambda: run(eng, ps, a.n, SCHEMAS["string"], a.b))
        print(f"B={a.b} all constrained:           {a.b * a.n / s:9.1f} tok/s")

    # the mask's parts, per token: llguidance on the host, then upload + apply on the device
    c = compile_constraint(m.tokenizer, m.n_vocab, json_schema=SCHEMAS["string"])
    matchers = [c.matcher() for _ in range(a.b)]
    for mt in matchers:
        mt.consume(mt.forced())
    out = np.zeros((a.b, matchers[0].words), np.uint32)
    for k in (1, a.b):
        t0 = time.perf_counter()
        for _ in range(50):
            fill_masks(matchers[:k], out[:k])
        print(f"mask on the host, {k} row(s):      {(time.perf_counter() - t0) / 50 * 1e6:9.1f} "
              f"us a step")
    from fastllm.sampling import RowSampling

    p = [RowSampling(temperature=0)] * a.b
    m.reset()
    toks = list(range(100, 100 + a.b))
    for s_ in range(a.b):
        m.prefill([1, 2, 3], slot=s_)
    for masks in (None, list(out)):
        m.decode_rows_sampled(toks, list(range(a.b)), p, [0.0] * a.b, [()] * a.b, masks)
    for label, masks in (("without masks", None), ("with masks", list(out))):
        t0 = time.perf_counter()
        for _ in range(20):
            m.decode_rows_sampled(toks, list(range(a.b)), p, [0.0] * a.b, [()] * a.b, masks)
        print(f"batched step of {a.b} rows {label:13s}: "
              f"{(time.perf_counter() - t0) / 20 * 1e3:8.3f} ms")
    m.close()


if __name__ == "__main__":
    main()
