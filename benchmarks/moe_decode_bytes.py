"""The bytes one decode step of a GGUF file reads, and the share of the memory-bandwidth floor a
measured decode speed reaches.

A one-token step reads every weight tensor once, except the experts' stacked tensors (names with
`_exps.`: weights and per-expert biases), of which only the expert_used_count chosen experts'
slices, and the token embedding, of which one row. For the hybrid qwen35/qwen35moe files it also
reads and writes each DeltaNet layer's f32 state (value heads x state_size^2) and conv state.
The KV cache is left out (a few MiB at the depths of tg128).

    PYTHONPATH=python python3 benchmarks/moe_decode_bytes.py FILE [--fastllm OUT] [--llama OUT]

OUT.txt: the table `fastllm bench` or `llama-bench` printed (the pp/tg rows are read from it).
"""

from __future__ import annotations

import argparse
import re

FLOORS_TBPS = (2.8, 3.3)  # the H100's streaming bandwidth: measured by WGSL (2.83), HBM3 peak 3.35


def step_bytes(items, n_expert: int, n_used: int) -> int:
    """items: (name, size of the outermost dimension, bytes) of every tensor."""
    step = 0
    for name, outer, b in items:
        if "_exps." in name and n_expert:
            if outer != n_expert:
                raise ValueError(f"{name}: {outer} experts, the file says {n_expert}")
            b = b * n_used // n_expert
        elif name == "token_embd.weight":
            b //= outer
        step += b
    return step


def file_step(path: str) -> dict:
    """Read with fastllm's GGUF reader (python/ on PYTHONPATH): the gguf package's takes tens of
    seconds over a BPE vocabulary's strings."""
    from fastllm.gguf import open_gguf

    f = open_gguf(path, check_types=False)
    md = f.metadata
    arch = md["general.architecture"]

    def key(name, default=None):
        return md.get(f"{arch}.{name}", default)

    n_expert = int(key("expert_count", 0) or 0)
    n_used = int(key("expert_used_count", 0) or 0)
    n_layer = int(key("block_count"))
    items = [(t.name, int(t.shape[0]), int(t.data.nbytes)) for t in f.tensors.values()]
    state = 0
    if arch in ("qwen35", "qwen35moe"):
        flags = key("attention.recurrent_layers")
        every = int(key("full_attention_interval", 4))
        n_rec = (sum(int(x) for x in flags) if flags is not None
                 else sum((i + 1) % every != 0 for i in range(n_layer)))
        S, nv = int(key("ssm.state_size")), int(key("ssm.time_step_rank"))
        nk, K = int(key("ssm.group_count")), int(key("ssm.conv_kernel"))
        per_layer = 4 * (nv * S * S + (K - 1) * (2 * nk * S + nv * S))
        state = 2 * n_rec * per_layer  # read and written back
    return {"arch": arch, "n_layer": n_layer, "n_expert": n_expert, "n_used": n_used,
            "file": sum(b for _n, _o, b in items),
            "weights": step_bytes(items, n_expert, n_used), "state": state}


def read_speeds(path: str) -> dict[str, float]:
    """{'pp512': tok/s, 'tg128': tok/s} from the markdown table of fastllm bench or llama-bench."""
    out: dict[str, float] = {}
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        test = next((c for c in cells if re.fullmatch(r"(pp|tg)\d+", c)), None)
        m = re.match(r"([\d.]+)", cells[-1])
        if test and m:
            out[test] = float(m.group(1))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--fastllm", help="fastllm bench's output")
    ap.add_argument("--llama", help="llama-bench's output")
    a = ap.parse_args(argv)
    s = file_step(a.file)
    step = s["weights"] + s["state"]
    used = f"{s['n_used']} of {s['n_expert']} experts" if s["n_expert"] else "dense"
    extra = f" + {s['state'] / 2**20:.1f} MiB of recurrent state" if s["state"] else ""
    print(f"== {a.file} ({s['arch']}, {s['n_layer']} layers, {s['file'] / 2**30:.2f} GiB): a "
          f"decode step reads {s['weights'] / 2**20:.1f} MiB of weights ({used}){extra}")
    floors = [step / (bw * 1e12) for bw in FLOORS_TBPS]
    print("   floor: " + ", ".join(f"{t * 1e3:.3f} ms/token ({1 / t:,.0f} tok/s) at {bw} TB/s"
                                    for t, bw in zip(floors, FLOORS_TBPS)))
    speeds = {}
    for who, path in (("fastllm WebGPU", a.fastllm), ("llama.cpp CUDA", a.llama)):
        if not path:
            continue
        sp = speeds[who] = read_speeds(path)
        tg = next((v for k, v in sp.items() if k.startswith("tg")), None)
        pp = next((v for k, v in sp.items() if k.startswith("pp")), None)
        if tg is None:
            print(f"   {who}: no result ({path})")
            continue
        shares = ", ".join(f"{100 * tg * t:.0f}% at {bw}" for t, bw in zip(floors, FLOORS_TBPS))
        pps = f"pp {pp:,.0f} tok/s, " if pp is not None else ""
        print(f"   {who}: {pps}tg {tg:,.1f} tok/s: {shares} TB/s of the floor")
    f, ll = speeds.get("fastllm WebGPU", {}), speeds.get("llama.cpp CUDA", {})
    ratios = [f"{k} {f[k] / ll[k]:.2f}x" for k in sorted(f) if k in ll and ll[k] > 0]
    if ratios:
        print("   fastllm / llama.cpp: " + ", ".join(ratios) + " (decode target >= 1.2x)")


if __name__ == "__main__":
    main()
