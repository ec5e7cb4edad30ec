#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers (fastllm serve, llama.cpp's llama-server):
N concurrent streaming clients on loopback, each sending R requests one after another; prints
time to first token and aggregate generated tokens per second for each N.

    python3 benchmarks/serve_load.py --url http://127.0.0.1:8080 --clients 1,8,32 \\
        --requests 2 --max-tokens 128 --prompt-words 75 [--extra '{"ignore_eos": true}']

The client is plain asyncio over HTTP/1.1 (chunked transfer and server-sent events parsed by
hand, one connection per request), so the load generator's own cost per token stays small
next to the servers it measures. Tokens are counted from the final chunk's usage
(stream_options.include_usage) where the server sends it, else one per content event.
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

PASSAGE = ("the quick brown fox jumps over a lazy dog while seven tired sailors sing old songs "
           "about distant harbors green hills and winter storms that once sank a ship full of "
           "silver coins near the rocky coast of an island where nobody lives anymore except a "
           "lighthouse keeper and his patient grey cat")
WORDS = PASSAGE.split()


@dataclass
class Result:
    client: int
    index: int
    status: int = 0
    ttft: float | None = None  # seconds from sending to the first content
    seconds: float = 0.0  # sending to the end of the stream
    start: float = 0.0
    end: float = 0.0
    tokens: int = 0
    events: int = 0
    content_events: int = 0
    done: bool = False  # the stream ended with [DONE]
    error: str | None = None
    text: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


def prompt_text(words: int, client: int, k: int) -> str:
    # distinct from the first words on, so no server finds one request's prompt cached by another
    body = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    return f"Story {client}-{k}: {body}"


async def _read_response(reader: asyncio.StreamReader, on_data) -> int:
    """Status of an HTTP/1.1 response; its body (chunked, sized or to EOF) goes to on_data."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            on_data(await reader.readexactly(size))
            await reader.readexactly(2)
    elif "content-length" in headers:
        on_data(await reader.readexactly(int(headers["content-length"])))
    else:
        while chunk := await reader.read(65536):
            on_data(chunk)
    return status


async def one_request(a: argparse.Namespace, client: int, k: int, t0: float) -> Result:
    res = Result(client, k)
    path = "/v1/chat/completions" if a.endpoint == "chat" else "/v1/completions"
    body = {"max_tokens": a.max_tokens, "temperature": a.temperature, "stream": True,
            "stream_options": {"include_usage": True}, **a.extra_body}
    text = prompt_text(a.prompt_words, client, k)
    if a.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if a.model:
        body["model"] = a.model
    payload = json.dumps(body).encode()
    u = urlsplit(a.url)
    buf = bytearray()

    def on_data(data: bytes) -> None:
        buf.extend(data)
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                return
            block = bytes(buf[:end]).strip()
            del buf[:end + 2]
            for line in block.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    res.done = True
                    continue
                ev = json.loads(data)
                res.events += 1
                if ev.get("error"):
                    res.error = str(ev["error"])
                if ev.get("usage"):
                    res.tokens = ev["usage"].get("completion_tokens", res.tokens)
                for ch in ev.get("choices") or ():
                    piece = (ch.get("delta") or {}).get("content") or ch.get("text") or ""
                    if piece:
                        if res.ttft is None:
                            res.ttft = time.perf_counter() - res.start
                        res.text += piece
                        res.content_events += 1

    res.start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
        req = (f"POST {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
               f"Connection: close\r\n")
        if a.api_key:
            req += f"Authorization: Bearer {a.api_key}\r\n"
        writer.write(req.encode() + b"\r\n" + payload)
        await writer.drain()
        res.status = await _read_response(reader, on_data)
        writer.close()
        if res.status != 200:
            res.error = bytes(buf).decode("utf-8", "replace")[:300]
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
    res.end = time.perf_counter()
    res.seconds = res.end - res.start
    if not res.tokens:
        res.tokens = res.content_events
    res.start -= t0
    res.end -= t0
    return res


async def run_level(a: argparse.Namespace, n: int) -> list[Result]:
    t0 = time.perf_counter()

    async def client(i: int) -> list[Result]:
        return [await one_request(a, i, k, t0) for k in range(a.requests)]

    per = await asyncio.gather(*(client(i) for i in range(n)))
    return [r for rs in per for r in rs]


def summarize(n: int, results: list[Result]) -> dict:
    ok = [r for r in results if r.ok]
    ttfts = sorted(r.ttft for r in ok if r.ttft is not None)
    span = (max(r.end for r in results) - min(r.start for r in results)) if results else 0.0
    tokens = sum(r.tokens for r in ok)
    # each stream's own rate after its first token
    rates = [(r.tokens - 1) / (r.seconds - r.ttft) for r in ok
             if r.ttft is not None and r.tokens > 1 and r.seconds > r.ttft]
    pct = (lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1e3) if ttfts else (
        lambda q: float("nan"))
    return {"clients": n, "requests": len(results), "ok": len(ok),
            "failed": len(results) - len(ok), "tokens": tokens, "seconds": round(span, 3),
            "aggregate_tok_s": round(tokens / span, 1) if span else 0.0,
            "ttft_ms_mean": round(statistics.fmean(ttfts) * 1e3, 1) if ttfts else None,
            "ttft_ms_p50": round(pct(0.5), 1), "ttft_ms_p90": round(pct(0.9), 1),
            "stream_tok_s_mean": round(statistics.fmean(rates), 1) if rates else None,
            "errors": sorted({r.error for r in results if r.error})[:5]}


def loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise argparse.ArgumentTypeError(f"only loopback servers are load-tested, got {host!r}")
    return url.rstrip("/")


def counts(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,8,32, got {s!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"client counts must be >= 1, got {s!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", type=loopback, default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=counts, default=[1, 8, 32],
                    help="concurrent clients, one run each (default 1,8,32)")
    ap.add_argument("--requests", type=int, default=2,
                    help="requests each client sends one after another")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=75,
                    help="words in each prompt (75 is about 100 tokens)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    ap.add_argument("--model", default=None, help="the model field to send (default: none)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--extra", default="{}",
                    help="JSON object merged into each request body (llama-server: "
                         "'{\"ignore_eos\": true}')")
    ap.add_argument("--warmup", type=int, default=1,
                    help="requests sent together first, not counted (pipelines and batch "
                         "shapes built)")
    ap.add_argument("--label", default="", help="a name for the table rows")
    ap.add_argument("--json", default=None, help="also write the summaries to this file")
    ap.add_argument("--texts", action="store_true",
                    help="keep each response's text in the JSON output")
    a = ap.parse_args(argv)
    try:
        a.extra_body = json.loads(a.extra)
        assert isinstance(a.extra_body, dict)
    except (ValueError, AssertionError):
        ap.error(f"--extra must be a JSON object, got {a.extra!r}")

    async def go() -> list[dict]:
        if a.warmup:
            await asyncio.gather(*(one_request(a, -1, k, 0.0) for k in range(a.warmup)))
        out = []
        for n in a.clients:
            results = await run_level(a, n)
            s = summarize(n, results)
            if a.texts:
                s["results"] = [asdict(r) for r in results]
            out.append(s)
            print(f"{a.label:<12} clients {n:>3}: {s['ok']}/{s['requests']} ok, "
                  f"{s['tokens']} tokens in {s['seconds']:.2f} s = {s['aggregate_tok_s']:,.1f} "
                  f"tok/s; TTFT mean {s['ttft_ms_mean']} ms, p50 {s['ttft_ms_p50']}, "
                  f"p90 {s['ttft_ms_p90']}; per stream {s['stream_tok_s_mean']} tok/s"
                  + (f"; errors: {s['errors']}" if s["errors"] else ""), flush=True)
        return out

    summaries = asyncio.run(go())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summaries, f, indent=1)
    return 0 if all(s["failed"] == 0 for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
