"""The server's counters in Prometheus's text exposition format (GET /metrics)."""

from __future__ import annotations

import time
from collections import Counter, deque

# tokens per second is the generated tokens of the last WINDOW seconds over WINDOW
WINDOW = 10


class Metrics:
    """Counters the handlers bump, and gauges read from the engine at scrape time."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (endpoint, outcome)
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self._start = time.monotonic()
        self._buckets: deque[list[int]] = deque()  # [second, tokens] of the last WINDOW s

    def generated(self, n: int) -> None:
        """n more tokens generated (called as streams advance, so the rate is current)."""
        if n <= 0:
            return
        self.generated_tokens += n
        now = int(time.monotonic())
        if self._buckets and self._buckets[-1][0] == now:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([now, n])
        self._trim(now)

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - WINDOW:
            self._buckets.popleft()

    def finished(self, endpoint: str, outcome: str, prompt: int = 0, cached: int = 0) -> None:
        self.requests[(endpoint, outcome)] += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached

    def tokens_per_second(self) -> float:
        t = time.monotonic()
        self._trim(int(t))
        span = min(WINDOW, max(t - self._start, 1.0))
        return sum(n for _, n in self._buckets) / span

    def render(self, running: int, queued: int, slots: int) -> str:
        """Prometheus text format 0.0.4."""
        out: list[str] = []

        def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP fastllm_{name} {text}")
            out.append(f"# TYPE fastllm_{name} {kind}")
            for labels, v in samples:
                out.append(f"fastllm_{name}{labels} {v:g}" if isinstance(v, float)
                           else f"fastllm_{name}{labels} {v}")

        metric("requests_running", "gauge", "Requests holding a slot.", [("", running)])
        metric("requests_queued", "gauge", "Requests waiting for a slot.", [("", queued)])
        metric("slots_total", "gauge", "Sequences the model holds at once.", [("", slots)])
        metric("slots_in_use", "gauge", "Slots running a request.", [("", running)])
        metric("prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
               [("", self.prompt_tokens)])
        metric("prompt_tokens_cached_total", "counter",
               "Prompt tokens found in a slot's cache (not evaluated again).",
               [("", self.cached_tokens)])
        metric("generated_tokens_total", "counter", "Tokens generated.",
               [("", self.generated_tokens)])
        metric("tokens_per_second", "gauge",
               f"Tokens generated per second over the last {WINDOW} s.",
               [("", round(self.tokens_per_second(), 3))])
        metric("requests_total", "counter", "Finished requests by endpoint and outcome.",
               [(f'{{endpoint="{e}",outcome="{o}"}}', n)
                for (e, o), n in sorted(self.requests.items())])
        return "\n".join(out) + "\n"
